"""The three models served by a real TorchServe, checked over HTTP."""

from __future__ import annotations

import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import torch
from PIL import Image

import models
from models import MODELS_DIR
from models.digits.model import split
from models.minilm.model import source_dir
from models.efficientnet_lite0.photos import encoded
from serving.run.paths import ROOT
from serving.run.torchserve import Instance, port_in_use
from tests.clients import kserve_sdk
from tests.numerics import assert_held_out_count_matches, assert_same_top_k

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


def predict(server: Instance, model: str, data, content_type: str = "application/json",
            **kwargs) -> requests.Response:
    if not isinstance(data, (bytes, str)):
        data = json.dumps(data)
    return requests.post(f"{server.inference_url}/predictions/{model}", data=data,
                         headers={"Content-Type": content_type, **server.auth("inference")},
                         timeout=60, **kwargs)


def test_digits_accuracy_over_http_equals_the_offline_accuracy(server, build_info):
    _, _, x_test, y_test = split()

    def label(grid):
        response = predict(server, "digits", {"pixels": grid.int().tolist()})
        assert response.status_code == 200, response.text
        return int(response.json()["predictions"][0]["label"])

    with ThreadPoolExecutor(8) as pool:
        served = list(pool.map(label, x_test))
    right = sum(int(p == y) for p, y in zip(served, y_test.tolist()))
    offline = build_info["digits"]["evaluation"]
    assert right / len(y_test) >= 0.95
    assert len(y_test) == offline["held_out_size"]
    assert_held_out_count_matches(right, offline, build_info["digits"]["precision"])


@pytest.mark.parametrize("photo", ["chelsea", "cat"])
def test_a_cat_photo_has_a_cat_class_in_its_top5(server, photo):
    response = predict(server, "efficientnet_lite0", encoded(photo, "JPEG"), "image/jpeg")
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 5
    assert any(p["index"] in CAT_CLASSES for p in predictions), predictions
    assert predictions[0]["index"] in CAT_CLASSES
    assert sum(p["probability"] for p in predictions) <= 1.0 + 1e-6


