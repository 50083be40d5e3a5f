"""python -m serving new NAME --from PATH: a model folder from the user's model file.

PATH is a TorchScript file (.pt), a torch.export program (.pt2) or a local Hugging Face directory
(config.json, weights, tokenizer.json). What the file says is used: the inputs of an exported
program (names, shapes, dtypes, which dimensions vary), the output size from a trial call, the
architecture, labels and tokenizer of a Hugging Face directory. What it cannot say is asked for
(--input-shape) or written as a default that the command names, so the user knows what to check.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import torch
import yaml

import models
from handlers import KINDS
from handlers.array_classifier import random_input
from handlers.base import ModelFile, Scaffold, kind_class

EXAMPLES = 8
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
               torch.float64: "float64", torch.int64: "int64", torch.int32: "int32",
               torch.uint8: "uint8", torch.bool: "bool"}


class NewModelError(ValueError):
    pass


class Inspection:
    """What the command learnt from the user's file, and what it could not."""

    def __init__(self) -> None:
        self.source: dict = {}
        self.inputs: list[dict] = []
        self.dynamic: dict = {}
        self.kind = "tensor"
        self.num_outputs: int | None = None
        self.output_shape: list[int] = []
        self.learnt: list[str] = []
        self.unknown: list[str] = []
        self.text_settings: dict = {}
        self.files: dict[str, Path] = {}  # copied into the folder: name -> source


def parse_shape(text: str) -> list[int]:
    try:
        shape = [int(d) for d in text.replace("x", ",").split(",") if d.strip()]
    except ValueError:
        raise NewModelError(f"--input-shape {text!r}: sizes separated by commas, e.g. 3,32,32") \
            from None
    if not shape or any(d < 1 for d in shape):
        raise NewModelError(f"--input-shape {text!r}: positive sizes, without the batch dimension")
    return shape


def inspect_torchscript(path: Path, input_shape: str | None, dtype: str) -> Inspection:
    found = Inspection()
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise NewModelError(f"{path} is not a TorchScript file torch.jit.load reads ({e}); save "
                            "with torch.jit.save, or export with torch.export.save to a .pt2") from None
    found.source = {"torchscript": path.name}
    found.files[path.name] = path
    arguments = [a.name for a in model.forward.schema.arguments][1:]  # after self
    if len(arguments) != 1:
        raise NewModelError(f"{path}: forward takes {len(arguments)} inputs ({arguments}); a "
                            "TorchScript model with several inputs needs their shapes in "
                            "model.yaml: export it with torch.export (.pt2) instead")
    if not input_shape:
        raise NewModelError(f"{path}: TorchScript does not record input shapes; give the shape of "
                            "one input without the batch dimension: --input-shape 1,28,28")
    shape = parse_shape(input_shape)
    found.inputs = [{"name": arguments[0], "shape": ["batch", *shape], "dtype": dtype}]
    found.learnt.append(f"input name {arguments[0]!r} from forward()")
    found.unknown.append(f"the input dtype (assumed {dtype}; --input-dtype to change)")
    trial(found, model)
    return found


def program_range(program, size) -> tuple[int, int | None]:
    """(lowest, highest or None for unbounded) of a symbolic size, from the program's range
    constraints: `Dim("batch", max=64)` makes the program refuse 65, and an export of it with a
    larger range fails ("Constraints violated"), so the build must stay within it."""
    bounds = program.range_constraints.get(getattr(getattr(size, "node", None), "expr", None))
    if bounds is None:
        return 0, None
    upper = bounds.upper  # torch's int_oo (unbounded) is no sympy Integer
    return int(bounds.lower), (int(upper) if getattr(upper, "is_Integer", False) else None)


def inspect_exported(path: Path) -> Inspection:
    found = Inspection()
    try:
        program = torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001
        raise NewModelError(f"{path} is not a torch.export program ({e}); save it with "
                            "torch.export.save") from None
    found.source = {"exported_program": path.name}
    found.files[path.name] = path
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        value = node.meta["val"]
        shape: list = []
        for axis, size in enumerate(value.shape):
            if isinstance(size, int):
                shape.append(size)
            else:
                name = "batch" if axis == 0 else f"{node.name}_d{axis}"
                shape.append(name)
                low, high = program_range(program, size)
                if axis:
                    found.dynamic[name] = [max(2, low), high or 512]
                elif high is not None:  # a capped batch: the build exports within it
                    found.dynamic[name] = [max(1, low), high]
                    found.learnt.append(f"the batch is at most {high} (the program's range)")
        if shape and shape[0] != "batch":
            raise NewModelError(f"{path}: input {node.name!r} has a fixed first dimension "
                                f"({shape[0]}); export with a dynamic batch, e.g. "
                                "dynamic_shapes={'x': {0: torch.export.Dim('batch')}}")
        found.inputs.append({"name": node.name, "shape": shape,
                             "dtype": DTYPE_NAMES.get(value.dtype, "float32")})
    found.learnt.append("input names, shapes, dtypes and the dynamic batch from the program")
    if set(found.dynamic) - {"batch"}:
        others = sorted(set(found.dynamic) - {"batch"})
        found.unknown.append(f"the ranges of dynamic dimensions {others} "
                             "(the program's, else 2..512, in model.yaml `dynamic:`)")
    trial(found, program.module())
    return found


