"""The one measurement core every served experiment uses: the served benchmark, the protocol
benchmark, the tuner, overload, isolation and the capacity measurement (serving.scale.capacity).

    Target        a server under test: its URL, headers, and the processes whose CPU it uses
    front_door_target  a model of a running service through its front door, with its example
                  request
    run_point     one load point (closed loop at N clients, or open loop at a rate) by the load
                  generator (serving/perf/loadgen.py) in its own process, with the server's CPU
    climb         the client ladder (LADDER), climbed while the p99 holds and throughput grows
    best_within   the highest-throughput point within a p99 limit, nothing refused
    percentile    the one percentile (nearest rank)
    time_calls    a call timed in this process (a handler's batch, for service times)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import psutil

import models
from serving.run.paths import ROOT

# Closed-loop connections, doubling: the served experiments climb it (the tuner, `deploy measure`);
# the Locust check of the queueing model (`make capacity`) stops at 32 users, each a greenlet.
LADDER = (1, 2, 4, 8, 16, 32, 64)


def percentile(sorted_values: list[float], q: float) -> float:
    """The one percentile of the project (nearest rank) of already sorted values, q in 0..1: every
    measurement's."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def refused(point: dict) -> int:
    """Answers that were not 200, from a load generator point's status counts."""
    return sum(count for status, count in point.get("statuses", {}).items() if status != "200")


class Target:
    """A server under test: its URL and headers, and the processes whose CPU it uses."""

    def __init__(self, label: str, url: str, headers: dict, processes) -> None:
        self.label, self.url, self.headers, self.processes = label, url, headers, processes

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds so far: the server's first process (TorchServe's Java frontend, LitServe's
        main process) and the processes it started (model workers, LitServe's API server)."""
        totals = {"frontend": 0.0, "workers": 0.0}
        for i, proc in enumerate(self.processes()):
            try:
                times = proc.cpu_times()
                totals["frontend" if i == 0 else "workers"] += times.user + times.system
            except psutil.Error:
                pass
        return totals

    def worker_pids(self) -> list[int]:
        """The server's Python child processes, the largest first: the one holding the model."""
        children = []
        for proc in self.processes()[1:]:
            try:
                if "python" in proc.name().lower():
                    children.append((proc.memory_info().rss, proc.pid))
            except psutil.Error:
                pass
        return [pid for _, pid in sorted(children, reverse=True)]


def front_door_target(model: str, host: str, instance) -> tuple[Target, Path, str]:
    """The model behind `host` (a running service's front door), with `instance`'s inference key
    (a serving.run.torchserve.Instance); its example request's file and content type."""
    file, content_type = models.load(model).example_request
    key = instance.keys().get("inference", "")
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {key}"} if key else {})}
    target = Target("torchserve behind the front door", f"{host.rstrip('/')}/predictions/{model}",
                    headers, lambda: tree(instance.process()))
    return target, models.MODELS_DIR / model / file, content_type


def profile(pid: int, seconds: float, out: Path) -> list[tuple[str, float]]:
    """py-spy samples of one process for `seconds`: the functions it spends its time in (own
    time, as a share of samples), most first. [] where py-spy is missing or not allowed."""
    import shutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return []
    done = subprocess.run([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                           "--rate", "100", "--format", "raw", "--nonblocking", "--output",
                           str(out)], capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0 or not out.exists():
        return []
    own: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        leaf = stack.split(";")[-1]
        own[leaf] = own.get(leaf, 0) + int(count)
        total += int(count)
    return [(frame, n / total) for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:10]]


def run_point(target: Target, body_file: Path, content_type: str, binary: bool, seconds: float,
         clients: int = 0, rate: float = 0.0, profile_to: Path | None = None) -> dict:
    command = [sys.executable, "-m", "serving.perf.loadgen", target.url, "--body", str(body_file),
               "--content-type", content_type, "--seconds", str(seconds)]
    command += ["--multipart"] if binary else []
    command += ["--clients", str(clients)] if clients else ["--rate", f"{rate:.2f}"]
    for key, value in target.headers.items():
        command += ["--header", f"{key}: {value}"]
    before = target.cpu_seconds()
    started = time.monotonic()
    generator = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
    hot = []
    if profile_to is not None and target.worker_pids():
        time.sleep(1.5)  # past the generator's warm-up
        hot = profile(target.worker_pids()[0], max(1.0, seconds - 2), profile_to)
    stdout, stderr = generator.communicate(timeout=seconds + 120)
    elapsed = time.monotonic() - started
    if generator.returncode != 0:
        raise RuntimeError(f"load generator failed: {stderr.strip()[-500:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    # The server's CPU over the whole generator run (its warm-up included), in cores.
    after = target.cpu_seconds()
    result["cpu_cores"] = {part: (after[part] - before[part]) / elapsed for part in after}
    result["server_cpu_share"] = sum(result["cpu_cores"].values())
    if hot:
        result["worker_profile"] = hot
    result.update({"clients": clients, "rate": rate, "errors": refused(result)})
    return result


def tree(proc: psutil.Process | None) -> list[psutil.Process]:
    if proc is None:
        return []
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def best_within(points: list[dict], p99_ms: float, rate: str = "ok_per_s",
                errors: str = "errors") -> dict | None:
    """The highest-throughput point whose p99 is within `p99_ms` and that refused nothing
    (`rate` and `errors`: the keys of throughput and refusals, for simulated points)."""
    fits = [p for p in points if p["p99_ms"] <= p99_ms and not p.get(errors) and p[rate] > 0]
    return max(fits, key=lambda p: p[rate]) if fits else None


def climb(run: Callable[[int], dict], p99_ms: float, at_least: int,
          ladder: tuple[int, ...] = LADDER) -> list[dict]:
    """run(clients) up the ladder, at least to `at_least` clients unless a request is refused
    first, then on while the p99 is within the limit and throughput grows (5%)."""
    points: list[dict] = []
    for clients in ladder:
        point = run(clients)
        points.append(point)
        fits = point["p99_ms"] <= p99_ms and not point["errors"]
        growing = len(points) < 2 or point["ok_per_s"] > 1.05 * points[-2]["ok_per_s"]
        if point["errors"] or (clients >= at_least and (not fits or not growing)):
            break
    return points


def time_calls(call: Callable[[], object], min_runs: int = 10, budget_s: float = 4.0,
               warmup: int = 3, check: Callable[[object], None] | None = None) -> list[float]:
    """Seconds per call(), after `warmup` calls: at least min_runs, more while under budget_s.
    `check` sees each answer (e.g. that every request of a batch got a 200)."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < min_runs or time.perf_counter() < deadline:
        started = time.perf_counter()
        answer = call()
        times.append(time.perf_counter() - started)
        if check:
            check(answer)
    return times


def loaded_alone(name: str, model_store: Path, prefix: str):
    """The model's archive loaded in this (fresh) process as its server's only worker."""
    import os
    import tempfile

    from handlers import WORKERS_ENV
    from serving.run.inprocess import LoadedModel

    os.environ[WORKERS_ENV] = "1"
    return LoadedModel(name, Path(tempfile.mkdtemp(prefix=f"{prefix}-{name}-")), Path(model_store))



