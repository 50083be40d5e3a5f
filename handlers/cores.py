"""The CPU cores shared by every worker process of one server, split by the load actually present.

A fixed split (cores / all workers) leaves a busy model on one thread while the server's other
models sit idle: on 2 cores with three models, every worker ran single-threaded. A worker that
runs more threads than its share of the cores is worse: OpenMP threads wait at each barrier for a
thread the OS has descheduled, and throughput falls several times. So each worker, before it runs
a batch, marks itself busy in a small file all workers of the server map (one slot per worker:
its pid and a busy flag) and takes cores / busy workers threads, at most its own maximum.

The launcher (serving.run.torchserve) names the file in SERVING_CORE_SHARE; without it (in-process
use, tests) the worker keeps a fixed number of threads.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import struct
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SHARE_ENV = "SERVING_CORE_SHARE"
SLOTS = 256
SLOT = struct.Struct("<iI")  # pid, busy


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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

    def threads_now(self) -> int:
        if self.max_threads == 1:  # nothing to decide (the others still see this one busy)
            return 1
        busy = max(1, self.busy_workers())
        return max(1, min(self.max_threads, self.cores // busy))

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
            threads = self.threads_now()
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
            yield
        finally:
            SLOT.pack_into(self.map, offset, self.pid, 0)
