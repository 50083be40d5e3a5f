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


# Bits of the auxiliary vector's AT_HWCAP (16) and AT_HWCAP2 (26) on arm64 (asm/hwcap.h): the
# kernel prints /proc/cpuinfo's "Features" from the same bits.
ARM64_HWCAPS = {(16, 22): "sve", (26, 1): "sve2", (26, 13): "i8mm", (26, 14): "bf16"}


def arm64_hwcap_flags() -> set[str]:
    """The Arm features this process may use, from the auxiliary vector. Under qemu-user the
    emulated CPU's (QEMU_CPU); /proc/cpuinfo there is the x86 host's, whose flags mean nothing to
    an arm64 process."""
    import ctypes

    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype = ctypes.c_ulong
    words = {kind: getauxval(kind) for kind in (16, 26)}
    return {name for (kind, bit), name in ARM64_HWCAPS.items() if words[kind] >> bit & 1}


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    if cpuinfo is None:
        if platform.machine() == "aarch64":
            return arm64_hwcap_flags()
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
    if platform.machine() == "aarch64":
        parts = sorted({line.partition(":")[2].strip() for line in cpuinfo.splitlines()
                        if line.startswith("CPU part")})
        # No "CPU part" on arm64 means qemu-user, showing the host's /proc/cpuinfo.
        names = [f"Arm CPU part {', '.join(parts)}" if parts else
                 f"aarch64 emulated by qemu on {names[0] if names else 'another architecture'}"]
        flags = cpu_flags()
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


# HotSpot's JIT compiler threads, as the kernel names them (15 characters: "C2 CompilerThre").
JIT_THREAD_PREFIXES = ("C1 CompilerThre", "C2 CompilerThre")


def jit_threads(pid: int) -> list[int]:
    """The thread ids of a JVM's JIT compiler threads."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            if (task / "comm").read_text().startswith(JIT_THREAD_PREFIXES):
                found.append(int(task.name))
        except (OSError, ValueError):
            pass  # a thread that ended while we looked
    return sorted(found)


def idle_jit_threads(pid: int) -> list[int]:
    """Puts a JVM's JIT compiler threads on SCHED_IDLE: they run on CPU time nothing else wants.

    TorchServe's frontend compiles its hot paths with C2 for minutes under load (0.04-0.1 of a
    core in bursts of tens of ms); a burst on a worker's core preempts one of its OpenMP threads,
    and the other waits for it at every barrier, so the batch in flight takes 2-3x as long. With
    the compiler threads idle-only, MiniLM's batch time p99 went from 2.1x its median to 1.4x on
    2 cores (docs/performance.md). config.properties's vmargs start every compiler thread with
    the JVM (-XX:-UseDynamicNumberOfCompilerThreads), so none appears later at normal priority.
    Returns the threads changed; an unprivileged process may do this to its own user's threads."""
    changed = []
    for tid in jit_threads(pid):
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            changed.append(tid)
        except OSError:
            pass  # gone, or not ours to change: the frontend still serves, only less smoothly
    return changed
