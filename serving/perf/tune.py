"""python -m serving tune MODEL --p99-ms X: the serving settings that give the most throughput
within a p99 latency limit, found against the real TorchServe (like Triton's model_analyzer).

Settings searched: batchSize x maxBatchDelay x workers x threads per worker. Each candidate is
the built archive with its model-config.yaml changed (no rebuild), served alone by a TorchServe on
free ports, and driven by the closed-loop load generator at a rising number of connections (at least --clients, 16) until
its p99 passes the limit or its throughput stops growing. A candidate's score is the most
requests/s it answered at a p99 within the limit; one that refuses a request at --clients
connections or fewer (its queue too short for the concurrency the service is sized for) is out.

The search is staged, within a time budget: workers x threads first (the largest lever on a small
CPU), then batch sizes, then batch delays, each stage varying the best two so far. The current
settings stay unless another candidate beats them by more than the noise (10%), or matches them
with a clearly lower p99 or idle latency. It prints a table,
draws every measured point (throughput against p99) with the Pareto front, and with --write puts
the winner into models/MODEL/model-config.yaml with the figures that justify it. The archive is
rebuilt by the next `make build` (the config is part of its digest).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import models
from serving.perf.measure import LADDER, Target, best_within, climb, run_point, tree
from serving.run.cpu import cpu_name
from serving.run.paths import MODEL_STORE, RUN_DIR

BEAM = 2
KNOBS = ("batchSize", "maxBatchDelay", "workers", "threads")


def settings_of(candidate: dict) -> dict:
    """A candidate as model-config.yaml settings."""
    return {"batchSize": candidate["batchSize"], "maxBatchDelay": candidate["maxBatchDelay"],
            "minWorkers": candidate["workers"], "maxWorkers": candidate["workers"],
            "handler": {"torch_threads": candidate["threads"]}}


def label(candidate: dict) -> str:
    shared = candidate["workers"] * candidate["threads"] > (os.cpu_count() or 1)
    return (f"batch {candidate['batchSize']}, delay {candidate['maxBatchDelay']} ms, "
            f"{candidate['workers']} worker(s) x {'up to ' if shared else ''}"
            f"{candidate['threads']} thread(s)")


def score(points: list[dict], p99_ms: float, clients: int) -> tuple[float, dict | None]:
    """(the most requests/s answered within the p99 limit, that point). Nothing when the
    candidate refused a request at `clients` connections or fewer: its queue cannot absorb the
    concurrency the service is sized for, whatever its throughput."""
    if any(p["errors"] and p["clients"] <= clients for p in points):
        return 0.0, None
    best = best_within(points, p99_ms)
    return (best["ok_per_s"] if best else 0.0), best


SERVERS = ("torchserve", "litserve", "triton")  # litserve, triton: the served benchmark's peers


def tune_dir(name: str, server: str = "torchserve") -> Path:
    """Where a search's tune.json and plot go: run/tune/MODEL, or run/tune/MODEL-PEER."""
    return RUN_DIR / "tune" / (name if server == "torchserve" else f"{name}-{server}")


