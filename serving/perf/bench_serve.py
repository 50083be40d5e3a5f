"""python -m serving bench-serve: what serving costs, per model, against the same work in-process.

For each model, in one run, with the archive as built (model_store/NAME.mar):

  model        the model alone, in-process, at its full batch (items/s), and at batch 1 (ms)
  handler      the real handler in-process (decode + model + encode), full batches of the example
               request, called as a TorchServe worker calls it (requests/s)
  torchserve   a TorchServe serving only this model: one request at a time (c1: idle latency),
               a closed loop at `--clients` connections (saturation), and an open-loop sweep of
               request rates up to and past saturation (the latency-throughput curve)
  litserve     the same archive and handler decode/encode under LitServe (a peer), same loads
  triton       the same under Triton Inference Server (PyTriton's tritonserver: its HTTP front end,
               dynamic batcher and model instances; serving/perf/triton_peer.py), same loads, the
               Open Inference Protocol's binary-data extension carrying the same request body

Every server and measurement runs in its own process; the load generator (serving.perf.loadgen) is
the same for both servers and reports its own CPU, and each server's processes' CPU is sampled,
so that on a 2-core machine the share each part takes is on the record. Binary inputs go as a
multipart field to both servers (LitServe reads nothing else). Results: a table with the ratios,
JSON, and a PNG of latency against throughput per model, all naming the CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import models
from serving.build.archive import serving_settings
from serving.perf.bench import run_child
from serving.perf.peers import PYTRITON, litserve_serving, triton_serving
from serving.perf.measure import Target, best_within, loaded_alone, run_point, time_calls, tree
from serving.run.cpu import cpu_name
from serving.run.paths import MODEL_STORE, RUN_DIR

SWEEP = (0.25, 0.5, 0.7, 0.85, 1.0, 1.15)  # open-loop rates, as fractions of the closed loop's


# -- in-process -----------------------------------------------------------------------------------

def child_inprocess(name: str, model_store: Path) -> dict:
    """In this (fresh) process: the model alone and the handler, from the real archive."""
    import torch

    from handlers.cores import available_cores

    loaded = loaded_alone(name, model_store, "bench")
    handler = loaded.handler
    # One caller with every core: the most a single process gets (the archive may give each of
    # its workers fewer threads).
    torch.set_num_threads(available_cores())
    if hasattr(handler.model, "with_threads"):  # a runtime whose pool is sized at load (ORT)
        handler.model = handler.model.with_threads(torch.get_num_threads())
    file, content_type = models.load(name).example_request
    body = (models.MODELS_DIR / name / file).read_bytes()
    batch = loaded.batch_size
    items = handler.read({"body": body}, {"body": {"content-type": content_type}})

    def model_alone(n: int) -> list[float]:
        chunk = (items * n)[:n]
        inputs = tuple(t.to(handler.device) for t in handler.collate(chunk))

        def forward():  # a GPU's kernels run on after the call returns: wait for them
            answer = handler.model(*inputs)
            if handler.device.type == "cuda":
                torch.cuda.synchronize(handler.device)
            return answer

        with torch.inference_mode():
            return time_calls(forward, min_runs=10, budget_s=3.0, warmup=2)

    def all_ok(answers) -> None:
        assert all(a.status == 200 for a in answers), answers[0]

    def handled(n: int) -> list[float]:
        requests = [(body, content_type)] * n
        return time_calls(lambda: loaded.handle(requests), check=all_ok)

    full_model, one_model = model_alone(batch), model_alone(1)
    full_handler, one_handler = handled(batch), handled(1)
    return {"batch": batch, "threads": torch.get_num_threads(),
            "model_items_per_s": batch * len(items) / statistics.median(full_model),
            "handler_req_per_s": batch / statistics.median(full_handler),
            "forward_c1_ms": statistics.median(one_model) * 1000,
            "handler_c1_ms": statistics.median(one_handler) * 1000,
            "target": handler.build_info.get("target"),
            "precision": handler.build_info.get("precision"),
            "device": torch.cuda.get_device_name(handler.device)
                      if handler.device.type == "cuda" else "cpu"}


# -- load -----------------------------------------------------------------------------------------

def measure_server(target: Target, body_file: Path, content_type: str, binary: bool, clients: int,
            seconds: float, sweep: tuple[float, ...], log, profile_dir: Path | None = None,
            warmup: float = 0.0) -> dict:
    warm = None
    if warmup > 0:  # unmeasured, the same for every server: see --warmup
        warm = run_point(target, body_file, content_type, binary, warmup, clients=clients)
        log(f"  {target.label}: warm-up, {clients} clients for {warmup:.0f} s: "
            f"{warm['ok_per_s']:.1f} req/s, frontend CPU {warm['cpu_cores']['frontend']:.2f} cores")
    c1 = run_point(target, body_file, content_type, binary, min(seconds, 6.0), clients=1)
    if not c1["ok"]:
        raise RuntimeError(f"{target.label} answered no request with 200: {c1['statuses']}")
    log(f"  {target.label}: c1 p50 {c1['p50_ms']:.1f} ms")
    closed = run_point(target, body_file, content_type, binary, seconds, clients=clients,
                  profile_to=profile_dir / f"{target.label}.txt" if profile_dir else None)
    cpu = closed["cpu_cores"]
    log(f"  {target.label}: closed loop, {clients} clients: {closed['ok_per_s']:.1f} req/s, "
        f"p50 {closed['p50_ms']:.0f} ms, p99 {closed['p99_ms']:.0f} ms, answers {closed['statuses']}; "
        f"CPU cores: frontend {cpu['frontend']:.2f}, workers {cpu['workers']:.2f}, "
        f"generator {closed['generator_cpu_share']:.2f}")
    for frame, share in closed.get("worker_profile", [])[:6]:
        log(f"    worker {share:5.1%}  {frame}")
    curve = []
    for fraction in sweep:
        point = run_point(target, body_file, content_type, binary, seconds,
                     rate=max(1.0, fraction * closed["ok_per_s"]))
        point["fraction"] = fraction
        curve.append(point)
        log(f"  {target.label}: open loop {point['rate']:.1f}/s -> {point['ok_per_s']:.1f} ok/s, "
            f"p50 {point['p50_ms']:.0f} ms, p99 {point['p99_ms']:.0f} ms")
    return {"c1": c1, "closed": closed, "open": curve,
            **({"warmup": {k: warm[k] for k in ("seconds", "ok_per_s", "p99_ms", "cpu_cores")}}
               if warm else {})}


def bench_torchserve(name: str, model_store: Path, body_file: Path, content_type: str,
                     binary: bool, clients: int, seconds: float, sweep, log,
                     idle: tuple[str, ...] = (), profile_dir: Path | None = None,
                     warmup: float = 0.0) -> dict:
    from serving.run.torchserve import start_on_free_ports

    served = [name, *[m for m in idle if m != name]]
    instance = start_on_free_ports(RUN_DIR / "bench-serve" / name, served, model_store=model_store)
    try:
        target = Target("torchserve", f"{instance.inference_url}/predictions/{name}",
                        instance.auth("inference"), lambda: tree(instance.process()))
        result = measure_server(target, body_file, content_type, binary, clients, seconds, sweep,
                                log, profile_dir, warmup)
    finally:
        instance.stop()
    result["settings"] = serving_settings(archive_config(model_store, name))
    return result


def tuned_stores(name: str, servers: list[str], model_store: Path, out: Path, log) -> dict:
    """server -> (its archive copy, its settings): the best settings `python -m serving tune
    NAME --server SERVER` found for it, where it was run; the others keep the archive's."""
    from serving.perf import tune

    stores = {}
    for server in servers:
        recorded = tune.tune_dir(name, server) / "tune.json"
        if not recorded.exists():
            log(f"  {server}: not tuned ({recorded} missing): the archive's settings")
            continue
        result = json.loads(recorded.read_text())
        settings = {k: result["best"][k] for k in tune.KNOBS}
        store = configured_store(model_store, [name], tune.settings_of(settings),
                                 out.resolve() / f"tuned-{server}")
        stores[server] = (store, settings)
        log(f"  {server}: its tuned settings ({tune.label(settings)}; {recorded}, "
            f"{result['cpu']}, p99 limit {result['p99_ms']:g} ms)")
    return stores


