"""Hostile clients against a real TorchServe: the management plane is closed, and no request can
fail another or take a worker down."""

from __future__ import annotations

import http.server
import json
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from hypothesis import HealthCheck, given, settings

import models
from tests.fuzz_inputs import HOSTILE
from tests.test_fuzz import REGRESSIONS, good_request, thin_png


@pytest.fixture
def url_server():
    """A local HTTP server that records every request: a URL TorchServe must never fetch."""
    fetched = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            fetched.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"PK\x03\x04 not really an archive")

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}", fetched
    httpd.shutdown()


def test_management_calls_without_the_key_are_refused(server, url_server):
    base, fetched = url_server
    m = server.management_url
    calls = [("GET", f"{m}/models"), ("GET", f"{m}/models/digits"),
             ("PUT", f"{m}/models/digits?min_worker=0&max_worker=0"),
             ("POST", f"{m}/models?url={base}/evil.mar"),
             ("POST", f"{m}/workflows?url={base}/evil.war"),
             ("DELETE", f"{m}/models/digits"),
             ("GET", f"{server.inference_url}/ping"),
             ("POST", f"{server.inference_url}/predictions/digits")]
    for method, url in calls:
        for headers in ({}, {"Authorization": "Bearer wrong"},
                        server.auth("inference") if url.startswith(m) else {}):
            response = requests.request(method, url, headers=headers, timeout=10)
            assert response.status_code in (400, 401, 403), (method, url, response.status_code)
    assert fetched == []
    assert server.model_ready("digits")
    assert len(server.workers("digits")) == server.workers_in("digits")  # none added or removed


def test_with_the_management_key_no_url_is_fetched_or_registered(server, url_server):
    base, fetched = url_server
    key = server.auth("management")
    register = requests.post(f"{server.management_url}/models?url={base}/evil.mar", headers=key,
                             timeout=10)
    workflow = requests.post(f"{server.management_url}/workflows?url={base}/evil.war",
                             headers=key, timeout=10)
    assert register.status_code >= 400 and workflow.status_code >= 400, (register.text, workflow.text)
    assert fetched == []
    listed = requests.get(f"{server.management_url}/models", headers=key, timeout=10).json()
    assert sorted(m["modelName"] for m in listed["models"]) == sorted(models.NAMES)
    assert requests.get(f"{server.management_url}/workflows", headers=key,
                        timeout=10).json().get("workflows", []) == []


def post(server, model: str, body: bytes, content_type: str) -> requests.Response:
    return requests.post(f"{server.inference_url}/predictions/{model}", data=body, timeout=60,
                         headers={"Content-Type": content_type, **server.auth("inference")})


def worker_pids(server, model: str) -> set[int]:
    """The model's worker processes: the same set later means no worker died or restarted."""
    return {worker["pid"] for worker in server.workers(model)}


@pytest.mark.parametrize("model", models.NAMES)
def test_one_poisoned_request_among_concurrent_good_ones_fails_alone(server, model):
    pids = worker_pids(server, model)
    good = good_request(model)
    expected = post(server, model, *good).json()
    poisons = [(thin_png() if body is None else body, ctype) for body, ctype in REGRESSIONS[model]]
    for poison in poisons:
        batch = [good] * 8
        batch.insert(4, poison)
        with ThreadPoolExecutor(len(batch)) as pool:
            responses = list(pool.map(lambda r: post(server, model, *r), batch))
        statuses = [r.status_code for r in responses]
        assert statuses[:4] + statuses[5:] == [200] * 8, statuses
        assert 400 <= statuses[4] < 500 and responses[4].json()["error"], responses[4].text
        first = [r.json() for r in responses if r.status_code == 200][0]
        top = "predictions" if "predictions" in expected else "embeddings"
        assert len(first[top]) == len(expected[top])
    assert worker_pids(server, model) == pids


@pytest.mark.parametrize("model", models.NAMES)
def test_no_input_of_the_fuzz_corpus_restarts_a_worker(server, model):
    pids = worker_pids(server, model)

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(HOSTILE[model])
    def replay(request):
        response = post(server, model, *request)
        assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"].startswith("application/json")

    replay()
    assert worker_pids(server, model) == pids and server.model_ready(model)


def test_a_request_past_its_decode_deadline_is_answered_alone_by_a_living_worker(
        build_info, tmp_path_factory):
    """EfficientNet served with a decode deadline of 40 ms, so that an admitted 12 MP PNG (~100 ms
    to decode here) passes it: that request is answered 422 in JSON by the worker that read it,
    the requests around it are answered 200, and no worker restarts. The shipped deadline
    (responseTimeout / (2 x batchSize)) holds in the same way the costs the limits miss."""
    from serving.build.archive import with_config
    from serving.run.paths import MODEL_STORE
    from handlers.image_classifier import flat_image
    from tests.conftest import start_on_free_ports

    store = tmp_path_factory.mktemp("store")
    with_config(MODEL_STORE / "efficientnet_lite0.mar", store / "efficientnet_lite0.mar",
                {"handler": {"max_decode_ms": 40}})
    instance = start_on_free_ports(tmp_path_factory, ["efficientnet_lite0"], model_store=store)
    try:
        pids = worker_pids(instance, "efficientnet_lite0")
        photo = good_request("efficientnet_lite0")
        batch = [photo] * 6
        batch.insert(3, (flat_image(12_000_000, "PNG"), "image/png"))
        with ThreadPoolExecutor(len(batch)) as pool:
            answers = list(pool.map(lambda r: post(instance, "efficientnet_lite0", *r), batch))
        slow = answers.pop(3)
        assert (slow.status_code, slow.json()["error"]) == (422, "too_slow_to_decode"), slow.text
        assert "40 ms" in slow.json()["detail"]
        assert [a.status_code for a in answers] == [200] * 6
        assert post(instance, "efficientnet_lite0", *photo).status_code == 200
        assert worker_pids(instance, "efficientnet_lite0") == pids
    finally:
        instance.stop()


