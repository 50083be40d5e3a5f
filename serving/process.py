"""Processes this project starts, found again through their pid files, and stopped with their
children. A pid is only trusted when the process's command line names what we started it with,
so a stale pid reused by another program is never signalled."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil


def owned_process(pid_file: Path, *markers: str) -> psutil.Process | None:
    try:
        proc = psutil.Process(int(pid_file.read_text().split()[0]))
        cmdline = proc.cmdline()
    except (FileNotFoundError, ValueError, IndexError, psutil.Error):
        return None
    return proc if all(m in cmdline for m in markers) else None


def stop_tree(proc: psutil.Process, timeout: float = 30) -> None:
    """SIGTERM, a grace period, then SIGKILL for the process and whatever it started."""
    try:
        family = [proc, *proc.children(recursive=True)]
        proc.send_signal(signal.SIGTERM)
    except psutil.NoSuchProcess:
        return
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for leftover in alive:
        try:
            leftover.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