def archive_config(model_store: Path, name: str) -> dict:
    import zipfile

    import yaml

    with zipfile.ZipFile(model_store / f"{name}.mar") as mar:
        return yaml.safe_load(mar.read("model-config.yaml")) or {}


def bench_litserve(name: str, model_store: Path, body_file: Path, content_type: str,
                   binary: bool, clients: int, seconds: float, sweep, log,
                   batch_timeout: float | None, profile_dir: Path | None = None,
                   settings: dict | None = None, warmup: float = 0.0) -> dict:
    """LitServe with the archive's own settings unless others are given (the tuner's best for
    it); its batch timeout is the delay unless one is given."""
    settings = settings or serving_settings(archive_config(model_store, name))
    if batch_timeout is not None:
        settings = {**settings, "maxBatchDelay": batch_timeout * 1000}
    with litserve_serving(name, model_store, settings) as target:
        result = measure_server(target, body_file, content_type, binary, clients, seconds, sweep,
                                log, profile_dir, warmup)
    result["settings"] = settings
    return result


def config_settings(pairs: list[str]) -> dict:
    """KEY=VALUE pairs as model-config.yaml settings; handler.KEY goes into the handler: dict."""
    import yaml

    settings: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--config {pair!r}: expected KEY=VALUE")
        parsed = yaml.safe_load(value)
        if key.startswith("handler."):
            settings.setdefault("handler", {})[key.removeprefix("handler.")] = parsed
        else:
            settings[key] = parsed
    return settings


