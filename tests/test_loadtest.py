"""Load tests for real: Locust against the test TorchServe while a real Prometheus records both
sides; then the SLO gate and the report. Plus the pure parts (buckets, SLO rules, shapes)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from types import SimpleNamespace

import pytest

from loadtest import slo
from loadtest.exporter import BUCKETS, cumulative_buckets, status_counts
from loadtest.report import quantile_bucket
from loadtest.schedules import spike_users, step_users
from serving.run.paths import ROOT
from serving.run.prometheus import Prometheus
from serving.run.torchserve import free_port

MODELS = ("digits", "efficientnet_lite0", "minilm")
LENIENT = ["--slo-p95-ms", "30000", "--slo-p99-ms", "60000", "--slo-min-rps", "0.1",
           "--slo-max-error-rate", "0"]


# -- pure parts ----------------------------------------------------------------------------------

def test_locust_response_times_become_cumulative_prometheus_buckets():
    buckets = dict(cumulative_buckets({1: 3, 4: 2, 120: 1, 70_000: 1}))
    assert buckets["0.001"] == 3 and buckets["0.003"] == 3 and buckets["0.005"] == 5
    assert buckets["0.1"] == 5 and buckets["0.15"] == 6 and buckets["60.0"] == 6
    assert buckets["+Inf"] == 7
    assert list(buckets)[:-1] == [repr(b) for b in BUCKETS]


def test_requests_are_counted_by_status_from_locust_stats():
    # Plain objects with the attributes of Locust's StatsEntry and StatsError stand in for them:
    # importing Locust here would monkey-patch this test process (gevent) and break the other
    # tests' HTTP clients. The load tests below run the real Locust.
    entries = [SimpleNamespace(name="digits", num_requests=7, num_failures=2),
               SimpleNamespace(name="minilm", num_requests=1, num_failures=1)]
    errors = [SimpleNamespace(name="digits", error="HTTP 422", occurrences=2),
              SimpleNamespace(name="minilm", error="no answer: ConnectionRefusedError", occurrences=1)]
    counts = status_counts(entries, errors)
    assert counts == {("digits", "200"): 5, ("digits", "422"): 2, ("minilm", "error"): 1}


def test_slo_rules_per_model_and_overrides(tmp_path):
    file = tmp_path / "slo.yaml"
    file.write_text("default: {p95_ms: 100, min_rps: 5}\n")
    config = slo.load(file, {"slow": {"p95_ms": 1000}}, {"max_error_rate": 0.1, "p99_ms": None})
    fast = slo.Measured("fast", requests=100, failures=20, p95_ms=150, p99_ms=200, rps=10)
    slow = slo.Measured("slow", requests=100, failures=0, p95_ms=150, p99_ms=200, rps=1)
    rows = {(r["model"], r["objective"]): r["ok"] for r in slo.check(config, [fast, slow])}
    assert rows == {("fast", "p95_ms"): False, ("fast", "min_rps"): True,
                    ("fast", "max_error_rate"): False, ("slow", "p95_ms"): True,
                    ("slow", "min_rps"): False, ("slow", "max_error_rate"): True}


def test_step_ramp_and_spike_shapes():
    assert [step_users(t, 8, 40, 4) for t in (0, 9, 10, 25, 39, 40)] == [2, 2, 4, 6, 8, None]
    assert [spike_users(t, 20, 100) for t in (0, 39, 40, 59, 60, 99, 100)] == \
        [5, 5, 20, 20, 5, 5, None]


def test_the_bucket_of_a_quantile():
    cumulative = {"0.1": 10, "0.25": 50, "0.5": 90, "+Inf": 100}
    assert quantile_bucket(cumulative, 0.5) == (0.1, 0.25)
    assert quantile_bucket(cumulative, 0.95) == (0.5, float("inf"))
    assert quantile_bucket({}, 0.5) is None


# -- for real ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    prom = Prometheus(run_dir=tmp_path_factory.mktemp("prometheus"), port=free_port(),
                      torchserve_metrics=f"127.0.0.1:{server.ports['metrics']}",
                      loadtest_metrics=f"127.0.0.1:{free_port()}", scrape_interval="1s")
    prom.start()
    try:
        prom.wait_ready()
        yield prom
    finally:
        prom.stop()


def run_load_test(server, prometheus, out, *args, timeout: float = 90, host: str | None = None
                  ) -> tuple[int, float, float]:
    metrics_port = prometheus.loadtest_metrics.rsplit(":", 1)[1]
    command = [sys.executable, "-m", "loadtest", "run", "--prometheus-port", str(prometheus.port),
               "--host", host or server.inference_url, "--key-file", str(server.key_file),
               "--metrics-port", metrics_port, "--out", str(out), *args]
    started = time.time()
    code = subprocess.run(command, cwd=ROOT, timeout=timeout).returncode
    return code, started, time.time()


@pytest.fixture(scope="module")
def load_test(server, prometheus, tmp_path_factory):
    out = tmp_path_factory.mktemp("loadtest")
    code, started, ended = run_load_test(server, prometheus, out, "-u", "6", "-t", "20s", *LENIENT)
    return {"code": code, "out": out, "start": started, "end": ended}


def test_a_load_test_within_its_objectives_exits_0(load_test):
    assert load_test["code"] == 0
    assert load_test["end"] - load_test["start"] < 60
    report = json.loads((load_test["out"] / "slo.json").read_text())
    assert report["broken"] == 0 and {r["model"] for r in report["rows"]} == set(MODELS)


def test_prometheus_recorded_client_and_server_histograms(load_test, prometheus):
    server = {r["metric"]["model_name"] for r in prometheus.query(
        "count by (model_name) (handler_stage_seconds_bucket)")}
    client = {r["metric"]["model_name"] for r in prometheus.query(
        'count by (model_name) (last_over_time(loadtest_request_duration_seconds_bucket[5m]))')}
    stages = {r["metric"]["stage"] for r in prometheus.query(
        'count by (stage) (handler_stage_seconds_bucket{model_name="minilm"})')}
    assert server >= set(MODELS) and client >= set(MODELS)
    assert stages == {"preprocess", "inference", "postprocess"}
    at = load_test["end"] - 2  # inside the test: the 1m recording rules still see traffic
    recorded = prometheus.query("model_stage:handler_stage_seconds:p95_1m", at=at)
    assert {r["metric"]["model_name"] for r in recorded} >= set(MODELS)
    assert prometheus.query("model:loadtest_request_duration_seconds:p99_1m", at=at)


@pytest.mark.parametrize("protocol", ["kserve-v1", "v2-json", "v2-binary"])
def test_a_load_test_speaks_each_protocol_and_prometheus_labels_its_latency(
        load_test, server, front_door, prometheus, tmp_path, protocol):
    """The same payloads in another protocol, through the front door (which routes v1 and v2):
    every answer a 200 with the protocol's own answer, the client's latency histogram labelled
    with the protocol, and the handler's answers counted under it."""
    code, _, ended = run_load_test(server, prometheus, tmp_path, "digits", "minilm", "-u", "4",
                                   "-t", "6s", "--protocol", protocol, *LENIENT,
                                   host=front_door.url)
    assert code == 0
    figures = json.loads((tmp_path / "report.json").read_text())["models"]
    assert all(f["requests"] > 0 and f["errors"] == 0 for f in figures.values()), figures
    labelled = {(r["metric"]["model_name"], r["metric"]["protocol"]) for r in prometheus.query(
        "count by (model_name, protocol) "
        "(last_over_time(loadtest_request_duration_seconds_bucket[5m]))", at=ended)}
    assert {("digits", protocol), ("minilm", protocol), ("digits", "native")} <= labelled
    served = {r["metric"]["protocol"] for r in prometheus.query(
        'count by (protocol) (handler_responses_total{model_name="digits", status="200"})')}
    assert ("v2" if protocol.startswith("v2") else protocol) in served


