"""Where a model's eager reference comes from (model.yaml `source:`), and the inputs the build feeds
it: real example requests through the model's own handler, as a worker would decode them."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from handlers.base import Payload, kind_class

TOKENIZER_FILE = "tokenizer.json"
LABELS_FILE = "labels.txt"


class SentenceEmbedder(nn.Module):
    """A Hugging Face encoder with mean pooling over the attention mask and L2 normalisation, as
    sentence-transformers computes sentence embeddings."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


class SequenceClassifier(nn.Module):
    """A Hugging Face *ForSequenceClassification model as tensors in, logits out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class ExportedModule(nn.Module):
    """A torch.export program's module as an ordinary eval-mode module: the module an exported
    program gives refuses train() and eval(), which every step of the build calls."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.program = module

    def train(self, mode: bool = True) -> "ExportedModule":
        self.training = mode  # exported graphs are fixed in the mode they were exported in
        return self

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.program(*inputs)


def huggingface(directory: Path, kind: str) -> nn.Module:
    """A local Hugging Face directory as the eager model of a text kind; never a model hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoModelForSequenceClassification

    if kind == "text_classifier":
        return SequenceClassifier(AutoModelForSequenceClassification.from_pretrained(
            str(directory), local_files_only=True))
    if kind == "text_embedder":
        return SentenceEmbedder(AutoModel.from_pretrained(str(directory), local_files_only=True))
    raise ValueError(f"a Hugging Face directory serves as text_classifier or text_embedder, "
                     f"not {kind}")


def load(spec, work_dir: Path) -> nn.Module:
    kind, value = spec.source_type, spec.source_value
    if kind == "python":
        return spec.hook(value, "source.python")(work_dir)
    if kind == "torchscript":
        return torch.jit.load(str(spec.folder / value), map_location="cpu")
    if kind == "exported_program":
        return ExportedModule(torch.export.load(str(spec.folder / value)).module())
    if kind == "huggingface":
        check_tokenizer(spec, spec.folder / value)
        return huggingface(spec.folder / value, spec.kind)
    # module: 'file.py:Class' with a state dict
    file, _, class_name = str(value).partition(":")
    module_spec = importlib.util.spec_from_file_location(f"_source_{spec.name}", spec.folder / file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    module_spec.loader.exec_module(module)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise spec.fail("source.module", f"{file} has no class {class_name!r}")
    source = spec.model_yaml["source"]
    model = cls(**(source.get("kwargs") or {}))
    if "state_dict" in source:
        state = torch.load(spec.folder / source["state_dict"], map_location="cpu",
                           weights_only=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise spec.fail("source.state_dict", f"does not fit {class_name}: "
                            f"{str(e).splitlines()[0]}") from None
    return model


def check_tokenizer(spec, directory: Path) -> None:
    """Every id the tokenizer can produce must be a row of the model's embedding: one that is not
    fails every request holding that token, as a 500, on live traffic."""
    from tokenizers import Tokenizer

    if not (directory / TOKENIZER_FILE).exists():
        raise spec.fail("source.huggingface", f"{directory.name}/ has no {TOKENIZER_FILE} (a fast "
                        "tokenizer): save it with tokenizer.save_pretrained() there")
    config = json.loads((directory / "config.json").read_text())
    ids = max(Tokenizer.from_file(str(directory / TOKENIZER_FILE)).get_vocab().values()) + 1
    if "vocab_size" in config and ids > int(config["vocab_size"]):
        raise spec.fail("source.huggingface", f"the tokenizer gives ids up to {ids - 1}, but the "
                        f"model's vocab_size is {config['vocab_size']}: they do not belong "
                        "together")


def extra_files(spec) -> dict[str, Path]:
    """Files a Hugging Face source brings for its handler: the tokenizer, and the labels."""
    if spec.source_type != "huggingface":
        return {}
    directory = spec.folder / spec.source_value
    files = {}
    if (directory / TOKENIZER_FILE).exists():
        files[TOKENIZER_FILE] = directory / TOKENIZER_FILE
    return files


def generated_files(spec) -> dict[str, str]:
    """Files written into the archive from the source: a classifier's labels from its config."""
    if spec.source_type != "huggingface" or spec.kind != "text_classifier":
        return {}
    config = json.loads((spec.folder / spec.source_value / "config.json").read_text())
    labels = config.get("id2label") or {}
    return {LABELS_FILE: "\n".join(labels[k] for k in sorted(labels, key=int)) + "\n"} \
        if labels else {}


def handler_for(spec, resources: Path):
    """The model's own handler, configured from its folder, with its resources loaded from
    `resources` (the archive's staged files): the build decodes examples exactly as it serves."""
    handler = kind_class(spec.kind)()
    handler.configure(spec.handler_settings)
    handler.model_yaml = spec.model_yaml
    handler.load_resources(resources)
    return handler


def stage_resources(spec, stage: Path) -> Path:
    """The files the handler loads at serve time, as the archive will hold them."""
    stage.mkdir(parents=True, exist_ok=True)
    for name, source in spec.extra_files().items():
        shutil.copy2(source, stage / name)
    for name, text in generated_files(spec).items():
        (stage / name).write_text(text)
    return stage


def model_handler(spec):
    """The model's handler as a worker would have it, its resources staged as in the archive."""
    with tempfile.TemporaryDirectory() as stage:
        return handler_for(spec, stage_resources(spec, Path(stage)))


def decoded_items(spec, files: list[Path]) -> tuple[Any, list]:
    """The model's handler, and the items it decodes from each request file."""
    handler = model_handler(spec)
    _, content_type = spec.example_request
    items = []
    for path in files:
        try:
            items += handler.decode(Payload(path.read_bytes(), spec.content_type_of(path.name)
                                            if path.suffix else content_type))
        except Exception as e:  # noqa: BLE001 - a bad example is the folder's mistake
            raise spec.fail("parity.examples", f"{path.name} is not a request the {spec.kind} "
                            f"handler accepts: {e}") from None
    return handler, items


def batches_from_requests(spec, files: list[Path]) -> list[tuple]:
    """Parity batches: the example requests decoded by the handler, in batches of batchSize."""
    handler, items = decoded_items(spec, files)
    size = int(spec.config.get("batchSize") or 1)
    return [handler.collate(items[i:i + size]) for i in range(0, len(items), size)]


def example_inputs(spec, batch: int) -> tuple:
    """A batch of `batch` inputs made of the parity examples (repeated as needed)."""
    files = spec.files(spec.parity_spec["examples"], "parity.examples") \
        if "examples" in spec.parity_spec else [spec.folder / spec.example["file"]]
    handler, items = decoded_items(spec, files)
    return handler.collate(list(itertools.islice(itertools.cycle(items), batch)))