def test_an_image_as_a_multipart_upload(server):
    response = requests.post(f"{server.inference_url}/predictions/efficientnet_lite0",
                             files={"data": ("coffee.png", encoded("coffee"), "image/png")},
                             headers=server.auth("inference"), timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == "espresso"


def embed(server: Instance, texts: list[str]) -> torch.Tensor:
    response = predict(server, "minilm", {"texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dimensions"] == 384 and len(body["embeddings"]) == len(texts)
    return torch.tensor(body["embeddings"])


def test_related_sentences_are_closer_than_unrelated_ones(server):
    a, b, c = embed(server, ["A man is playing a guitar.", "Someone plays an acoustic guitar.",
                             "The stock market fell sharply on Monday."])
    assert float(a @ b) > float(a @ c) + 0.3
    assert torch.allclose(torch.stack([a, b, c]).norm(dim=1), torch.ones(3), atol=1e-5)


def test_embeddings_of_mixed_lengths_match_sentence_transformers(server, build_info):
    from sentence_transformers import SentenceTransformer

    texts = ["Hi", "A much longer sentence, with several clauses, that needs many more tokens "
             "than the first one does, so the batch is padded.", "Medium length sentence here."]
    served = embed(server, texts)
    reference = SentenceTransformer(str(source_dir()), device="cpu")
    for text, row in zip(texts, served):  # each alone: no padding in the reference
        expected = torch.tensor(reference.encode([text], normalize_embeddings=True)[0])
        if build_info["minilm"]["precision"] == "fp32":
            assert float((row - expected).abs().max()) < 1e-5
        else:  # the build shipped a lower precision, under its cosine gate
            assert float(row @ expected) > 0.99


def test_concurrent_requests_are_batched(server):
    photo = encoded("chelsea", "JPEG")
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(
            lambda _: predict(server, "efficientnet_lite0", photo, "image/jpeg"), range(24)))
    assert all(r.status_code == 200 for r in responses)
    sizes = [int(r.headers["x-batch-size"]) for r in responses]
    assert max(sizes) > 1, sizes
    # Batching changes no answer beyond float rounding: a batch of 4 and a batch of 1 take other
    # kernel paths (an AMD EPYC with AVX-512 moved a probability's 6th decimal, 0.372759 vs 0.37276),
    # so the same classes in the same order with probabilities within 1e-4.
    first = responses[0].json()["predictions"]
    for response in responses[1:]:
        assert_same_top_k(response.json()["predictions"], first)



def test_the_frontend_logs_each_line_once_and_requests_only_in_the_access_log(server):
    """serving/run/log4j2.xml: TorchServe's bundled config wrote every frontend line to ts_log twice,
    per-request debug lines, and at info still five lines per request; all cost the frontend CPU
    under load (docs/performance.md)."""
    access = server.log_dir / "access_log.log"
    logged = len(access.read_text().splitlines())
    for _ in range(20):
        assert predict(server, "digits", {"pixels": GRID}).status_code == 200
    lines = (server.log_dir / "ts_log.log").read_text().splitlines()
    assert any("[INFO ]" in line for line in lines), lines[:20]
    assert not [line for line in lines if "[DEBUG]" in line][:5]
    # The frontend's own lines (a worker can print the same line twice in one millisecond).
    doubled = [a for a, b in zip(lines, lines[1:]) if a == b and " org.pytorch.serve." in a]
    assert not doubled[:5], doubled[:5]
    assert not [line for line in lines if "WorkerLifeCycle" in line and "[INFO ]" in line][:5]
    per_request = ("ACCESS_LOG", "Sending response for jobId", "Backend response time",
                   "Looping backend response")
    assert not [line for line in lines if any(p in line for p in per_request)][:5]
    # The requests are in the access log, once each (a line is written after its response).
    deadline = time.monotonic() + 5
    while True:
        requests_logged = [line for line in access.read_text().splitlines()[logged:]
                           if "/predictions/digits" in line]
        if len(requests_logged) >= 20 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(requests_logged) == 20, requests_logged


def test_torchserve_starts_no_host_metrics_collector_beside_the_workers(tmp_path_factory):
    """config.properties turns TorchServe's system-metrics collector off: once a minute it started a
    Python process that preempted the workers' OpenMP threads and stalled every batch in flight
    for 2-3 s (docs/performance.md). It runs first at the server's start; here the metrics file
    declares one of its gauges again, so the gauge would appear if the collector had run."""
    from tests.conftest import start_on_free_ports

    config_dir = tmp_path_factory.mktemp("config")
    (config_dir / "config.properties").write_text((ROOT / "config.properties").read_text())
    declared = (ROOT / "metrics.yaml").read_text().replace("  gauge:\n", (
        "  gauge:\n    - name: CPUUtilization\n      unit: Percent\n"
        "      dimensions: [*level, *hostname]\n"), 1)
    assert "CPUUtilization" in declared
    (config_dir / "metrics.yaml").write_text(declared)
    instance = start_on_free_ports(tmp_path_factory, ["digits"],
                                   base_config=config_dir / "config.properties")
    try:
        assert predict(instance, "digits", {"pixels": GRID}).status_code == 200
        deadline, text = time.monotonic() + 10, ""
        while time.monotonic() < deadline and "ts_inference_requests_total{" not in text:
            text = requests.get(f"{instance.metrics_url}/metrics", timeout=5).text
            time.sleep(0.5)
        assert "ts_inference_requests_total{" in text, text[:500]  # the endpoint serves metrics
        time.sleep(2)
        text = requests.get(f"{instance.metrics_url}/metrics", timeout=5).text
        assert not [line for line in text.splitlines() if line.startswith("CPUUtilization")]
    finally:
        instance.stop()


def test_the_frontends_jit_compilers_run_only_on_idle_cpu_time(server):
    """serving/run/cpu.py, idle_jit_threads: the frontend's C2 compiling, minutes long under load,
    preempted a worker's OpenMP threads mid-batch. Every compiler thread starts with the JVM
    (config.properties' vmargs) and the launcher puts each on SCHED_IDLE once the models are READY."""
    from serving.run.cpu import jit_threads

    assert predict(server, "digits", {"pixels": GRID}).status_code == 200
    compilers = jit_threads(server.process().pid)
    assert len(compilers) >= 2, compilers  # C1 and C2, named as HotSpot names them
    assert {tid: os.sched_getscheduler(tid) for tid in compilers} == \
        {tid: os.SCHED_IDLE for tid in compilers}


GRID = [[0] * 8] * 8

BAD_REQUESTS = [
    # model, body, content type, status, error
    ("efficientnet_lite0", b"definitely not an image", "image/jpeg", 400, "not_an_image"),
    ("efficientnet_lite0", None, "image/jpeg", 400, "corrupt_image"),  # truncated JPEG, below
    ("efficientnet_lite0", b"", "image/jpeg", 400, "empty_body"),
    ("efficientnet_lite0", None, "image/png", 413, "too_large"),       # decompression bomb, below
    ("efficientnet_lite0", b"\0" * (9 * 1024 * 1024), "image/png", 413, "too_large"),
    ("digits", b'{"pixels": [[0, 1', "application/json", 400, "malformed_json"),
    ("digits", b"", "application/json", 400, "empty_body"),
    ("digits", json.dumps({"pixels": [[1, 2], [3, 4]]}), "application/json", 422, "wrong_shape"),
    ("digits", json.dumps({"pixels": [[99] * 8] * 8}), "application/json", 422, "out_of_range"),
    ("digits", json.dumps({"image": GRID}), "application/json", 422, "missing_field"),
    ("minilm", b"{not json", "application/json", 400, "malformed_json"),
    ("minilm", json.dumps({"texts": [42]}), "application/json", 422, "wrong_type"),
    ("minilm", json.dumps({"texts": []}), "application/json", 422, "no_input"),
    ("minilm", json.dumps({"text": "x" * 20_000}), "application/json", 413, "too_large"),
    ("minilm", b"\xff\xfe\xfd", "text/plain", 400, "not_utf8"),
]


def bad_body(model: str, body, status: int) -> bytes | str:
    if body is not None:
        return body
    if status == 413:
        buffer = io.BytesIO()
        Image.new("L", (6000, 6000)).save(buffer, "PNG")  # 36 Mpixels in ~35 KB
        return buffer.getvalue()
    return encoded("chelsea", "JPEG")[:5000]


@pytest.mark.parametrize("model, body, content_type, status, error", BAD_REQUESTS,
                         ids=[f"{r[0]}-{r[4]}-{i}" for i, r in enumerate(BAD_REQUESTS)])
def test_bad_input_gets_a_json_4xx_and_the_server_keeps_serving(server, model, body, content_type,
                                                                  status, error):
    response = predict(server, model, bad_body(model, body, status), content_type)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"] == error and response.json()["detail"]
    good = {"digits": ({"pixels": GRID}, "application/json"),
            "minilm": ({"text": "still here"}, "application/json"),
            "efficientnet_lite0": (encoded("coffee", "JPEG"), "image/jpeg")}[model]
    assert predict(server, model, *good).status_code == 200


def test_bad_and_good_requests_together_each_get_their_own_answer(server):
    good = json.dumps({"pixels": GRID})
    bodies = [good if i % 2 == 0 else '{"pixels": "nope"}' for i in range(32)]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda b: predict(server, "digits", b), bodies))
    assert [r.status_code for r in responses] == [200 if i % 2 == 0 else 422 for i in range(32)]