def test_client_and_server_quantiles_are_consistent(load_test):
    models = json.loads((load_test["out"] / "report.json").read_text())["models"]
    assert set(models) == set(MODELS)
    for model, figures in models.items():
        assert figures["requests"] > 0 and figures["errors"] == 0, model
        # Means are exact: a request waits at least for the inference of its batch.
        assert figures["client_mean"] >= figures["stage_mean"]["inference"], model
        # TorchServe's histogram knows the server's p50 only to within a bucket: the client's
        # p50 must not lie below that bucket.
        lower, _ = figures["inference_bucket"]["0.5"]
        assert figures["client"]["0.5"] >= lower, model
        assert figures["client"]["0.5"] <= figures["client"]["0.95"] <= figures["client"]["0.99"]


def test_the_report_is_written_with_its_plots(load_test):
    report = (load_test["out"] / "report.md").read_text()
    for model in MODELS:
        assert f"## {model}" in report
    for plot in ("over_time", "latency_percentiles", "time_split", "batch_sizes"):
        png = load_test["out"] / f"{plot}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"]({plot}.png)" in report
    assert (load_test["out"] / "locust.html").exists()
    assert (load_test["out"] / "locust_stats.csv").exists()


def test_a_broken_objective_makes_a_distributed_load_test_fail(load_test, server, prometheus,
                                                               tmp_path):
    # Two Locust worker processes under a master: the master checks the objectives and exports
    # the client metrics for all of them.
    code, _, _ = run_load_test(server, prometheus, tmp_path, "digits", "-u", "4", "-t", "8s",
                               "--processes", "2", "--slo-p95-ms", "0.001")
    assert code == 1
    report = json.loads((tmp_path / "slo.json").read_text())
    assert [r["objective"] for r in report["rows"] if not r["ok"]] == ["p95_ms"]
    figures = json.loads((tmp_path / "report.json").read_text())["models"]["digits"]
    assert figures["requests"] > 0 and figures["statuses"] == {"200": figures["requests"]}
    assert "**broken**" in (tmp_path / "report.md").read_text()  # a failed test gets its report