@contextmanager
def serving(server: str, name: str, store: Path, candidate: dict, work: Path,
            front_door: dict | None) -> Iterator[tuple[Target, Path, str, bool]]:
    """The candidate served by `server` from `store` (the archive with the candidate's
    model-config): its target, and the request body file, content type and binary flag to send."""
    from serving.perf import peers

    spec = models.load(name)
    file, content_type = spec.example_request
    body_file = models.MODELS_DIR / name / file
    binary = not content_type.startswith("application/json")
    if server == "litserve":
        with peers.litserve_serving(name, store, candidate) as target:
            yield target, body_file, content_type, binary
        return
    if server == "triton":
        with peers.triton_serving(name, store, candidate, content_type, body_file,
                                        work) as (target, request):
            yield target, request, "application/octet-stream", False
        return
    from serving.run.torchserve import free_port, start_on_free_ports

    options = {}
    if front_door is not None:
        from serving.run.torchserve import write_cluster_config

        options["base_config"] = write_cluster_config(work / "config") / "config.properties"
    instance = start_on_free_ports(work / "torchserve", [name], model_store=store, **options)
    door = None
    try:
        target = Target("torchserve", f"{instance.inference_url}/predictions/{name}",
                        instance.auth("inference"), lambda: tree(instance.process()))
        if front_door is not None:
            from serving.run.frontdoor import FrontDoor

            door = FrontDoor(work / "nginx", [f"127.0.0.1:{instance.ports['inference']}"],
                             "capacity-key-" + "0" * 16, free_port(), extra_env=front_door)
            door.start()
            target = Target("torchserve behind the front door",
                            f"http://127.0.0.1:{door.port}/predictions/{name}",
                            {"Authorization": f"Bearer {door.key}"},
                            lambda: tree(instance.process()) + tree(door.process_handle()))
        yield target, body_file, content_type, binary
    finally:
        if door:
            door.stop()
        instance.stop()


def measure_candidate(name: str, candidate: dict, p99_ms: float, seconds: float, work: Path, log,
                      clients: int = 16, front_door: dict | None = None,
                      server: str = "torchserve") -> dict:
    """Serves the candidate and climbs the client ladder, at least to `clients` (unless it refuses
    a request first), then on while the p99 is within the limit and throughput grows. `server`:
    TorchServe, or a peer of the served benchmark (LitServe, Triton) given the same settings.

    `front_door` (render.sh's settings, e.g. FRONTDOOR_MAX_REQUESTS): as a Kubernetes pod runs
    it, TorchServe with the cluster's config (no token check) behind the pod's nginx front door
    with a key, every request through nginx and its CPU counted with the server's."""
    from serving.build.archive import with_config
    from serving.run.process import StartFailed

    store = work / "store"
    with_config(MODEL_STORE / f"{name}.mar", store / f"{name}.mar", settings_of(candidate))
    # Each server is started on new ports a few times before it fails (serving.perf.peers,
    # serving.run.torchserve); one that still does not start leaves its candidate out and the
    # search goes on.
    started = time.monotonic()
    try:
        with serving(server, name, store, candidate, work, front_door) as (
                target, body_file, content_type, binary):
            ready_s = time.monotonic() - started

            def point_at(connections: int) -> dict:
                point = run_point(target, body_file, content_type, binary, seconds,
                                  clients=connections)
                return {k: point[k] for k in ("clients", "ok_per_s", "p50_ms", "p99_ms",
                                              "errors")}

            points = climb(point_at, p99_ms, at_least=clients, ladder=LADDER)
            rss_mb = sum(p.memory_info().rss for p in target.processes()) / 2 ** 20
    except StartFailed as e:
        log(f"  {label(candidate)}: {server} did not start: {e}")
        return {**candidate, "ready_s": None, "points": [], "score": 0.0, "best": None,
                "rss_mb": None, "failed": str(e)}
    value, best = score(points, p99_ms, clients)
    result = {**candidate, "ready_s": ready_s, "points": points, "score": value, "best": best,
              "rss_mb": rss_mb}
    refused = next((p["clients"] for p in points if p["errors"]), None)
    log(f"  {label(candidate)}: " + (f"{best['ok_per_s']:.1f} req/s at p99 {best['p99_ms']:.0f} ms "
        f"({best['clients']} clients)" if best else
        f"refused requests at {refused} clients" if refused and refused <= clients else
        f"nothing within p99 {p99_ms:g} ms") +
        "; points: " + ", ".join(f"c{p['clients']} {p['ok_per_s']:.0f}/s p99 {p['p99_ms']:.0f}"
                                   for p in points))
    return result