def test_readiness_follows_the_workers(server):
    assert server.model_ready("digits")
    scale = f"{server.management_url}/models/digits?synchronous=true"
    key = server.auth("management")
    assert requests.put(f"{scale}&min_worker=0&max_worker=0", headers=key, timeout=60).status_code == 200
    try:
        assert not server.model_ready("digits")
        assert server.model_ready("minilm")  # the others are unaffected
    finally:
        workers = server.workers_in("digits")  # as the archive's config has it
        assert requests.put(f"{scale}&min_worker={workers}&max_worker={workers}", headers=key,
                            timeout=120).status_code == 200
    assert server.model_ready("digits")
    assert predict(server, "digits", {"pixels": GRID}).status_code == 200


@pytest.mark.parametrize("victims", ["one", "every"])
def test_a_worker_killed_under_load_fails_at_most_one_batch_and_is_back_within_10s(server, victims):
    """SIGKILL of one worker, or of every worker of the model, while 8 clients keep it busy: each
    killed worker's in-flight batch may fail, the queued requests are served (by the replacements,
    or by the model's other workers), and the replacements are READY within 10 s. Readiness says
    so throughout: true all along while another worker of the model lives, false while none does
    (with two workers per model, only killing both reaches that branch)."""
    import threading

    import psutil

    model, clients = "efficientnet_lite0", 8
    batch_size = int(server.describe(model)[0]["batchSize"])
    photo = encoded("chelsea", "JPEG")
    statuses, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            statuses.append(predict(server, model, photo, "image/jpeg").status_code)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        workers = server.workers(model)
        chosen = workers[:1] if victims == "one" else workers
        sent_before = len(statuses)
        killed = time.monotonic()
        for victim in chosen:
            psutil.Process(victim["pid"]).kill()
        readiness, back_at = [], None
        while time.monotonic() - killed < 60 and back_at is None:
            readiness.append(server.model_ready(model))
            pids = {w["pid"] for w in server.workers(model) if w.get("status") == "READY"}
            if not pids & {v["pid"] for v in chosen} and len(pids) == len(workers) \
                    and readiness[-1]:
                back_at = time.monotonic()
            time.sleep(0.05)
        time.sleep(2)  # the queued requests drain
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert back_at is not None and back_at - killed < 10, f"replaced after {back_at and back_at - killed}"
    if len(chosen) == len(workers):
        assert not all(readiness), "readiness never turned false with every worker killed"
    else:
        assert all(readiness), "the model turned unready while another worker of it lived"
    failed = [s for s in statuses if s != 200]
    print(f"\n{len(chosen)} of {len(workers)} workers killed under load: replaced and READY after "
          f"{back_at - killed:.1f}s; ready throughout: {all(readiness)}; {len(statuses)} requests, "
          f"{len(failed)} failed ({sorted(set(failed))}), {len(statuses) - sent_before} sent after "
          "the kill")
    assert len(failed) <= batch_size * len(chosen), failed
    assert statuses[-clients:] == [200] * clients