def test_locust_run_times_in_seconds():
    from loadtest.runner import seconds

    assert [seconds(d) for d in ("90", "30s", "5m", "1h30m")] == [90, 30, 300, 5400]


def test_paced_users_spread_their_requests_over_each_second(tmp_path, monkeypatch):
    """PacedUser offers N requests/s as an even stream, each user on its own phase, against a
    server that answers like a model with a short queue (slow 200s, quick 503s that close the
    connection). Against TorchServe, users paced by Locust's constant_throughput drifted into
    lockstep within seconds (its access log: ~220 requests in 100 ms, then none for 0.9 s), so the
    queue sat empty most of the time and overload runs measured the generator's bursts: goodput
    59%, rejections 66 ms p50; paced as now, 97% and 1 ms. A real Locust (two processes, as a
    distributed run has them) against a recording HTTP server on loopback."""
    import http.server
    import threading

    from loadtest import KEY_ENV
    from loadtest.runner import MEASURE_ONLY, locust

    arrivals: list[float] = []
    slots = threading.BoundedSemaphore(16)

    class Recorder(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            arrivals.append(time.monotonic())
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            accepted = slots.acquire(blocking=False)
            if accepted:  # like a model with a short queue: slow answers, the excess refused
                time.sleep(0.3)
                slots.release()
            body = b'{"ok": true}'
            self.send_response(200 if accepted else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if not accepted:
                self.send_header("Connection", "close")  # as TorchServe does on errors
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PACED_MODELS", "minilm:1")
    monkeypatch.setenv(KEY_ENV, "unused")
    users, seconds = 250, 8
    try:
        locust(tmp_path, f"http://127.0.0.1:{server.server_port}", users, users, f"{seconds}s",
               ["PacedUser"], processes=2, metrics_port=free_port(), extra=MEASURE_ONLY)
    finally:
        server.shutdown()
    steady = [t for t in arrivals if arrivals[0] + 3 <= t < arrivals[0] + seconds - 1]
    assert len(steady) > 0.8 * users * (seconds - 4), len(steady)  # ~N requests a second
    bins: dict[int, int] = {}
    for t in steady:
        bins[int(t * 10)] = bins.get(int(t * 10), 0) + 1
    # Evenly spread, a 100 ms bin holds ~25 of the 250 requests a second; in lockstep, ~250.
    assert max(bins.values()) <= 75, [bins[k] for k in sorted(bins)]
