"""Model files as a user brings them, made here: a small CNN saved as TorchScript and with
torch.export, and a tiny randomly initialised BERT-style sequence classifier saved as a Hugging
Face directory with its tokenizer. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

WORDS = ("the a an service model request answer fast slow good bad late early box film rain "
         "delight damaged password museum weekend rates quick brown fox lazy dog jumps").split()


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN().eval()


def save_torchscript(path: Path) -> Path:
    """The CNN as TorchScript; it takes (N, 1, 16, 16)."""
    torch.jit.save(torch.jit.trace(small_cnn(), torch.rand(2, 1, 16, 16)), str(path))
    return path


def save_exported(path: Path, max_batch: int = 1024) -> Path:
    """The CNN as a torch.export program with a dynamic batch (of at most max_batch)."""
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    program = torch.export.export(small_cnn(), (torch.rand(2, 1, 16, 16),),
                                  dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def save_tiny_bert_classifier(directory: Path) -> Path:
    """A 2-layer, 32-wide BERT with 3 labels, random weights, and a WordPiece tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS,
              *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"), *"abcdefghijklmnopqrstuvwxyz.,;!?'"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}  # each token once
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]",
                                      pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                      mask_token="[MASK]", model_max_length=64)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                        num_labels=3, id2label={0: "negative", 1: "neutral", 2: "positive"},
                        label2id={"negative": 0, "neutral": 1, "positive": 2})
    BertForSequenceClassification(config).eval().save_pretrained(directory)
    wrapped.save_pretrained(directory)
    return directory