def test_stopping_another_instance_leaves_this_one_running(server, tmp_path):
    other = Instance.on_free_ports(run_dir=tmp_path / "other")
    other.start(["digits"])
    try:
        other.wait_ready(["digits"], timeout=120)
        assert predict(other, "digits", {"pixels": GRID}).status_code == 200
    finally:
        assert other.stop()
    assert other.process() is None
    assert not port_in_use(other.ports["inference"])
    assert server.process() is not None
    assert predict(server, "digits", {"pixels": GRID}).status_code == 200


def test_placed_workers_run_only_on_their_cpus(build_info, tmp_path, monkeypatch):
    """SERVING_CPUS through a real TorchServe: the launcher passes it on, each digits worker pins
    every one of its threads to CPU 0 (the frontend and unplaced models stay anywhere), says so in
    its log, and serves."""
    monkeypatch.setenv("SERVING_CPUS", "digits=0")
    instance = Instance.on_free_ports(run_dir=tmp_path / "placed")
    instance.start(["digits"])
    try:
        instance.wait_ready(["digits"], timeout=120)
        assert predict(instance, "digits", {"pixels": GRID}).status_code == 200
        pids = [worker["pid"] for worker in instance.workers("digits")]
        assert pids
        for pid in pids:
            for task in Path(f"/proc/{pid}/task").iterdir():
                assert os.sched_getaffinity(int(task.name)) == {0}, (pid, task.name)
        assert os.sched_getaffinity(instance.process().pid) == os.sched_getaffinity(0)
        log = (instance.log_dir / "model_log.log").read_text()
        assert "on CPUs [0] (SERVING_CPUS)" in log, log[-2000:]
    finally:
        instance.stop()


def test_a_placement_of_models_the_server_does_not_serve_is_refused_before_it_starts(monkeypatch):
    from serving.run.torchserve import ServeError

    monkeypatch.setenv("SERVING_CPUS", "digits=0 mnist=0")
    with pytest.raises(ServeError, match="places mnist, which this server does not serve"):
        Instance.check_placement(["digits"])
    monkeypatch.setenv("SERVING_CPUS", "digits=4096")
    with pytest.raises(ServeError, match="SERVING_CPUS: 'digits=4096': no CPU 4096 here"):
        Instance.check_placement(["digits"])


# -- KServe's v1 protocol through the front door ----------------------------------------------------

def v1_predict(door, server: Instance, model: str, instances: list, **kwargs) -> requests.Response:
    return requests.post(f"http://127.0.0.1:{door.port}/v1/models/{model}:predict",
                         json={"instances": instances}, timeout=60,
                         headers={**server.auth("inference"), **kwargs.pop("headers", {})}, **kwargs)


