"""The served benchmark's peers started as servers: LitServe and Triton serving an archive with given
settings (the tuner's terms: batchSize, maxBatchDelay, workers, threads), each yielding the target
the load generator drives. Used by the benchmark (serving/perf/bench_serve.py) and the tuner
(serving/perf/tune.py); the peers' own code is litserve_peer.py and triton_peer.py."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psutil

from serving.perf.measure import Target, tree
from serving.run import process
from serving.run.paths import ROOT, RUN_DIR


@contextmanager
def litserve_serving(name: str, model_store: Path, settings: dict) -> Iterator[Target]:
    """LitServe serving the archive: batch size, batch timeout (the delay; 1 ms for none) and
    workers from `settings`; each worker's threads are the archive's (its torch_threads, within
    the cores split among the workers), as a TorchServe worker's are."""
    from serving.run.torchserve import free_port

    port = free_port()
    log_file = RUN_DIR / "bench-serve" / f"litserve-{name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serving.perf.litserve_peer", name, "--port", str(port),
                                 "--model-store", str(model_store),
                                 "--batch", str(settings["batchSize"]),
                                 "--batch-timeout", str(settings["maxBatchDelay"] / 1000 or 0.001),
                                 "--workers", str(settings["workers"])],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = psutil.Process(proc.pid)
    try:
        process.wait_http(f"http://127.0.0.1:{port}/health", server=server, log=log_file)
        yield Target("litserve", f"http://127.0.0.1:{port}/predict", {}, lambda: tree(server))
    finally:
        process.stop_tree(server, 20)


PYTRITON = ROOT / ".venv-pytriton" / "bin" / "python"  # make bench-serve builds it


@contextmanager
def triton_serving(name: str, model_store: Path, settings: dict, content_type: str,
                   body_file: Path, out: Path) -> Iterator[tuple[Target, Path]]:
    """Triton serving the archive: max_batch_size, the dynamic batcher's queue delay (at least
    1 ms), model instances (workers) and torch threads (threads per worker, for all instances)
    from `settings`. Yields the target and the request file to send it: body_file in a v2
    request with the binary-data extension."""
    from serving.perf.triton_peer import request_body
    from serving.run.torchserve import free_port

    http, grpc, metrics = free_port(), free_port(), free_port()
    body, headers = request_body(body_file.read_bytes())
    request_file = out / f"triton-{name}.bin"
    request_file.write_bytes(body)
    log_file = RUN_DIR / "bench-serve" / f"triton-{name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    workers = settings["workers"]
    with open(log_file, "wb") as log_out:
        proc = subprocess.Popen([str(PYTRITON), "-m", "serving.perf.triton_peer", name,
                                 "--http-port", str(http), "--grpc-port", str(grpc),
                                 "--metrics-port", str(metrics), "--content-type", content_type,
                                 "--model-store", str(model_store),
                                 "--batch", str(settings["batchSize"]),
                                 "--delay-us", str(max(1, settings["maxBatchDelay"]) * 1000),
                                 "--instances", str(workers),
                                 "--threads", str(settings["threads"] * workers)],
                                cwd=ROOT, stdout=log_out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = psutil.Process(proc.pid)

    def processes() -> list[psutil.Process]:
        # tritonserver first (the "frontend" column: HTTP, queue, batcher), then the Python
        # process holding the handlers, which does the decoding and the model.
        procs = tree(server)
        return sorted(procs, key=lambda p: "tritonserver" not in " ".join(safe_cmdline(p)))

    try:
        process.wait_http(f"http://127.0.0.1:{http}/v2/models/{name}/ready", timeout=300,
                          server=server, log=log_file)
        yield (Target("triton", f"http://127.0.0.1:{http}/v2/models/{name}/infer", headers,
                      processes), request_file)
    finally:
        process.stop_tree(server, 20)


def safe_cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []
