"""python -m serving: the commands behind `make up`, `make down`, `make new`, ... (--help lists them)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import models
from handlers import PRECISIONS, TARGETS
from handlers.cores import PLACEMENT_ENV, placement
from serving.run import frontdoor
from serving.run.paths import ROOT
from serving.run.prometheus import Prometheus, PrometheusError
from serving.run.torchserve import Instance, ServeError, port_in_use


def served_models() -> list[str]:
    """SERVING_MODELS (space-separated: a pod serving one model), else every model folder."""
    return os.environ.get("SERVING_MODELS", "").split() or list(models.NAMES)


def curl_example(instance: Instance, name: str) -> str:
    file, content_type = models.load(name).example_request
    path = (models.MODELS_DIR / name / file).relative_to(ROOT)
    return (f"curl -s {instance.public_url}/predictions/{name} -H \"$AUTH\" "
            f"-H 'Content-Type: {content_type}' --data-binary @{path}")


def prometheus_for(instance: Instance) -> Prometheus:
    return Prometheus(torchserve_metrics=f"{instance.host}:{instance.ports['metrics']}")


def build_all(*args, **kwargs):
    from serving.build.pipeline import build_all  # torch is imported only by commands that build

    return build_all(*args, **kwargs)


def cmd_build(args) -> int:
    from serving.build.pipeline import BuildError
    from serving.build.targets import NeuronOptions

    try:
        neuron = None
        if args.target == "neuron" or args.neuron_batch_size is not None or \
                args.neuron_cores is not None:
            neuron = NeuronOptions(batch_size=args.neuron_batch_size,
                                   sequence_length=args.neuron_sequence_length,
                                   compiler_args=tuple(args.neuron_compiler_args.split()),
                                   dynamic_batch=args.neuron_dynamic_batch,
                                   cores=2 if args.neuron_cores is None else args.neuron_cores)
        build_all(args.models, force=args.force, target=args.target, precision=args.precision,
                  device=args.device, neuron=neuron, timed=not args.no_timing)
    except (BuildError, ValueError) as e:
        print(f"error: {e}")
        return 1
    return 0


def cmd_up(args) -> int:
    instance = Instance.from_config()
    names = args.models or served_models()
    door_dir = instance.run_dir.parent / "frontdoor"
    placed = {}  # SERVING_CPUS, when this command starts TorchServe with it
    if instance.process():
        print(f"TorchServe already runs (pid {instance.process().pid}); `make down` stops it.")
        if missing := sorted(set(names) - set(instance.served())):
            print(f"It does not serve {', '.join(missing)} (added or built since it started, or "
                  "left out): `make down; make up` serves every folder.")
    else:
        frontdoor.stop(frontdoor.running_in(door_dir))  # one left from a server that died
        check_ports_free(instance)  # before the build, which takes minutes
        instance.check_placement(names)
        placed = placement(os.environ.get(PLACEMENT_ENV, ""))
        if not args.no_build:
            build_all(names)
        started = time.monotonic()
        pid = instance.start(names)
        print(f"TorchServe started (pid {pid}); waiting for every model to have a READY worker...",
              flush=True)
        instance.wait_ready(names, timeout=args.timeout)
        print(f"All {len(names)} models READY in {time.monotonic() - started:.1f}s.")
    if not sidecar_process(instance, "readiness"):
        start_readiness(instance, names)
    if not frontdoor.running_in(door_dir):
        if port_in_use(instance.ports["frontdoor"]):
            raise ServeError(f"port {instance.ports['frontdoor']} (the front door's) is in use "
                             "by another program; stop it, or set SERVING_FRONTDOOR_PORT")
        frontdoor.FrontDoor.before(instance, names, door_dir,
                                   ready=f"127.0.0.1:{instance.ports['ready']}").start(detach=True)
    if not sidecar_process(instance, "grpc"):
        start_grpc(instance)
    prometheus = prometheus_for(instance)
    if not prometheus.process():
        prometheus.start()
        prometheus.wait_ready()
    print(f"\nServing         {instance.public_url}  (the front door: nginx, docker/nginx; "
          "TorchServe's own inference API is\n"
          f"                {instance.inference_url}, for this machine's tools only)\n"
          f"gRPC (v2)       127.0.0.1:{instance.ports['v2_grpc']}  (the Open Inference Protocol "
          "over gRPC, through the front door: the same keys and limits)\n"
          f"Management API  {instance.management_url}  (model API off; keys in "
          f"{instance.key_file.relative_to(ROOT)})\n"
          f"Metrics         {instance.metrics_url}/metrics\n"
          f"Prometheus      {prometheus.url}  (scrapes TorchServe and load tests; rules in prometheus/)\n"
          f"Logs            {instance.log_dir.relative_to(ROOT)}/, "
          f"{door_dir.relative_to(ROOT)}/nginx.log")
    if placed:
        print("CPUs            " + "; ".join(f"{model} on {','.join(map(str, sorted(cpus)))}"
                                             for model, cpus in placed.items())
              + f"  ({PLACEMENT_ENV}; the others anywhere)")
    print()
    print("Every call to a model needs the inference key (401 without it):\n"
          "  AUTH=\"Authorization: Bearer $(.venv/bin/python -m serving key)\"")
    for name in names:
        print(f"{name}:\n  {curl_example(instance, name)}")
    return 0


def check_ports_free(instance: Instance) -> None:
    """Every port `make up` will listen on, checked before anything is built: a taken one found
    after a 12-minute build cost a new user those minutes."""
    taken = [f"{port} ({what})" for what, port in instance.ports.items()
             if what != "worker" and port_in_use(port)]
    prometheus = prometheus_for(instance)
    if not prometheus.process() and port_in_use(prometheus.port):
        taken.append(f"{prometheus.port} (prometheus)")
    if taken:
        raise ServeError(f"ports in use on 127.0.0.1: {', '.join(taken)}. Another server runs "
                         "there (`docker ps`, `ss -ltnp`); stop it, or move ours: config.properties "
                         "for TorchServe's, SERVING_FRONTDOOR_PORT, SERVING_READY_PORT and "
                         "SERVING_V2_GRPC_PORT")


def sidecar_process(instance: Instance, command: str):
    """`python -m serving <command>` running beside `make up`'s TorchServe (its pid file)."""
    from serving.run.process import owned_process

    return owned_process(instance.run_dir / f"{command}.pid", "serving", command)


