"""python -m loadtest overload MODEL: a model at several times its capacity.

Three Locust runs against the running service. Unloaded: B users back to back (B = a full batch
for each of the model's workers), so every request rides a full batch with nothing queued: its p99
is the reference.
Capacity: 2B users back to back, so a batch is always waiting and the worker never idles: the
most the model serves. Overload: about FACTOR x capacity requests/s offered open loop
(PacedUser: one request a second per user, each on its own phase) from two generator processes.
Beside Locust, a probe on its own thread and connection times requests the same way a lone
client would; rejection latency is judged on it, so that what is measured is the server's
answer, not the generator's own queueing.

Printed: accepted p99 against 2x the unloaded p99, rejection p99 against 50 ms, goodput against
85% of capacity. Queues sized from the latency budget (jobQueueSize ~ throughput x budget, in each
model's model-config.yaml) are what keep accepted requests fast: a long queue turns overload into
waiting instead of quick 503s.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import models

from loadtest import percentile, runner

TARGETS = {"accepted_p99_x": 2.0, "rejected_p99_ms": 50.0, "goodput": 0.85}


def batch_size(model: str) -> int:
    """B: the requests the model's workers run at once, a full batch each (batchSize x
    minWorkers). With fewer clients than that, two workers split them into half batches: lighter
    than one full batch, and too kind a reference."""
    config = models.load(model).config
    return int(config.get("batchSize") or 1) * int(config.get("minWorkers") or 1)


class Probe(threading.Thread):
    """A client apart from Locust: its own connection and thread, one request every `interval`
    seconds while the overload runs, timed around the blocking call. It sees what a client that
    is not itself the overloaded generator sees, so it is what judges how fast rejections are."""

    def __init__(self, model: str, host: str, key: str, interval: float = 0.05):
        super().__init__(daemon=True)
        self.model, self.url, self.interval = model, urlsplit(host), interval
        spec = models.load(model)
        self.content_type, self.body = spec.payload_content_type, spec.payloads()[0]
        self.headers = {"Content-Type": self.content_type,
                        **({"Authorization": f"Bearer {key}"} if key else {})}
        self.latencies_ms: dict[str, list[float]] = {"accepted": [], "rejected": [], "error": []}
        self.stopping = threading.Event()

    def run(self) -> None:
        connection = http.client.HTTPConnection(self.url.hostname, self.url.port or 80, timeout=30)
        while not self.stopping.wait(self.interval):
            started = time.perf_counter()
            try:
                connection.request("POST", f"/predictions/{self.model}", self.body, self.headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                connection.close()  # reconnects on the next request
                self.latencies_ms["error"].append((time.perf_counter() - started) * 1000)
                continue
            elapsed = (time.perf_counter() - started) * 1000
            json_answer = "application/json" in (response.getheader("content-type") or "")
            outcome = {200: "accepted", 503: "rejected" if json_answer else "error"}.get(
                response.status, "error")
            self.latencies_ms[outcome].append(elapsed)

    def stop(self) -> dict:
        self.stopping.set()
        self.join()
        return {f"{outcome}_{field}": value for outcome, values in self.latencies_ms.items()
                for field, value in (("count", len(values)),  # no answers of a kind: 0 ms
                                     ("p99_ms", percentile(sorted(values), 0.99) if values else 0.0))}


def run(model: str, host: str, out_root: Path, batch_users: int, factor: float, duration: str,
        key_file: str | None) -> dict:
    print(f"[overload] {model}: unloaded, {batch_users} users (one full batch) back to back for "
          f"{duration}", flush=True)
    p99 = float(runner.closed_loop(model, host, out_root / "unloaded", batch_users, duration,
                                   key_file)["99%"])
    print(f"[overload] {model}: unloaded p99 {p99:.0f} ms; capacity, {2 * batch_users} users "
          f"back to back for {duration}", flush=True)
    saturated = runner.closed_loop(model, host, out_root / "capacity", 2 * batch_users,
                                   duration, key_file)
    capacity = float(saturated["Requests/s"])
    users = max(1, round(capacity * factor))
    overload_dir = out_root / "overload"
    overload_dir.mkdir(parents=True, exist_ok=True)
    print(f"[overload] {model}: capacity {capacity:.1f} req/s; now {users} users offering "
          f"~{users} req/s ({factor:g}x) for {duration}", flush=True)
    os.environ["PACED_MODELS"] = f"{model}:1"
    probe = Probe(model, host, runner.inference_key(key_file))
    probe.start()
    try:
        runner.locust(overload_dir, host, users, users, duration, ["PacedUser"], processes=2,
                      extra=runner.MEASURE_ONLY, key_file=key_file)
    finally:
        probed = probe.stop()
    rows = runner.stats(overload_dir)
    accepted = rows.get(f"{model} accepted", {})
    rejected = rows.get(f"{model} rejected", {})
    errors = rows.get(f"{model} error", {})
    result = {
        "model": model, "capacity_rps": capacity, "unloaded_p99_ms": p99, "offered_users": users,
        # A queue too short refuses even the closed-loop clients of the capacity run: between a
        # batch's answers and the next poll of the queue, their next requests arrive.
        "capacity_requests": int(saturated["Request Count"]),
        "capacity_refused": int(saturated["Failure Count"]),
        "offered_rps": float(rows["Aggregated"]["Requests/s"]),
        "accepted_rps": float(accepted.get("Requests/s") or 0),
        "accepted_p99_ms": float(accepted.get("99%") or 0),
        "rejected_rps": float(rejected.get("Requests/s") or 0),
        # Judged on the probe; Locust's own figure includes its generator's delays.
        "rejected_p99_ms": probed["rejected_p99_ms"],
        "rejected_p99_ms_locust": float(rejected.get("99%") or 0),
        "errors": int(errors.get("Request Count") or 0) + probed["error_count"],
        "probe": probed,
    }
    result["goodput"] = result["accepted_rps"] / capacity if capacity else 0.0
    result["accepted_p99_x"] = result["accepted_p99_ms"] / p99 if p99 else 0.0
    result["ok"] = (result["accepted_p99_x"] <= TARGETS["accepted_p99_x"]
                    and result["rejected_p99_ms"] <= TARGETS["rejected_p99_ms"]
                    and result["goodput"] >= TARGETS["goodput"] and result["errors"] == 0
                    and result["capacity_refused"] == 0)
    (out_root / "overload.json").write_text(json.dumps(result, indent=2))
    return result


def report(r: dict) -> str:
    return (f"{r['model']}: unloaded p99 {r['unloaded_p99_ms']:.0f} ms, "
            f"capacity {r['capacity_rps']:.1f} req/s ({r['capacity_refused']} of "
            f"{r['capacity_requests']} refused); "
            f"offered {r['offered_rps']:.1f} req/s ({r['offered_rps'] / r['capacity_rps']:.1f}x)\n"
            f"  accepted {r['accepted_rps']:.1f} req/s, p99 {r['accepted_p99_ms']:.0f} ms = "
            f"{r['accepted_p99_x']:.2f}x unloaded (target <= {TARGETS['accepted_p99_x']:g}x)\n"
            f"  rejected {r['rejected_rps']:.1f} req/s as JSON 503, p99 {r['rejected_p99_ms']:.0f} ms "
            f"by the probe (target <= {TARGETS['rejected_p99_ms']:g} ms; "
            f"{r['probe']['rejected_count']} probes), {r['rejected_p99_ms_locust']:.0f} ms by Locust\n"
            f"  goodput {r['goodput']:.0%} of capacity (target >= {TARGETS['goodput']:.0%}); "
            f"other errors {r['errors']}\n  {'ok' if r['ok'] else 'TARGET MISSED'}")
