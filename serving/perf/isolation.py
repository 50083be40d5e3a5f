"""python -m serving isolation MODEL (make isolation): one model's p99 while others are saturated.

Against the running service's front door, in rounds: the probed model (`make isolation`:
digits) alone, one client back to back (its p99 is the reference), then the same client while
every other model is driven by CLIENTS closed-loop clients each (saturated: a batch always
waiting). The ratio of the two p99s is taken within each round (the machine's speed drifts
within minutes) and the median reported against the target: at most 2x.

What decides it is where the models' workers run. By default every worker may run on every core:
the most throughput, but on two cores a digits request then waits behind EfficientNet's and
MiniLM's batches (measured 3.3-5x, whatever the scheduling priority: docs/limits.md). SERVING_CPUS
gives models CPUs of their own (handlers/cores.py); the report says which placement it measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import models
from handlers.cores import PLACEMENT_ENV
from serving.perf.measure import front_door_target, run_point
from serving.run.paths import RUN_DIR
from serving.run.torchserve import Instance

TARGET_P99_X = 2.0
LEAD_S = 3.0  # the neighbours' clients run this long before the probe starts, and after it ends


def placement_of(instance: Instance) -> str:
    """SERVING_CPUS as the running server got it ("" when every worker runs anywhere)."""
    process = instance.process()
    try:
        return (process.environ() if process else {}).get(PLACEMENT_ENV, "")
    except Exception:  # noqa: BLE001 - another user's process: say it is unknown
        return "unknown"


def one_round(n: int, probed: tuple, neighbours: list[tuple], clients: int, seconds: float) -> dict:
    alone = run_point(*probed, False, seconds, clients=1)
    with ThreadPoolExecutor(len(neighbours)) as pool:
        loads = [pool.submit(run_point, *neighbour, False, seconds + 2 * LEAD_S, clients=clients)
                 for neighbour in neighbours]
        time.sleep(LEAD_S)
        beside = run_point(*probed, False, seconds, clients=1)
        loaded = [load.result() for load in loads]
    result = {"alone_p50_ms": alone["p50_ms"], "alone_p99_ms": alone["p99_ms"],
              "beside_p50_ms": beside["p50_ms"], "beside_p99_ms": beside["p99_ms"],
              "p99_x": beside["p99_ms"] / alone["p99_ms"] if alone["p99_ms"] else 0.0,
              "errors": alone["errors"] + beside["errors"],
              "neighbours": {target.url.rsplit("/", 1)[-1]: {"ok_per_s": point["ok_per_s"],
                                                            "p99_ms": point["p99_ms"],
                                                            "errors": point["errors"]}
                             for (target, *_), point in zip(neighbours, loaded)}}
    print(f"[isolation] round {n}: alone p50 {result['alone_p50_ms']:.1f} ms, p99 "
          f"{result['alone_p99_ms']:.1f} ms; beside them p50 {result['beside_p50_ms']:.1f} ms, "
          f"p99 {result['beside_p99_ms']:.1f} ms: {result['p99_x']:.2f}x; " + ", ".join(
              f"{name} {m['ok_per_s']:.1f} req/s" for name, m in result["neighbours"].items()),
          flush=True)
    return result


def run(probe: str, saturate: list[str], clients: int, seconds: float, rounds: int, host: str,
        instance: Instance) -> dict:
    probed = front_door_target(probe, host, instance)
    neighbours = [front_door_target(name, host, instance) for name in saturate]
    placement = placement_of(instance)
    print(f"[isolation] {probe}, one client, alone and beside {', '.join(saturate)} with "
          f"{clients} clients each; {rounds} rounds of {seconds:g}s; "
          f"{PLACEMENT_ENV}={placement!r}", flush=True)
    measured = [one_round(n, probed, neighbours, clients, seconds) for n in range(1, rounds + 1)]
    result = {"probe": probe, "saturated": saturate, "clients": clients, "placement": placement,
              "rounds": measured,
              **{key: statistics.median(r[key] for r in measured)
                 for key in ("alone_p50_ms", "alone_p99_ms", "beside_p50_ms", "beside_p99_ms",
                             "p99_x")},
              "neighbours_ok_per_s": {name: statistics.median(r["neighbours"][name]["ok_per_s"]
                                                              for r in measured)
                                     for name in saturate},
              "errors": sum(r["errors"] + sum(m["errors"] for m in r["neighbours"].values())
                            for r in measured)}
    result["ok"] = result["p99_x"] <= TARGET_P99_X and result["errors"] == 0
    return result


def report(r: dict) -> str:
    return (f"{r['probe']}, the median of {len(r['rounds'])} rounds "
            f"({PLACEMENT_ENV}={r['placement']!r}): alone p99 {r['alone_p99_ms']:.1f} ms "
            f"(p50 {r['alone_p50_ms']:.1f}); beside {', '.join(r['saturated'])} saturated "
            f"({r['clients']} clients each) p99 {r['beside_p99_ms']:.1f} ms "
            f"(p50 {r['beside_p50_ms']:.1f}) = {r['p99_x']:.2f}x (target <= {TARGET_P99_X:g}x)\n"
            f"  the saturated models served " + ", ".join(
                f"{name} {rate:.1f} req/s" for name, rate in r["neighbours_ok_per_s"].items())
            + f"; errors {r['errors']}\n  {'ok' if r['ok'] else 'TARGET MISSED'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving isolation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", help="the model whose latency is watched (make isolation: digits)")
    parser.add_argument("--saturate", nargs="+", help="the models driven to saturation "
                        "(default: every other model)")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients per "
                        "saturated model")
    parser.add_argument("-t", "--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--host", help="the front door (default: that of `make up`)")
    parser.add_argument("--run-dir", type=Path, help="the server's run folder, for its key")
    parser.add_argument("--out", default=str(RUN_DIR / "isolation.json"))
    args = parser.parse_args(argv)
    instance = Instance(run_dir=args.run_dir) if args.run_dir else Instance.from_config()
    saturate = args.saturate or [name for name in models.NAMES if name != args.probe]
    result = run(args.probe, saturate, args.clients, args.seconds, args.rounds,
                 args.host or Instance.from_config().public_url, instance)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n" + report(result) + f"\nDetails: {args.out}")
    return 0 if result["ok"] else 1