def start_sidecar(instance: Instance, command: str, arguments: list[str], port: str, what: str,
                  answers) -> None:
    """`python -m serving <command> ARGUMENTS` in the background beside `make up`'s TorchServe,
    listening on its `port`, and wait until `answers()` (30 s at most)."""
    import subprocess

    if port_in_use(instance.ports[port]):
        raise ServeError(f"port {instance.ports[port]} ({what}) is in use by another program; "
                         f"stop it, or set SERVING_{port.upper()}_PORT")
    with open(instance.log_dir / f"{command}.log", "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "serving", command, *arguments],
                                   cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    (instance.run_dir / f"{command}.pid").write_text(str(process.pid))
    deadline = time.monotonic() + 30
    while not answers():
        if process.poll() is not None or time.monotonic() > deadline:
            raise ServeError(f"{what} did not start; see {instance.log_dir / (command + '.log')}")
        time.sleep(0.2)


def start_readiness(instance: Instance, names: list[str]) -> None:
    """Per-model readiness (`python -m serving readiness`): the front door's /ready,
    /v1/models[/<m>] and /v2/health/ready."""
    url = f"http://127.0.0.1:{instance.ports['ready']}/v1/models"
    start_sidecar(instance, "readiness", names, "ready", "per-model readiness",
                  lambda: http_answers(url))


def start_grpc(instance: Instance) -> None:
    """The Open Inference Protocol over gRPC in front of the front door (serving/run/oip_grpc.py)."""
    from serving.run import oip_grpc

    address = f"127.0.0.1:{instance.ports['v2_grpc']}"
    start_sidecar(instance, "grpc", ["--upstream", f"127.0.0.1:{instance.ports['frontdoor']}",
                                     "--port", str(instance.ports["v2_grpc"])],
                  "v2_grpc", "the gRPC door", lambda: oip_grpc.probe(address, timeout=1))


def http_answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def cmd_readiness(args) -> int:
    """Per-model readiness of `make up`'s server on its ready port (SERVING_READY_PORT, 8086),
    until TorchServe stops: `make up` runs it in the background for the front door."""
    from serving.run.readiness import ReadinessEndpoint, follow

    instance = Instance.from_config()
    names = args.models or served_models()
    endpoint = ReadinessEndpoint(
        names, instance.ports["ready"],
        admission=frontdoor.admission_limits(instance, names)).start()
    follow(instance, names, endpoint)
    endpoint.stop()
    return 0


def cmd_key(args) -> int:
    """Prints the running server's key for one API, for scripts and curl."""
    key = Instance.from_config().keys().get(args.api)
    if not key:
        print(f"no {args.api} key: is the server running (make up)?", file=sys.stderr)
        return 1
    print(key)
    return 0


def cmd_serve(args) -> int:
    """TorchServe in the foreground, for containers: start it, wait until every model is READY,
    then run until it exits or a model stays unready past --unready-exit (exit 1: the restart
    policy starts a fresh container, and the log says why), or a SIGTERM/SIGINT stops it: drain,
    then stop (exit 0). No Prometheus: in docker compose that is a service of its own."""
    import signal

    # Ports: config.properties, or SERVING_<KEY>_PORT (behind the compose front door: inference).
    instance = Instance.from_config(bind=os.environ.get("SERVING_BIND", "127.0.0.1"),
                                    metrics_bind=os.environ.get("SERVING_METRICS_BIND"))
    names = args.models or served_models()
    if not args.no_build:
        build_all(names)
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopping.append(signum))
    readiness = None
    if os.environ.get("SERVING_READY_PORT"):  # GET /ready for the front door to proxy (pods)
        from serving.run.readiness import ReadinessEndpoint

        readiness = ReadinessEndpoint(
            names, int(os.environ["SERVING_READY_PORT"]),
            bind=os.environ.get("SERVING_BIND", "127.0.0.1"),
            admission=frontdoor.admission_limits(instance, names)).start()
    instance.start(names)
    print(f"TorchServe started; listening on {instance.bind}; waiting for READY...", flush=True)
    try:
        instance.wait_ready(names, timeout=args.timeout)
    except ServeError:
        instance.stop()
        raise
    print(f"All {len(names)} models READY: {instance.inference_url}", flush=True)
    unready_since: dict[str, float] = {}
    while not stopping and instance.process() is not None:
        time.sleep(1)
        try:  # as a container's first process, reap what TorchServe leaves behind
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        now = time.monotonic()
        status = {name: instance.model_ready(name) for name in names}
        if readiness:
            readiness.update(status)
        for name, ready in status.items():
            if ready:
                unready_since.pop(name, None)
            else:
                unready_since.setdefault(name, now)
        stuck = sorted(n for n, t in unready_since.items() if now - t > args.unready_exit)
        if stuck and not stopping:
            print(f"error: {', '.join(stuck)} not READY for {args.unready_exit:.0f}s (workers "
                  f"failing to load? see {instance.log_dir / 'model_log.log'}); stopping so that "
                  "the container is restarted", flush=True)
            instance.stop()
            return 1
    if readiness:
        readiness.update({name: False for name in names}, state="draining" if stopping else "stopped")
    if stopping:
        waited = instance.drain(names, grace=args.drain_grace)
        print(f"Drained in {waited:.1f}s; stopping TorchServe...", flush=True)
        instance.stop()
        return 0
    print("TorchServe exited; see its logs in " + str(instance.log_dir), flush=True)
    return 1