def configured_store(model_store: Path, names: list[str], settings: dict, out: Path) -> Path:
    """Copies of the archives with `settings` merged into their model-config.yaml."""
    from serving.build.archive import with_config

    for name in names:
        with_config(model_store / f"{name}.mar", out / f"{name}.mar", settings)
    return out


def bench_triton(name: str, model_store: Path, body_file: Path, content_type: str, clients: int,
                 seconds: float, sweep, log, out: Path, profile_dir: Path | None = None,
                 settings: dict | None = None, warmup: float = 0.0) -> dict:
    """Triton with the archive's own settings unless others are given (the tuner's best for it)."""
    settings = settings or serving_settings(archive_config(model_store, name))
    with triton_serving(name, model_store, settings, content_type, body_file, out) as (target,
                                                                                      request):
        result = measure_server(target, request, "application/octet-stream", False, clients,
                                seconds, sweep, log, profile_dir, warmup)
    result["settings"] = settings
    return result


# -- report ---------------------------------------------------------------------------------------

PEERS = ("litserve", "triton")


def summarise(result: dict) -> dict:
    inproc, ts = result["inprocess"], result["torchserve"]
    summary = {
        "served_vs_handler": ts["closed"]["ok_per_s"] / inproc["handler_req_per_s"],
        "c1_minus_forward_ms": ts["c1"]["p50_ms"] - inproc["forward_c1_ms"],
    }
    ran = [p for p in PEERS if result.get(p)]
    for name in ran:
        peer = result[name]
        summary[f"torchserve_vs_{name}"] = ts["closed"]["ok_per_s"] / peer["closed"]["ok_per_s"]
        # At the peer's closed-loop p99: the best each server does within that latency.
        limit = peer["closed"]["p99_ms"]
        mine, theirs = best_within(ts["open"], limit), best_within(peer["open"], limit)
        summary[f"at_{name}_p99"] = {
            "p99_ms": limit,
            "torchserve_ok_per_s": mine["ok_per_s"] if mine else 0.0,
            f"{name}_ok_per_s": theirs["ok_per_s"] if theirs else 0.0}
    if ran:
        best = max(ran, key=lambda p: result[p]["closed"]["ok_per_s"])
        summary["best_peer"] = best
        summary["torchserve_vs_best_peer"] = summary[f"torchserve_vs_{best}"]
    if ran and len(result.get("rounds", [])) > 1:
        ratios = [rnd["torchserve"]["ok_per_s"] / max(rnd[p]["ok_per_s"] for p in ran)
                  for rnd in result["rounds"]]
        summary["torchserve_vs_best_peer_per_round"] = ratios
        summary["torchserve_vs_best_peer_median"] = statistics.median(ratios)
        summary["torchserve_p99_lowest_in_rounds"] = sum(
            rnd["torchserve"]["p99_ms"] <= min(rnd[p]["p99_ms"] for p in ran)
            for rnd in result["rounds"])
    return summary


