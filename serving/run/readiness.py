"""The pod's readiness over HTTP, from the process that already watches it.

`serving serve` checks every second that each model has a READY worker whose process is alive
(TorchServe's /ping stays healthy while workers are dead). With SERVING_READY_PORT set it also
answers `GET /ready` on the pod's loopback with what it last saw: 200 when every model is ready,
503 while starting, draining or when a model has no live worker. The front door proxies /ready to
it, so the kubelet's probes are plain HTTP GETs: no `python -m serving ready` (an interpreter and
torch imported every few seconds inside the pod's CPU limit).

It answers the Open Inference Protocol's `GET /v2/health/ready` and KServe v1's model routes from
the same state: `GET /v1/models` lists the models,
`GET /v1/models/<m>` is `{"name": m, "ready": true}` (200) or `"ready": false` (503, as KServe's
own model server answers), 404 for a model it does not serve.

And `GET /admission`, what the front door beside it admits per model (serving/run/frontdoor.py,
admission_limit; `{"models": {name: limit}}`), read by the front door at its start
(docker/nginx/serve.sh): the models a container serves are known only to it.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class ReadinessEndpoint:
    def __init__(self, models: list[str], port: int, bind: str = "127.0.0.1",
                 admission: dict[str, int] | None = None) -> None:
        self._lock = threading.Lock()
        self.admission = dict(admission or {})
        self._models = {name: False for name in models}
        self._state, self._since = "starting", time.time()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?")[0]
                ready, body = endpoint.snapshot()
                if path == "/ready":
                    return self._answer(200 if ready else 503, body)
                if path == "/v2/health/ready":  # the Open Inference Protocol's server readiness
                    return self._answer(200 if ready else 503, {"ready": ready})
                if path == "/admission":
                    return self._answer(200, {"models": endpoint.admission})
                if path == "/v1/models":
                    return self._answer(200, {"models": sorted(body["models"])})
                name = path.removeprefix("/v1/models/")
                if name != path and name in body["models"]:
                    model_ready = body["state"] == "serving" and body["models"][name]
                    return self._answer(200 if model_ready else 503,
                                        {"name": name, "ready": model_ready})
                if name != path:
                    return self._answer(404, {"error": "model_not_found",
                                              "detail": f"no model {name!r} is served here"})
                self._answer(404, {"error": "not_found",
                                   "detail": "GET /ready, /v1/models or /v1/models/<model>"})

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # a probe every few seconds: not worth a line
                pass

        self.server = ThreadingHTTPServer((bind, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        name="readiness")

    def start(self) -> "ReadinessEndpoint":
        self._thread.start()
        return self

    def update(self, models: dict[str, bool], state: str = "serving") -> None:
        with self._lock:
            if state != self._state:
                self._state, self._since = state, time.time()
            self._models.update(models)

    def snapshot(self) -> tuple[bool, dict]:
        with self._lock:
            ready = self._state == "serving" and all(self._models.values())
            return ready, {"ready": ready, "state": self._state,
                           "since_s": round(time.time() - self._since, 1),
                           "models": dict(self._models)}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def follow(instance, names: list[str], endpoint: ReadinessEndpoint,
           stopped: Callable[[], bool] = lambda: False, every: float = 1.0) -> None:
    """Keeps `endpoint` up to date with `instance`'s models until TorchServe stops (or `stopped`):
    what `serving serve` does inside a container, for `make up`'s server, which TorchServe's own
    launcher runs in the background (`python -m serving readiness`)."""
    while not stopped() and instance.process() is not None:
        endpoint.update({name: instance.model_ready(name) for name in names})
        time.sleep(every)
    endpoint.update({name: False for name in names}, state="stopped")