def cmd_down(args) -> int:
    instance = Instance.from_config()
    door = frontdoor.running_in(instance.run_dir.parent / "frontdoor")
    if instance.process():
        waited = instance.drain(list(models.NAMES), grace=args.drain_grace)
        print(f"TorchServe drained in {waited:.1f}s (readiness false, queues empty, no request "
              "for 2 s).")
    print("TorchServe stopped." if instance.stop() else "TorchServe was not running.")
    for command in ("grpc", "readiness"):
        if proc := sidecar_process(instance, command):
            proc.terminate()
    print("Front door stopped." if frontdoor.stop(door) else "The front door was not running.")
    print("Prometheus stopped." if prometheus_for(instance).stop() else "Prometheus was not running.")
    return 0


def cmd_ready(args) -> int:
    """Exit 0 when every named model (default: all) has a live READY worker; for health checks."""
    instance = Instance.from_config()
    names = args.models or served_models()
    status = {name: instance.model_ready(name) for name in names}
    for name, ready in status.items():
        workers = ", ".join(f"{w.get('pid')}:{w.get('status')}" for w in instance.workers(name))
        print(f"{name:20s} {'READY' if ready else 'NOT READY':10s} workers [{workers}]")
    return 0 if all(status.values()) else 1


def cmd_describe(args) -> int:
    """What the handler says about itself through TorchServe's describe API."""
    import json

    print(json.dumps(Instance.from_config().metadata(args.model), indent=2))
    return 0