def test_drain_serves_every_accepted_request_before_stopping(build_info, tmp_path_factory):
    """Clients that, like a load balancer, send only while the model is ready: after the drain
    starts no new request is routed, and every request already sent is answered 200 before the
    server stops. (TorchServe's own stop drops queued and in-flight requests.)"""
    from tests.conftest import start_on_free_ports

    instance = start_on_free_ports(tmp_path_factory, ["efficientnet_lite0"])
    photo = good_request("efficientnet_lite0")
    statuses, sent = [], []

    def client():
        while instance.model_ready("efficientnet_lite0"):
            sent.append(1)
            try:
                statuses.append(post(instance, "efficientnet_lite0", *photo).status_code)
            except requests.RequestException as e:
                statuses.append(repr(e))

    try:
        with ThreadPoolExecutor(12) as pool:
            clients = [pool.submit(client) for _ in range(12)]
            time.sleep(3)
            waited = instance.drain(["efficientnet_lite0"], grace=30)
            stopped = instance.stop()
            for c in clients:
                c.result(timeout=60)
    finally:
        instance.stop()
    print(f"\ndrain under load: {len(sent)} requests sent, drained in {waited:.1f}s")
    assert stopped and len(sent) > 12
    assert statuses == [200] * len(sent), [s for s in statuses if s != 200][:5]
    assert waited < 30


def test_an_archive_that_cannot_load_leaves_the_model_unready(build_info, tmp_path):
    """A broken archive: TorchServe keeps retrying its worker; readiness stays false and the wait
    for it fails with where to look, so `serving serve` exits 1 and the container restarts."""
    import shutil

    from serving.run.torchserve import Instance, ServeError
    from tests.archives import write_broken_digits

    store = tmp_path / "store"
    store.mkdir()
    write_broken_digits(store / "digits.mar")
    instance = Instance.on_free_ports(run_dir=tmp_path / "ts", model_store=store)
    instance.start(["digits"])
    try:
        with pytest.raises(ServeError, match="not READY after .*digits.*model_log"):
            instance.wait_ready(["digits"], timeout=20)
        assert not instance.model_ready("digits")
        log = (instance.log_dir / "model_log.log").read_text()
        with zipfile.ZipFile(store / "digits.mar") as mar:
            model_file = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"]
        assert f"ArtifactLoadError: cannot load {model_file}" in log, log[-2000:]
    finally:
        instance.stop()
        shutil.rmtree(store)


def loadtest_command(server, *args: str, timeout: float = 300,
                     host: str | None = None) -> tuple[int, str]:
    import subprocess
    import sys

    from serving.run.paths import ROOT

    done = subprocess.run([sys.executable, "-m", "loadtest", *args, "--host", host or server.inference_url,
                           "--key-file", str(server.key_file)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def test_overload_is_refused_fast_in_json_and_accepted_requests_stay_fast(server, front_door,
                                                                         tmp_path):
    """A bounded run of `make overload` through the front door, as `make up` serves: the model at
    ~4x its capacity, one round. Its figures against the targets are printed (speed targets are
    judged by the command, not here); this test holds the behaviour: excess load is refused with
    JSON 503s (the front door's admission), nothing else fails, and accepted requests stay near
    their unloaded latency instead of seconds behind it."""
    import subprocess
    import sys

    from serving.run.paths import ROOT

    done = subprocess.run([sys.executable, "-m", "serving", "overload", "efficientnet_lite0",
                           "-t", "12", "--rounds", "1", "--host", front_door.url,
                           "--run-dir", str(server.run_dir), "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    code, output = done.returncode, done.stdout + done.stderr
    result = json.loads((tmp_path / "overload.json").read_text())
    print(output[output.find("\nefficientnet_lite0, the median"):])
    assert result["errors"] == 0, output[-3000:]
    assert result["rejected_rps"] > 0 and result["accepted_rps"] > 0
    assert result["offered_rps"] > 3 * result["capacity_rps"], result
    assert result["goodput"] > 0.5
    # 14x with a 128-long queue; 2.4-3.5x with TorchServe's queue of 12 alone; within 2x with
    # the front door's admission (docs/limits.md); 5x here leaves room for a busy CI machine.
    assert result["accepted_p99_ms"] < 5 * result["unloaded_p99_ms"]
    # The command's verdict: 0 when every target is met, 1 when one is missed (2 cores: goodput),
    # never a crash; its exit code must say what its report says.
    assert "Traceback" not in output and code == (0 if result["ok"] else 1), (code, output[-2000:])


def test_a_short_soak_keeps_memory_and_answers_steady(server, tmp_path):
    """A bounded run of `make soak` (60 s here, 10 minutes by the command). Half the capacity,
    not the command's 70%: measured in 5 s on a CI machine busy with Prometheus and the test
    session, the capacity can read high, and at 70% of that one run in four saw digits' queue
    refuse 1.4% (503s) while memory and answers held; at half, one run refused 0.09%, within the
    soak's budget (loadtest/soak.py MAX_REFUSED). Any other error fails."""
    code, output = loadtest_command(server, "soak", "-t", "60s", "--capacity-duration", "5s",
                                    "--load", "0.5", "--out", str(tmp_path))
    result = json.loads((tmp_path / "soak.json").read_text())
    print(output[output.find("\nsoak 60s"):])
    assert result["requests"] > 100 and result["errors"] == result["rejected"], output[-3000:]
    assert result["refused_share"] <= 0.005, output[-3000:]
    assert result["workers_rss_growth"] < 0.10 and result["java_rss_growth"] < 0.10, result
    assert code == 0
