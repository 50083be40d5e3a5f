"""Loading an exported model inside a worker, and refusing one built for another machine.

build-info.json, written by the build into every archive, says what the artifact is:

    target     eager (a torch.export program, run op by op) | torchscript | inductor (an
               AOTInductor package: compiled C++) | neuron (torch_neuronx: TorchScript with a NEFF)
    precision  fp32 | bf16 | fp16
    device     cpu | cuda, where an inductor artifact was compiled for
    torch      the torch version it was built with
    arch       the CPU architecture it was built on (platform.machine())
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from handlers import TARGETS
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


def check_compatible(info: dict, device: torch.device) -> None:
    """Raises IncompatibleArtifact, saying what to do, when this worker cannot run the artifact."""
    target, built_torch, built_arch = info.get("target"), info.get("torch", "?"), info.get("arch", "?")
    here = f"this worker runs torch {torch.__version__} on {platform.machine()}"
    rebuild = "rebuild the archive on the machine that serves it (make build)"
    if target not in TARGETS:
        raise IncompatibleArtifact(f"unknown target {target!r} in build-info.json")
    if target in ("inductor", "neuron") and built_arch != platform.machine():
        raise IncompatibleArtifact(f"the {target} artifact was compiled for {built_arch}; {here}: "
                                   f"{rebuild}")
    if target == "inductor" and release(built_torch) != release(torch.__version__):
        raise IncompatibleArtifact(f"the inductor artifact was compiled with torch {built_torch}, "
                                   f"whose compiled code only that version runs; {here}: {rebuild}")
    if target in ("eager", "torchscript") and \
            release(built_torch).split(".")[:2] != release(torch.__version__).split(".")[:2]:
        raise IncompatibleArtifact(f"the {target} artifact was saved with torch {built_torch}; "
                                   f"{here}: {rebuild}")
    if target == "inductor" and info.get("device", "cpu") == "cuda" and device.type != "cuda":
        raise IncompatibleArtifact(f"the inductor artifact was compiled for CUDA and this worker "
                                   f"has no GPU: {rebuild}, or serve it with deviceType gpu")
    if target == "neuron":
        # One NeuronCore per worker: the runtime hands each process the next free core. Set
        # before torch_neuronx starts the runtime.
        os.environ.setdefault("NEURON_RT_NUM_CORES", "1")
        try:
            import torch_neuronx  # noqa: F401 - registers the Neuron ops TorchScript needs
        except ImportError:
            raise IncompatibleArtifact(NEURON_MISSING) from None


def artifact_device(info: dict, device: torch.device) -> torch.device:
    """Where the artifact runs: compiled CPU code stays on the CPU whatever the worker has."""
    if info.get("target") in ("inductor", "neuron") and info.get("device", "cpu") == "cpu":
        return torch.device("cpu")
    return device


def load(model_dir: Path, serialized_file: str, info: dict, device: torch.device):
    """The artifact as a callable taking and returning tensors."""
    check_compatible(info, device)
    path = str(model_dir / serialized_file)
    target = info["target"]
    if target == "inductor":
        return torch._inductor.aoti_load_package(path)
    if target == "eager":
        return torch.export.load(path).module().to(device)
    if target == "neuron":
        return torch.jit.load(path)
    # optimize_for_inference (oneDNN layouts, fused conv/bn/relu) makes modules that cannot be
    # saved, so it runs here, at load, on the frozen module the build saved.
    return torch.jit.optimize_for_inference(torch.jit.load(path, map_location=device).eval())
