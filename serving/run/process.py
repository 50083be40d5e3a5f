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


class StartFailed(RuntimeError):
    """A server we started did not come up: it exited, or did not answer in time."""


def exited(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE  # ours, not yet waited for
    except psutil.NoSuchProcess:
        return True


def wait_http(url: str, timeout: float = 180, server: psutil.Process | None = None,
              log: Path | None = None) -> None:
    """Until `url` answers 200 (a server started by us coming up), or StartFailed: at once when
    `server` (the process started) has exited, not after the whole timeout."""
    import requests

    where = f"; its log: {log}" if log else ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server is not None and exited(server):
            raise StartFailed(f"the server for {url} exited before it answered{where}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise StartFailed(f"{url} did not answer 200 within {timeout:.0f}s{where}")