def inspect_huggingface(path: Path) -> Inspection:
    found = Inspection()
    config = json.loads((path / "config.json").read_text())
    if not (path / "tokenizer.json").exists():
        raise NewModelError(f"{path}: no tokenizer.json (a fast tokenizer); save the tokenizer "
                            "with tokenizer.save_pretrained() into the same directory")
    architectures = config.get("architectures") or []
    classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    found.kind = "text_classifier" if classifier else "text_embedder"
    found.learnt.append(f"kind {found.kind} from its architecture {architectures or '(none)'}")
    found.source = {"huggingface": "hf"}
    found.files["hf"] = path
    max_tokens = int(config.get("max_position_embeddings") or 512)
    buckets = [b for b in (16, 32, 64, 128, 256, 512) if b < max_tokens] + [min(max_tokens, 512)]
    found.text_settings = {"max_tokens": buckets[-1], "sequence_buckets": buckets}
    found.dynamic = {"seq": [2, buckets[-1]]}
    found.learnt.append(f"at most {buckets[-1]} tokens (max_position_embeddings)")
    if classifier:
        labels = config.get("id2label") or {}
        found.num_outputs = len(labels) or config.get("num_labels")
        found.learnt.append(f"{found.num_outputs} labels from id2label: "
                            f"{', '.join(list(labels.values())[:5])}")
    return found


