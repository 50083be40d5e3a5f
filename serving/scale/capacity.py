"""Capacity: what one replica serves within its p99 target, how many replicas a request rate
needs, and a check of that model against a real multi-instance run on this machine.

measure   per model, the shipped archive on a real TorchServe, a closed-loop client ladder: the
          most requests/s answered within the model's p99 target (model.yaml loadtest.slo), and
          the server's resident memory. deploy/capacity.json; `deploy render` sizes the
          autoscaler and the pods from it.
simulate  a discrete-event model of the serving path: requests (Poisson arrivals, or closed-loop
          clients with no think time) spread over replicas by least outstanding requests (nginx's
          least_conn), each replica a FIFO queue feeding `workers` workers that batch as
          TorchServe does (queued requests are taken at once, up to batchSize; a lone request
          waits up to maxBatchDelay for company), a batch of b taking s(b): the handler's own
          time for b requests measured in-process (decode + model + encode, the replica's torch
          threads), plus a fixed per-request time outside the worker (frontend, proxy, client)
          that holds the client but no worker. M/D/c with batching; no think time.
verify    the model against real runs here: N TorchServe instances on loopback, each pinned to
          its own core, behind the real nginx front door (the pod's, with its key check),
          driven by distributed Locust (a master and worker processes) up a user ladder.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import os
import random
import secrets
import statistics
import sys
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import models
from serving.build.archive import shipped_settings
from serving.perf.measure import (LADDER, Target, best_within, loaded_alone, percentile,
                                  run_point, time_calls, tree)
from serving.run.cpu import cpu_name
from serving.run.frontdoor import FrontDoor
from serving.run.paths import MODEL_STORE, RUN_DIR
from serving.run.torchserve import write_cluster_config
from serving.scale.policy import (CAPACITY_FILE, FRONTDOOR_MAX_REQUESTS, MIN_REPLICAS, SCALE_UP_LOAD,
                                  TARGET_LOAD)

USER_LADDER = tuple(c for c in LADDER if c <= 32)  # Locust users: `verify`, and the model's ladder


def outside_worker_s(one_client_rps: float, s: Callable[[int], float], delay_s: float) -> float:
    """The model's one constant: the time a request spends outside the worker (frontend, proxy,
    client), from a one-client run: its mean cycle (1 / throughput) less the handler's time for
    one request and the batch delay a lone request waits."""
    return max(0.0, 1 / one_client_rps - s(1) - delay_s)


def slo_p99_ms(name: str) -> float:
    return float((models.load(name).loadtest.get("slo") or {}).get("p99_ms") or 1000)


# -- per-replica capacity, measured -------------------------------------------------------------

MEASURED_THROUGH = "the pod's front door (nginx, docker/nginx)"


def measure(names: list[str], seconds: float, log=print) -> dict:
    """Each model's shipped archive on its own TorchServe (one replica) behind the pod's nginx
    front door, as every request in a pod passes it: the client ladder of the tuner, scored at the
    model's p99 target; the handler's service times for the queueing model, and from that model
    the mean queue wait of a replica at 85% of its capacity."""
    from serving.perf.tune import measure_candidate

    result = {"cpu": cpu_name(), "cores": os.cpu_count(), "measured": time.strftime("%Y-%m-%d"),
              "seconds_per_point": seconds, "through": MEASURED_THROUGH, "models": {}}
    for name in names:
        candidate, p99 = shipped_settings(name), slo_p99_ms(name)
        log(f"[{name}] one replica as shipped, p99 target {p99:g} ms")
        point = measure_candidate(name, candidate, p99, seconds, RUN_DIR / "capacity" / name, log,
                                  front_door={"FRONTDOOR_MAX_REQUESTS": str(FRONTDOOR_MAX_REQUESTS)})
        if not point["best"]:
            raise RuntimeError(f"{name}: nothing within p99 {p99:g} ms on this machine")
        times = service_times(name, candidate["threads"], candidate["batchSize"], "example")
        s = interpolate(times)
        delay_s = candidate["maxBatchDelay"] / 1000
        one = next(p for p in point["points"] if p["clients"] == 1)
        overhead_s = outside_worker_s(one["ok_per_s"], s, delay_s)
        capacity = point["best"]["ok_per_s"]
        saturation = candidate["workers"] * candidate["batchSize"] / s(candidate["batchSize"])
        busy = simulate(s, 1, candidate["workers"], candidate["batchSize"], delay_s,
                        rate=SCALE_UP_LOAD * min(capacity, saturation), overhead_s=overhead_s)
        waited = queue_wait(name, SCALE_UP_LOAD * capacity, seconds,
                            RUN_DIR / "capacity" / name / "queue")
        log(f"  service s(1) {s(1) * 1000:.2f} ms, s({candidate['batchSize']}) "
            f"{s(candidate['batchSize']) * 1000:.2f} ms; outside the worker {overhead_s * 1000:.2f} "
            f"ms; queue wait at {SCALE_UP_LOAD:.0%} load: measured {waited * 1000:.2f} ms, "
            f"model {busy['mean_wait_ms']:.2f} ms")
        result["models"][name] = {
            **candidate, "p99_target_ms": p99, "replica_rps": round(capacity, 1),
            "p99_ms_at_capacity": round(point["best"]["p99_ms"], 1),
            "clients_at_capacity": point["best"]["clients"],
            "rss_mb": round(point["rss_mb"]), "cores": candidate["workers"] * candidate["threads"],
            "service_s": {str(b): round(t, 6) for b, t in times.items()},
            "overhead_s": round(overhead_s, 6),
            "queue_wait_s_at_scale_up": round(waited, 6),
            "model_queue_wait_s_at_scale_up": round(busy["mean_wait_ms"] / 1000, 6),
            "points": point["points"]}
    return result


def torchserve_counters(metrics_url: str, model: str) -> dict[str, float]:
    """TorchServe's per-model counters from its Prometheus endpoint, summed over label sets."""
    import requests

    totals: dict[str, float] = {}
    for line in requests.get(f"{metrics_url}/metrics", timeout=10).text.splitlines():
        if line.startswith("ts_") and f'model_name="{model}"' in line:
            metric = line.split("{", 1)[0]
            totals[metric] = totals.get(metric, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def queue_wait(name: str, rate: float, seconds: float, work: Path) -> float:
    """The mean time a request waits in TorchServe's queue (ts_queue_latency_microseconds, the
    autoscaler's second signal) with the shipped archive under an open-loop `rate`."""
    from serving.run.torchserve import start_on_free_ports

    spec = models.load(name)
    file, content_type = spec.example_request
    instance = start_on_free_ports(work, [name])
    try:
        target = Target("torchserve", f"{instance.inference_url}/predictions/{name}",
                        instance.auth("inference"), lambda: tree(instance.process()))
        before = torchserve_counters(instance.metrics_url, name)
        run_point(target, models.MODELS_DIR / name / file, content_type,
                  not content_type.startswith("application/json"), seconds, rate=rate)
        after = torchserve_counters(instance.metrics_url, name)
    finally:
        instance.stop()
    served = after["ts_inference_requests_total"] - before.get("ts_inference_requests_total", 0)
    waited = after["ts_queue_latency_microseconds"] - before.get("ts_queue_latency_microseconds", 0)
    return waited / 1e6 / served


def load_capacity(path: Path = CAPACITY_FILE) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no measured capacity; run `python -m serving deploy "
                                "measure` on a machine like the nodes you deploy to")
    return json.loads(path.read_text())


# -- service times, measured in-process ---------------------------------------------------------

def child_service_times(name: str, threads: int, batches: list[int], model_store: str,
                        bodies_from: str) -> dict:
    """In a fresh process: the handler's time per batch size, over the model's load-test bodies
    ("payloads", what Locust sends) or its example request ("example", what the tuner's and
    `measure`'s generator sends)."""
    import torch

    loaded = loaded_alone(name, Path(model_store), "capacity")
    torch.set_num_threads(threads)
    spec = models.load(name)
    if bodies_from == "payloads":
        bodies, content_type = spec.payloads(), spec.payload_content_type
    else:
        file, content_type = spec.example_request
        bodies = [(models.MODELS_DIR / name / file).read_bytes()]
    rng = random.Random(0)
    def all_ok(answers) -> None:
        assert all(a.status == 200 for a in answers), answers[0]

    times = {}
    for b in batches:
        batches_of_bodies = [[(rng.choice(bodies), content_type) for _ in range(b)]
                             for _ in range(64)]  # drawn before timing, taken in turn
        turns = itertools.cycle(batches_of_bodies)
        runs = time_calls(lambda: loaded.handle(next(turns)),
                          min_runs=8, budget_s=3.0, warmup=2, check=all_ok)
        times[b] = statistics.median(runs)
    return {"threads": torch.get_num_threads(), "seconds": times}


def service_times(name: str, threads: int, batch: int, bodies_from: str,
                  model_store: Path = MODEL_STORE) -> dict:
    from serving.perf.bench import run_child

    batches = sorted({1, 2, *[2 ** k for k in range(2, 8) if 2 ** k < batch], batch})
    result = run_child("service-times", name, str(threads), ",".join(map(str, batches)),
                       str(model_store), bodies_from, module="serving.scale.capacity")
    return {int(b): s for b, s in result["seconds"].items()}


def interpolate(times: dict[int, float]) -> Callable[[int], float]:
    """s(b) between the measured batch sizes, linearly."""
    sizes = sorted(times)

    def s(b: int) -> float:
        if b in times:
            return times[b]
        hi = next((x for x in sizes if x > b), sizes[-1])
        lo = max((x for x in sizes if x < b), default=sizes[0])
        if hi == lo:
            return times[lo] * b / lo
        return times[lo] + (times[hi] - times[lo]) * (b - lo) / (hi - lo)

    return s


# -- the queueing model -------------------------------------------------------------------------

def simulate(service: Callable[[int], float], replicas: int, workers: int, batch: int,
             delay_s: float, clients: int = 0, rate: float = 0.0, overhead_s: float = 0.0,
             requests: int = 20000, seed: int = 0, queue_size: int = 0) -> dict:
    """Throughput and latency of the model above, after a warm-up of a tenth of the requests.
    `clients` > 0: closed loop; otherwise Poisson arrivals at `rate` per second. `queue_size`
    > 0: a replica whose queue holds that many refuses the next request at once (TorchServe's
    jobQueueSize, a 503), which counts in "refused" and not in the latencies.

    Batching follows TorchServe 0.12 (Model.pollInferJob): an idle worker takes what is queued,
    up to batchSize, and unless the batch is full it keeps polling for more until maxBatchDelay
    has passed; while it does, it holds the model's queue lock, so other idle workers wait."""
    if (clients > 0) == (rate > 0):
        raise ValueError("give clients (closed loop) or rate (open loop)")
    rng = random.Random(seed)
    queues = [deque() for _ in range(replicas)]      # arrival times waiting
    idle = [workers] * replicas
    outstanding = [0] * replicas
    forming: list[list | None] = [None] * replicas   # the batch a worker is filling
    tokens = [0] * replicas
    events: list[tuple] = []
    seq = 0

    def push(at: float, kind: str, replica: int = 0, data: object = None) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (at, seq, kind, replica, data))

    def start(now: float, replica: int, taken: list) -> None:
        waits.extend(now - arrived for arrived in taken)
        push(now + service(len(taken)), "done", replica, taken)

    def dispatch(now: float, replica: int) -> None:
        queue = queues[replica]
        while forming[replica] is None and idle[replica] and queue:
            idle[replica] -= 1
            taken = [queue.popleft() for _ in range(min(batch, len(queue)))]
            if len(taken) == batch or delay_s <= 0:
                start(now, replica, taken)
            else:
                forming[replica] = taken
                tokens[replica] += 1
                push(now + delay_s, "timer", replica, tokens[replica])

    def arrive(now: float) -> None:
        nonlocal refused
        least = min(outstanding)
        replica = rng.choice([i for i, n in enumerate(outstanding) if n == least])
        if queue_size and len(queues[replica]) >= queue_size:
            refused += 1
            if clients:  # the client hears at once and sends again
                push(now + max(overhead_s, 1e-4), "arrive")
            return
        outstanding[replica] += 1
        if forming[replica] is not None:
            forming[replica].append(now)
            if len(forming[replica]) == batch:
                start(now, replica, forming[replica])
                forming[replica] = None
        else:
            queues[replica].append(now)
        dispatch(now, replica)

    latencies: list[float] = []
    finished_at: list[float] = []
    waits: list[float] = []  # arrival to the start of its batch: queue and batch forming
    refused = 0
    warmup = requests // 10
    if clients:
        for _ in range(clients):
            push(rng.uniform(0, 1e-3), "arrive")
    else:
        push(rng.expovariate(rate), "arrive")
    while events and len(latencies) < requests + warmup:
        now, _, kind, replica, data = heapq.heappop(events)
        if kind == "arrive":
            arrive(now)
            if not clients:
                push(now + rng.expovariate(rate), "arrive")
        elif kind == "timer":
            if forming[replica] is not None and data == tokens[replica]:
                start(now, replica, forming[replica])
                forming[replica] = None
                dispatch(now, replica)
        else:  # a batch done: its requests answered after the time outside the worker
            idle[replica] += 1
            outstanding[replica] -= len(data)
            for arrived in data:
                latencies.append(now + overhead_s - arrived)
                finished_at.append(now + overhead_s)
                if clients:
                    push(now + overhead_s, "arrive")
            dispatch(now, replica)
    kept = sorted(latencies[warmup:])
    span = finished_at[-1] - finished_at[warmup]
    return {"throughput": (len(kept) - 1) / span if span > 0 else 0.0,
            "p50_ms": percentile(kept, 0.50) * 1000,
            "p99_ms": percentile(kept, 0.99) * 1000,
            "mean_ms": statistics.fmean(kept) * 1000,
            "mean_wait_ms": statistics.fmean(waits[warmup:]) * 1000,
            "refused": refused}