def cmd_latency(args) -> int:
    """Sequential single requests with each model's example body: no batching, no queueing.
    "first" is this run's first request (right after `make up`: the first after start)."""
    import requests

    from serving.perf.measure import percentile

    instance = Instance.from_config()
    names = args.models or served_models()
    print(f"{'model':20s} {'first ms':>9s} {'n':>4s} {'median ms':>10s} {'p90 ms':>8s} "
          f"{'p99 ms':>8s} {'min ms':>8s}")
    with requests.Session() as session:
        for name in names:
            file, content_type = models.load(name).example_request
            body = (models.MODELS_DIR / name / file).read_bytes()
            url = f"{instance.public_url}/predictions/{name}"
            timings, first = [], None
            for i in range(args.requests + 5):
                started = time.perf_counter()
                response = session.post(url, data=body, headers={
                    "Content-Type": content_type, **instance.auth("inference")})
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise ServeError(f"{name}: HTTP {response.status_code} {response.text[:200]}")
                first = elapsed if first is None else first
                if i >= 5:  # the first few warm the connection
                    timings.append(elapsed)
            ranked = sorted(timings)
            print(f"{name:20s} {first:9.1f} {len(timings):4d} {percentile(ranked, 0.5):10.1f} "
                  f"{percentile(ranked, 0.9):8.1f} {percentile(ranked, 0.99):8.1f} {ranked[0]:8.1f}")
    return 0


