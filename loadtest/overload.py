"""python -m loadtest overload MODEL: a model at several times its capacity.

Two Locust runs against the running service: the model's capacity, closed loop (C users sending
back to back), then about FACTOR x that many requests/s offered open loop (PacedUser: one
request a second per user). Printed: capacity and its p99, then accepted p99 against 2x that,
rejection p99 against 50 ms, goodput against 85% of capacity. Queues sized from the latency budget
(jobQueueSize ~ throughput x budget, in each model's model-config.yaml) are what keep accepted
requests fast: a long queue turns overload into waiting instead of quick 503s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from loadtest import runner

TARGETS = {"accepted_p99_x": 2.0, "rejected_p99_ms": 50.0, "goodput": 0.85}


def run(model: str, host: str, out_root: Path, capacity_users: int, factor: float, duration: str,
        key_file: str | None) -> dict:
    print(f"[overload] {model}: capacity, {capacity_users} users back to back for {duration}",
          flush=True)
    row = runner.capacity(model, host, out_root / "capacity", capacity_users, duration, key_file)
    capacity, p99 = float(row["Requests/s"]), float(row["99%"])
    users = max(1, round(capacity * factor))
    overload_dir = out_root / "overload"
    overload_dir.mkdir(parents=True, exist_ok=True)
    print(f"[overload] {model}: capacity {capacity:.1f} req/s, p99 {p99:.0f} ms; now {users} "
          f"users offering ~{users} req/s ({factor:g}x) for {duration}", flush=True)
    os.environ["PACED_MODELS"] = f"{model}:1"
    runner.locust(overload_dir, host, users, users, duration, ["PacedUser"],
                  extra=runner.MEASURE_ONLY, key_file=key_file)
    rows = runner.stats(overload_dir)
    accepted = rows.get(f"{model} accepted", {})
    rejected = rows.get(f"{model} rejected", {})
    errors = rows.get(f"{model} error", {})
    result = {
        "model": model, "capacity_rps": capacity, "capacity_p99_ms": p99, "offered_users": users,
        "offered_rps": float(rows["Aggregated"]["Requests/s"]),
        "accepted_rps": float(accepted.get("Requests/s") or 0),
        "accepted_p99_ms": float(accepted.get("99%") or 0),
        "rejected_rps": float(rejected.get("Requests/s") or 0),
        "rejected_p99_ms": float(rejected.get("99%") or 0),
        "errors": int(errors.get("Request Count") or 0),
    }
    result["goodput"] = result["accepted_rps"] / capacity if capacity else 0.0
    result["accepted_p99_x"] = result["accepted_p99_ms"] / p99 if p99 else 0.0
    result["ok"] = (result["accepted_p99_x"] <= TARGETS["accepted_p99_x"]
                    and result["rejected_p99_ms"] <= TARGETS["rejected_p99_ms"]
                    and result["goodput"] >= TARGETS["goodput"] and result["errors"] == 0)
    (out_root / "overload.json").write_text(json.dumps(result, indent=2))
    return result


def report(r: dict) -> str:
    return (f"{r['model']}: capacity {r['capacity_rps']:.1f} req/s (p99 {r['capacity_p99_ms']:.0f} ms); "
            f"offered {r['offered_rps']:.1f} req/s ({r['offered_rps'] / r['capacity_rps']:.1f}x)\n"
            f"  accepted {r['accepted_rps']:.1f} req/s, p99 {r['accepted_p99_ms']:.0f} ms = "
            f"{r['accepted_p99_x']:.2f}x unloaded (target <= {TARGETS['accepted_p99_x']:g}x)\n"
            f"  rejected {r['rejected_rps']:.1f} req/s as JSON 503, p99 {r['rejected_p99_ms']:.0f} ms "
            f"(target <= {TARGETS['rejected_p99_ms']:g} ms)\n"
            f"  goodput {r['goodput']:.0%} of capacity (target >= {TARGETS['goodput']:.0%}); "
            f"other errors {r['errors']}\n  {'ok' if r['ok'] else 'TARGET MISSED'}")