def trial(found: Inspection, model) -> None:
    """Calls the model on a batch of 2 to learn its output's shape."""
    inputs = tuple(random_input(inp, 2) for inp in found.inputs)
    try:
        with torch.inference_mode():
            output = model(*inputs)
    except Exception as e:  # noqa: BLE001
        raise NewModelError(f"a trial call with inputs {[i['shape'] for i in found.inputs]} "
                            f"failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                            "check --input-shape / --input-dtype") from None
    if not isinstance(output, torch.Tensor):
        raise NewModelError(f"the model returns {type(output).__name__}; the served model must "
                            "return one tensor (wrap it in a module that picks it)")
    found.output_shape = list(output.shape[1:])
    found.learnt.append(f"output shape {['batch', *found.output_shape]} from a trial call")
    if len(found.output_shape) == 1:
        found.num_outputs = found.output_shape[0]


def scaffold_kind(found: Inspection, kind: str | None) -> tuple[str, Scaffold]:
    """The kind the folder is written as (found's, or the one asked for) and what that kind
    writes for this model; the kind itself says when it cannot serve the model."""
    if kind is not None and kind not in KINDS:
        raise NewModelError(f"--kind {kind}: kinds are {', '.join(KINDS)}")
    chosen = kind or found.kind
    model = ModelFile(found.inputs, found.output_shape, found.num_outputs, found.text_settings)
    try:
        return chosen, kind_class(chosen).scaffold(model, EXAMPLES)
    except ValueError as e:
        raise NewModelError(f"--kind {chosen}: {e}") from None


def serving_config(found: Inspection, handler: dict) -> dict:
    most = (found.dynamic.get("batch") or [1, 8])[1]
    return {"minWorkers": 1, "maxWorkers": 1, "batchSize": min(8, most), "maxBatchDelay": 10,
            "responseTimeout": 30, "startupTimeout": 180, "jobQueueSize": 16, "handler": handler}


def create(name: str, source: Path, kind: str | None = None, input_shape: str | None = None,
           input_dtype: str = "float32", models_dir: Path = models.MODELS_DIR,
           force: bool = False) -> tuple[Path, Inspection]:
    if not re.fullmatch(models.NAME_PATTERN, name):
        raise NewModelError(f"{name!r}: a model name is letters, digits, _ and -, starting with a "
                            "letter (it is a URL path: /predictions/NAME)")
    folder = models_dir / name
    if folder.exists() and not force:
        raise NewModelError(f"{folder} exists; pick another name, or --force to overwrite")
    if not source.exists():
        raise NewModelError(f"{source} does not exist")
    if source.is_dir():
        if not (source / "config.json").exists():
            raise NewModelError(f"{source} is a directory without config.json: not a Hugging "
                                "Face model directory")
        found = inspect_huggingface(source)
    elif source.suffix == ".pt2":
        found = inspect_exported(source)
    else:
        found = inspect_torchscript(source, input_shape, input_dtype)
    kind, scaffold = scaffold_kind(found, kind)

    if folder.exists():
        shutil.rmtree(folder)
    (folder / "examples").mkdir(parents=True)
    for file_name, path in found.files.items():
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, folder / file_name)
    examples = [f"{i + 1}{suffix}" for i, (suffix, _) in enumerate(scaffold.examples)]
    for file_name, (_, body) in zip(examples, scaffold.examples):
        (folder / "examples" / file_name).write_bytes(body)
    pattern = f"examples/*{Path(examples[0]).suffix}"
    model_yaml = {"description": f"{name}, from {source.name}", "kind": kind,
                  "source": found.source}
    if found.inputs:
        model_yaml["inputs"] = found.inputs
    if found.dynamic:
        model_yaml["dynamic"] = found.dynamic
    model_yaml["parity"] = {"examples": pattern}
    model_yaml["example"] = {"file": f"examples/{examples[0]}"}
    model_yaml["loadtest"] = {"payloads": pattern, "slo": {"p95_ms": 1000, "p99_ms": 2000,
                                                    "max_error_rate": 0.01}}
    header = (f"# Written by `python -m serving new {name} --from {source.name}`; docs/models.md "
              "describes every field.\n")
    (folder / models.MODEL_YAML).write_text(header + yaml.safe_dump(model_yaml, sort_keys=False))
    (folder / models.SERVING_CONFIG).write_text(
        "# TorchServe's serving config, packed into the .mar; `handler:` goes to the handler.\n" +
        yaml.safe_dump(serving_config(found, scaffold.settings), sort_keys=False,
                       default_flow_style=None))
    found.unknown.extend(scaffold.to_check)
    found.unknown.append("serving settings: batch 8, delay 10 ms, one worker (model-config.yaml)")
    models.ModelSpec.from_folder(folder)  # the folder written is one the build accepts
    return folder, found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving new", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="the model's name: its folder and URL (/predictions/NAME)")
    parser.add_argument("--from", dest="source", required=True, type=Path,
                        help="a TorchScript .pt, a torch.export .pt2 or a Hugging Face directory")
    parser.add_argument("--kind", choices=list(KINDS), help="default: text_* for a Hugging Face "
                        "directory (from its architecture), else tensor")
    parser.add_argument("--input-shape", help="TorchScript: one input's shape without the batch, "
                        "e.g. 1,28,28")
    parser.add_argument("--input-dtype", default="float32", choices=models.DTYPES)
    parser.add_argument("--force", action="store_true", help="replace an existing folder")
    args = parser.parse_args(argv)
    try:
        folder, found = create(args.name, args.source.resolve(), args.kind, args.input_shape,
                               args.input_dtype, force=args.force)
    except (NewModelError, models.ModelFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        if " --" in f" {e}":  # an option to add: how to give it through make as well
            print(f"With make, options go in ARGS: make new NAME={args.name} FROM={args.source} "
                  "ARGS=\"--input-shape ... --kind ...\"", file=sys.stderr)
        return 1
    spec = models.load(args.name) if folder.parent == models.MODELS_DIR else None
    relative = folder.relative_to(Path.cwd()) if folder.is_relative_to(Path.cwd()) else folder
    print(f"Wrote {relative}/: model.yaml, model-config.yaml, examples/ "
          f"({EXAMPLES} example requests), {', '.join(found.files)}")
    print("Learnt from the file:\n" + "".join(f"  - {line}\n" for line in found.learnt), end="")
    print("Could not infer (check these):\n" + "".join(f"  - {line}\n" for line in found.unknown),
          end="")
    file, content_type = spec.example_request if spec else ("examples/1.json", "")
    print(f"Next:\n  make build ARGS={args.name}        # export, parity-check, archive\n"
          f"  make down; make up                  # serve it beside the others (alone: make up MODELS={args.name})\n"
          f"  curl -s http://127.0.0.1:8080/predictions/{args.name} -H \"$AUTH\" "
          f"-H 'Content-Type: {content_type}' --data-binary @{relative}/{file}\n"
          f"  make loadtest ARGS=\"{args.name} -t 10s\"")
    return 0
