"""The models this service ships, one folder each.

A model folder holds `model.py` (where the model comes from and how it is checked before export),
`model-config.yaml` (its TorchServe serving config, `handler:` section included) and whatever files
its handler needs at serve time. `model.py` exposes one `SPEC`. Adding a model means adding a folder
and its name to `NAMES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:  # torch stays unimported for light users of this package (the load generator)
    import torch

MODELS_DIR = Path(__file__).resolve().parent

NAMES = ("digits", "efficientnet_lite0", "minilm")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    handler: str  # module name in handlers/
    kind: str     # "classifier" or "embedder": which parity gate applies to low precisions
    # Builds the eager reference model, in eval mode. `work_dir` is a scratch folder it may cache in.
    load_eager: Callable[[Path], "torch.nn.Module"]
    # Inputs as the handler feeds them, for a batch of the given size: a tuple of tensors.
    example_inputs: Callable[[int], tuple["torch.Tensor", ...]]
    # Real inputs for the parity gate: a list of input tuples.
    parity_inputs: Callable[[], list[tuple["torch.Tensor", ...]]]
    # The name of each dimension of each input that varies at serving time (None: fixed), and
    # the range of each named dimension, for torch.export's dynamic shapes.
    dims: tuple[tuple[str | None, ...], ...] = (("batch",),)
    dim_ranges: dict[str, tuple[int, int]] = field(default_factory=lambda: {"batch": (1, 1024)})
    # Image models: run in channels-last memory format (oneDNN's fast layout for convolutions).
    channels_last: bool = False
    # Rewrites of the eager model before export that keep its answers (e.g. folding batch norms
    # into convolutions); the parity gate compares the export with the model as loaded.
    prepare_export: Callable[["torch.nn.Module"], "torch.nn.Module"] | None = None
    # Targets the build tries when none is named; it ships the fastest that passes its gate.
    targets: Sequence[str] = ("eager", "torchscript", "inductor")
    # Files the handler needs at serve time, copied into the archive: name in archive -> source.
    extra_files: Callable[[], dict[str, Path]] = lambda: {}
    # Packages whose versions decide what the build produces (weights, tokenizer).
    source_packages: Sequence[str] = ()
    # Extra quality figures measured on the exported model (e.g. held-out accuracy); may raise.
    evaluate: Callable[["torch.nn.Module"], dict] | None = None
    # A file in the model folder that serves as an example request body, and its content type.
    example_request: tuple[str, str] = field(default=("example.json", "application/json"))

    @property
    def folder(self) -> Path:
        return MODELS_DIR / self.name

    @property
    def config_file(self) -> Path:
        return self.folder / "model-config.yaml"


def load(name: str) -> ModelSpec:
    if name not in NAMES:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(NAMES)}")
    return importlib.import_module(f"models.{name}.model").SPEC
