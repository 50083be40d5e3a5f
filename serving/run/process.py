"""Processes this project starts, found again through their pid files, and stopped with their
children. A pid is only trusted when the process's command line names what we started it with,
so a stale pid reused by another program is never signalled."""

from __future__ import annotations

import signal
import time
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


def wait_http(url: str, timeout: float = 180) -> None:
    """Until `url` answers 200 (a server started by us coming up), or RuntimeError."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f}s")
