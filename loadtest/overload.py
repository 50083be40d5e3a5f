"""python -m loadtest overload MODEL: a model at several times its capacity.

Two Locust runs against the running service: the model's capacity, closed loop (C users sending
back to back), then about FACTOR x that many requests/s offered open loop (PacedUser: one
request a second per user). Printed: capacity and its p99, then accepted p99 against 2x that,
rejection p99 against 50 ms, goodput against 85% of capacity. Queues sized from the latency budget
(jobQueueSize ~ throughput x budget, in each model's model-config.yaml) are what keep accepted
requests fast: a long queue turns overload into waiting instead of quick 503s.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

TARGETS = {"accepted_p99_x": 2.0, "rejected_p99_ms": 50.0, "goodput": 0.85}


def stats(out: Path) -> dict[str, dict]:
    with open(out / "locust_stats.csv") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def run(model: str, host: str, out_root: Path, capacity_users: int, factor: float, duration: str,
        locust, user_class: str, key_file: str | None) -> dict:
    common = ["--slo-min-rps=0", "--slo-p95-ms=1e9", "--slo-p99-ms=1e9",
              "--slo-max-error-rate=1", "--metrics-linger=0", "--only-summary"]
    capacity_dir = out_root / "capacity"
    capacity_dir.mkdir(parents=True, exist_ok=True)
    print(f"[overload] {model}: capacity, {capacity_users} users back to back for {duration}",
          flush=True)
    locust(capacity_dir, host, capacity_users, capacity_users, duration, [user_class],
           extra=common, key_file=key_file)
    row = stats(capacity_dir)[model]
    capacity, p99 = float(row["Requests/s"]), float(row["99%"])
    users = max(1, round(capacity * factor))
    overload_dir = out_root / "overload"
    overload_dir.mkdir(parents=True, exist_ok=True)
    print(f"[overload] {model}: capacity {capacity:.1f} req/s, p99 {p99:.0f} ms; now {users} "
          f"users offering ~{users} req/s ({factor:g}x) for {duration}", flush=True)
    os.environ["PACED_MODELS"] = f"{model}:1"
    locust(overload_dir, host, users, users, duration, ["PacedUser"], extra=common,
           key_file=key_file)
    rows = stats(overload_dir)
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
