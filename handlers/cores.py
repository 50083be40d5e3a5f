"""The CPU cores shared by every worker process of one server, split by the load actually present.

A fixed split (cores / all workers) leaves a busy model on one thread while the server's other
models sit idle: on 2 cores with three models, every worker ran single-threaded. A worker that
runs more threads than its share of the cores is worse: OpenMP threads wait at each barrier for a
thread the OS has descheduled, and throughput falls several times. So each worker, before it runs
a batch, marks itself busy in a small file all workers of the server map (one slot per worker:
its pid and a busy flag) and takes cores / busy workers threads, at most its own maximum.

The launcher (serving.run.torchserve) names the file in SERVING_CORE_SHARE; without it (in-process
use, tests) the worker keeps a fixed number of threads.

Sharing is the default because it serves the most. Where one model's latency must not depend on
another's load, SERVING_CPUS places models on CPUs of their own ("digits=0 a,b=1"):
on two shared cores no scheduling priority kept a cheap model's p99 within 2x while two others
were saturated (docs/limits.md, "One model beside another"); only a core of its own did.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import struct
from contextlib import contextmanager
from pathlib import Path

# torch is imported where threads are read or set, not here: the launcher and the health check
# (`python -m serving ready`, every 10 s in each container) read the placement from this module,
# and torch's import costs them 2.4 s of a core natively and over 10 s under arm64 emulation.

log = logging.getLogger(__name__)

SHARE_ENV = "SERVING_CORE_SHARE"
PLACEMENT_ENV = "SERVING_CPUS"
SLOTS = 256
SLOT = struct.Struct("<iI")  # pid, busy


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_list(text: str) -> frozenset[int]:
    """A CPU list as taskset and cpusets write it: "1", "0-3", "0,2-3"."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{text!r} is not a CPU list (e.g. 1, 0-3, 0,2-3)")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise ValueError(f"{text!r}: the range {part.strip()} runs backwards")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def placement(spec: str, available: set[int] | None = None) -> dict[str, frozenset[int]]:
    """SERVING_CPUS ("digits=0 efficientnet_lite0,minilm=1"): the CPUs each named model's workers
    run on. Models not named run anywhere. Raises ValueError saying what is wrong, CPUs this
    process cannot run on included (a placement on missing CPUs would silently not isolate)."""
    available = available if available is not None else os.sched_getaffinity(0)
    placed: dict[str, frozenset[int]] = {}
    for entry in spec.split():
        names, equals, cpus_text = entry.partition("=")
        if not equals or not names:
            raise ValueError(f"{entry!r} is not MODEL[,MODEL...]=CPUS (e.g. digits=0)")
        cpus = cpu_list(cpus_text)
        if missing := sorted(cpus - set(available)):
            raise ValueError(f"{entry!r}: no CPU {', '.join(map(str, missing))} here "
                             f"(this machine runs on {sorted(available)})")
        for name in names.split(","):
            if name in placed:
                raise ValueError(f"{name} is placed twice in {spec!r}")
            placed[name] = cpus
    return placed


def pin_to(cpus: frozenset[int]) -> None:
    """Every thread of this process on `cpus` (sched_setaffinity takes one thread; the threads
    torch has already started would stay anywhere), and the threads started later inherit it."""
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


def place_worker(model: str) -> frozenset[int] | None:
    """Puts this worker on its model's CPUs if SERVING_CPUS names it; the CPUs, or None."""
    cpus = placement(os.environ.get(PLACEMENT_ENV, "")).get(model)
    if cpus:
        pin_to(cpus)
    return cpus


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CoreShare:
    """One worker's view of the shared file. `max_threads` caps what this worker ever takes."""

    def __init__(self, path: Path | None, max_threads: int, cores: int | None = None,
                 pid: int | None = None) -> None:
        self.cores = cores or available_cores()
        self.max_threads = max(1, min(max_threads, self.cores))
        self.pid = pid or os.getpid()
        self.map = None
        self.slot = -1
        if path is not None:
            try:
                self.map = self._open(Path(path))
            except OSError as e:  # e.g. a read-only folder: a fixed split, said in the log
                log.warning("cannot share the cores through %s (%s); using a fixed split", path, e)
                return
            self.slot = self._claim()

    @classmethod
    def from_env(cls, max_threads: int) -> "CoreShare":
        path = os.environ.get(SHARE_ENV)
        return cls(Path(path) if path else None, max_threads)

    @property
    def shared(self) -> bool:
        return self.map is not None

    def _open(self, path: Path) -> mmap.mmap:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size < SLOTS * SLOT.size:
                os.ftruncate(fd, SLOTS * SLOT.size)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return mmap.mmap(fd, SLOTS * SLOT.size)
        finally:
            os.close(fd)

    def _claim(self) -> int:
        """A slot of its own: a free one, or one whose worker has died."""
        for i in range(SLOTS):
            pid, _ = SLOT.unpack_from(self.map, i * SLOT.size)
            if pid == 0 or pid == self.pid or not alive(pid):
                SLOT.pack_into(self.map, i * SLOT.size, self.pid, 0)
                # Another worker may have taken the same slot in between: read it back.
                if SLOT.unpack_from(self.map, i * SLOT.size)[0] == self.pid:
                    return i
        return -1  # more workers than slots: this one keeps a fixed share

    def busy_workers(self) -> int:
        """Workers marked busy whose process still lives (a worker killed mid-batch is not)."""
        return sum(1 for pid, busy in SLOT.iter_unpack(self.map)
                   if busy and pid and (pid == self.pid or alive(pid)))

    def threads_when(self, busy: int) -> int:
        return max(1, min(self.max_threads, self.cores // max(1, busy)))

    def threads_now(self) -> int:
        if self.max_threads == 1:  # nothing to decide (the others still see this one busy)
            return 1
        return self.threads_when(self.busy_workers())

    def thread_counts(self, workers: int) -> list[int]:
        """Every thread count this worker may be given while up to `workers` are busy."""
        if not self.shared:
            import torch
            return [torch.get_num_threads()]
        return sorted({self.threads_when(busy) for busy in range(1, max(1, workers) + 1)})

    @contextmanager
    def running(self):
        """Marks this worker busy while the block runs, with its share of the cores as torch's
        thread count."""
        if self.slot < 0:
            yield
            return
        offset = self.slot * SLOT.size
        SLOT.pack_into(self.map, offset, self.pid, 1)
        try:
            import torch
            threads = self.threads_now()
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
            yield
        finally:
            SLOT.pack_into(self.map, offset, self.pid, 0)
