"""A user's own models, from their files to a load-test report, in a copy of the project: `serving
new` writes each folder, `serving build` exports and parity-checks it, a real TorchServe serves it,
a real Locust load-tests it into a real Prometheus, and nothing outside the new folders changes.

The models are made here (tests/user_models.py): a small CNN saved as TorchScript and with
torch.export, and a tiny random BERT-style sequence classifier saved as a Hugging Face directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from serving.run.paths import ROOT
from serving.run.prometheus import Prometheus
from serving.run.torchserve import Instance, free_port
from tests import user_models

# name -> (how the user's file is made, extra arguments of `serving new`, the answer's field)
USER_MODELS = {
    "cnn_torchscript": (user_models.save_torchscript, "cnn.pt",
                        ["--input-shape", "1,16,16", "--kind", "array_classifier"], "predictions"),
    "cnn_exported": (user_models.save_exported, "cnn.pt2", [], "outputs"),
    "bert_classifier": (user_models.save_tiny_bert_classifier, "bert", [], "predictions"),
}


def run(project: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
           "HOME": str(project.parent / "home")}  # caches land outside the project
    done = subprocess.run([sys.executable, *args], cwd=project, capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def project(builds_or_serves, tmp_path_factory) -> Path:
    """The project as committed and as changed, without what is ignored (builds, archives), as a
    git repository of its own: `git status` then says what the steps below changed."""
    copy = tmp_path_factory.mktemp("project") / "serving"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    for command in (["init", "-q"], ["add", "-A"],
                    ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"]):
        subprocess.run(["git", *command], cwd=copy, check=True)
    return copy


@pytest.fixture(scope="module")
def served(project, tmp_path_factory):
    """Each user model: `serving new`, `serving build`, then all three served by one TorchServe
    on free ports. Seconds of each step, per model, for the closing figures."""
    files = tmp_path_factory.mktemp("user-files")
    timings = {}
    for name, (make, file, args, _) in USER_MODELS.items():
        source = make(files / file)
        started = time.monotonic()
        created = run(project, "-m", "serving", "new", name, "--from", str(source), *args)
        print(f"\n$ python -m serving new {name} --from {file} {' '.join(args)}\n{created.stdout}")
        new_s = time.monotonic() - started
        built = run(project, "-m", "serving", "build", name)
        print(built.stdout[-600:])
        timings[name] = {"new_s": new_s, "build_s": time.monotonic() - started - new_s}
    instance = Instance.on_free_ports(run_dir=tmp_path_factory.mktemp("ts"),
                                      model_store=project / "model_store")
    started = time.monotonic()
    instance.start(list(USER_MODELS))
    try:
        instance.wait_ready(list(USER_MODELS), timeout=300)
        for name in USER_MODELS:
            timings[name]["ready_s"] = time.monotonic() - started
        yield instance, timings
    finally:
        instance.stop()


def test_each_user_model_answers_its_example_request(served, project):
    instance, timings = served
    for name, (*_, answer_field) in USER_MODELS.items():
        model_yaml = (project / "models" / name / "model.yaml").read_text()
        example = next(line.split("file:")[1].strip() for line in model_yaml.splitlines()
                       if "file:" in line)
        content_type = "application/json"
        response = requests.post(f"{instance.inference_url}/predictions/{name}",
                                 data=(project / "models" / name / example).read_bytes(),
                                 headers={"Content-Type": content_type,
                                          **instance.auth("inference")}, timeout=30)
        assert response.status_code == 200, response.text
        assert answer_field in response.json()
        t = timings[name]
        print(f"{name}: serving new {t['new_s']:.1f}s + build {t['build_s']:.1f}s + TorchServe "
              f"start to READY {t['ready_s']:.1f}s (three models at once) = first answer after "
              f"{t['new_s'] + t['build_s'] + t['ready_s']:.1f}s")


def test_a_user_model_describes_itself(served):
    instance, _ = served
    metadata = instance.metadata("bert_classifier")
    assert metadata["kind"] == "text_classifier"
    assert metadata["build"]["parity"]["top1_agreement"] >= 0.99 or \
        metadata["build"]["parity"]["relative_error"] <= 1e-4
    labels = requests.post(f"{instance.inference_url}/predictions/bert_classifier",
                           json={"texts": ["a good film", "late and damaged"]},
                           headers=instance.auth("inference"), timeout=30).json()["predictions"]
    assert len(labels) == 2
    assert {p["label"] for p in labels[0]} == {"negative", "neutral", "positive"}
    assert metadata["request"]["application/json"]["oneOf"][0]["required"] == ["texts"]


def test_a_load_test_of_the_user_models_and_its_report(served, project, tmp_path):
    instance, _ = served
    prom = Prometheus(run_dir=tmp_path / "prometheus", port=free_port(),
                      torchserve_metrics=f"127.0.0.1:{instance.ports['metrics']}",
                      loadtest_metrics=f"127.0.0.1:{free_port()}", scrape_interval="1s")
    prom.start()
    try:
        prom.wait_ready()
        out = tmp_path / "loadtest"
        run(project, "-m", "loadtest", "run", *USER_MODELS, "-u", "6", "-t", "10s",
            "--host", instance.inference_url, "--key-file", str(instance.key_file),
            "--prometheus-port", str(prom.port),
            "--metrics-port", prom.loadtest_metrics.rsplit(":", 1)[1], "--out", str(out),
            timeout=180)
    finally:
        prom.stop()
    slo = json.loads((out / "slo.json").read_text())
    assert slo["broken"] == 0 and {r["model"] for r in slo["rows"]} == set(USER_MODELS)
    report = json.loads((out / "report.json").read_text())
    for name in USER_MODELS:
        assert report["models"][name]["requests"] > 0, report["models"][name]
    assert (out / "report.md").exists()


def test_the_user_models_answer_as_their_openapi_document_says(served, project, tmp_path):
    """The document `serving openapi` writes for the new folders, fed to schemathesis against the
    real server: valid and invalid bodies, no 5xx, every answer as documented."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    from tests.test_openapi import CHECKS

    instance, _ = served
    document = tmp_path / "openapi.json"
    run(project, "-m", "serving", "openapi", *USER_MODELS, "-o", str(document))
    schema = schemathesis.openapi.from_dict(json.loads(document.read_text()))
    for name in USER_MODELS:
        operation = schema[f"/predictions/{name}"]["POST"]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=20, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(mode))
            def check(case):
                case.call_and_validate(base_url=instance.inference_url, checks=CHECKS,
                                       headers=instance.auth("inference"), timeout=30)

            check()


def test_nothing_outside_the_new_folders_changed(served, project):
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal"],
                             cwd=project, capture_output=True, text=True, check=True).stdout
    assert sorted(changed.splitlines()) == sorted(f"?? models/{name}/" for name in USER_MODELS)