# Commands with a parser of their own, in their wing: module, and the line `--help` shows.
DELEGATED = {
    "bench": ("serving.perf.bench", "every model x target x precision x batch size, in-process"),
    "bench-serve": ("serving.perf.bench_serve", "per model: in-process, TorchServe and LitServe on "
                    "the same archive, closed loop and an open-loop sweep"),
    "bench-protocols": ("serving.perf.bench_protocols", "per model: native REST, KServe v1 and "
                        "the Open Inference Protocol (JSON, binary) through the front door, with "
                        "perf_analyzer"),
    "tune": ("serving.perf.tune", "the batch size, delay, workers and threads with the most "
             "throughput within a p99 limit, against the real TorchServe: MODEL --p99-ms X"),
    "overload": ("serving.perf.overload", "a model at 4x its capacity through the running "
                 "service's front door: accepted p99, rejection p99, goodput"),
    "isolation": ("serving.perf.isolation", "one model's p99 alone and while the others are "
                  "saturated, through the running service's front door"),
    "runtimes": ("serving.perf.runtimes", "CPU runtimes and quantizations the build does not "
                 "ship (OpenVINO, static int8), gated and timed as the build does its candidates"),
    "worst-case": ("serving.perf.worst_case", "each model's costliest request next to a normal "
                   "full batch"),
    "new": ("serving.build.scaffold", "a model folder from your model file: NAME --from PATH"),
    "openapi": ("serving.build.openapi", "the OpenAPI document of every model's endpoint, with "
                "its request and answer schemas"),
    "grpc": ("serving.run.oip_grpc", "the Open Inference Protocol over gRPC in front of the "
             "front door (`make up` runs it on 127.0.0.1:8001)"),
    "deploy": ("serving.scale.deploy", "Kubernetes and KServe manifests from the model folders "
               "and the measured capacity; measure, plan and verify capacity"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in DELEGATED:  # a command with a parser of its own
        module, _ = DELEGATED[argv[0]]
        return importlib.import_module(module).main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="export, check and archive models (skips up-to-date ones)")
    p.add_argument("models", nargs="*", metavar="MODEL", help="default: every model folder")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--target", choices=TARGETS, help="build this target only (default: try "
                   "the model's candidates and ship the fastest that passes its parity gate)")
    p.add_argument("--precision", choices=PRECISIONS, help="build and ship this precision only "
                   "(default: every one the CPU has is built and gated; a reduced one ships only "
                   "where model.yaml's build.precisions lists it, passes its gate and is >10%% "
                   "faster)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="compile for this device (cuda: for TorchServe's deviceType gpu)")
    p.add_argument("--no-timing", action="store_true", help="parity gates only; ship the "
                   "preferred passing candidate (fp32, then the most ahead-of-time target): where "
                   "timings mean nothing, as under emulation")
    neuron = p.add_argument_group("neuron target (Inferentia2 / Trainium, needs torch-neuronx)")
    neuron.add_argument("--neuron-batch-size", type=int, help="traced batch size "
                        "(default: the model's batchSize); partial batches are padded to it")
    neuron.add_argument("--neuron-sequence-length", type=int, default=128,
                        help="text models: the traced token length")
    neuron.add_argument("--neuron-compiler-args", default="--auto-cast matmult --auto-cast-type bf16",
                        help="passed to neuronx-cc")
    neuron.add_argument("--neuron-dynamic-batch", action="store_true",
                        help="torch_neuronx.dynamic_batch: run any batch size in traced chunks")
    neuron.add_argument("--neuron-cores", type=int, help="NeuronCores on the instance "
                        "(inf2.xlarge/8xlarge: 2); workers are capped at this (default 2)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("up", help="build what is missing, start TorchServe, wait until READY")
    p.add_argument("models", nargs="*", metavar="MODEL", help="default: every model folder")
    p.add_argument("--no-build", action="store_true", help="serve the archives as they are")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for READY")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("serve", help="TorchServe in the foreground (containers); no Prometheus")
    p.add_argument("models", nargs="*", metavar="MODEL")
    p.add_argument("--no-build", action="store_true", help="serve the archives as they are")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for READY")
    p.add_argument("--unready-exit", type=float, default=60,
                   help="exit 1 when a model has been unready this long after start")
    p.add_argument("--drain-grace", type=float, default=25,
                   help="on SIGTERM, at most this long to drain before stopping")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("down", help="drain and stop the TorchServe that `up` started")
    p.add_argument("--drain-grace", type=float, default=25)
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("readiness", help="per-model readiness over HTTP for `up`'s server "
                       "(the front door's /ready, /v1/models); `up` starts it")
    p.add_argument("models", nargs="*")
    p.set_defaults(func=cmd_readiness)

    p = sub.add_parser("key", help="the running server's key for an API (token authorization)")
    p.add_argument("api", nargs="?", default="inference", choices=("inference", "management", "API"))
    p.set_defaults(func=cmd_key)

    p = sub.add_parser("ready", help="per-model readiness; exit 1 when a model has no live worker")
    p.add_argument("models", nargs="*", metavar="MODEL")
    p.set_defaults(func=cmd_ready)

    p = sub.add_parser("describe", help="a served model's metadata: kind, schemas, build, parity")
    p.add_argument("model")
    p.set_defaults(func=cmd_describe)

    for command, (_, summary) in DELEGATED.items():  # listed in --help; each parses its own
        sub.add_parser(command, help=f"{summary} (python -m serving {command} --help)")

    p = sub.add_parser("latency", help="single-request latency per model (service must be up)")
    p.add_argument("models", nargs="*", metavar="MODEL")
    p.add_argument("--requests", type=int, default=50)
    p.set_defaults(func=cmd_latency)

    args = parser.parse_args(argv)
    try:
        known = models.names()
    except models.ModelFolderError as e:
        print(f"error: {e}")
        return 1
    unknown = [m for m in [*getattr(args, "models", []), getattr(args, "model", None)]
               if m is not None and m not in known]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {' '.join(known)} (a model is a folder "
                     "under models/ with a model.yaml: python -m serving new)")
    try:
        return args.func(args)
    except (ServeError, PrometheusError, models.ModelFolderError) as e:
        print(f"error: {e}")
        return 1
