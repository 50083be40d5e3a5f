"""python -m serving overload MODEL (make overload): a model at several times its capacity.

Points by the measurement core's load generator (serving/perf/measure.py) against the running
service's front door. Unloaded: B clients back to back (B = a full batch for each of the
model's workers), so every request rides a full batch with nothing queued: its p99 is the
reference. Capacity: 2B clients back to back, so a batch is always waiting and no worker idles:
the most the model serves. Overload: FACTOR x capacity requests/s offered open loop (evenly
spaced, each timed from when it was due, so a server that falls behind is charged for it), right
after each capacity point: ROUNDS rounds of the two, and the median of each figure.
Beside the generator, a probe on its own thread and connection times requests the way a lone
client would; rejection latency is judged on it, so that what is measured is the server's
answer, not the generator's own queueing.

Printed: accepted p99 against 2x the unloaded p99, rejection p99 against 50 ms, goodput (the
accepted rate over capacity) against 90%. The generator shares the machine's cores with the
server: Locust offering ~570 requests/s took 0.3 of a core (15% of two), which the server then
lacked, and goodput read 83-86%; this generator takes about a third of that, and reports it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import statistics
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import models
from serving.perf.measure import Target, front_door_target, percentile, refused, run_point
from serving.run.paths import RUN_DIR
from serving.run.torchserve import Instance

TARGETS = {"accepted_p99_x": 2.0, "rejected_p99_ms": 50.0, "goodput": 0.90}


def batch_size(model: str) -> int:
    """B: the requests the model's workers run at once, a full batch each (batchSize x
    minWorkers). With fewer clients than that, two workers split them into half batches: lighter
    than one full batch, and too kind a reference."""
    config = models.load(model).config
    return int(config.get("batchSize") or 1) * int(config.get("minWorkers") or 1)


class Probe(threading.Thread):
    """A client apart from the generator: its own connection and thread, one request every
    `interval` seconds while the overload runs, timed around the blocking call. It sees what a
    client that is not itself the overloaded generator sees, so it is what judges how fast
    rejections are, and that they are JSON."""

    def __init__(self, url: str, headers: dict, body: bytes, interval: float = 0.05):
        super().__init__(daemon=True)
        self.url, self.headers, self.body, self.interval = urlsplit(url), headers, body, interval
        self.latencies_ms: dict[str, list[float]] = {"accepted": [], "rejected": [], "error": []}
        self.stopping = threading.Event()

    def run(self) -> None:
        connection = http.client.HTTPConnection(self.url.hostname, self.url.port or 80, timeout=30)
        while not self.stopping.wait(self.interval):
            started = time.perf_counter()
            try:
                connection.request("POST", self.url.path, self.body, self.headers)
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
                for field, value in (
                    ("count", len(values)),
                    ("p99_ms", percentile(sorted(values), 0.99) if values else 0.0))}  # none: 0 ms


def run(model: str, host: str, out: Path, batch_users: int, factor: float, seconds: float,
        instance: Instance, rounds: int = 3) -> dict:
    target, body_file, content_type = front_door_target(model, host, instance)

    def point(label: str, **load) -> dict:
        measured = run_point(target, body_file, content_type, False, seconds, **load)
        (out / f"{label}.json").write_text(json.dumps(measured, indent=2))
        return measured

    out.mkdir(parents=True, exist_ok=True)
    print(f"[overload] {model}: unloaded, {batch_users} clients (one full batch each) back to "
          f"back for {seconds:g}s", flush=True)
    unloaded = point("unloaded", clients=batch_users)
    print(f"[overload] {model}: unloaded p99 {unloaded['p99_ms']:.0f} ms", flush=True)
    measured = []
    for n in range(1, rounds + 1):
        measured.append(one_round(model, n, point, target, body_file, batch_users, factor, seconds,
                                  unloaded["p99_ms"]))
    result = {"model": model, "unloaded_p99_ms": unloaded["p99_ms"], "rounds": measured,
              **{key: statistics.median(r[key] for r in measured) for key in MEDIANS},
              **{key: sum(r[key] for r in measured) for key in SUMS}}
    result["ok"] = (result["accepted_p99_x"] <= TARGETS["accepted_p99_x"]
                    and result["rejected_p99_ms"] <= TARGETS["rejected_p99_ms"]
                    and result["goodput"] >= TARGETS["goodput"] and result["errors"] == 0
                    and result["capacity_refused"] == 0)
    (out / "overload.json").write_text(json.dumps(result, indent=2))
    return result


# Per round, capacity and overload back to back: the machine's speed drifts by 10-15% within
# minutes, so goodput (a ratio of two points) is taken within each round, and the rounds' median
# reported.
MEDIANS = ("capacity_rps", "offered_rps", "accepted_rps", "accepted_p99_ms", "accepted_p99_x",
           "rejected_rps", "rejected_p99_ms", "rejected_p99_ms_generator", "goodput",
           "generator_cpu_share", "server_cpu_share")
SUMS = ("capacity_requests", "capacity_refused", "errors", "probed_rejections")


def one_round(model: str, n: int, point, target: Target, body_file: Path, batch_users: int,
              factor: float, seconds: float, unloaded_p99_ms: float) -> dict:
    saturated = point(f"capacity-{n}", clients=2 * batch_users)
    capacity = saturated["ok_per_s"]
    print(f"[overload] {model} round {n}: capacity ({2 * batch_users} clients back to back) "
          f"{capacity:.1f} req/s; now {factor:g}x that, {capacity * factor:.0f} req/s open loop",
          flush=True)
    probe = Probe(target.url, target.headers, body_file.read_bytes())
    probe.start()
    try:
        overload = point(f"overload-{n}", rate=capacity * factor)
    finally:
        probed = probe.stop()
    statuses = overload["statuses"]
    result = {
        "capacity_rps": capacity,
        # A queue too short refuses even the closed-loop clients of the capacity run.
        "capacity_requests": saturated["ok"] + refused(saturated),
        "capacity_refused": refused(saturated),
        "offered_rps": sum(statuses.values()) / seconds,
        "accepted_rps": overload["ok_per_s"],
        "accepted_p99_ms": overload["p99_ms"],
        "accepted_p99_x": overload["p99_ms"] / unloaded_p99_ms if unloaded_p99_ms else 0.0,
        "rejected_rps": statuses.get("503", 0) / seconds,
        # Judged on the probe; the generator's own figure includes its queueing of 500 requests.
        "rejected_p99_ms": probed["rejected_p99_ms"],
        "probed_rejections": probed["rejected_count"],
        "rejected_p99_ms_generator": overload["p99_ms_by_status"].get("503", 0.0),
        "errors": sum(n for status, n in statuses.items() if status not in ("200", "503"))
        + probed["error_count"],
        "generator_cpu_share": overload["generator_cpu_share"],
        "server_cpu_share": overload["server_cpu_share"],
    }
    result["goodput"] = result["accepted_rps"] / capacity if capacity else 0.0
    print(f"[overload] {model} round {n}: accepted {result['accepted_rps']:.1f} req/s "
          f"(goodput {result['goodput']:.0%}), p99 {result['accepted_p99_ms']:.0f} ms "
          f"({result['accepted_p99_x']:.2f}x unloaded)", flush=True)
    return result


def report(r: dict) -> str:
    return (f"{r['model']}, the median of {len(r['rounds'])} rounds: unloaded p99 "
            f"{r['unloaded_p99_ms']:.0f} ms, "
            f"capacity {r['capacity_rps']:.1f} req/s ({r['capacity_refused']} of "
            f"{r['capacity_requests']} refused); "
            f"offered {r['offered_rps']:.1f} req/s ({r['offered_rps'] / r['capacity_rps']:.1f}x)\n"
            f"  accepted {r['accepted_rps']:.1f} req/s, p99 {r['accepted_p99_ms']:.0f} ms = "
            f"{r['accepted_p99_x']:.2f}x unloaded (target <= {TARGETS['accepted_p99_x']:g}x)\n"
            f"  rejected {r['rejected_rps']:.1f} req/s as JSON 503, "
            f"p99 {r['rejected_p99_ms']:.0f} ms by the probe (target <= {TARGETS['rejected_p99_ms']:g} ms; "
            f"{r['probed_rejections']} probes), {r['rejected_p99_ms_generator']:.0f} ms by "
            f"the generator\n"
            f"  goodput {r['goodput']:.0%} of capacity (target >= {TARGETS['goodput']:.0%}); "
            f"other errors {r['errors']}; the generator used {r['generator_cpu_share']:.2f} of "
            f"a core\n  {'ok' if r['ok'] else 'TARGET MISSED'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving overload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model folder's name")
    parser.add_argument("--host", help="the front door (default: that of `make up`)")
    parser.add_argument("--run-dir", type=Path, help="the server's run folder, for its key "
                        "(default: that of `make up`, run/torchserve)")
    parser.add_argument("--batch-users", type=int, help="closed-loop clients that make one full "
                        "batch per worker (default: batchSize x minWorkers in "
                        "models/MODEL/model-config.yaml)")
    parser.add_argument("--factor", type=float, default=4.0)
    parser.add_argument("-t", "--seconds", type=float, default=20.0, help="of each point")
    parser.add_argument("--rounds", type=int, default=3, help="of capacity and overload back to "
                        "back (goodput is judged within each; the median is reported)")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    instance = Instance(run_dir=args.run_dir) if args.run_dir else Instance.from_config()
    host = args.host or Instance.from_config().public_url
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or RUN_DIR / "overload" / f"{args.model}-{stamp}")
    result = run(args.model, host, out, args.batch_users or batch_size(args.model), args.factor,
                 args.seconds, instance, args.rounds)
    print("\n" + report(result) + f"\nDetails: {out}")
    return 0 if result["ok"] else 1
