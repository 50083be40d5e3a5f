"""The same model over each protocol, through the front door: what a protocol costs.

One TorchServe serving the model, the front door (docker/nginx) before it, and for each protocol
(native REST, KServe v1, the Open Inference Protocol in JSON and with binary tensors) the same
request sent by the served benchmark's load generator: one client (latency), then `--clients`
closed-loop clients (the saturated throughput). Triton's perf_analyzer (.venv-triton, `make test`
installs it) then drives the OIP itself, over REST and over gRPC (the gRPC door in front of the
front door), as a Triton user would measure this server.

    python -m serving bench-protocols [MODEL ...] [--clients 16] [--seconds 10]

prints a table per model and writes run/bench-protocols/protocols.json.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import models
from handlers import oip
from loadtest.protocols import PROTOCOLS, oip_tensors, request_in
from serving.run.cpu import cpu_name
from serving.run.paths import MODEL_STORE, ROOT, RUN_DIR
from serving.perf.bench_serve import archive_config
from serving.perf.measure import Target, run_point, tree

TRITON = ROOT / ".venv-triton"


def requests_for(spec, handler) -> dict[str, tuple[str, bytes, dict]]:
    """The model's example request in each protocol: (path, body, headers)."""
    file, content_type = spec.example_request
    native = (models.MODELS_DIR / spec.name / file).read_bytes()
    return {p: request_in(p, spec.name, handler, native, content_type) for p in PROTOCOLS}


def example_tensors(spec, handler) -> list:
    """The model's example request as OIP input tensors."""
    file, content_type = spec.example_request
    return oip_tensors(handler, (models.MODELS_DIR / spec.name / file).read_bytes(),
                       content_type)[0]


def perf_analyzer(spec, handler, url: str, headers: dict, concurrency: list[int],
                  seconds: float, work: Path, protocol: str = "http") -> list[dict]:
    """perf_analyzer's own figures over the OIP (binary tensors), at each concurrency;
    `protocol` "grpc": over gRPC, `url` the gRPC door's host:port."""
    binary = TRITON / "bin" / "perf_analyzer"
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing: `make test` installs requirements-triton.txt")
    # Its input file: one row of each input tensor, as the binary extension lays it out ("b64").
    data = {}
    for tensor in example_tensors(spec, handler):
        row = oip.Tensor(tensor.name, tensor.datatype, [1, *tensor.shape[1:]], tensor.data[:1])
        data[tensor.name] = {"b64": base64.b64encode(oip.tensor_bytes(row)).decode()}
    inputs = work / f"{spec.name}-perf-analyzer.json"
    inputs.write_text(json.dumps({"data": [data]}))
    csv_file = work / f"{spec.name}-perf-analyzer.csv"
    command = [str(binary), "-m", spec.name, "-u", url, "-i", protocol, "--input-data", str(inputs),
               "--concurrency-range", f"{min(concurrency)}:{max(concurrency)}:"
               f"{max(1, max(concurrency) - min(concurrency))}",
               "--measurement-interval", str(int(seconds * 1000)), "-f", str(csv_file),
               # Its default wants three windows within 10% of each other, which a busy 2-core
               # VM often misses (the point is then left out of its report).
               "--stability-percentage", "25"]
    for key, value in headers.items():  # gRPC metadata keys are lowercase
        command += ["-H", f"{key.lower() if protocol == 'grpc' else key}: {value}"]
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(
        str(p) for p in (TRITON / "lib").glob("python3*/site-packages/nvidia/cuda_runtime/lib"))}
    done = subprocess.run(command, capture_output=True, text=True, env=env,
                          timeout=60 + 20 * seconds * len(concurrency))
    if done.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed: {(done.stdout + done.stderr)[-1500:]}")
    rows = []
    with csv_file.open() as f:
        for row in csv.DictReader(f):
            rows.append({"concurrency": int(row["Concurrency"]),
                         "ok_per_s": float(row["Inferences/Second"]),
                         "p50_ms": float(row["p50 latency"]) / 1000,
                         "p99_ms": float(row["p99 latency"]) / 1000})
    return rows


