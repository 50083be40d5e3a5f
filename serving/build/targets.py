"""Exporting an eager model to a serving target at a precision. Loading is the worker's business
(handlers/artifacts.py), and the build loads every artifact through that same code.

    eager        torch.export program, run op by op: the reference, exported
    torchscript  torch.jit.trace + freeze (+ optimize_for_inference when loaded)
    inductor     torch.export + AOTInductor: compiled ahead of time, nothing compiles in the worker
    neuron       torch_neuronx.trace for Inferentia2/Trainium: fixed shapes, compiled by neuronx-cc
    onnxruntime  torch.onnx (torch.export underneath) into one ONNX file, run by ONNX Runtime on the
                 CPU; int8: ONNX Runtime's dynamic quantization of the MatMuls
"""

from __future__ import annotations

import copy
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from handlers import PRECISIONS
from handlers.artifacts import LOADERS, NEURON_MISSING, ONNXRUNTIME_MISSING
from serving.run.cpu import has_bf16

# The dtype a model's floating-point weights and inputs run in. int8 models take fp32 inputs and
# quantize activations as they run (dynamic quantization of their Linear layers).
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}


class TargetUnavailable(RuntimeError):
    """This target cannot be built here, or for this model; the message says why."""


@dataclass(frozen=True)
class NeuronOptions:
    """How to compile for Inferentia2: shapes are fixed at trace time."""

    batch_size: int | None = None       # default: the model's batchSize
    sequence_length: int = 128          # text models: every request is padded to this
    compiler_args: tuple[str, ...] = ("--auto-cast", "matmult", "--auto-cast-type", "bf16")
    dynamic_batch: bool = False         # torch_neuronx.dynamic_batch: chunk larger batches
    cores: int = 2                      # NeuronCores on the instance: workers never exceed it

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("the Neuron batch size must be at least 1")
        if self.cores < 1:
            raise ValueError("an instance has at least one NeuronCore")
        if self.sequence_length < 2:
            raise ValueError("the Neuron sequence length must be at least 2")


def neuron_available() -> None:
    import importlib.util

    if importlib.util.find_spec("torch_neuronx") is None:
        raise TargetUnavailable(NEURON_MISSING)
    if platform.machine() != "x86_64":
        raise TargetUnavailable("Neuron compiles on x86_64 hosts (inf2/trn1 instances)")


def check_available(target: str, device: str) -> None:
    """Fails at once, before any model is loaded, for a target this machine cannot build."""
    if target in EXPORTERS and EXPORTERS[target].available:
        EXPORTERS[target].available()
    if device == "cuda" and not torch.cuda.is_available():
        raise TargetUnavailable("--device cuda, but torch sees no CUDA device here")


def candidate_precisions(device: str) -> list[str]:
    """Where the CPU has no bf16 arithmetic (AVX2-only x86, Graviton2), int8 is the lower
    precision tried instead."""
    if device == "cuda":
        return ["fp32", "fp16", "bf16"]
    return ["fp32", "bf16"] if has_bf16() else ["fp32", "int8"]


def quantize_int8(model: torch.nn.Module, skip: tuple[str, ...] = ()) -> torch.nn.Module:
    """Dynamic int8 quantization of the Linear layers (weights per output channel, activations
    per batch as they run), except the layers whose names match a glob in `skip`: the layers whose
    error the parity gate does not tolerate (model.yaml build.int8_skip)."""
    import fnmatch

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    chosen = {name: per_channel_dynamic_qconfig for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear)
              and not any(fnmatch.fnmatchcase(name, pattern) for pattern in skip)}
    if not chosen:
        raise TargetUnavailable("int8: the model has no Linear layers to quantize (outside "
                                "build.int8_skip)")
    return quantize_dynamic(model, qconfig_spec=chosen, dtype=torch.qint8)


