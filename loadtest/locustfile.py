"""Locust users, one per model folder, sending its payloads; client metrics for Prometheus; SLO gates.

Run through `python -m loadtest run` (which adds the shape, the report and the paths), or directly:
    locust -f loadtest/locustfile.py --headless -u 8 -r 8 -t 60s -H http://127.0.0.1:8080
Pick users by class name (<Model>User: DigitsUser, EfficientnetLite0User, ...; one is generated
for every folder under models/); a shape by adding its file to -f (loadtest/shapes/step_ramp.py
or spike.py).
"""

from __future__ import annotations

import functools
import json
import os
import random
import time

import gevent
from locust import FastHttpUser, constant, events, task
from locust.runners import WorkerRunner

import models
from loadtest import KEY_ENV, exporter, host_env, slo, user_class_name
from loadtest.protocols import ANSWER_FIELD, PROTOCOLS, request_in

SLO_FILE = "loadtest/slo.yaml"  # the defaults; each model's own are in its model.yaml


def auth_header() -> dict[str, str]:
    """The inference key (token authorization is on): `python -m loadtest` passes the server's in
    the environment; a bare `locust` run reads the key file of `make up`'s server."""
    key = os.environ.get(KEY_ENV)
    if key is None:
        from serving.run.torchserve import Instance

        key = Instance.from_config().keys().get("inference")
    return {"Authorization": f"Bearer {key}"} if key else {}


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    group = parser.add_argument_group("model serving")
    group.add_argument("--metrics-port", type=int, default=exporter_port(),
                       help="port of the client-side metrics for Prometheus")
    group.add_argument("--metrics-host", default="127.0.0.1",
                       help="address the client-side metrics listen on")
    group.add_argument("--metrics-linger", type=float, default=6.0,
                       help="seconds the metrics stay up after the test, for a last scrape")
    group.add_argument("--slo-file", default=SLO_FILE, help="objectives per model (YAML)")
    group.add_argument("--slo-p95-ms", type=float, help="p95 latency limit for every model")
    group.add_argument("--slo-p99-ms", type=float, help="p99 latency limit for every model")
    group.add_argument("--slo-max-error-rate", type=float, help="error-rate limit for every model")
    group.add_argument("--slo-min-rps", type=float, help="minimum requests/s for every model")
    group.add_argument("--slo-report", default="", help="write the SLO check to this JSON file")
    group.add_argument("--steps", type=int, default=4, help="steps of the step_ramp shape")
    group.add_argument("--protocol", choices=PROTOCOLS, default="native",
                       help="what the model users speak (loadtest/protocols.py)")


def exporter_port() -> int:
    from serving.run.prometheus import LOADTEST_METRICS_PORT

    return LOADTEST_METRICS_PORT


@events.init.add_listener
def start_metrics(environment, **_) -> None:
    if not isinstance(environment.runner, WorkerRunner):  # workers report to the master
        options = environment.parsed_options
        exporter.serve(environment, options.metrics_port, options.metrics_host)


@events.quitting.add_listener
def check_objectives(environment, **_) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    options = environment.parsed_options
    config = slo.load(options.slo_file, slo.per_model(), {
        "p95_ms": options.slo_p95_ms, "p99_ms": options.slo_p99_ms,
        "max_error_rate": options.slo_max_error_rate, "min_rps": options.slo_min_rps})
    measured = [slo.Measured(model=e.name, requests=e.num_requests, failures=e.num_failures,
                             p95_ms=e.get_response_time_percentile(0.95),
                             p99_ms=e.get_response_time_percentile(0.99), rps=e.total_rps)
                for e in environment.stats.entries.values() if e.num_requests]
    rows = slo.check(config, measured)
    broken = [r for r in rows if not r["ok"]]
    print("\nService-level objectives:")
    for r in rows:
        print(f"  {'ok    ' if r['ok'] else 'BROKEN'} {r['model']:20s} {r['objective']:15s} "
              f"measured {r['measured']:10.3f}  limit {r['limit']}")
    if not rows:
        print("  no requests were made: nothing to check")
    if options.slo_report:
        with open(options.slo_report, "w") as f:
            json.dump({"rows": rows, "broken": len(broken)}, f, indent=2)
    environment.process_exit_code = 1 if broken or not rows else 0


@events.test_stop.add_listener
def linger_for_last_scrape(environment, **_) -> None:
    """Keeps the test's final figures up until Prometheus has scraped them (and, on a master,
    until the workers' last reports are in)."""
    if not isinstance(environment.runner, WorkerRunner):
        gevent.sleep(environment.parsed_options.metrics_linger)