def capacity_at(p99_ms: float, run: Callable[[int], dict], ladder=USER_LADDER) -> tuple[float, list]:
    """The most throughput whose p99 is within the target, over a client ladder."""
    points = [{"clients": c, **run(c)} for c in ladder]
    best = best_within(points, p99_ms, rate="throughput", errors="refused")
    return (best["throughput"] if best else 0.0), points


def replicas_for(rate: float, service: Callable[[int], float], workers: int, batch: int,
                 delay_s: float, overhead_s: float, p99_ms: float, limit: int = 64) -> dict:
    """The fewest replicas whose open-loop p99 at `rate` is within the target."""
    for replicas in range(1, limit + 1):
        saturation = replicas * workers * batch / service(batch)
        if rate >= 0.95 * saturation:
            continue
        point = simulate(service, replicas, workers, batch, delay_s, rate=rate,
                         overhead_s=overhead_s, requests=20000)
        if point["p99_ms"] <= p99_ms:
            return {"replicas": replicas, **point, "utilisation": rate / saturation}
    raise ValueError(f"{rate} req/s needs more than {limit} replicas")


# -- the multi-instance run ---------------------------------------------------------------------

@contextmanager
def pinned(cores: set[int]):
    """Children started inside inherit this CPU affinity (TorchServe's frontend and workers)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cluster_instances(name: str, replicas: int, run_dir: Path, settings: dict) -> list:
    """`replicas` TorchServe instances of one model with the cluster's config.properties (token
    check off, inference on loopback: the front door checks the key), each pinned to a core."""
    from serving.build.archive import with_config
    from serving.run.torchserve import start_on_free_ports

    store = run_dir / "store"
    with_config(MODEL_STORE / f"{name}.mar", store / f"{name}.mar", settings)
    config_dir = write_cluster_config(run_dir / "config")
    cores = sorted(os.sched_getaffinity(0))
    instances = []
    try:
        for i in range(replicas):
            with pinned({cores[i % len(cores)]}):
                instances.append(start_on_free_ports(
                    run_dir / f"replica-{i}" / "torchserve", [name], model_store=store,
                    base_config=config_dir / "config.properties"))
    except Exception:
        for instance in instances:
            instance.stop()
        raise
    return instances


def locust_point(name: str, host: str, users: int, duration: str, out: Path, key_file: Path,
                 processes: int) -> dict:
    from loadtest import user_class_name
    from loadtest.runner import MEASURE_ONLY, locust, seconds, stats
    from serving.run.torchserve import free_port

    import psutil

    out.mkdir(parents=True, exist_ok=True)
    before, started = psutil.cpu_times(), time.monotonic()
    locust(out, host, users, users, duration, [user_class_name(name)], processes=processes,
           extra=MEASURE_ONLY, key_file=str(key_file), metrics_port=free_port(),
           log=out / "locust.log")
    after, elapsed = psutil.cpu_times(), time.monotonic() - started
    row = stats(out)[name]
    count, failures = int(row["Request Count"]), int(row["Failure Count"])
    # Everything the machine ran (servers, nginx, Locust, Locust's start and stop), in cores.
    busy = sum(after) - after.idle - after.iowait - (sum(before) - before.idle - before.iowait)
    return {"clients": users, "throughput": (count - failures) / seconds(duration),
            "p50_ms": float(row["50%"]), "p99_ms": float(row["99%"]), "failures": failures,
            "busy_cores": busy / elapsed, "requests": count}


def verify(name: str, replicas_list: list[int], duration: str, processes: int, log=print) -> dict:
    """Per replica count: the measured ladder through nginx and distributed Locust, and the
    model's prediction for the same ladder."""
    from serving.run.torchserve import free_port
    from serving.perf.tune import settings_of

    candidate = {**shipped_settings(name), "workers": 1, "threads": 1}  # a replica per core here
    p99 = slo_p99_ms(name)
    work = RUN_DIR / "capacity-verify" / name
    log(f"[{name}] service times in-process, 1 thread, batch 1..{candidate['batchSize']}")
    times = service_times(name, 1, candidate["batchSize"], "payloads")
    key = secrets.token_hex(16)
    key_file = work / "key_file.json"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps({"inference": {"key": key}}))
    runs: list[dict] = []
    for replicas in replicas_list:
        log(f"[{name}] {replicas} replica(s), 1 worker x 1 thread each, pinned one per core")
        instances = cluster_instances(name, replicas, work / f"r{replicas}", settings_of(candidate))
        door = FrontDoor(work / f"r{replicas}" / "nginx",
                         [f"127.0.0.1:{i.ports['inference']}" for i in instances], key, free_port())
        try:
            door.start()
            host = f"http://127.0.0.1:{door.port}"
            points = []
            for users in USER_LADDER:
                point = locust_point(name, host, users, duration,
                                     work / f"r{replicas}" / f"u{users}", key_file, processes)
                log(f"  {users:3d} users: {point['throughput']:7.1f} req/s  p50 "
                    f"{point['p50_ms']:6.0f} ms  p99 {point['p99_ms']:6.0f} ms  "
                    f"failures {point['failures']}")
                points.append(point)
        finally:
            door.stop()
            for instance in instances:
                instance.stop()
        runs.append({"replicas": replicas, "points": points})
    result = {"model": name, "cpu": cpu_name(), "cores": os.cpu_count(), "p99_target_ms": p99,
              "duration": duration, "locust_processes": processes, "settings": candidate,
              "job_queue_size": int(models.load(name).config.get("jobQueueSize") or 0),
              "service_s": {str(b): t for b, t in times.items()}, "runs": runs}
    return predict(result)


