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
              log: Path | None = None, gave_up: str | None = None) -> None:
    """Until `url` answers 200 (a server started by us coming up), or StartFailed: at once when
    `server` (the process started) has exited, or `log` holds the line `gave_up`, not after the
    whole timeout. The failure quotes the end of `log`, so that CI's output says why."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server is not None and exited(server):
            raise StartFailed(f"the server for {url} exited before it answered{log_end(log)}")
        if gave_up and log and gave_up in log.read_text(errors="replace"):
            raise StartFailed(f"the server for {url} gave up: {gave_up!r}{log_end(log)}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise StartFailed(f"{url} did not answer 200 within {timeout:.0f}s{log_end(log)}")


def log_end(log: Path | None, lines: int = 12) -> str:
    """"; its log: PATH", then the log's last lines (those that are not blank), indented."""
    if log is None:
        return ""
    try:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        tail = []
    return f"; its log: {log}" + "".join(f"\n    {line[:300]}" for line in tail[-lines:])