class Served(torch.nn.Module):
    """The model as it is exported: floating-point inputs cast to the serving precision (and, for
    image models, to channels-last layout), the output always fp32, on `device`. The eager
    reference is copied, never changed: it stays the gates' fp32 reference on the CPU."""

    def __init__(self, model: torch.nn.Module, precision: str, channels_last: bool = False,
                 device: str = "cpu", int8_skip: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.dtype = DTYPES[precision]
        self.channels_last = channels_last
        if precision == "int8" and device != "cpu":
            raise TargetUnavailable("int8 (dynamic quantization) runs on CPUs only")
        if precision != "fp32" or channels_last or device != "cpu":
            model = copy.deepcopy(model).to(device=device, dtype=self.dtype)
        if precision == "int8":
            model = quantize_int8(model, int8_skip)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        cast = []
        for x in inputs:
            if x.is_floating_point():
                x = x.to(self.dtype)
                if self.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
            cast.append(x)
        return self.model(*cast).float()


def export_program(served: torch.nn.Module, example: tuple, dims: tuple, ranges: dict):
    """torch.export with the model's dynamic dimensions (batch, sequence) declared."""
    named = {name: torch.export.Dim(name, min=low, max=high) for name, (low, high) in ranges.items()}
    shapes = tuple({i: named[d] for i, d in enumerate(input_dims) if d} for input_dims in dims)
    try:
        with torch.no_grad():
            return torch.export.export(served, example, dynamic_shapes=(shapes,))
    except Exception as e:  # noqa: BLE001 - any failure means: not exportable, and why
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TargetUnavailable(f"torch.export cannot capture this model: {reason}") from e


@dataclass(frozen=True)
class Export:
    """One candidate's export: the model as served, an example batch, and where to write."""

    served: torch.nn.Module
    example: tuple
    dims: tuple
    ranges: dict
    path: Path
    neuron: NeuronOptions
    precision: str = "fp32"


def export_eager(job: Export) -> None:
    torch.export.save(export_program(job.served, job.example, job.dims, job.ranges), str(job.path))


def export_torchscript(job: Export) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(job.served, job.example, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
    torch.jit.save(frozen, str(job.path))


def export_inductor(job: Export) -> None:
    program = export_program(job.served, job.example, job.dims, job.ranges)
    # freezing folds weights into the compiled code (constant folding, prepacked layouts).
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=str(job.path),
                                                 inductor_configs={"freezing": True})
    except Exception as e:  # noqa: BLE001
        raise TargetUnavailable(f"AOTInductor could not compile the exported program: {e}") from e


def onnxruntime_available() -> None:
    import importlib.util

    missing = [m for m in ("onnxruntime", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise TargetUnavailable(f"{ONNXRUNTIME_MISSING} (missing here: {', '.join(missing)}; "
                                "onnx and onnxscript export, from requirements.txt)")


def export_onnxruntime(job: Export) -> None:
    """The exported program (its dynamic dimensions declared) through torch.onnx into one file:
    the archive holds one serialized file, so no external data. int8: ONNX Runtime's dynamic
    quantization of the MatMuls' weights (per output channel; activations per batch as they run),
    the fp32 graph's weights as int8."""
    program = export_program(job.served, job.example, job.dims, job.ranges)
    fp32 = job.path if job.precision == "fp32" else job.path.with_name("fp32.onnx")
    try:
        torch.onnx.export(program, job.example, str(fp32), dynamo=True, external_data=False,
                          optimize=True)
    except Exception as e:  # noqa: BLE001 - any failure means: not exportable, and why
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TargetUnavailable(f"torch.onnx cannot export this model: {reason}") from e
    if job.precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(job.path), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])


@dataclass(frozen=True)
class Exporter:
    export: Callable[[Export], None]
    compiler_casts: bool = False  # its compiler picks precisions (neuron --auto-cast): fp32 in
    # int8: "torch" captures torch's dynamically quantized Linear layers (torch.export does not);
    # "own" quantizes its own fp32 artifact, and is tried on every CPU (it has no bf16)
    int8: str = ""
    available: Callable[[], None] | None = None  # raises TargetUnavailable where it cannot build
    precisions: tuple[str, ...] = PRECISIONS


# One row per target; the worker's side of each (file, loading, compatibility) is
# handlers.artifacts.LOADERS.
EXPORTERS = {
    "eager": Exporter(export_eager),
    "torchscript": Exporter(export_torchscript, int8="torch"),
    "inductor": Exporter(export_inductor),
    "neuron": Exporter(lambda job: export_neuron(job.served, job.example, job.path, job.neuron),
                       compiler_casts=True, available=neuron_available),
    "onnxruntime": Exporter(export_onnxruntime, int8="own", available=onnxruntime_available,
                            precisions=("fp32", "int8")),
}


def export(target: str, model: torch.nn.Module, precision: str, example: tuple, dims: tuple,
           ranges: dict, out_dir: Path, device: str = "cpu",
           neuron: NeuronOptions | None = None, channels_last: bool = False,
           int8_skip: tuple[str, ...] = ()) -> Path:
    """Writes the artifact for `target` into out_dir; returns its path."""
    if target not in EXPORTERS:
        raise ValueError(f"unknown target {target!r}; targets: {', '.join(EXPORTERS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; precisions: {', '.join(PRECISIONS)}")
    if precision == "fp16" and device != "cuda":
        raise TargetUnavailable("fp16 is for GPUs; on CPUs use bf16")
    exporter = EXPORTERS[target]
    if precision not in exporter.precisions:
        raise TargetUnavailable(f"{target} builds {' and '.join(exporter.precisions)}, not "
                                f"{precision}")
    if precision == "int8" and not exporter.int8:
        raise TargetUnavailable(f"int8 is built as torchscript or onnxruntime; {target} cannot "
                                "capture dynamically quantized layers")
    if device != "cpu" and LOADERS[target].cpu_only:
        raise TargetUnavailable(f"{target} runs on the CPU only")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOADERS[target].file
    # An exporter that quantizes its own artifact is given the fp32 model.
    served = Served(model, "fp32" if exporter.int8 == "own" else precision, channels_last, device,
                    int8_skip).eval()
    exporter.export(Export(served, tuple(x.to(device) for x in example), dims, ranges, path,
                           neuron or NeuronOptions(), precision))
    return path


def export_neuron(served: torch.nn.Module, example: tuple, path: Path,
                  options: NeuronOptions) -> Path:
    if platform.machine() != "x86_64":
        raise TargetUnavailable("Neuron compiles on x86_64 hosts (inf2/trn1 instances)")
    try:
        import torch_neuronx
    except ImportError:
        raise TargetUnavailable(NEURON_MISSING) from None
    traced = torch_neuronx.trace(served, example, compiler_args=list(options.compiler_args),
                                 compiler_workdir=str(path.parent / "neuron-workdir"))
    if options.dynamic_batch:
        traced = torch_neuronx.dynamic_batch(traced)
    torch.jit.save(traced, str(path))
    return path


def neuron_serving_config(config: dict, options: NeuronOptions, text: bool) -> dict:
    """model-config.yaml for a Neuron archive: no more workers than NeuronCores, and the handler
    pads every batch (and, for text, every sequence) to the traced shape and slices back."""
    config = copy.deepcopy(config)
    batch = options.batch_size or int(config.get("batchSize", 1))
    config["minWorkers"] = min(int(config.get("minWorkers", 1)), options.cores)
    config["maxWorkers"] = min(int(config.get("maxWorkers", 1)), options.cores)
    handler = config.setdefault("handler", {})
    if not options.dynamic_batch:
        config["batchSize"] = batch
        handler["batch_buckets"] = [batch]
    if text:
        handler["sequence_buckets"] = [options.sequence_length]
        handler["max_tokens"] = min(int(handler.get("max_tokens", options.sequence_length)),
                                    options.sequence_length)
    return config


def fit_sequence(inputs: tuple, dims: tuple, length: int) -> tuple:
    """Pads (with zeros: padding tokens, masked out) or cuts every "seq" dimension to `length`."""
    fitted = []
    for x, input_dims in zip(inputs, dims):
        for axis, name in enumerate(input_dims):
            if name == "seq":
                if x.shape[axis] > length:
                    x = x.narrow(axis, 0, length)
                elif x.shape[axis] < length:
                    pad = list(x.shape)
                    pad[axis] = length - x.shape[axis]
                    x = torch.cat([x, x.new_zeros(pad)], dim=axis)
        fitted.append(x)
    return tuple(fitted)


class FixedShape:
    """Runs a fixed-shape artifact (Neuron) on any batch, as the handler does: rows padded with
    copies of the last one up to the traced batch, sequences padded to the traced length, and the
    padding rows' outputs dropped."""

    def __init__(self, model, dims: tuple, batch: int, length: int | None = None) -> None:
        self.model, self.dims, self.batch, self.length = model, dims, batch, length

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.length is not None:
            inputs = fit_sequence(inputs, self.dims, self.length)
        outputs = []
        for start in range(0, inputs[0].shape[0], self.batch):
            chunk = [x[start:start + self.batch] for x in inputs]
            rows = chunk[0].shape[0]
            chunk = [torch.cat([x, x[-1:].expand(self.batch - rows, *x.shape[1:])]) for x in chunk]
            outputs.append(self.model(*chunk)[:rows])
        return torch.cat(outputs)
