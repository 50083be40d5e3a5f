"""Loading an exported model inside a worker, and refusing one built for another machine.

build-info.json, written by the build into every archive, says what the artifact is:

    target     eager (a torch.export program, run op by op) | torchscript | inductor (an
               AOTInductor package: compiled C++) | neuron (torch_neuronx: TorchScript with a NEFF)
               | onnxruntime (an ONNX graph run by ONNX Runtime on the CPU)
    precision  fp32 | bf16 | fp16 | int8
    device     cpu | cuda, where an inductor artifact was compiled for
    torch      the torch version it was built with
    arch       the CPU architecture it was built on (platform.machine())
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

NEURON_MISSING = (
    "the neuron target needs torch-neuronx, which is not installed. It is not on PyPI (only a "
    "placeholder is); on an Inferentia2/Trainium instance with the Neuron driver and runtime, "
    "install it from the Neuron repository: pip install torch-neuronx neuronx-cc "
    "--extra-index-url=https://pip.repos.neuron.amazonaws.com")


class IncompatibleArtifact(RuntimeError):
    pass


def release(version: str) -> str:
    """'2.13.0+cpu' -> '2.13.0': local build tags do not change compatibility."""
    return version.split("+")[0]


def load_exported(path: str, device: torch.device):
    return torch.export.load(path).module().to(device)


def load_torchscript(path: str, device: torch.device):
    # optimize_for_inference (oneDNN layouts, fused conv/bn/relu) makes modules that cannot be
    # saved, so it runs here, at load, on the frozen module the build saved.
    return torch.jit.optimize_for_inference(torch.jit.load(path, map_location=device).eval())


def load_inductor(path: str, device: torch.device):
    return torch._inductor.aoti_load_package(path)


ONNXRUNTIME_MISSING = ("the onnxruntime target needs ONNX Runtime, which is not installed: "
                       "pip install -r requirements-serve.txt")


class OnnxRuntimeModel:
    """An ONNX Runtime session called as the other artifacts are: tensors in, a tensor out."""

    def __init__(self, path: str, threads: int | None = None) -> None:
        import onnxruntime

        self.path = path
        # The worker's share of the cores, set before loading (handlers/base.py); ORT fixes its
        # pool at creation. Its threads spin between calls by default, taking the cores that the
        # other worker, the frontend and decoding need on a small machine: off.
        self.threads = threads or torch.get_num_threads()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(path, options,
                                                    providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.sessions = {self.threads: self.session}

    def with_threads(self, threads: int) -> "OnnxRuntimeModel":
        """The same graph on a pool of `threads` (its size is fixed when a session starts)."""
        return self if threads == self.threads else OnnxRuntimeModel(self.path, threads)

    def add_pools(self, thread_counts) -> None:
        """A session per thread count, each call taking the one for torch's thread count then: the
        cores shared among busy workers (handlers/cores.py) change that count per batch, and a
        session's pool cannot. Made at load, not on first use (a session takes 0.1-1 s to start);
        each holds its own copy of the weights."""
        for threads in thread_counts:
            if threads not in self.sessions:
                self.sessions[threads] = self.with_threads(threads).session

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feed = {name: x.detach().cpu().numpy() for name, x in zip(self.inputs, inputs)}
        session = self.sessions.get(torch.get_num_threads(), self.session)
        return torch.from_numpy(session.run(None, feed)[0])


def load_onnxruntime(path: str, device: torch.device):
    return OnnxRuntimeModel(path)


def prepare_onnxruntime() -> None:
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        raise IncompatibleArtifact(ONNXRUNTIME_MISSING)


def load_neuron(path: str, device: torch.device):
    return torch.jit.load(path)


def prepare_neuron() -> None:
    # One NeuronCore per worker: the runtime hands each process the next free core. Set before
    # torch_neuronx starts the runtime.
    os.environ.setdefault("NEURON_RT_NUM_CORES", "1")
    try:
        import torch_neuronx  # noqa: F401 - registers the Neuron ops TorchScript needs
    except ImportError:
        raise IncompatibleArtifact(NEURON_MISSING) from None


@dataclass(frozen=True)
class Loader:
    """What a worker needs to know about a target's artifact; the build's exporters
    (serving/build/targets.py) write the file named here."""

    file: str
    load: Callable[[str, torch.device], Any]
    compiled: bool = False      # machine code: runs only on the architecture it was built on
    same_torch: str = "minor"   # "release": only the torch release that compiled it runs it;
                                # "any": a file torch does not load (ONNX)
    fixed_shapes: bool = False  # traced at one batch (and sequence) size: batches are padded to it
    prepare: Callable[[], None] | None = None  # before loading (runtime set-up, imports)
    cpu_only: bool = False      # runs on the CPU whatever device the worker has


LOADERS = {
    "eager": Loader("model.pt2", load_exported),
    "torchscript": Loader("model.pt", load_torchscript),
    "inductor": Loader("model.pt2", load_inductor, compiled=True, same_torch="release"),
    "neuron": Loader("model.neuron.pt", load_neuron, compiled=True, fixed_shapes=True,
                     prepare=prepare_neuron),
    "onnxruntime": Loader("model.onnx", load_onnxruntime, same_torch="any", cpu_only=True,
                          prepare=prepare_onnxruntime),
}


def check_compatible(info: dict, device: torch.device) -> None:
    """Raises IncompatibleArtifact, saying what to do, when this worker cannot run the artifact."""
    target, built_torch, built_arch = info.get("target"), info.get("torch", "?"), info.get("arch", "?")
    here = f"this worker runs torch {torch.__version__} on {platform.machine()}"
    rebuild = "rebuild the archive on the machine that serves it (make build)"
    loader = LOADERS.get(target)
    if loader is None:
        raise IncompatibleArtifact(f"unknown target {target!r} in build-info.json")
    if loader.compiled and built_arch != platform.machine():
        raise IncompatibleArtifact(f"the {target} artifact was compiled for {built_arch}; {here}: "
                                   f"{rebuild}")
    if loader.same_torch == "release" and release(built_torch) != release(torch.__version__):
        raise IncompatibleArtifact(f"the {target} artifact was compiled with torch {built_torch}, "
                                   f"whose compiled code only that version runs; {here}: {rebuild}")
    if loader.same_torch == "minor" and \
            release(built_torch).split(".")[:2] != release(torch.__version__).split(".")[:2]:
        raise IncompatibleArtifact(f"the {target} artifact was saved with torch {built_torch}; "
                                   f"{here}: {rebuild}")
    if loader.compiled and info.get("device", "cpu") == "cuda" and device.type != "cuda":
        raise IncompatibleArtifact(f"the {target} artifact was compiled for CUDA and this worker "
                                   f"has no GPU: {rebuild}, or serve it with deviceType gpu")
    if loader.prepare:
        loader.prepare()


def artifact_device(info: dict, device: torch.device) -> torch.device:
    """Where the artifact runs: compiled CPU code stays on the CPU whatever the worker has."""
    loader = LOADERS[info["target"]]
    if loader.cpu_only or (loader.compiled and info.get("device", "cpu") == "cpu"):
        return torch.device("cpu")
    return device


class ArtifactLoadError(RuntimeError):
    """The archive's model file is there but does not load."""


def load(model_dir: Path, serialized_file: str, info: dict, device: torch.device):
    """The artifact as a callable taking and returning tensors. A file that does not load (cut
    short, overwritten, from another tool) raises ArtifactLoadError naming it, for the model log."""
    check_compatible(info, device)
    if device.type == "cuda" and info.get("precision") == "fp32":
        # fp32 on a GPU means fp32: PyTorch lets cuDNN run fp32 convolutions in TF32 by default,
        # which failed EfficientNet's fp32 gate on an H200 (relative error 0.002 against 1e-4).
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return LOADERS[info["target"]].load(str(model_dir / serialized_file), device)
    except Exception as e:  # noqa: BLE001 - whatever the loader raises, say which file failed
        raise ArtifactLoadError(f"cannot load {serialized_file} ({info['target']}/"
                                f"{info.get('precision', '?')} artifact): {type(e).__name__}: "
                                f"{str(e)[:300]}; rebuild the archive (make build)") from e