def stages(current: dict, cores: int, shared: bool = True) -> list[tuple[str, list[dict]]]:
    """Candidates per stage, each a change of one knob from the best so far (filled in later).
    shared=False (a peer: nothing shares its cores by who is busy): no more threads than fit."""
    batch = current["batchSize"]
    batches = sorted({1, max(1, batch // 2), batch, batch * 2})
    delays = sorted({1, 5, 20, current["maxBatchDelay"]})
    # Workers x threads that fit the cores, one worker on one thread, and workers that may each
    # take every core: they share them by who is busy (handlers/cores.py), so one busy worker
    # gets all of them and two busy workers half each.
    shapes = [(w, max(1, cores // w)) for w in range(1, cores + 1)] + [(1, 1)] + \
        ([(w, cores) for w in range(2, cores + 1)] if shared else [])
    return [("workers", [{"workers": w, "threads": t} for w, t in dict.fromkeys(shapes)]),
            ("batchSize", [{"batchSize": b} for b in batches]),
            ("maxBatchDelay", [{"maxBatchDelay": d} for d in delays])]


def idle_p50(result: dict) -> float:
    """p50 at one client: what a request pays when the server is idle."""
    ones = [p["p50_ms"] for p in result["points"] if p["clients"] == 1]
    return ones[0] if ones else float("inf")


def best_p99(result: dict) -> float:
    return result["best"]["p99_ms"] if result["best"] else float("inf")


# One 4-8 s load point moves by about this much between runs on these shared 2-core VMs.
NOISE = 0.10


def better(result: dict, best: dict) -> bool:
    """More throughput within the limit by more than the noise; or as much, within the noise,
    with a p99 there or an idle latency at least 20% lower. Otherwise the settings found first
    stay: a change the measurements cannot tell from chance is not made."""
    if result["score"] > best["score"] * (1 + NOISE):
        return True
    return result["score"] >= best["score"] * (1 - NOISE) and (
        best_p99(result) < 0.8 * best_p99(best) or idle_p50(result) < 0.8 * idle_p50(best))


def search(name: str, p99_ms: float, budget_s: float, seconds: float, log,
           clients: int = 16, server: str = "torchserve") -> dict:
    """The staged search for `server`, starting from the archive's settings (a peer starts from
    them too, so that each server's best is found the same way)."""
    from serving.build.archive import shipped_settings

    cores = os.cpu_count() or 1
    current = shipped_settings(name)
    work = tune_dir(name, server)
    measured: dict[tuple, dict] = {}
    started = time.monotonic()

    def run(candidate: dict) -> dict:
        key = tuple(candidate[k] for k in KNOBS)
        if key not in measured:
            measured[key] = measure_candidate(name, candidate, p99_ms, seconds, work, log, clients,
                                              server=server)
        return measured[key]

    log(f"[{name}] {server}, from the archive's config: {label(current)}")
    baseline = run(current)
    # A beam of the best two: one load point moves by ~10% between runs here, so a stage keeps
    # the runner-up within that of the best, and the next stage varies both.
    beam = [baseline]
    out_of_time = False
    for stage, changes in stages(current, cores, shared=server == "torchserve"):
        log(f"[{name}] stage {stage}")
        for start in list(beam):
            for change in changes:
                if time.monotonic() - started > budget_s:
                    out_of_time = True
                    break
                run({**{k: start[k] for k in KNOBS}, **change})
        ranked = sorted(measured.values(), key=lambda r: -r["score"])
        beam = [r for r in ranked[:BEAM] if r["score"] >= 0.9 * ranked[0]["score"]]
        if out_of_time:
            log(f"[{name}] the time budget ({budget_s:.0f} s) ran out; the best so far is kept")
            break
    return {"model": name, "server": server, "cpu": cpu_name(), "p99_ms": p99_ms, "clients": clients,
            "seconds_per_point": seconds, "elapsed_s": time.monotonic() - started,
            "baseline": baseline,
            "best": choose(baseline, list(measured.values())),
            "candidates": list(measured.values()), "complete": not out_of_time}


def choose(baseline: dict, candidates: list[dict]) -> dict:
    """The most throughput, if it beats the current settings by more than the noise; then, among
    the candidates within the noise of it, a clearly lower p99 or idle latency wins."""
    ranked = sorted(candidates, key=lambda r: -r["score"])
    best = ranked[0] if better(ranked[0], baseline) else baseline
    for result in ranked:
        if result["score"] >= (1 - NOISE) * ranked[0]["score"] and better(result, best):
            best = result
    return best


def rescore(result: dict, p99_ms: float, clients: int = 16) -> dict:
    """A recorded search decided again for another p99 limit (or rule), from its load points."""
    for candidate in result["candidates"]:
        candidate["score"], candidate["best"] = score(candidate["points"], p99_ms, clients)
    key = lambda c: tuple(c[k] for k in KNOBS)  # noqa: E731
    baseline = next(c for c in result["candidates"] if key(c) == key(result["baseline"]))
    return {**result, "p99_ms": p99_ms, "clients": clients, "baseline": baseline,
            "best": choose(baseline, result["candidates"])}


def pareto(points: list[dict]) -> list[dict]:
    """The points no other point beats on both throughput and p99."""
    front = []
    for p in sorted(points, key=lambda p: (p["p99_ms"], -p["ok_per_s"])):
        if not front or p["ok_per_s"] > front[-1]["ok_per_s"]:
            front.append(p)
    return front


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = [{**p, "candidate": label(c)} for c in result["candidates"] for p in c["points"]]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for c in result["candidates"]:
        ax.plot([p["p99_ms"] for p in c["points"]], [p["ok_per_s"] for p in c["points"]],
                marker=".", linewidth=0.8, alpha=0.6, label=label(c))
    front = pareto(everything)
    ax.plot([p["p99_ms"] for p in front], [p["ok_per_s"] for p in front], color="black",
            linewidth=2, label="Pareto front")
    ax.axvline(result["p99_ms"], color="red", linestyle=":", label=f"p99 limit {result['p99_ms']:g} ms")
    ax.set_xscale("log")
    ax.set_xlabel("p99 ms (closed loop, rising clients)")
    ax.set_ylabel("answered requests/s")
    ax.set_title(f"{result['model']} on {result.get('server', 'torchserve')}: tuning "
                 f"({result['cpu']})", fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def table(result: dict) -> str:
    lines = [f"| batch | delay ms | workers x threads | req/s within p99 {result['p99_ms']:g} ms | "
             "its p99 ms | clients | ready s |", "|---|---|---|---|---|---|---|"]
    for c in sorted(result["candidates"], key=lambda c: -c["score"]):
        b = c["best"] or {}
        refused = next((p["clients"] for p in c["points"] if p["errors"]), None)
        if "failed" in c:
            lines.append(f"| {c['batchSize']} | {c['maxBatchDelay']} | {c['workers']} x "
                         f"{c['threads']} | out: did not start "
                         f"({c['failed'].splitlines()[0][:80]}) | | | |")
            continue
        if not b and refused is not None:
            lines.append(f"| {c['batchSize']} | {c['maxBatchDelay']} | {c['workers']} x "
                         f"{c['threads']} | out: refused requests at {refused} clients | | | "
                         f"{c['ready_s']:.1f} |")
            continue
        mark = " (chosen)" if c is result["best"] or c == result["best"] else ""
        shared = "up to " if c["workers"] * c["threads"] > (os.cpu_count() or 1) else ""
        lines.append(f"| {c['batchSize']} | {c['maxBatchDelay']} | {c['workers']} x {shared}{c['threads']} | "
                     f"{c['score']:.1f}{mark} | {b.get('p99_ms', float('nan')):.0f} | "
                     f"{b.get('clients', '–')} | {c['ready_s']:.1f} |")
    return "\n".join(lines)


def write_config(result: dict, path: Path) -> None:
    """Puts the chosen settings into model-config.yaml, keeping its other lines and comments, with
    a comment that says where they came from."""
    best, base = result["best"], result["baseline"]
    values = {"batchSize": best["batchSize"], "maxBatchDelay": best["maxBatchDelay"],
              "minWorkers": best["workers"], "maxWorkers": best["workers"]}
    lines = [line for line in path.read_text().splitlines() if not line.startswith("# tuned:")]
    for key, value in values.items():
        pattern = re.compile(rf"^{key}:\s*[^#\s]*(\s*#.*)?$")
        for i, line in enumerate(lines):
            if pattern.match(line):
                comment = pattern.match(line).group(1) or ""
                lines[i] = f"{key}: {value}{comment}"
                break
        else:
            lines.insert(1, f"{key}: {value}")
    threads = f"  torch_threads: {best['threads']}"
    at = [i for i, line in enumerate(lines) if re.match(r"^\s+torch_threads:", line)]
    if at:
        lines[at[0]] = threads + "   # threads per worker process"
    else:
        if not any(line.startswith("handler:") for line in lines):
            lines.append("handler:")
        lines.insert(lines.index(next(l for l in lines if l.startswith("handler:"))) + 1,
                     threads + "   # threads per worker process")
    b = best["best"] or {}
    note = (f"# tuned: python -m serving tune {result['model']} --p99-ms {result['p99_ms']:g} on "
            f"{result['cpu']}: {best['score']:.1f} req/s at p99 {b.get('p99_ms', 0):.0f} ms " +
            ("(the settings it started from: none of the others beat them by more than the noise)"
             if best is base else f"(the previous settings: {base['score']:.1f} req/s)") +
            f"; {len(result['candidates'])} configurations tried")
    lines.insert(1, note)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--p99-ms", type=float, required=True, help="the latency limit")
    parser.add_argument("--budget-s", type=float, default=900, help="stop starting candidates "
                        "after this many seconds")
    parser.add_argument("--seconds", type=float, default=5.0, help="per load point")
    parser.add_argument("--clients", type=int, default=16, help="the concurrency the service must "
                        "absorb: a candidate that refuses a request at this many connections or "
                        "fewer (its queue too short) is out")
    parser.add_argument("--recorded", metavar="TUNE_JSON", help="decide from a recorded search "
                        "(its tune.json) instead of measuring again: another --p99-ms, say")
    parser.add_argument("--write", action="store_true",
                        help="put the chosen settings into models/MODEL/model-config.yaml")
    parser.add_argument("--server", choices=SERVERS, default="torchserve",
                        help="search a peer's settings instead (the same knobs, its own best: "
                        "`make bench-serve ARGS=--tuned` then runs each server at its best)")
    args = parser.parse_args(argv)
    if args.model not in models.names():
        parser.error(f"unknown model {args.model}; known: {' '.join(models.names())}")
    if not (MODEL_STORE / f"{args.model}.mar").exists():
        parser.error(f"no archive for {args.model}: python -m serving build {args.model}")
    if args.write and args.server != "torchserve":
        parser.error("--write puts TorchServe's settings into model-config.yaml; a peer's are "
                     "kept in its tune.json")
    log = lambda line: print(line, flush=True)  # noqa: E731
    if args.recorded:
        result = rescore(json.loads(Path(args.recorded).read_text()), args.p99_ms, args.clients)
        log(f"decided again from {args.recorded} (measured on {result['cpu']})")
    else:
        log(f"CPU: {cpu_name()}")
        result = search(args.model, args.p99_ms, args.budget_s, args.seconds, log, args.clients,
                        args.server)
    out = tune_dir(args.model, args.server)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.json").write_text(json.dumps(result, indent=2))
    print("\n" + table(result))
    best, base = result["best"], result["baseline"]
    print(f"\nchosen: {label(best)}: {best['score']:.1f} req/s within p99 {args.p99_ms:g} ms "
          f"(the current settings: {base['score']:.1f} req/s)")
    print(f"JSON: {out / 'tune.json'}\nPlot: {plot(result, out / 'pareto.png')}")
    if args.write:
        config = models.MODELS_DIR / args.model / models.SERVING_CONFIG
        write_config(result, config)
        print(f"wrote {config}; `make build` rebuilds the archive with it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