def predict(result: dict) -> dict:
    """The queueing model's ladder for each measured run of `verify`, and the comparison: the most
    requests/s within the p99 target with nothing refused, measured and predicted."""
    s = interpolate({int(b): t for b, t in result["service_s"].items()})
    settings, p99 = result["settings"], result["p99_target_ms"]
    # The time outside the worker from the one-client point of the first run.
    result["overhead_s"] = outside_worker_s(result["runs"][0]["points"][0]["throughput"], s,
                                            settings["maxBatchDelay"] / 1000)
    # And a bound the queueing model does not know: the machine's cores over the CPU one request
    # costs, everything on the machine included (worker, frontend, nginx, Locust), taken at the
    # first run's busiest point that refused nothing. It binds once replicas and the load they
    # serve want more cores than there are; in a cluster each replica has its own and the
    # generator runs elsewhere.
    busiest = max((p for p in result["runs"][0]["points"] if not p["failures"] and "busy_cores" in p),
                  key=lambda p: p["throughput"], default=None)
    result["cpu_s_per_request"] = busiest["busy_cores"] / busiest["throughput"] if busiest else None
    cpu_bound = (result["cores"] / result["cpu_s_per_request"] if result["cpu_s_per_request"]
                 else float("inf"))
    for run in result["runs"]:
        ladder = [p["clients"] for p in run["points"]]
        measured = max([p["throughput"] for p in run["points"]
                        if p["p99_ms"] <= p99 and not p["failures"]], default=0.0)
        predicted, model_points = capacity_at(p99, lambda c: simulate(
            s, run["replicas"], settings["workers"], settings["batchSize"],
            settings["maxBatchDelay"] / 1000, clients=c, overhead_s=result["overhead_s"],
            requests=5000, queue_size=result["job_queue_size"]), ladder=ladder)
        bounded = min(predicted, cpu_bound)
        run.update({"model_points": model_points, "measured_rps": measured,
                    "predicted_rps": predicted, "cpu_bound_rps": cpu_bound,
                    "predicted_bounded_rps": bounded,
                    "error": (predicted - measured) / measured if measured else None,
                    "error_bounded": (bounded - measured) / measured if measured else None})
    return result