def rounds_table(results: list[dict], peers: list[str]) -> str:
    """Each round's closed loop, the servers measured back to back, and TorchServe's ratio to the
    best peer of that round."""
    names = {"torchserve": "TorchServe", "litserve": "LitServe", "triton": "Triton"}
    servers = ["torchserve", *peers]
    lines = ["| model | round | " + " | ".join(f"{names[s]} req/s (p99 ms)" for s in servers) +
             " | TorchServe / best peer |", "|" + "---|" * (len(servers) + 3)]
    for r in results:
        ratios = r["summary"].get("torchserve_vs_best_peer_per_round", [])
        for number, (rnd, ratio) in enumerate(zip(r["rounds"], ratios), 1):
            lines.append(f"| {r['model']} | {number} | " + " | ".join(
                f"{rnd[s]['ok_per_s']:.1f} ({rnd[s]['p99_ms']:.0f})" for s in servers) +
                f" | {ratio:.2f}x |")
        if ratios:
            lines.append(f"| {r['model']} | median | | " + "| " * (len(servers) - 1) +
                         f"{statistics.median(ratios):.2f}x (range {min(ratios):.2f}-"
                         f"{max(ratios):.2f}; TorchServe's p99 the lowest in "
                         f"{r['summary']['torchserve_p99_lowest_in_rounds']} of {len(ratios)}) |")
    return "\n".join(lines)


def on_device(inproc: dict) -> str:
    return f" on {inproc['device']}" if inproc.get("device", "cpu") != "cpu" else ""


def table(results: list[dict]) -> str:
    lines = ["| model | target | model alone items/s | handler in-process req/s | TorchServe req/s "
             "(p50 / p99 ms) | LitServe req/s (p50 / p99 ms) | Triton req/s (p50 / p99 ms) | "
             "served / in-process | TorchServe / best peer | c1: forward ms / served p50 ms |",
             "|" + "---|" * 10]
    for r in results:
        i, ts, s = r["inprocess"], r["torchserve"], r["summary"]
        cells = []
        for name in PEERS:
            peer = r.get(name)
            cells.append(f"{peer['closed']['ok_per_s']:.1f} ({peer['closed']['p50_ms']:.0f} / "
                         f"{peer['closed']['p99_ms']:.0f})" if peer else "not run")
        ratio = (f"{s['torchserve_vs_best_peer']:.2f}x ({s['best_peer']})"
                 if "best_peer" in s else "–")
        lines.append(
            f"| {r['model']} | {i['target']}/{i['precision']}{on_device(i)} | "
            f"{i['model_items_per_s']:.1f} | "
            f"{i['handler_req_per_s']:.1f} | {ts['closed']['ok_per_s']:.1f} "
            f"({ts['closed']['p50_ms']:.0f} / {ts['closed']['p99_ms']:.0f}) | {' | '.join(cells)} | "
            f"{s['served_vs_handler']:.2f}x | {ratio} | {i['forward_c1_ms']:.2f} / "
            f"{ts['c1']['p50_ms']:.2f} |")
    return "\n".join(lines)


