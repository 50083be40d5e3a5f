"""python -m loadtest soak: every model at a fraction of its capacity for a long time, watching
the server for leaks and drift.

Locust offers LOAD x each model's capacity open loop (PacedUser), the capacities measured first
(closed loop, a short run per model) or given. Every few seconds it samples the TorchServe
frontend's and workers' RSS and open files; Locust's history gives latency per window. Pass:
no errors, refusals (503: a full queue) within MAX_REFUSED of the requests, RSS growth under 10%
from the end of warm-up (the first fifth of the run) to the end.
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from pathlib import Path

import psutil

from loadtest import runner

MAX_RSS_GROWTH = 0.10
# Refusals a soak tolerates. Below capacity nothing should be refused, but on a shared 2-core
# machine a stall of a few hundred ms (the host, the test session beside it) can fill a cheap
# model's queue: CI saw 16 of 18,455 (0.09%) at half capacity with every other figure steady.
# A queue sized wrong refuses far more: digits' queue of 16 refused 4% in a 10-minute soak.
MAX_REFUSED = 0.005


def measured(process: psutil.Process, what: str) -> float:
    """RSS in MB ("rss") or open files ("fds") of one process; 0 once it has gone."""
    try:
        return process.memory_info().rss / 2 ** 20 if what == "rss" else process.num_fds()
    except psutil.Error:
        return 0


def sample(frontend: psutil.Process) -> dict:
    workers = frontend.children(recursive=True)
    return {"t": time.time(), "java_rss_mb": measured(frontend, "rss"),
            "workers_rss_mb": sum(measured(w, "rss") for w in workers),
            "open_files": measured(frontend, "fds") + sum(measured(w, "fds") for w in workers),
            "workers": len(workers)}


def history_percentiles(out: Path) -> list[dict]:
    path = out / "locust_stats_history.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return [r for r in csv.DictReader(f) if r["Name"] == "Aggregated" and r["99%"] not in ("N/A", "")]


def run(host: str, instance, out: Path, rates: dict[str, float], duration_s: float,
        key_file: str | None) -> dict:
    frontend = instance.process()
    if frontend is None:
        raise RuntimeError("no TorchServe runs for this config: start it first (make up)")
    users = {m: max(1, round(r)) for m, r in rates.items()}
    os.environ["PACED_MODELS"] = ",".join(f"{m}:{n}" for m, n in users.items())
    total = sum(users.values())
    samples: list[dict] = []
    done = threading.Event()

    def sampler():
        while not done.is_set():
            samples.append(sample(frontend))
            done.wait(5)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    print(f"[soak] {duration_s:.0f}s at {', '.join(f'{m} {n} req/s' for m, n in users.items())}",
          flush=True)
    code = runner.locust(out, host, total, total, f"{int(duration_s)}s", ["PacedUser"],
                         extra=["--slo-min-rps=0", "--slo-p95-ms=1e9", "--slo-p99-ms=1e9",
                                "--slo-max-error-rate=0", "--metrics-linger=0",
                                "--csv-full-history"], key_file=key_file)
    done.set()
    thread.join()
    samples.append(sample(frontend))
    warm = [s for s in samples if s["t"] - samples[0]["t"] >= duration_s / 5] or samples
    first, last = warm[0], samples[-1]
    rows = runner.stats(out)
    total_row = rows["Aggregated"]
    rejected = sum(int(r["Request Count"]) for name, r in rows.items() if name.endswith(" rejected"))
    history = history_percentiles(out)
    fifth = max(1, len(history) // 5)
    def mean(rows, key):
        values = [float(r[key]) for r in rows]
        return sum(values) / len(values) if values else 0.0
    result = {
        "duration_s": duration_s, "offered": users, "requests": int(total_row["Request Count"]),
        "errors": int(total_row["Failure Count"]) + rejected, "rejected": rejected,
        "rps": float(total_row["Requests/s"]),
        "java_rss_mb": [first["java_rss_mb"], last["java_rss_mb"]],
        "workers_rss_mb": [first["workers_rss_mb"], last["workers_rss_mb"]],
        "open_files": [first["open_files"], last["open_files"]],
        "p50_ms_first_last_fifth": [mean(history[fifth:2 * fifth], "50%"), mean(history[-fifth:], "50%")],
        "p99_ms_first_last_fifth": [mean(history[fifth:2 * fifth], "99%"), mean(history[-fifth:], "99%")],
        "locust_exit": code,
    }
    growth = lambda pair: (pair[1] - pair[0]) / pair[0] if pair[0] else 0.0  # noqa: E731
    result["java_rss_growth"] = growth(result["java_rss_mb"])
    result["workers_rss_growth"] = growth(result["workers_rss_mb"])
    result["refused_share"] = rejected / result["requests"] if result["requests"] else 0.0
    result["ok"] = (result["errors"] == rejected and result["refused_share"] <= MAX_REFUSED
                    and result["requests"] > 0
                    and result["java_rss_growth"] < MAX_RSS_GROWTH
                    and result["workers_rss_growth"] < MAX_RSS_GROWTH)
    (out / "soak.json").write_text(json.dumps({**result, "samples": samples}, indent=2))
    return result


def report(r: dict) -> str:
    return (f"soak {r['duration_s']:.0f}s: {r['requests']} requests, {r['rps']:.1f} req/s, "
            f"{r['errors']} errors ({r['rejected']} of them 503: queue full, {r['refused_share']:.2%} "
            f"of the requests; limit {MAX_REFUSED:.1%})\n"
            f"  Java RSS {r['java_rss_mb'][0]:.0f} -> {r['java_rss_mb'][1]:.0f} MB "
            f"({r['java_rss_growth']:+.1%}); workers RSS {r['workers_rss_mb'][0]:.0f} -> "
            f"{r['workers_rss_mb'][1]:.0f} MB ({r['workers_rss_growth']:+.1%}); limit +{MAX_RSS_GROWTH:.0%}\n"
            f"  open files {r['open_files'][0]} -> {r['open_files'][1]}\n"
            f"  latency p50 {r['p50_ms_first_last_fifth'][0]:.0f} -> {r['p50_ms_first_last_fifth'][1]:.0f} ms, "
            f"p99 {r['p99_ms_first_last_fifth'][0]:.0f} -> {r['p99_ms_first_last_fifth'][1]:.0f} ms "
            f"(second fifth of the run -> last fifth)\n  {'ok' if r['ok'] else 'FAILED'}")
