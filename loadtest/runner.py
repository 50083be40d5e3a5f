"""Running Locust as a subprocess, shared by every load-test command: one way to start it, one
set of arguments for runs that only measure (no SLO gate, no metrics linger), one capacity probe."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from serving.run.paths import ROOT
from serving.run.prometheus import LOADTEST_METRICS_PORT
from serving.run.torchserve import Instance

from loadtest import KEY_ENV, user_class_name

HERE = Path(__file__).resolve().parent
SHAPES = {"constant": None, "step_ramp": HERE / "shapes" / "step_ramp.py",
          "spike": HERE / "shapes" / "spike.py"}


def locust(out: Path, host: str, users: int, spawn_rate: float, duration: str, classes: list[str],
           shape: str = "constant", processes: int = 0, metrics_port: int = LOADTEST_METRICS_PORT,
           extra: list[str] = (), metrics_host: str = "127.0.0.1",
           key_file: str | None = None, log: Path | None = None) -> int:
    """Runs Locust headless; its output goes to ours, or to `log` (runs that only measure)."""
    files = [str(HERE / "locustfile.py")] + ([str(SHAPES[shape])] if SHAPES[shape] else [])
    command = [sys.executable, "-m", "locust", "-f", ",".join(files), "--headless",
               "-u", str(users), "-r", str(spawn_rate), "-t", duration, "-H", host,
               "--csv", str(out / "locust"), "--html", str(out / "locust.html"),
               "--slo-report", str(out / "slo.json"), "--metrics-port", str(metrics_port),
               "--metrics-host", metrics_host,
               "--stop-timeout", "10", *(["--processes", str(processes)] if processes else []),
               *extra, *classes]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if key_file:  # the server's inference key, for every Locust process
        env[KEY_ENV] = inference_key(key_file)
    if log is None:
        return subprocess.call(command, cwd=ROOT, env=env)
    with open(log, "ab") as out:
        return subprocess.call(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def instance_of(key_file: str | None) -> Instance:
    """The server whose key_file.json this is, or `make up`'s server."""
    return Instance(run_dir=Path(key_file).parent) if key_file else Instance.from_config()


def inference_key(key_file: str | None) -> str:
    return instance_of(key_file).keys().get("inference", "")


# For runs that only measure: no objectives to break, no wait for a last scrape, a short summary.
MEASURE_ONLY = ["--slo-min-rps=0", "--slo-p95-ms=1e9", "--slo-p99-ms=1e9", "--slo-max-error-rate=1",
                "--metrics-linger=0", "--only-summary"]


def stats(out: Path) -> dict[str, dict]:
    """Locust's final statistics of a run, by request name ("Aggregated" for all)."""
    with open(out / "locust_stats.csv") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def closed_loop(model: str, host: str, out: Path, users: int, duration: str,
                key_file: str | None) -> dict:
    """The model's closed-loop throughput and latency: `users` clients sending back to back."""
    out.mkdir(parents=True, exist_ok=True)
    locust(out, host, users, users, duration, [user_class_name(model)], extra=MEASURE_ONLY,
           key_file=key_file)
    return stats(out)[model]


def seconds(duration: str) -> float:
    """Locust's run-time notation (90, 30s, 5m, 1h30m) in seconds."""
    if duration.isdigit():
        return float(duration)
    total, number = 0.0, ""
    for char in duration:
        if char.isdigit():
            number += char
        else:
            total += int(number) * {"s": 1, "m": 60, "h": 3600}[char]
            number = ""
    return total
