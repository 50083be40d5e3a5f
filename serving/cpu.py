"""What the CPU can do, and the environment TorchServe's workers get for it.

On AWS Graviton (aarch64) the settings AWS recommends for PyTorch inference: oneDNN's bf16 fast
math where the CPU has bf16 (Graviton3 and later), a larger primitive cache, transparent huge
pages for tensor memory. On every CPU: OpenMP threads = cores / worker processes, since more
threads than cores cost far more than they give.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 and Arm spell it differently
            flags.update(value.split())
    return flags


def cpu_name() -> str:
    """The CPU's model name and the features that decide speed here, for every reported figure:
    machines change between sessions and a figure means little without its CPU."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    names = [line.partition(":")[2].strip() for line in cpuinfo.splitlines()
             if line.startswith("model name")]
    flags = cpu_flags(cpuinfo)
    features = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "bf16", "sve") if f in flags]
    return f"{names[0] if names else platform.machine()}, {os.cpu_count()} cores, " \
        f"{' '.join(features) or 'no AVX2'}"


def has_bf16(flags: set[str] | None = None) -> bool:
    """Native bf16 arithmetic: AVX-512 BF16 or AMX on x86, the BF16 extension on Arm (Graviton3)."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def worker_environment(machine: str | None = None, flags: set[str] | None = None,
                       cores: int | None = None, workers: int = 1) -> dict[str, str]:
    machine = machine or platform.machine()
    flags = cpu_flags() if flags is None else flags
    cores = cores or os.cpu_count() or 1
    env = {"OMP_NUM_THREADS": str(max(1, cores // max(1, workers)))}
    if machine in ("aarch64", "arm64"):
        env["LRU_CACHE_CAPACITY"] = "1024"
        env["THP_MEM_ALLOC_ENABLE"] = "1"
        if has_bf16(flags):
            env["DNNL_DEFAULT_FPMATH_MODE"] = "BF16"
    return env