def settings_table(results: list[dict], servers: list[str]) -> str:
    """What each server ran with: the batch, the delay, workers x threads."""
    lines = ["| model | server | batch | delay ms | workers x threads | settings from |",
             "|---|---|---|---|---|---|"]
    for r in results:
        for server in servers:
            s = r[server]["settings"]
            lines.append(f"| {r['model']} | {server} | {s['batchSize']} | {s['maxBatchDelay']} | "
                         f"{s['workers']} x {s['threads']} | "
                         f"{'its tuning' if r[server].get('tuned') else 'the archive'} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path, machine: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False)
    for ax, r in zip(axes[0], results):
        for server, colour in (("torchserve", "tab:blue"), ("litserve", "tab:orange"),
                               ("triton", "tab:green")):
            if not r.get(server):
                continue
            curve = sorted(r[server]["open"], key=lambda p: p["ok_per_s"])
            x = [p["ok_per_s"] for p in curve]
            ax.plot(x, [p["p99_ms"] for p in curve], marker="o", color=colour, label=f"{server} p99")
            ax.plot(x, [p["p50_ms"] for p in curve], marker=".", linestyle="--", color=colour,
                    label=f"{server} p50")
            closed = r[server]["closed"]
            ax.scatter([closed["ok_per_s"]], [closed["p99_ms"]], marker="x", color=colour, s=60,
                       label=f"{server} closed loop p99")
        ax.axvline(r["inprocess"]["handler_req_per_s"], color="grey", linestyle=":",
                   label="handler in-process")
        ax.set_yscale("log")
        ax.set_xlabel("answered requests/s")
        ax.set_ylabel("latency ms")
        ax.set_title(f"{r['model']} ({r['inprocess']['target']}/{r['inprocess']['precision']}"
                     f"{on_device(r['inprocess'])})")
        ax.legend(fontsize=7)
    fig.suptitle(f"Latency against throughput, open loop ({machine})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving bench-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", metavar="MODEL", help="default: every built model")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop connections")
    parser.add_argument("--seconds", type=float, default=10.0, help="per load point")
    parser.add_argument("--sweep", type=float, nargs="+", default=list(SWEEP),
                        help="open-loop rates as fractions of the closed loop's throughput")
    parser.add_argument("--peers", nargs="*", choices=PEERS, default=list(PEERS),
                        help="the other servers to run on the same archive (default: both)")
    parser.add_argument("--no-peer", action="store_true", help="no peer (--peers with none)")
    parser.add_argument("--alongside", nargs="*", default=[], metavar="MODEL",
                        help="TorchServe serves these models too, idle (e.g. the default "
                        "server's other models); the load goes to the measured one alone")
    parser.add_argument("--peer-batch-timeout", type=float,
                        help="LitServe's batch timeout, seconds (default: the archive's "
                        "maxBatchDelay; its batch size, workers and threads are the archive's)")
    parser.add_argument("--profile", action="store_true", help="py-spy the (first) worker during "
                        "each closed loop: where its time goes")
    parser.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE",
                        help="serve (and load in-process) a copy of each archive with these "
                        "model-config.yaml settings, e.g. batchSize=32 minWorkers=4 "
                        "maxWorkers=4 handler.torch_threads=2 (values read as YAML)")
    parser.add_argument("--tuned", action="store_true", help="each server at the settings "
                        "`python -m serving tune MODEL --server SERVER` found best for it (where "
                        "it was run; the archive's otherwise): best against best")
    parser.add_argument("--warmup", type=float, default=20.0, metavar="SECONDS",
                        help="an unmeasured closed loop before each server's measurements: "
                             "TorchServe's Java frontend compiles its hot paths in the first "
                             "minute of load (its compiler thread took 0.07-0.1 of a core for "
                             "40 s), which a server just started would otherwise be charged "
                             "for; every server gets the same (0: none)")
    parser.add_argument("--rounds", type=int, default=1, help="measure every server's closed "
                        "loop this many times, one server after another (the first round in "
                        "full): the ratios per round, and their median")
    parser.add_argument("--model-store", default=str(MODEL_STORE))
    parser.add_argument("--out", default=str(RUN_DIR / "bench-serve"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    model_store = Path(args.model_store)
    if args.child:
        print(json.dumps(child_inprocess(args.child, model_store)))
        return 0
    names = args.models or [m for m in models.names() if (model_store / f"{m}.mar").exists()]
    missing = [m for m in names if not (model_store / f"{m}.mar").exists()]
    if missing:
        parser.error(f"no archive for {missing} in {model_store}: python -m serving build")
    peers = [] if args.no_peer else args.peers
    if "litserve" in peers:
        import importlib.util

        if importlib.util.find_spec("litserve") is None:
            parser.error("LitServe is not installed: pip install -r requirements-bench.txt "
                         "(make bench-serve does), or leave it out of --peers")
    if "triton" in peers and not PYTRITON.exists():
        parser.error(f"no {PYTRITON}: make bench-serve builds it (Debian's Python 3.11 and "
                     "requirements-pytriton.txt), or leave triton out of --peers")
    machine = cpu_name()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.config:
        try:
            settings = config_settings(args.config)
        except ValueError as e:
            parser.error(str(e))
        model_store = configured_store(model_store, names, settings, out.resolve() / "model_store")
    log = lambda line: print(line, flush=True)  # noqa: E731
    log(f"CPU: {machine}")
    results = []
    for name in names:
        profile_dir = out / f"profile-{name}" if args.profile else None
        if profile_dir:
            profile_dir.mkdir(parents=True, exist_ok=True)
        spec = models.load(name)
        file, content_type = spec.example_request
        body_file = models.MODELS_DIR / name / file
        binary = not content_type.startswith("application/json")
        log(f"[{name}] in-process (model alone, then the handler)...")
        inproc = run_child("--child", name, "--model-store", str(model_store),
                           module="serving.perf.bench_serve", timeout=600)
        log(f"  model alone {inproc['model_items_per_s']:.1f} items/s at batch {inproc['batch']}, "
            f"{inproc['forward_c1_ms']:.2f} ms at batch 1; handler {inproc['handler_req_per_s']:.1f} "
            f"req/s, {inproc['handler_c1_ms']:.2f} ms alone ({inproc['threads']} threads)")
        result = {"model": name, "inprocess": inproc}
        tuned = tuned_stores(name, ["torchserve", *peers], model_store, out, log) \
            if args.tuned else {}
        store_of = lambda server: tuned.get(server, (model_store, None))  # noqa: E731
        # Round 1 measures each server in full (c1, closed loop, open-loop sweep); later rounds
        # the closed loop again, each server right after the others: the machine's speed drifts
        # by ±15% within minutes here, so only ratios measured back to back, over several
        # rounds, say which server is ahead.
        result["rounds"] = []
        for round_number in range(1, args.rounds + 1):
            if args.rounds > 1:
                log(f"[{name}] round {round_number} of {args.rounds}")
            sweep = tuple(args.sweep) if round_number == 1 else ()
            log(f"[{name}] TorchServe...")
            measured = {"torchserve": bench_torchserve(
                name, store_of("torchserve")[0], body_file, content_type, binary, args.clients,
                args.seconds, sweep, log, tuple(args.alongside), profile_dir, args.warmup)}
            if "litserve" in peers:
                log(f"[{name}] LitServe...")
                measured["litserve"] = bench_litserve(
                    name, store_of("litserve")[0], body_file, content_type, binary, args.clients,
                    args.seconds, sweep, log, args.peer_batch_timeout, profile_dir,
                    settings=store_of("litserve")[1], warmup=args.warmup)
            if "triton" in peers:
                log(f"[{name}] Triton...")
                measured["triton"] = bench_triton(
                    name, store_of("triton")[0], body_file, content_type, args.clients,
                    args.seconds, sweep, log, out, profile_dir, settings=store_of("triton")[1],
                    warmup=args.warmup)
            if round_number == 1:
                result.update(measured)
            result["rounds"].append({server: {**{k: m["closed"][k] for k in
                                                 ("ok_per_s", "p50_ms", "p99_ms")},
                                              "c1_p50_ms": m["c1"]["p50_ms"]}
                                     for server, m in measured.items()})
        for server in ("torchserve", *peers):
            result[server]["tuned"] = server in tuned
        result["summary"] = summarise(result)
        results.append(result)
    (out / "served.json").write_text(json.dumps({
        "cpu": machine, "arch": platform.machine(), "clients": args.clients,
        "alongside": args.alongside, "config": args.config,
        "seconds_per_point": args.seconds, "results": results}, indent=2))
    print("\n" + f"CPU: {machine}; {args.clients} closed-loop clients; generator on the same machine")
    print(table(results))
    if args.rounds > 1 and peers:
        print("\n" + rounds_table(results, peers))
    print("\n" + settings_table(results, ["torchserve", *peers]))
    print(f"\nJSON: {out / 'served.json'}\nPlot: {plot(results, out / 'served.png', machine)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