def bench(name: str, clients: int, seconds: float, model_store: Path, log) -> dict:
    from models import sources
    from serving.run import oip_grpc
    from serving.run.frontdoor import FrontDoor
    from serving.run.torchserve import free_port, start_on_free_ports

    spec = models.load(name)
    handler = sources.model_handler(spec)
    work = RUN_DIR / "bench-protocols" / name
    instance = start_on_free_ports(work / "torchserve", [name], model_store=model_store)
    door = FrontDoor(work / "nginx", [f"127.0.0.1:{instance.ports['inference']}"], "",
                     free_port())
    result = {"model": name, "protocols": {}}
    try:
        door.start()
        auth = instance.auth("inference")
        processes = lambda: tree(instance.process())  # noqa: E731
        targets = []
        for protocol, (path, body, headers) in requests_for(spec, handler).items():
            body_file = work / f"{protocol}.body"
            body_file.write_bytes(body)
            content_type = headers.pop("Content-Type")
            targets.append((Target(protocol, f"http://127.0.0.1:{door.port}{path}",
                                   {**auth, **headers}, processes), body_file, content_type))
        for target, body_file, content_type in targets:  # unmeasured: whoever goes first would
            run_point(target, body_file, content_type, False, 2.0, clients=4)  # pay the warm-up
        for target, body_file, content_type in targets:
            protocol, body = target.label, body_file.read_bytes()
            c1 = run_point(target, body_file, content_type, False, min(seconds, 6.0), clients=1)
            closed = run_point(target, body_file, content_type, False, seconds, clients=clients)
            if c1["statuses"].keys() - {"200"} or not closed["ok"]:
                raise RuntimeError(f"{name} over {protocol}: answers {c1['statuses']} "
                                   f"{closed['statuses']}")
            # At saturation the model's queue may refuse a few (503): counted, not fatal.
            result["protocols"][protocol] = {"c1": c1, "closed": closed,
                                             "request_bytes": len(body)}
            log(f"  {protocol:10s} c1 p50 {c1['p50_ms']:6.2f} ms p99 {c1['p99_ms']:6.2f} ms; "
                f"{clients} clients {closed['ok_per_s']:7.1f} req/s p99 {closed['p99_ms']:6.1f} ms"
                + (f", answers {closed['statuses']}" if len(closed["statuses"]) > 1 else ""))
        # perf_analyzer stops at the first refused request: past the model's job queue a few are
        # (503, by design: docs/limits.md), so it goes no higher than the queue holds.
        queue = int(archive_config(model_store, name).get("jobQueueSize") or clients)
        grpc_port = free_port()
        grpc_door = oip_grpc.start_process(f"127.0.0.1:{door.port}", grpc_port, work / "grpc.log")
        try:
            result["perf_analyzer"] = {
                protocol: perf_analyzer(spec, handler, url, auth, [1, min(clients, queue)],
                                        seconds, work, via)
                for protocol, url, via in (("v2-binary", f"127.0.0.1:{door.port}", "http"),
                                           ("v2-grpc", f"127.0.0.1:{grpc_port}", "grpc"))}
        finally:
            grpc_door.terminate()
            grpc_door.wait(timeout=15)
        for protocol, rows in result["perf_analyzer"].items():
            for row in rows:
                log(f"  perf_analyzer ({protocol}) concurrency {row['concurrency']}: "
                    f"{row['ok_per_s']:.1f} infer/s, p50 {row['p50_ms']:.2f} ms, "
                    f"p99 {row['p99_ms']:.2f} ms")
    finally:
        door.stop()
        instance.stop()
    return result


def table(result: dict, clients: int) -> str:
    lines = [f"{result['model']}: through the front door, one TorchServe",
             f"{'protocol':12s} {'bytes':>8s} {'c1 p50 ms':>10s} {'c1 p99 ms':>10s} "
             f"{'req/s @' + str(clients):>10s} {'p99 ms':>8s}"]
    for protocol, point in result["protocols"].items():
        lines.append(f"{protocol:12s} {point['request_bytes']:8d} {point['c1']['p50_ms']:10.2f} "
                     f"{point['c1']['p99_ms']:10.2f} {point['closed']['ok_per_s']:10.1f} "
                     f"{point['closed']['p99_ms']:8.1f}")
    for protocol, rows in result.get("perf_analyzer", {}).items():
        for row in rows:
            lines.append(f"{'perf_analyzer':12s} {'':8s} {'':10s} {'':10s} "
                         f"{row['ok_per_s']:10.1f} {row['p99_ms']:8.1f}  ({protocol}, "
                         f"concurrency {row['concurrency']}: p50 {row['p50_ms']:.2f} ms)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving bench-protocols", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", metavar="MODEL", help="default: every built model")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop connections")
    parser.add_argument("--seconds", type=float, default=10.0, help="per load point")
    parser.add_argument("--model-store", default=str(MODEL_STORE))
    parser.add_argument("--out", default=str(RUN_DIR / "bench-protocols"))
    args = parser.parse_args(argv)
    model_store = Path(args.model_store)
    names = args.models or [m for m in models.names() if (model_store / f"{m}.mar").exists()]
    missing = [m for m in names if not (model_store / f"{m}.mar").exists()]
    if missing:
        parser.error(f"no archive for {missing} in {model_store}: python -m serving build")
    machine = cpu_name()
    log = lambda line: print(line, flush=True)  # noqa: E731
    log(f"CPU: {machine}")
    results = []
    for name in names:
        log(f"[{name}]")
        results.append(bench(name, args.clients, args.seconds, model_store, log))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "protocols.json").write_text(json.dumps({
        "cpu": machine, "arch": platform.machine(), "clients": args.clients,
        "seconds_per_point": args.seconds, "results": results}, indent=2))
    print(f"\nCPU: {machine}; generator and server on the same machine")
    for result in results:
        print("\n" + table(result, args.clients))
    print(f"\nJSON: {out / 'protocols.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
