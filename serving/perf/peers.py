"""The served benchmark's peers started as servers: LitServe and Triton serving an archive with given
settings (the tuner's terms: batchSize, maxBatchDelay, workers, threads), each yielding the target
the load generator drives. Used by the benchmark (serving/perf/bench_serve.py) and the tuner
(serving/perf/tune.py); the peers' own code is litserve_peer.py and triton_peer.py."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

import psutil

from serving.perf.measure import Target, tree
from serving.run import process
from serving.run.paths import ROOT, RUN_DIR
from serving.run.torchserve import free_port


# A peer is started on new free ports up to this many times before it counts as not started: ports
# are only free when picked (another process's client socket may take one before the server binds
# it), and PyTriton's Python stub once lost its handshake with tritonserver at start
# (ConnectionRefusedError). Either ended a whole search or benchmark before.
START_ATTEMPTS = 3


def started(name: str, launch: Callable[[IO[bytes]], tuple[psutil.Process, str]], log_file: Path,
            timeout: float, gave_up: str | None = None) -> psutil.Process:
    """The server `launch` starts (it returns the process and the URL that answers 200 once the
    server is ready), tried again on new ports when it does not come up. The try's output goes to
    `log_file`; a failed try's is kept beside it as NAME.tryN.log. `gave_up`: a line the server
    writes when it will not come up although its process lives on (PyTriton waits two minutes for
    a tritonserver that exited)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, START_ATTEMPTS + 1):
        with open(log_file, "wb") as out:
            server, ready = launch(out)
        try:
            process.wait_http(ready, timeout=timeout, server=server, log=log_file,
                              gave_up=gave_up)
            return server
        except process.StartFailed as e:
            process.stop_tree(server, 20)
            if attempt == START_ATTEMPTS:
                raise
            log_file.replace(log_file.with_suffix(f".try{attempt}.log"))
            print(f"  {name} did not start (try {attempt} of {START_ATTEMPTS}); again on new "
                  f"ports: {e}", flush=True)
    raise AssertionError("unreachable")


@contextmanager
def litserve_serving(name: str, model_store: Path, settings: dict) -> Iterator[Target]:
    """LitServe serving the archive: batch size, batch timeout (the delay; 1 ms for none) and
    workers from `settings`; each worker's threads are the archive's (its torch_threads, within
    the cores split among the workers), as a TorchServe worker's are."""
    port = 0

    def launch(out: IO[bytes]) -> tuple[psutil.Process, str]:
        nonlocal port
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "serving.perf.litserve_peer", name,
                                 "--port", str(port), "--model-store", str(model_store),
                                 "--batch", str(settings["batchSize"]),
                                 "--batch-timeout", str(settings["maxBatchDelay"] / 1000 or 0.001),
                                 "--workers", str(settings["workers"])],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        return psutil.Process(proc.pid), f"http://127.0.0.1:{port}/health"

    server = started(f"litserve-{name}", launch, RUN_DIR / "bench-serve" / f"litserve-{name}.log",
                     timeout=180)
    try:
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

    body, headers = request_body(body_file.read_bytes())
    request_file = out / f"triton-{name}.bin"
    request_file.write_bytes(body)
    workers = settings["workers"]
    http = 0

    def launch(log_out: IO[bytes]) -> tuple[psutil.Process, str]:
        nonlocal http
        http, grpc, metrics = free_port(), free_port(), free_port()
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
        return psutil.Process(proc.pid), f"http://127.0.0.1:{http}/v2/models/{name}/ready"

    # PyTriton's line when tritonserver exits at start (a port taken, say); it then waits two
    # minutes for it before it exits itself.
    server = started(f"triton-{name}", launch, RUN_DIR / "bench-serve" / f"triton-{name}.log",
                     timeout=300, gave_up="Triton Inference Server exited with failure")

    def processes() -> list[psutil.Process]:
        # tritonserver first (the "frontend" column: HTTP, queue, batcher), then the Python
        # process holding the handlers, which does the decoding and the model.
        procs = tree(server)
        return sorted(procs, key=lambda p: "tritonserver" not in " ".join(safe_cmdline(p)))

    try:
        yield (Target("triton", f"http://127.0.0.1:{http}/v2/models/{name}/infer", headers,
                      processes), request_file)
    finally:
        process.stop_tree(server, 20)


def safe_cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []
