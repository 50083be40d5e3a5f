"""Serving targets: each one that runs here built, checked, loaded in the handler and served over
HTTP by TorchServe; Neuron's arguments, shapes and refusal; the CPU environment decisions."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
import sys

import pytest
import requests
import torch

import models
from handlers import CPU_ENV
from handlers.artifacts import NEURON_MISSING
from models.digits.model import split
from serving.build.pipeline import BuildError, build
from serving.run.cpu import cpu_flags, has_bf16, worker_environment
from serving.run.paths import ROOT
from serving.build.targets import FixedShape, NeuronOptions, fit_sequence, neuron_serving_config
from tests.numerics import assert_held_out_count_matches

GRAVITON3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 " \
            "sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 " \
            "asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm " \
            "svebf16 i8mm bf16 dgh rng\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics " \
            "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu vme sse2 avx2 avx512f avx512_bf16 amx_bf16\n"


# -- CPU decisions ---------------------------------------------------------------------------------

def test_bf16_is_read_from_cpuinfo_on_both_architectures():
    assert has_bf16(cpu_flags(GRAVITON3)) and has_bf16(cpu_flags(SAPPHIRE_RAPIDS))
    assert not has_bf16(cpu_flags(GRAVITON2))


def test_graviton3_workers_get_the_aws_recommended_environment():
    env = worker_environment("aarch64", cpu_flags(GRAVITON3), cores=8, workers=3)
    assert env == {"OMP_NUM_THREADS": "2", "LRU_CACHE_CAPACITY": "1024",
                   "THP_MEM_ALLOC_ENABLE": "1", "DNNL_DEFAULT_FPMATH_MODE": "BF16"}
    assert set(env) <= set(CPU_ENV)  # every setting a worker gets, its READY line logs


def test_graviton2_gets_no_bf16_fast_math():
    env = worker_environment("aarch64", cpu_flags(GRAVITON2), cores=4, workers=2)
    assert "DNNL_DEFAULT_FPMATH_MODE" not in env and env["OMP_NUM_THREADS"] == "2"


def test_x86_workers_get_thread_sizing_only():
    assert worker_environment("x86_64", cpu_flags(SAPPHIRE_RAPIDS), cores=2, workers=3) == \
        {"OMP_NUM_THREADS": "1"}


# -- Neuron, without Neuron hardware ---------------------------------------------------------------

def test_asking_for_neuron_fails_at_once_naming_the_package(tmp_path):
    with pytest.raises(BuildError) as caught:
        build("digits", target="neuron", model_store=tmp_path, work_root=tmp_path)
    assert "torch-neuronx" in str(caught.value) and "pip install" in str(caught.value)
    assert not list(tmp_path.iterdir())  # nothing was loaded or written


def test_neuron_command_line_arguments():
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "serving", "build", "digits", "--target", "neuron", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    missing = run("--neuron-batch-size", "4", "--neuron-cores", "2")
    assert missing.returncode == 1 and NEURON_MISSING in missing.stdout
    assert "at least one NeuronCore" in run("--neuron-cores", "0").stdout
    assert "batch size must be at least 1" in run("--neuron-batch-size", "0").stdout


def test_a_neuron_archive_caps_workers_at_the_cores_and_fixes_shapes():
    config = {"minWorkers": 4, "maxWorkers": 8, "batchSize": 8,
              "handler": {"max_tokens": 256, "sequence_buckets": [16, 32, 64, 128, 256]}}
    fixed = neuron_serving_config(config, NeuronOptions(batch_size=4, cores=2, sequence_length=128),
                                  text=True)
    assert (fixed["minWorkers"], fixed["maxWorkers"], fixed["batchSize"]) == (2, 2, 4)
    assert fixed["handler"]["batch_buckets"] == [4]
    assert fixed["handler"]["sequence_buckets"] == [128] and fixed["handler"]["max_tokens"] == 128
    dynamic = neuron_serving_config(config, NeuronOptions(dynamic_batch=True, cores=12), text=False)
    assert "batch_buckets" not in dynamic["handler"] and dynamic["maxWorkers"] == 8
    assert config["minWorkers"] == 4  # the model's own config is left as it was


def test_fixed_shape_pads_partial_batches_and_slices_back():
    seen = []

    def traced_at_4x8(ids, mask):  # stands for a Neuron module: it only takes (4, 8)
        assert ids.shape == mask.shape == (4, 8)
        seen.append(ids.shape[0])
        return ids.float().sum(1, keepdim=True)

    fixed = FixedShape(traced_at_4x8, (("batch", "seq"), ("batch", "seq")), batch=4, length=8)
    ids = torch.arange(1, 31).reshape(6, 5)
    out = fixed(ids, torch.ones_like(ids))
    assert out.shape == (6, 1) and seen == [4, 4]
    assert torch.equal(out[:, 0], ids.sum(1).float())  # zero padding tokens change no row


def test_fit_sequence_pads_and_cuts_only_sequence_dimensions():
    ids = torch.ones(2, 5, dtype=torch.long)
    images = torch.ones(2, 3)
    padded, untouched = fit_sequence((ids, images), (("batch", "seq"), ("batch", None)), 8)
    assert padded.shape == (2, 8) and padded[:, 5:].eq(0).all() and untouched.shape == (2, 3)
    (cut,) = fit_sequence((ids,), (("batch", "seq"),), 3)
    assert cut.shape == (2, 3)


def test_neuron_options_defaults_follow_the_notes():
    options = NeuronOptions()
    assert "--auto-cast" in options.compiler_args and options.cores == 2


# -- every target that runs here, for real -------------------------------------------------------

# Every target that runs here at fp32, and int8 (dynamic quantization, built as TorchScript, and
# ONNX Runtime's own), asked for by name here whatever this CPU has. Dynamic int8 scales
# activations by the whole batch, so it passes the gate only unbatched: those archives are digits
# with batchSize 1.
HERE_BUILDS = (("eager", "fp32"), ("torchscript", "fp32"), ("inductor", "fp32"), ("torchscript", "int8"),
               ("onnxruntime", "fp32"), ("onnxruntime", "int8"))


def archive_of(target: str, precision: str) -> str:
    return f"digits_{target}" + ("" if precision == "fp32" else f"_{precision}")


def unbatched(spec):
    return dataclasses.replace(spec, config={**spec.config, "batchSize": 1})


@pytest.fixture(scope="module")
def per_target(builds_or_serves, tmp_path_factory):
    """digits built once per target (and int8), each its own archive, served by one TorchServe."""
    from tests.conftest import start_on_free_ports

    store = tmp_path_factory.mktemp("store")
    digits = models.load("digits")
    infos = {(t, p): build("digits", target=t, precision=p, model_store=store,
                           work_root=tmp_path_factory.mktemp("work"), archive_name=archive_of(t, p),
                           spec=digits if p == "fp32" else unbatched(digits))
             for t, p in HERE_BUILDS}
    server = start_on_free_ports(tmp_path_factory, [archive_of(t, p) for t, p in HERE_BUILDS],
                                 model_store=store)
    try:
        yield infos, server
    finally:
        server.stop()


@pytest.mark.parametrize("target, precision", HERE_BUILDS)
def test_each_target_is_built_checked_and_served(per_target, target, precision):
    infos, server = per_target
    info = infos[(target, precision)]
    assert (info["target"], info["precision"]) == (target, precision)
    if precision == "fp32":
        assert info["parity"]["relative_error"] <= 1e-4
    else:  # int8 changes the numbers by design: the classifier gate
        assert info["parity"]["top1_agreement"] >= 0.99 and info["parity"]["relative_error"] > 0
    _, _, x_test, y_test = split()
    url = f"{server.inference_url}/predictions/{archive_of(target, precision)}"
    right = 0
    with requests.Session() as session:
        for grid, label in zip(x_test, y_test.tolist()):
            response = session.post(url, data=json.dumps({"pixels": grid.int().tolist()}),
                                    headers={"Content-Type": "application/json",
                                             **server.auth("inference")}, timeout=30)
            assert response.status_code == 200, response.text
            right += int(response.json()["predictions"][0]["label"]) == label
    assert_held_out_count_matches(right, info["evaluation"], precision)


@pytest.mark.parametrize("target", ["torchscript", "onnxruntime"])
def test_dynamic_int8_is_refused_where_the_model_is_served_in_batches(tmp_path, target):
    digits = models.load("digits")
    assert int(digits.config["batchSize"]) > 1
    with pytest.raises(BuildError, match="depends on the other inputs in its batch"):
        build("digits", target=target, precision="int8", model_store=tmp_path / "store",
              work_root=tmp_path / "work", spec=digits, timed=False)
    assert not (tmp_path / "store" / "digits.mar").exists()


def test_int8_quantizes_the_linear_layers_except_those_skipped():
    from serving.build.targets import TargetUnavailable, quantize_int8

    model = torch.nn.Sequential()
    model.add_module("encoder", torch.nn.Linear(8, 8))
    model.add_module("act", torch.nn.ReLU())
    model.add_module("head", torch.nn.Linear(8, 2))
    quantized = quantize_int8(model, skip=("hea*",))
    assert type(quantized.encoder).__name__ == "Linear" and "quantized" in type(quantized.encoder).__module__
    assert type(quantized.head) is torch.nn.Linear
    x = torch.randn(4, 8)
    assert torch.nn.functional.cosine_similarity(model(x), quantized(x)).min() > 0.95
    with pytest.raises(TargetUnavailable, match="no Linear layers"):
        quantize_int8(model, skip=("*",))


def test_int8_is_tried_where_bf16_is_missing_and_only_as_torchscript(monkeypatch):
    from serving.build import targets

    monkeypatch.setattr(targets, "has_bf16", lambda: False)
    assert targets.candidate_precisions("cpu") == ["fp32", "int8"]
    monkeypatch.setattr(targets, "has_bf16", lambda: True)
    assert targets.candidate_precisions("cpu") == ["fp32", "bf16"]
    with pytest.raises(targets.TargetUnavailable, match="built as torchscript"):
        targets.export("inductor", torch.nn.Linear(4, 2), "int8", (torch.randn(2, 4),),
                       (("batch", None),), {"batch": (1, 8)}, Path("/nonexistent"))


def test_onnxruntime_is_tried_at_fp32_and_int8_on_every_cpu_and_nothing_else(monkeypatch):
    from serving.build import pipeline, targets

    spec = type("Spec", (), {"targets": ("onnxruntime",)})()
    for bf16 in (True, False):
        monkeypatch.setattr(targets, "has_bf16", lambda: bf16)
        assert pipeline.candidates(spec, None, None, "cpu") == [("onnxruntime", "fp32"),
                                                                 ("onnxruntime", "int8")]
    with pytest.raises(targets.TargetUnavailable, match="onnxruntime builds fp32 and int8, not bf16"):
        targets.export("onnxruntime", torch.nn.Linear(4, 2), "bf16", (torch.randn(2, 4),),
                       (("batch", None),), {"batch": (1, 8)}, Path("/nonexistent"))
    with pytest.raises(targets.TargetUnavailable, match="runs on the CPU only"):
        targets.export("onnxruntime", torch.nn.Linear(4, 2), "fp32", (torch.randn(2, 4),),
                       (("batch", None),), {"batch": (1, 8)}, Path("/nonexistent"), device="cuda")


def test_an_onnxruntime_artifact_answers_as_the_model_and_resizes_its_pool(tmp_path):
    from handlers import artifacts
    from serving.build import targets

    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).eval()
    path = targets.export("onnxruntime", model, "fp32", (torch.randn(2, 6),), (("batch", None),),
                          {"batch": (1, 64)}, tmp_path)
    info = {"target": "onnxruntime", "precision": "fp32"}
    loaded = artifacts.load(path.parent, path.name, info, torch.device("cpu"))
    x = torch.randn(17, 6)  # a batch size the example did not have: the batch is dynamic
    assert torch.allclose(loaded(x), model(x), atol=1e-6)
    two = loaded.with_threads(2)
    assert (two.threads, two.session.get_session_options().intra_op_num_threads) == (2, 2)
    assert torch.allclose(two(x), model(x), atol=1e-6) and loaded.with_threads(loaded.threads) is loaded


def test_an_onnxruntime_artifact_runs_each_call_on_the_pool_for_torchs_thread_count(tmp_path):
    from handlers import artifacts
    from serving.build import targets
    from serving.build.timing import torch_threads

    model = torch.nn.Sequential(torch.nn.Linear(6, 3)).eval()
    path = targets.export("onnxruntime", model, "fp32", (torch.randn(2, 6),), (("batch", None),),
                          {"batch": (1, 64)}, tmp_path)
    with torch_threads(1):
        loaded = artifacts.load(path.parent, path.name, {"target": "onnxruntime",
                                                         "precision": "fp32"}, torch.device("cpu"))
    loaded.add_pools([1, 2])
    assert {n: s.get_session_options().intra_op_num_threads for n, s in loaded.sessions.items()} \
        == {1: 1, 2: 2}

    class Recording:
        """The real session, noting that it ran (which pool answered is not visible otherwise)."""

        def __init__(self, session, ran: list, threads: int) -> None:
            self.session, self.ran, self.threads = session, ran, threads

        def run(self, *args):
            self.ran.append(self.threads)
            return self.session.run(*args)

    ran: list[int] = []
    loaded.sessions = {n: Recording(s, ran, n) for n, s in loaded.sessions.items()}
    x = torch.randn(5, 6)
    for threads in (2, 1, 3):  # 3: no pool of its own, the one made at load answers
        with torch_threads(threads):
            assert torch.allclose(loaded(x), model(x), atol=1e-6)
    assert ran == [2, 1]


def test_an_onnxruntime_artifact_on_a_worker_without_onnxruntime_is_refused_naming_it(monkeypatch):
    """ONNX Runtime is installed here, so its absence is made by hiding it from the import system
    (a unit test: a worker image without it cannot be had otherwise in this process)."""
    import importlib.util

    from handlers import artifacts

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    info = {"target": "onnxruntime", "precision": "fp32", "torch": "0.1", "arch": "elsewhere"}
    with pytest.raises(artifacts.IncompatibleArtifact, match="pip install -r requirements-serve.txt"):
        artifacts.check_compatible(info, torch.device("cpu"))
    # Not compiled code and not a torch file: another architecture or torch release is no reason.
    monkeypatch.setattr(importlib.util, "find_spec", real)
    artifacts.check_compatible(info, torch.device("cpu"))
    assert artifacts.artifact_device(info, torch.device("cuda")) == torch.device("cpu")


def test_the_benchmark_prints_a_table_and_writes_json_and_a_plot(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "serving", "bench", "digits", "--targets", "eager", "torchscript",
         "neuron", "--precisions", "fp32", "--batches", "1", "4", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "bench.json").read_text())["results"]
    measured = {r["target"]: r for r in results if r["status"] == "measured"}
    assert set(measured) == {"eager", "torchscript"}
    for r in measured.values():
        assert [row["batch"] for row in r["rows"]] == [1, 4]
        assert all(row["median_ms"] > 0 and row["items_per_s"] > 0 for row in r["rows"])
        assert r["peak_rss_mb"] > 100 and r["first_call_ms"] > 0
    assert "speedup" in measured["torchscript"]["rows"][0]
    [neuron] = [r for r in results if r["target"] == "neuron"]
    assert neuron["status"] == "unavailable" and "torch-neuronx" in neuron["reason"]
    assert (tmp_path / "throughput.png").read_bytes()[:4] == b"\x89PNG"
    assert "| digits | torchscript | fp32 | 4 |" in done.stdout