def v1_examples() -> dict[str, list]:
    """Two instances per model, in v1's form."""
    import base64

    digits = json.loads((MODELS_DIR / "digits" / "example.json").read_text())["pixels"]
    return {"digits": [digits, [row[::-1] for row in digits]],
            "efficientnet_lite0": [{"b64": base64.b64encode(encoded(photo, "JPEG")).decode()}
                                   for photo in ("chelsea", "coffee")],
            "minilm": json.loads((MODELS_DIR / "minilm" / "example.json").read_text())["texts"][:2]}


def native_answers(server: Instance, model: str, instances: list) -> list:
    """The native endpoint's answer for each instance alone, in v1's prediction form."""
    import base64

    answers = []
    for instance in instances:
        if model == "efficientnet_lite0":
            response = predict(server, model, base64.b64decode(instance["b64"]), "image/jpeg")
        elif model == "minilm":
            response = predict(server, model, {"text": instance})
        else:
            response = predict(server, model, {"pixels": instance})
        assert response.status_code == 200, response.text
        body = response.json()
        answers.append(body["embeddings"][0] if model == "minilm" else body["predictions"])
    return answers


def assert_same_predictions(model: str, v1: list, native: list) -> None:
    assert len(v1) == len(native)
    for mine, theirs in zip(v1, native):
        if model == "minilm":
            assert torch.allclose(torch.tensor(mine), torch.tensor(theirs), atol=1e-4)
        else:
            assert_same_top_k(mine, theirs)


@pytest.mark.parametrize("model", ["digits", "efficientnet_lite0", "minilm"])
def test_v1_predictions_are_the_native_answers_per_instance(server, front_door, model):
    instances = v1_examples()[model]
    response = v1_predict(front_door, server, model, instances)
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"predictions"}
    assert_same_predictions(model, response.json()["predictions"],
                            native_answers(server, model, instances))


def test_v1_refusals_are_json_for_that_request_and_the_native_path_stays_native(server,
                                                                               front_door):
    base = f"http://127.0.0.1:{front_door.port}"
    auth = server.auth("inference")
    cases = [
        (v1_predict(front_door, server, "digits", [[[1] * 8] * 7]), 422, "wrong_shape"),
        (v1_predict(front_door, server, "minilm", ["fine", ""]), 422, "empty_text"),
        (v1_predict(front_door, server, "efficientnet_lite0", [{"b64": "%%%"}]), 400, "bad_base64"),
        (requests.post(f"{base}/v1/models/digits:predict", data=b"x", timeout=10,
                       headers={**auth, "Content-Type": "text/plain"}), 415, "unsupported_media_type"),
        (requests.get(f"{base}/v1/models/digits:predict", headers=auth, timeout=10), 405,
         "method_not_allowed"),
    ]
    for response, status, error in cases:
        assert (response.status_code, response.json()["error"]) == (status, error), response.text
    no_model = v1_predict(front_door, server, "nope", [[1]])
    assert no_model.status_code == 404 and "nope" in no_model.text  # TorchServe's own answer
    # A client's protocol header does not change the native path through the front door.
    native = requests.post(f"{base}/predictions/digits", json={"pixels": GRID}, timeout=30,
                           headers={**auth, "X-Inference-Protocol": "kserve-v1"})
    assert native.status_code == 200 and isinstance(native.json()["predictions"][0], dict)
    assert requests.get(f"{base}/", timeout=5).json() == {"status": "alive"}


def test_kserve_sdk_v1_client_gets_the_native_answers(server, front_door):
    examples = v1_examples()
    result = kserve_sdk({"url": f"http://127.0.0.1:{front_door.port}", "protocol": "v1",
                         "headers": server.auth("inference"),
                         "calls": [{"model": m, "body": {"instances": examples[m]}}
                                   for m in examples] +
                                  [{"model": "digits", "body": {"instances": [[[1] * 8] * 7]}}]})
    assert result["live"] is True
    *answers, refused = result["answers"]
    for model, answer in zip(examples, answers):
        assert answer["status"] == 200, answer
        assert_same_predictions(model, answer["body"]["predictions"],
                                native_answers(server, model, examples[model]))
    assert refused["status"] == 422 and refused["body"]["error"] == "wrong_shape"


# -- the Open Inference Protocol (v2) over REST through the front door ---------------------------