class ModelUser(FastHttpUser):
    """A client that sends one model request after another (closed loop, no think time)."""

    abstract = True
    wait_time = constant(0)

    def on_start(self) -> None:
        self.auth = auth_header()

    def post(self, model: str, request: tuple[str, bytes, dict], expect: str) -> None:
        """One request (path, body, headers); `expect`: the field its JSON answer must have."""
        path, body, headers = request
        base = os.environ.get(host_env(model), "").rstrip("/")  # "": the run's --host
        with self.client.post(f"{base}{path}", data=body, name=model, catch_response=True,
                              headers={**headers, **self.auth}) as response:
            if response.status_code == 0:
                response.failure(f"no answer: {response.error}")
            elif response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
            elif expect not in response.json():
                response.failure(f"answer without {expect!r}")


@functools.cache
def bodies_of(name: str) -> tuple[str, list[bytes]]:
    """A model's load-test bodies and their content type, made once per process: making them
    per user (18 JPEG encodes, 500 JSON grids) blocked the event loop long enough for a
    distributed run's workers to miss their heartbeats."""
    spec = models.load(name)
    return spec.payload_content_type, spec.payloads()


@functools.cache
def requests_of(name: str, protocol: str) -> list[tuple[str, bytes, dict]]:
    """A model's load-test bodies as requests in `protocol` (path, body, headers), once per
    process; the same inputs in every protocol (loadtest/protocols.py)."""
    content_type, bodies = bodies_of(name)
    if protocol == "native":
        return [(f"/predictions/{name}", body, {"Content-Type": content_type}) for body in bodies]
    from models import sources

    handler = sources.model_handler(models.load(name))
    return [request_in(protocol, name, handler, body, content_type) for body in bodies]


def answer_field(spec, protocol: str) -> str:
    return spec.answer_field if protocol == "native" else ANSWER_FIELD[protocol]


def model_user(name: str) -> type:
    """A user class for one model folder: its payloads, its content type, its answer's field."""
    spec = models.load(name)

    def on_start(self) -> None:
        ModelUser.on_start(self)
        protocol = getattr(self.environment.parsed_options, "protocol", "native")
        self.requests, self.expect = requests_of(name, protocol), answer_field(spec, protocol)

    @task
    def predict(self) -> None:
        self.post(name, random.choice(self.requests), self.expect)

    return type(user_class_name(name), (ModelUser,), {
        "on_start": on_start, "predict": predict, "__module__": __name__,
        "__doc__": f"Closed-loop requests to {name} ({spec.kind}), bodies from its folder."})


for _name in models.names():
    globals()[user_class_name(_name)] = model_user(_name)


class PacedUser(FastHttpUser):
    """Open-loop-like arrivals for soak runs (`python -m loadtest soak`) and paced load tests:
    each user sends one request a second on its own phase, so N users offer about N requests/s
    spread evenly, whatever the server does. $PACED_MODELS ("digits:230,minilm:17") says how many
    users go to each model. Answers are named by outcome, so Locust's statistics give accepted and
    rejected latencies apart."""

    started = 0  # users started in this process: each takes the next slot of the model plan

    def on_start(self) -> None:
        plan = [model for entry in os.environ.get("PACED_MODELS", "digits:1").split(",")
                for model, _, count in [entry.partition(":")] for _ in range(int(count or 1))]
        self.model = plan[PacedUser.started % len(plan)]
        PacedUser.started += 1
        self.content_type, self.choices = bodies_of(self.model)
        self.auth = auth_header()
        # A random phase, kept. Paced by Locust's constant_throughput instead, the users fell
        # into lockstep against TorchServe within seconds (200 requests in 50 ms, then none):
        # bursts no short queue absorbs, so the run measured the generator (docs/limits.md, Overload).
        gevent.sleep(random.random())
        self.next_send = time.perf_counter()

    def wait_time(self) -> float:
        now = time.perf_counter()
        self.next_send = max(self.next_send + 1.0, now)  # an answer later than 1 s: send now
        return self.next_send - now

    @task
    def send(self) -> None:
        with self.client.post(f"/predictions/{self.model}", data=random.choice(self.choices),
                              name=self.model, catch_response=True,
                              headers={"Content-Type": self.content_type, **self.auth}) as response:
            outcome = {200: "accepted", 503: "rejected"}.get(response.status_code, "error")
            if outcome == "rejected" and "application/json" not in \
                    (response.headers.get("content-type") or ""):
                outcome = "error"  # a rejection must say so in JSON
            response.request_meta["name"] = f"{self.model} {outcome}"
            if outcome == "error":
                response.failure(f"HTTP {response.status_code}")
            else:
                response.success()


class PingUser(FastHttpUser):
    """The cheapest request there is, for measuring the load generator's own ceiling
    (`python -m loadtest ceiling`); never part of a model load test."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.auth = auth_header()

    @task
    def ping(self) -> None:
        with self.client.get("/ping", name="ping", catch_response=True,
                             headers=self.auth) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