def plot(result: dict, path: Path) -> Path:
    """Throughput against p99 per replica count: each measured ladder and the model's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, run in enumerate(result["runs"]):
        color = f"C{i}"
        ok = [p for p in run["points"] if not p["failures"]]
        ax.plot([p["throughput"] for p in ok], [p["p99_ms"] for p in ok], "o-", color=color,
                label=f"{run['replicas']} replica(s), measured")
        model = [p for p in run["model_points"] if not p.get("refused")]
        ax.plot([p["throughput"] for p in model], [p["p99_ms"] for p in model], "x--",
                color=color, label=f"{run['replicas']} replica(s), queueing model")
    ax.axhline(result["p99_target_ms"], color="grey", lw=0.8, ls=":")
    if result.get("cpu_s_per_request"):
        ax.axvline(result["cores"] / result["cpu_s_per_request"], color="black", lw=0.8, ls="-.",
                   label="the machine's CPU bound")
    ax.set_xlabel("requests/s answered (closed loop, 1-32 Locust users; refusing points left out)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"{result['model']}: replicas of 1 worker x 1 thread, one core each, behind "
                 f"nginx\n{result['cpu']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the commands (`python -m serving deploy measure|plan|verify`) ---------------------------------

def cmd_measure(args) -> int:
    result = measure(args.models or list(models.names()), args.seconds)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"Written: {args.out}")
    return 0


def cmd_plan(args) -> int:
    capacity = load_capacity()
    entry = capacity["models"][args.model]
    by_target = max(MIN_REPLICAS, math.ceil(args.rate / (TARGET_LOAD * entry["replica_rps"])))
    measured_s = interpolate({int(b): t for b, t in entry["service_s"].items()})
    # The handler's in-process times leave out what else a replica's cores run (the frontend,
    # and here the load generator): stretched so that one simulated replica saturates at the
    # capacity measured, the model keeps the queueing and batching and loses that optimism.
    saturation = entry["workers"] * entry["batchSize"] / measured_s(entry["batchSize"])
    stretch = max(1.0, saturation / entry["replica_rps"])

    def s(b: int) -> float:
        return stretch * measured_s(b)

    p99 = args.p99_ms or entry["p99_target_ms"]
    model = replicas_for(args.rate, s, entry["workers"], entry["batchSize"],
                         entry["maxBatchDelay"] / 1000, entry["overhead_s"], p99)
    print(f"{args.model} at {args.rate:g} req/s, p99 target {p99:g} ms (one replica: "
          f"{entry['replica_rps']} req/s within p99 {entry['p99_target_ms']:g} ms, "
          f"{entry['cores']} cores, measured on {capacity['cpu']}):\n"
          f"  autoscaler ({TARGET_LOAD:.0%} of a replica's capacity, at least {MIN_REPLICAS}): "
          f"{by_target} replicas\n"
          f"  queueing model (Poisson arrivals; in-process service times x{stretch:.2f} to the "
          f"measured capacity): at least {model['replicas']} replica(s) for p99 "
          f"{model['p99_ms']:.1f} ms, at {model['utilisation']:.0%} of their capacity")
    return 0


def cmd_verify(args) -> int:
    if args.recorded:  # the model again over runs already measured
        result = predict(json.loads(Path(args.recorded).read_text()))
    else:
        result = verify(args.model, args.replicas, args.duration, args.processes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    picture = plot(result, out.with_suffix(".png"))
    print(f"\n{args.model}, p99 target {result['p99_target_ms']:g} ms, {result['cpu']}:")
    bound = result["cpu_s_per_request"]
    print(f"CPU per request, everything on the machine: "
          f"{bound * 1000:.1f} ms" if bound else "no CPU figures in this run")
    print(f"{'replicas':>8}  {'measured':>9}  {'model':>7}  {'error':>7}  {'CPU bound':>9}  "
          f"{'model, bounded':>14}  {'error':>7}   (req/s within the p99 target)")
    for run in result["runs"]:
        error = f"{run['error']:+.1%}" if run["error"] is not None else "-"
        bounded = f"{run['error_bounded']:+.1%}" if run["error_bounded"] is not None else "-"
        print(f"{run['replicas']:>8}  {run['measured_rps']:>9.1f}  {run['predicted_rps']:>7.1f}  "
              f"{error:>7}  {run['cpu_bound_rps']:>9.1f}  {run['predicted_bounded_rps']:>14.1f}  "
              f"{bounded:>7}")
    print(f"Written: {out}, {picture}")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["service-times"]:  # the child of service_times()
        name, threads, batches, store, bodies_from = argv[1:6]
        print(json.dumps(child_service_times(name, int(threads),
                                             [int(b) for b in batches.split(",")], store,
                                             bodies_from)))
        return 0
    raise SystemExit(f"unknown: {argv}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