def oip_inputs(model: str, instances: list) -> list[dict]:
    """v1_examples' instances as the model's OIP input tensor (BYTES: base64 for the plan)."""
    import base64

    if model == "digits":
        return [{"name": "pixels", "datatype": "FP32", "shape": [len(instances), 8, 8],
                 "data": [v for grid in instances for row in grid for v in row]}]
    if model == "efficientnet_lite0":
        return [{"name": "image", "datatype": "BYTES", "shape": [len(instances)],
                 "data": [i["b64"] for i in instances]}]
    return [{"name": "text", "datatype": "BYTES", "shape": [len(instances)],
             "data": [base64.b64encode(t.encode()).decode() for t in instances]}]


def oip_predictions(model: str, outputs: dict) -> list:
    """An OIP answer's output tensors back in v1's prediction form, to compare with native."""
    if model == "minilm":
        rows, width = outputs["embedding"]["shape"]
        data = outputs["embedding"]["data"]
        return [data[r * width:(r + 1) * width] for r in range(rows)]
    rows, k = outputs["index"]["shape"]
    return [[{"index": int(outputs["index"]["data"][r * k + j]),
              "label": outputs["label"]["data"][r * k + j],
              "probability": float(outputs["probability"]["data"][r * k + j])} for j in range(k)]
            for r in range(rows)]


def test_tritonclient_http_json_and_binary_get_the_native_answers_on_every_model(server, front_door):
    from tests.clients import triton_client

    examples = v1_examples()
    result = triton_client({
        "url": f"127.0.0.1:{front_door.port}", "protocol": "http",
        "headers": server.auth("inference"), "models": list(examples),
        "calls": [{"model": m, "binary": binary, "inputs": oip_inputs(m, examples[m])}
                  for m in examples for binary in (True, False)
                  if binary or m != "efficientnet_lite0"] +  # images in JSON: not UTF-8 strings
                 [{"model": "digits", "inputs": [{"name": "pixels", "datatype": "FP32",
                                                  "shape": [1, 8, 7], "data": [1.0] * 56}]}]})
    assert result["live"] and result["ready"]
    for model in examples:
        assert result["models"][model]["ready"] is True
        metadata = result["models"][model]["metadata"]
        assert metadata["name"] == model
        assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == \
            [(i["name"], i["datatype"]) for i in oip_inputs(model, [])]
    *answers, refused = result["answers"]
    calls = [m for m in examples for binary in (True, False) if binary or m != "efficientnet_lite0"]
    for model, answer in zip(calls, answers):
        assert "outputs" in answer, answer
        assert_same_predictions(model, oip_predictions(model, answer["outputs"]),
                                native_answers(server, model, examples[model]))
    assert refused["status"] == "422" and refused["error"].startswith("wrong_shape: "), refused


def test_kserve_sdk_v2_rest_client_gets_the_native_answers(server, front_door):
    examples = v1_examples()
    result = kserve_sdk({"url": f"http://127.0.0.1:{front_door.port}", "protocol": "v2",
                         "headers": server.auth("inference"), "ready": list(examples),
                         "calls": [{"model": m, "oip_inputs": oip_inputs(m, examples[m])}
                                   for m in examples]})
    assert result["live"] is True and all(result["ready"].values()), result
    for model, answer in zip(examples, result["answers"]):
        assert answer["status"] == 200, answer
        assert_same_predictions(model, oip_predictions(model, answer["body"]),
                                native_answers(server, model, examples[model]))


