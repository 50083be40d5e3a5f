"""The models this service serves: every folder here with a `model.yaml` is one, found by its
folder; there is no list to edit. docs/models.md describes the folder; in short:

    model.yaml         what the model is, as data: its kind (which handler serves it), where its
                       weights come from, its inputs, parity inputs, build choices, load-test
                       payloads and objectives
    model-config.yaml  its TorchServe serving config (batch, delay, workers, queue, timeouts) and,
                       under `handler:`, its handler's settings and input limits
    model.py           only where the model needs code of its own: the functions model.yaml names
                       (`python: NAME`), see HOOKS
    examples/, ...     example requests (parity inputs, load-test payloads), labels, weights

A mistake in a folder is a ModelFolderError naming the file and field and what to do.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from handlers import KINDS

if TYPE_CHECKING:  # torch stays unimported for light users of this package (the load generator)
    import torch

MODELS_DIR = Path(__file__).resolve().parent
MODEL_YAML = "model.yaml"
SERVING_CONFIG = "model-config.yaml"

# Where the weights come from: one of these keys under `source:`.
SOURCES = {
    "torchscript": "a TorchScript file (torch.jit.save), e.g. model.pt",
    "exported_program": "a torch.export program (torch.export.save), e.g. model.pt2",
    "module": "'file.py:Class' in the folder, with `state_dict:` (a torch.save'd state dict) and "
              "optional `kwargs:` for the constructor",
    "huggingface": "a local Hugging Face model directory (config.json, weights, tokenizer.json)",
    "python": "a function in model.py: load_model(work_dir) -> nn.Module in eval mode",
}
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool")

# What a model.py may provide, by the name model.yaml gives it (`python: NAME`).
HOOKS = {
    "source": "load_model(work_dir: Path) -> nn.Module: the eager reference, in eval mode",
    "parity": "parity_inputs() -> list[tuple[Tensor, ...]]: real input batches for the gate",
    "example_inputs": "example_inputs(batch: int) -> tuple[Tensor, ...]: timing and export inputs",
    "prepare_export": "prepare_export(model) -> nn.Module: rewrites that keep the answers",
    "evaluate": "evaluate(exported) -> dict: quality figures of the shipped model; may raise",
    "payloads": "payloads() -> list[bytes]: load-test bodies (import no torch: Locust runs it)",
}
MODEL_YAML_FIELDS = {"kind", "description", "source", "inputs", "dynamic", "build", "parity",
                     "example", "extra_files", "loadtest"}
BUILD_FIELDS = {"targets", "precisions", "channels_last", "prepare_export", "evaluate", "packages",
                "int8_skip"}
LOADTEST_FIELDS = {"payloads", "content_type", "slo"}
DEFAULT_SHIP_PRECISIONS = ("fp32",)  # a model ships at the precision it was given, unless asked
DEFAULT_RANGES = {"batch": (1, 1024), "seq": (2, 512)}
NAME_PATTERN = r"[A-Za-z][A-Za-z0-9_-]*"  # a model's name is its URL path: /predictions/NAME


class ModelFolderError(ValueError):
    """A model folder that cannot be used as it is; the message names the file and field."""


def names(models_dir: Path = MODELS_DIR) -> tuple[str, ...]:
    """Every model: each folder under models/ holding a model.yaml, in name order."""
    return tuple(sorted(p.parent.name for p in models_dir.glob(f"*/{MODEL_YAML}")))


def load(name: str) -> "ModelSpec":
    known = names()
    if name not in known:
        raise KeyError(f"unknown model {name!r}; models (folders under models/ with a "
                       f"{MODEL_YAML}): {', '.join(known) or 'none'}")
    return ModelSpec.from_folder(MODELS_DIR / name)


def __getattr__(attribute: str):
    if attribute == "NAMES":  # read when asked: a folder added since import counts
        return names()
    raise AttributeError(attribute)


@dataclass(frozen=True)
class Input:
    name: str
    shape: tuple[int | str, ...]  # a name (batch, seq, ...) for a dimension that varies
    dtype: str


@dataclass(frozen=True)
class ModelSpec:
    """A model folder, read and checked."""

    name: str
    folder: Path
    model_yaml: dict
    config: dict  # model-config.yaml

    # -- reading ----------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, folder: Path) -> "ModelSpec":
        model_yaml_file, config_file = folder / MODEL_YAML, folder / SERVING_CONFIG
        model_yaml = read_yaml(model_yaml_file)
        if not config_file.exists():
            raise ModelFolderError(f"{config_file}: missing; every model folder has its TorchServe "
                                   "serving config (`python -m serving new` writes one)")
        spec = cls(folder.name, folder, model_yaml, read_yaml(config_file))
        spec.check()
        return spec

    def fail(self, field: str, message: str, file: str = MODEL_YAML) -> ModelFolderError:
        return ModelFolderError(f"{self.folder / file}: {field}: {message}")

    def check(self) -> None:
        """Every field known and well-formed, every file named present: the build and the server
        never start on a folder that would fail later."""
        if not re.fullmatch(NAME_PATTERN, self.name):
            raise ModelFolderError(f"{self.folder}: a model's folder name is its URL path "
                                   "(/predictions/NAME): letters, digits, _ and -, starting with "
                                   "a letter")
        unknown = set(self.model_yaml) - MODEL_YAML_FIELDS
        if unknown:
            raise self.fail(", ".join(sorted(unknown)), f"unknown field; the fields are "
                            f"{', '.join(sorted(MODEL_YAML_FIELDS))}")
        if self.kind not in KINDS:
            raise self.fail("kind", f"{self.model_yaml.get('kind')!r} is not a kind; kinds: "
                            f"{', '.join(KINDS)}")
        source = self.model_yaml.get("source")
        if not isinstance(source, dict) or len(set(source) & set(SOURCES)) != 1:
            raise self.fail("source", "give exactly one of: " +
                            "; ".join(f"{k} ({v})" for k, v in SOURCES.items()))
        for key, allowed in (("build", BUILD_FIELDS), ("loadtest", LOADTEST_FIELDS)):
            sub = self.model_yaml.get(key) or {}
            if set(sub) - allowed:
                raise self.fail(f"{key}.{sorted(set(sub) - allowed)[0]}",
                                f"unknown field; {key} takes {', '.join(sorted(allowed))}")
        if self.source_type not in ("python", "module"):
            self.path(self.source_value, "source." + self.source_type)
        if self.source_type == "module":
            self.path(str(source["module"]).partition(":")[0], "source.module")
            if "state_dict" in source:
                self.path(source["state_dict"], "source.state_dict")
        for i, inp in enumerate(self.inputs):
            if inp.dtype not in DTYPES:
                raise self.fail(f"inputs[{i}].dtype", f"{inp.dtype!r}; dtypes: {', '.join(DTYPES)}")
        if not self.inputs and self.source_type != "huggingface":
            raise self.fail("inputs", "missing: list the model's inputs, e.g. "
                            "[{name: x, shape: [batch, 3, 32, 32], dtype: float32}]")
        from handlers import PRECISIONS, TARGETS

        for target in self.targets:
            if target not in TARGETS:
                raise self.fail("build.targets", f"{target!r}; targets: {', '.join(TARGETS)}")
        wanted = self.build_settings.get("precisions", list(DEFAULT_SHIP_PRECISIONS))
        if not isinstance(wanted, list) or not wanted or set(wanted) - set(PRECISIONS):
            raise self.fail("build.precisions", f"{wanted!r}; a list of: {', '.join(PRECISIONS)}")
        if "python" not in self.extra_files_spec:
            for name in self.extra_files_spec.values():
                self.path(name, "extra_files")
        hooks = {f"build.{k}": self.build_settings.get(k) for k in ("prepare_export", "evaluate")}
        hooks["source.python"] = source.get("python")
        hooks["parity.python"] = self.parity_spec.get("python")
        hooks["extra_files.python"] = self.extra_files_spec.get("python")
        payloads = self.loadtest.get("payloads")
        hooks["loadtest.payloads.python"] = payloads.get("python") if isinstance(payloads, dict) \
            else None
        for field_name, name in hooks.items():
            if name:
                self.check_hook(name, field_name)
        if "handler" in self.config and not isinstance(self.config["handler"], dict):
            raise self.fail("handler", "must be a mapping of handler settings", SERVING_CONFIG)
        delay = self.config.get("maxBatchDelay")
        if delay is not None and int(self.config.get("batchSize") or 1) > 1 and int(delay) <= 0:
            # TorchServe 0.12 takes an archive's maxBatchDelay only when it is > 0, else its
            # default (frontend ModelManager.java: `marMaxBatchDelay > 0 ? ...`): 0 meant "never
            # wait" and served digits at 105 ms p50 instead of 2.3.
            raise self.fail("maxBatchDelay", f"{delay} is read by TorchServe as unset and replaced "
                            "by its default, 100 ms; 1 is the shortest wait it honours",
                            SERVING_CONFIG)
        if not self.parity_spec:
            raise self.fail("parity", "missing: give `examples:` (request files in the folder, "
                            "e.g. examples/*.json) or `python: parity_inputs`")
        if "examples" in self.parity_spec:
            self.files(self.parity_spec["examples"], "parity.examples")
        if "file" not in self.example:
            raise self.fail("example.file", "missing: an example request body in the folder")
        self.path(self.example["file"], "example.file")

    def path(self, relative: str, field_name: str) -> Path:
        path = self.folder / str(relative)
        if not path.exists():
            raise self.fail(field_name, f"{relative!r} does not exist in {self.folder}")
        return path

    def files(self, patterns: str | list[str], field_name: str) -> list[Path]:
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        found = sorted({Path(p) for pattern in patterns
                        for p in glob.glob(str(self.folder / pattern))})
        if not found:
            raise self.fail(field_name, f"{patterns} matches no file in {self.folder}")
        return found

    def import_file(self, file: str):
        """A Python file of the folder, imported (as models.<name>.<stem> for shipped models)."""
        path = self.folder / file
        if not path.exists():
            raise ModelFolderError(f"{path}: missing")
        if self.folder.parent == MODELS_DIR:
            return importlib.import_module(f"models.{self.name}.{path.stem}")
        module_name = f"_model_{self.name}_{path.stem}"
        if module_name not in sys.modules:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        return sys.modules[module_name]

    @property
    def module(self):
        """The folder's model.py, or None."""
        return self.import_file("model.py") if (self.folder / "model.py").exists() else None

    def check_hook(self, name: str, field_name: str) -> None:
        """That the file a hook names defines it, read without importing (model.py imports torch,
        and the load generator reads every folder)."""
        file, _, function_name = str(name).rpartition(":")
        file = file or "model.py"
        if not (self.folder / file).exists():
            raise self.fail(field_name, f"names {function_name!r} in {file}, and the folder has "
                            f"no {file}")
        if f"def {function_name}(" not in (self.folder / file).read_text():
            raise self.fail(field_name, f"{file} has no function {function_name!r}")

    def hook(self, name: str, field_name: str) -> Callable:
        """A function model.yaml names: NAME (in model.py) or FILE.py:NAME."""
        file, _, function_name = str(name).rpartition(":")
        file = file or "model.py"
        if not (self.folder / file).exists():
            raise self.fail(field_name, f"names {function_name!r} in {file}, and the folder has "
                            f"no {file}")
        function = getattr(self.import_file(file), function_name, None)
        if not callable(function):
            raise self.fail(field_name, f"{file} has no function {function_name!r}")
        return function

    # -- what the model is ----------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self.model_yaml.get("kind", "")

    @property
    def handler(self) -> str:
        return KINDS[self.kind].handler

    @property
    def gate(self) -> str:
        """Which parity gate applies to low precisions: classifier, embedder or tensor."""
        return KINDS[self.kind].gate

    @property
    def config_file(self) -> Path:
        return self.folder / SERVING_CONFIG

    @property
    def source_type(self) -> str:
        return next(k for k in self.model_yaml["source"] if k in SOURCES)

    @property
    def source_value(self) -> Any:
        return self.model_yaml["source"][self.source_type]

    @property
    def build_settings(self) -> dict:
        return self.model_yaml.get("build") or {}

    @property
    def ship_precisions(self) -> tuple[str, ...]:
        """The precisions the build may ship: the model's own (fp32) unless model.yaml asks for
        reduced ones (build.precisions). The others are still built and gated, and reported."""
        return tuple(self.build_settings.get("precisions", DEFAULT_SHIP_PRECISIONS))

    @property
    def handler_settings(self) -> dict:
        return self.config.get("handler") or {}

    @cached_property
    def inputs(self) -> tuple[Input, ...]:
        listed = self.model_yaml.get("inputs")
        if listed is None and self.source_type == "huggingface":
            listed = [{"name": "input_ids", "shape": ["batch", "seq"], "dtype": "int64"},
                      {"name": "attention_mask", "shape": ["batch", "seq"], "dtype": "int64"}]
        result = []
        for i, entry in enumerate(listed or []):
            if not isinstance(entry, dict) or not {"name", "shape"} <= set(entry):
                raise self.fail(f"inputs[{i}]", "each input is {name: ..., shape: [batch, ...], "
                                "dtype: float32}")
            shape = tuple(entry["shape"])
            if not shape or shape[0] != "batch":
                raise self.fail(f"inputs[{i}].shape", "the first dimension is `batch`")
            result.append(Input(str(entry["name"]), shape, str(entry.get("dtype", "float32"))))
        return tuple(result)

    @property
    def dims(self) -> tuple[tuple[str | None, ...], ...]:
        """Per input, the name of each dimension that varies at serving time (None: fixed)."""
        return tuple(tuple(d if isinstance(d, str) else None for d in inp.shape)
                     for inp in self.inputs)

    @property
    def text(self) -> bool:
        return any("seq" in d for d in self.dims)

    @property
    def dim_ranges(self) -> dict[str, tuple[int, int]]:
        ranges = dict(DEFAULT_RANGES)
        for name, (low, high) in (self.model_yaml.get("dynamic") or {}).items():
            ranges[name] = (int(low), int(high))
        used = {d for dims in self.dims for d in dims if d}
        missing = used - set(ranges)
        if missing:
            raise self.fail("dynamic", f"give the range of {sorted(missing)}, e.g. "
                            f"{{{sorted(missing)[0]}: [1, 64]}}")
        return {k: v for k, v in ranges.items() if k in used}

    @property
    def channels_last(self) -> bool:
        return bool(self.build_settings.get("channels_last", False))

    @property
    def int8_skip(self) -> tuple[str, ...]:
        """Globs of Linear layer names the int8 candidate leaves in fp32."""
        return tuple(self.build_settings.get("int8_skip") or ())

    @property
    def targets(self) -> tuple[str, ...]:
        if "targets" in self.build_settings:
            return tuple(self.build_settings["targets"])
        # A TorchScript file cannot be re-exported with torch.export: it ships as TorchScript.
        return ("torchscript",) if self.source_type == "torchscript" else \
            ("eager", "torchscript", "inductor")

    @property
    def source_packages(self) -> tuple[str, ...]:
        return tuple(self.build_settings.get("packages") or ())

    @property
    def prepare_export(self) -> Callable | None:
        name = self.build_settings.get("prepare_export")
        return self.hook(name, "build.prepare_export") if name else None

    @property
    def evaluate(self) -> Callable | None:
        name = self.build_settings.get("evaluate")
        return self.hook(name, "build.evaluate") if name else None

    @property
    def parity_spec(self) -> dict:
        return self.model_yaml.get("parity") or {}

    @property
    def example(self) -> dict:
        return self.model_yaml.get("example") or {}

    @staticmethod
    def content_type_of(file: str) -> str:
        return content_type_of(file)

    @property
    def example_request(self) -> tuple[str, str]:
        """(file in the folder, content type) of the example request."""
        file = self.example["file"]
        return file, self.example.get("content_type") or content_type_of(file)

    @property
    def extra_files_spec(self) -> dict[str, str]:
        return dict(self.model_yaml.get("extra_files") or {})

    # -- loading (torch from here on) ------------------------------------------------------------

    def load_eager(self, work_dir: Path) -> "torch.nn.Module":
        from models import sources

        return sources.load(self, work_dir).eval()

    def parity_inputs(self) -> list[tuple["torch.Tensor", ...]]:
        if "python" in self.parity_spec:
            return self.hook(self.parity_spec["python"], "parity.python")()
        from models import sources

        return sources.batches_from_requests(self, self.files(self.parity_spec["examples"],
                                                              "parity.examples"))

    def example_inputs(self, batch: int) -> tuple["torch.Tensor", ...]:
        if self.module is not None and hasattr(self.module, "example_inputs"):
            return self.module.example_inputs(batch)
        from models import sources

        return sources.example_inputs(self, batch)

    def extra_files(self) -> dict[str, Path]:
        """Files the handler needs at serve time: name in the archive -> source."""
        from models import sources

        listed = self.extra_files_spec
        if "python" in listed:
            listed = self.hook(listed["python"], "extra_files.python")()
        return {**sources.extra_files(self),
                **{name: self.folder / path for name, path in listed.items()}}

    # -- load tests (no torch) -------------------------------------------------------------------

    @property
    def loadtest(self) -> dict:
        return self.model_yaml.get("loadtest") or {}

    def payloads(self) -> list[bytes]:
        """Request bodies for load tests: files, or a model.py function (`python: NAME`)."""
        spec = self.loadtest.get("payloads") or self.parity_spec.get("examples") \
            or self.example["file"]
        if isinstance(spec, dict):
            return list(self.hook(spec["python"], "loadtest.payloads.python")())
        return [p.read_bytes() for p in self.files(spec, "loadtest.payloads")]

    @property
    def payload_content_type(self) -> str:
        return self.loadtest.get("content_type") or self.example_request[1]

    @property
    def answer_field(self) -> str:
        return KINDS[self.kind].answer

    @property
    def objectives(self) -> dict:
        return dict(self.loadtest.get("slo") or {})


def read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ModelFolderError(f"{path}: missing")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ModelFolderError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: must be a YAML mapping of fields")
    return data


def content_type_of(file: str) -> str:
    suffix = Path(file).suffix.lower()
    return {".json": "application/json", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
            ".png": "image/png", ".txt": "text/plain", ".bin": "application/octet-stream"
            }.get(suffix, "application/octet-stream")