def test_oip_routes_answer_as_the_protocol_says(server, front_door):
    base = f"http://127.0.0.1:{front_door.port}"
    auth = server.auth("inference")
    assert requests.get(f"{base}/v2/health/live", timeout=5).json() == {"live": True}
    # TorchServe's /ping behind it: with TorchServe's token check on, it needs the key too.
    assert requests.get(f"{base}/v2/health/ready", headers=auth, timeout=5).status_code == 200
    assert "binary_tensor_data" in requests.get(f"{base}/v2", timeout=5).json()["extensions"]
    metadata = requests.get(f"{base}/v2/models/minilm", headers=auth, timeout=30).json()
    assert metadata["inputs"][0]["datatype"] == "BYTES" and \
        metadata["outputs"][0]["shape"] == [-1, 384]
    assert requests.get(f"{base}/v2/models/minilm/versions/1/ready", headers=auth,
                        timeout=30).json() == {"name": "minilm", "ready": True}
    config = requests.get(f"{base}/v2/models/digits/config", headers=auth, timeout=30).json()
    assert config["max_batch_size"] == 64 and config["input"] == [
        {"name": "pixels", "dims": [8, 8], "data_type": "TYPE_FP32"}]
    missing = requests.get(f"{base}/v2/models/nope/ready", headers=auth, timeout=30)
    assert missing.status_code == 404
    wrong = requests.post(f"{base}/v2/models/digits/infer", headers=auth, timeout=30,
                          json={"inputs": [{"name": "pixels", "datatype": "INT64",
                                            "shape": [1, 8, 8], "data": [1] * 64}]})
    assert wrong.status_code == 422 and wrong.json()["error"].startswith("wrong_datatype: ")
    truncated = requests.post(f"{base}/v2/models/digits/infer", timeout=30, data=b'{"inputs": [',
                              headers={**auth, "Inference-Header-Content-Length": "400",
                                       "Content-Type": "application/octet-stream"})
    assert truncated.status_code == 400 and truncated.json()["error"].startswith("bad_binary")
    assert requests.post(f"{base}/v2/models/digits/infer", data=b"x", timeout=10, headers={
        **auth, "Content-Type": "text/plain"}).status_code == 415


@pytest.mark.parametrize("model", ["digits", "efficientnet_lite0", "minilm"])
def test_perf_analyzer_drives_the_oip_routes_for_a_bounded_run(server, front_door, tmp_path,
                                                               model):
    """Triton's perf_analyzer (the binary in tritonclient 2.40's wheel) against the front door:
    it reads the model's metadata and config, sends binary tensors, and every request succeeds
    (it stops at the first failed one)."""
    import models
    from serving.perf import bench_protocols
    from models import sources

    spec = models.load(model)
    rows = bench_protocols.perf_analyzer(spec, sources.model_handler(spec),
                                       f"127.0.0.1:{front_door.port}", server.auth("inference"),
                                       [1, 2], 1.0, tmp_path)
    # perf_analyzer leaves out a point whose windows never agreed (noise on a busy machine).
    assert [r["concurrency"] for r in rows] in ([1, 2], [1], [2]), rows
    assert all(r["ok_per_s"] > 5 and 0 < r["p50_ms"] <= r["p99_ms"] for r in rows), rows


def test_answers_are_counted_by_protocol(server, front_door):
    """handler_responses_total carries the protocol, so a dashboard tells v1 and v2 traffic from
    native; read from TorchServe's metrics endpoint after one request of each."""
    examples = v1_examples()
    assert v1_predict(front_door, server, "digits", examples["digits"][:1]).status_code == 200
    assert requests.post(f"http://127.0.0.1:{front_door.port}/v2/models/digits/infer",
                         json={"inputs": oip_inputs("digits", examples["digits"][:1])},
                         headers=server.auth("inference"), timeout=30).status_code == 200
    assert predict(server, "digits", {"pixels": GRID}).status_code == 200
    wanted = {'protocol="native"', 'protocol="kserve-v1"', 'protocol="v2"'}
    deadline, seen = time.monotonic() + 20, set()
    while time.monotonic() < deadline and seen != wanted:
        text = requests.get(f"{server.metrics_url}/metrics", timeout=5).text
        seen = {label for line in text.splitlines()
                if line.startswith("handler_responses_total{") and 'model_name="digits"' in line
                and 'status="200"' in line for label in wanted if label in line}
        time.sleep(1)
    assert seen == wanted, seen


def test_make_up_names_a_taken_port_before_it_builds(tmp_path):
    """`make up` checks every port it will listen on first: a taken one found after the build cost
    a new user 13 minutes."""
    import socket

    from serving.cli import check_ports_free
    from serving.run.torchserve import Instance, ServeError

    instance = Instance.on_free_ports(run_dir=tmp_path / "ts")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", instance.ports["frontdoor"]))
        taken.listen()
        with pytest.raises(ServeError, match=f"{instance.ports['frontdoor']} \\(frontdoor\\)"):
            check_ports_free(instance)


def test_a_running_server_says_which_models_it_serves(server):
    """What `make up` compares with the folders, to name those a running server does not serve."""
    assert server.served() == sorted(models.NAMES)
