"""Model folders: found by their folders, read from data, and every mistake in one named with its
file and field. Plus the tensor handler and `serving new`'s refusals, without a server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from handlers.base import Payload, RequestError
from handlers.tensor import TensorHandler
from serving.build import scaffold
from serving.run.paths import ROOT
from tests import user_models


def test_every_shipped_model_is_a_folder_with_everything_it_needs():
    assert models.names() == ("digits", "efficientnet_lite0", "minilm")
    for name in models.names():
        spec = models.load(name)
        assert spec.payloads() and (spec.folder / spec.example_request[0]).exists()
        assert spec.objectives and spec.config["batchSize"] >= 1


def test_each_models_queue_holds_what_the_front_door_admits():
    """TorchServe's queue refuses past jobQueueSize with its own 503 at unpredictable moments (the
    issue saw 5 in ~8,500 requests at 16 clients with 12); the front door's admission is the one
    that refuses, so the queue must hold at least what it admits."""
    from serving.run.frontdoor import admission_limit

    for name in models.names():
        config = models.load(name).config
        assert int(config["jobQueueSize"]) >= admission_limit(config), name


def test_nothing_outside_models_names_a_shipped_model():
    """Adding a model means adding a folder: no list of models anywhere else in the code."""
    code = [p for folder in ("serving", "loadtest", "handlers") for p in (ROOT / folder).rglob("*.py")]
    mentions = [f"{p.relative_to(ROOT)}: {name}" for p in code for name in models.names()
                if f'"{name}"' in p.read_text() or f"'{name}'" in p.read_text()]
    assert mentions == []


@pytest.fixture
def folder(tmp_path) -> Path:
    """A valid user model folder, made by `serving new`, outside the project's models/."""
    source = user_models.save_exported(tmp_path / "cnn.pt2")
    created, _ = scaffold.create("mine", source, models_dir=tmp_path / "models")
    return created


def rewrite(folder: Path, file: str, old: str, replacement: str) -> None:
    path = folder / file
    text = path.read_text()
    assert old in text, text
    path.write_text(text.replace(old, replacement))


@pytest.mark.parametrize("file, old, replacement, expected", [
    ("model.yaml", "kind: tensor", "kinds: tensor", "model.yaml: kinds: unknown field"),
    ("model.yaml", "kind: tensor", "kind: tensors", "model.yaml: kind: 'tensors' is not a kind"),
    ("model.yaml", "exported_program: cnn.pt2", "exported_program: cnn2.pt2",
     "model.yaml: source.exported_program: 'cnn2.pt2' does not exist"),
    ("model.yaml", "exported_program: cnn.pt2", "python: load_model",
     "model.yaml: source.python: names 'load_model' in model.py, and the folder has no model.py"),
    ("model.yaml", "examples: examples/*.json", "examples: example/*.json",
     "model.yaml: parity.examples: ['example/*.json'] matches no file"),
    ("model.yaml", "dtype: float32", "dtype: float", "model.yaml: inputs[0].dtype: 'float'"),
    ("model.yaml", "  - batch\n", "  - 8\n", "model.yaml: inputs[0].shape: the first dimension is"),
    ("model-config.yaml", "handler: {}", "handler: [1]", "model-config.yaml: handler: must be"),
    ("model-config.yaml", "maxBatchDelay: 10", "maxBatchDelay: 0",
     "model-config.yaml: maxBatchDelay: 0 is read by TorchServe as unset and replaced by its "
     "default, 100 ms"),
])
def test_a_mistake_names_its_file_and_field(folder, file, old, replacement, expected):
    rewrite(folder, file, old, replacement)
    with pytest.raises(models.ModelFolderError) as raised:
        models.ModelSpec.from_folder(folder)
    assert expected in str(raised.value) and str(folder) in str(raised.value)


def test_an_example_the_handler_refuses_is_named_at_build(folder):
    (folder / "examples" / "2.json").write_text('{"image": [[1, 2, 3]]}')
    spec = models.ModelSpec.from_folder(folder)
    with pytest.raises(models.ModelFolderError, match=r"parity.examples: 2.json is not a request "
                       r"the tensor handler accepts: 422 wrong_shape"):
        spec.parity_inputs()


def test_a_folders_parity_inputs_are_its_examples_through_its_handler(folder):
    spec = models.ModelSpec.from_folder(folder)
    batches = spec.parity_inputs()
    assert [tuple(b[0].shape) for b in batches] == [(8, 1, 16, 16)]
    first = json.loads((folder / "examples" / "1.json").read_text())["image"]
    assert torch.equal(batches[0][0][0], torch.tensor(first))


@pytest.mark.parametrize("args, expected", [
    (["--from", "{pt}"], "TorchScript does not record input shapes; give the shape"),
    (["--from", "{pt}", "--input-shape", "3,16,16"], "a trial call with inputs"),
    (["--from", "{pt2}", "--kind", "image_classifier"], "needs a (batch, 3, N, N) input"),
    (["--from", "{pt2}", "--kind", "text_embedder"], "serves a Hugging Face directory"),
    (["--from", "{missing}"], "does not exist"),
])
def test_serving_new_says_what_it_cannot_do(tmp_path, args, expected):
    paths = {"pt": user_models.save_torchscript(tmp_path / "cnn.pt"),
             "pt2": user_models.save_exported(tmp_path / "cnn.pt2"), "missing": tmp_path / "x.pt"}
    done = subprocess.run([sys.executable, "-m", "serving", "new", "mine",
                           *[a.format(**paths) for a in args]],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and expected in done.stderr, done.stderr
    assert not (models.MODELS_DIR / "mine").exists()
    if "--input-shape" in done.stderr.splitlines()[0]:  # the option, in the make form too
        assert 'make new NAME=mine FROM=' in done.stderr and 'ARGS="--input-shape' in done.stderr


class TensorModel(TensorHandler):
    def __init__(self) -> None:
        super().__init__()
        self.model_yaml = {"inputs": [{"name": "x", "shape": ["batch", 2, 2], "dtype": "float32"},
                                {"name": "ids", "shape": ["batch", 3], "dtype": "int64"}]}
        self.load_resources(Path("."))


@pytest.mark.parametrize("body, status, error", [
    ({"x": [[1, 2], [3, 4]]}, 422, "missing_field"),
    ({"x": [[1, 2], [3]], "ids": [1, 2, 3]}, 422, "wrong_shape"),
    ({"x": [[1, 2], [3, "4"]], "ids": [1, 2, 3]}, 422, "wrong_type"),
    ({"x": [[1, 2], [3, 4]], "ids": [1, 2.5, 3]}, 422, "wrong_type"),
    ({"x": [[1, 2], [3, 4]], "ids": [1, 2, 2 ** 70]}, 422, "out_of_range"),
    ({"x": [[1, 2], [3, 1e39]], "ids": [1, 2, 3]}, 422, "out_of_range"),
    ([1, 2], 422, "wrong_type"),
])
def test_the_tensor_handler_refuses_what_does_not_fit_its_inputs(body, status, error):
    with pytest.raises(RequestError) as raised:
        TensorModel().decode(Payload(json.dumps(body), "application/json"))
    assert (raised.value.status, raised.value.error) == (status, error)


def test_the_tensor_handler_reads_json_and_refuses_binary_for_two_inputs():
    [(x, ids)] = TensorModel().decode(Payload(json.dumps({"x": [[1, 2], [3, 4]], "ids": [7, 8, 9]}),
                                              "application/json"))
    assert x.dtype == torch.float32 and ids.dtype == torch.int64 and ids.tolist() == [7, 8, 9]
    with pytest.raises(RequestError, match="a binary body carries one input"):
        TensorModel().decode(Payload(b"\0" * 16, "application/octet-stream"))


def test_the_tensor_handler_reads_one_raw_little_endian_tensor():
    handler = TensorHandler()
    handler.model_yaml = {"inputs": [{"name": "x", "shape": ["batch", 2, 2], "dtype": "float32"}]}
    handler.load_resources(Path("."))
    values = torch.tensor([[1.5, -2.0], [3.25, 4.0]])
    [(x,)] = handler.decode(Payload(values.numpy().astype("<f4").tobytes(),
                                    "application/octet-stream"))
    assert torch.equal(x, values)
    with pytest.raises(RequestError, match="the body has 15 bytes"):
        handler.decode(Payload(b"\0" * 15, "application/octet-stream"))
    nan = torch.tensor([float("nan")] * 4).numpy().astype("<f4").tobytes()
    with pytest.raises(RequestError, match="not finite"):
        handler.decode(Payload(nan, "application/octet-stream"))


def test_a_new_folder_in_models_is_served_loaded_and_load_tested_by_name(tmp_path, monkeypatch):
    """Discovery: a folder copied into models/ is a model to every command, with a Locust user."""
    source = user_models.save_torchscript(tmp_path / "cnn.pt")
    folder = models.MODELS_DIR / "zz_discovered"
    try:
        scaffold.create("zz_discovered", source, "array_classifier", "1,16,16")
        assert "zz_discovered" in models.names()
        done = subprocess.run([sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py",
                               "--list"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert "ZzDiscoveredUser" in done.stdout, done.stdout + done.stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_an_output_that_does_not_fit_the_kind_is_named(folder):
    """A classifier's labels must match the classes the model answers."""
    from serving.build.pipeline import check_output

    rewrite(folder, "model.yaml", "kind: tensor", "kind: array_classifier\nextra_files: "
            "{labels.txt: labels.txt}")
    (folder / "labels.txt").write_text("cat\ndog\n")
    rewrite(folder, "model-config.yaml", "handler: {}", "handler: {input_key: image, "
            "input_shape: [1, 16, 16]}")
    spec = models.ModelSpec.from_folder(folder)
    with pytest.raises(models.ModelFolderError, match="extra_files: labels.txt has 2 labels; the "
                       "model answers 10 classes"):
        check_output(spec, torch.zeros(4, 10))
    with pytest.raises(models.ModelFolderError, match=r"array_classifier answers from a \(batch, "
                       r"classes\) output; this model returns \(4, 10, 2\)"):
        check_output(spec, torch.zeros(4, 10, 2))


def test_a_module_and_state_dict_source(tmp_path):
    """source: module: 'net.py:Net' with a state dict, as a user with a training repo has it."""
    folder = tmp_path / "models" / "net"
    (folder / "examples").mkdir(parents=True)
    (folder / "net.py").write_text("import torch\n\nclass Net(torch.nn.Module):\n"
                                   "    def __init__(self, width=4):\n        super().__init__()\n"
                                   "        self.layer = torch.nn.Linear(3, width)\n\n"
                                   "    def forward(self, x):\n        return self.layer(x)\n")
    torch.manual_seed(0)
    reference = torch.nn.Linear(3, 5)
    torch.save({f"layer.{k}": v for k, v in reference.state_dict().items()}, folder / "w.pt")
    (folder / "examples" / "1.json").write_text('{"x": [1, 2, 3]}')
    (folder / "model.yaml").write_text(
        "kind: tensor\nsource: {module: 'net.py:Net', state_dict: w.pt, kwargs: {width: 5}}\n"
        "inputs: [{name: x, shape: [batch, 3], dtype: float32}]\n"
        "parity: {examples: examples/*.json}\nexample: {file: examples/1.json}\n")
    (folder / "model-config.yaml").write_text("batchSize: 4\n")
    spec = models.ModelSpec.from_folder(folder)
    model = spec.load_eager(tmp_path / "work")
    [(x,)] = spec.parity_inputs()
    assert torch.equal(model(x), reference(x))
    (folder / "model.yaml").write_text((folder / "model.yaml").read_text().replace("width: 5",
                                                                                   "width: 6"))
    with pytest.raises(models.ModelFolderError, match="source.state_dict: does not fit Net"):
        models.ModelSpec.from_folder(folder).load_eager(tmp_path / "work")


def test_a_tokenizer_that_does_not_fit_its_model_is_refused(tmp_path):
    """Ids past the model's vocabulary fail every request holding them, at serve time: the build
    refuses the pair instead."""
    import json as json_module

    source = user_models.save_tiny_bert_classifier(tmp_path / "bert")
    folder, _ = scaffold.create("bert", source, models_dir=tmp_path / "models")
    config_file = folder / "hf" / "config.json"
    config = json_module.loads(config_file.read_text())
    config_file.write_text(json_module.dumps({**config, "vocab_size": 20}))
    with pytest.raises(models.ModelFolderError, match="source.huggingface: the tokenizer gives "
                       r"ids up to \d+, but the model's vocab_size is 20"):
        models.ModelSpec.from_folder(folder).load_eager(tmp_path / "work")


@pytest.mark.parametrize("kind", ["array_classifier", "tensor"])
def test_every_kind_describes_itself(folder, kind):
    """The describe answer (TorchServe's customized metadata) for a kind without a description."""
    from handlers.base import kind_class

    handler = kind_class(kind)()
    handler.model_yaml = {"kind": kind,
                          "inputs": [{"name": "image", "shape": ["batch", 1, 16, 16]}]}
    handler.configure({"input_key": "image", "input_shape": [1, 16, 16]}
                      if kind == "array_classifier" else {})
    if kind == "tensor":
        handler.load_resources(Path("."))
    described = handler.describe("m")
    assert described["kind"] == kind and described["description"]
    assert described["request"] and described["answer"]


def test_a_program_with_a_capped_batch_builds_every_target_within_its_range(builds_or_serves,
                                                                           tmp_path):
    """A .pt2 exported with Dim("batch", max=64) refuses 65, and exporting it again over the
    default range failed ("Constraints violated (batch)!"): eager and inductor were lost and
    TorchScript shipped, silently. `serving new` reads the program's range into model.yaml and the
    build exports within it."""
    from serving.build.pipeline import build

    folder, _ = scaffold.create("capped", user_models.save_exported(tmp_path / "cnn.pt2", 64),
                                models_dir=tmp_path / "models")
    spec = models.ModelSpec.from_folder(folder)
    assert spec.dim_ranges["batch"] == (1, 64) and spec.config["batchSize"] <= 64
    info = build("capped", model_store=tmp_path / "store", work_root=tmp_path / "work",
                 precision="fp32", spec=spec, timed=False)
    status = {c["target"]: (c["status"], c.get("reason", "")[:200]) for c in info["candidates"]}
    assert all(s == "passed" for s, _ in status.values()) and set(status) >= {"eager", "inductor"}, \
        status


@pytest.mark.parametrize("kind", sorted(__import__("handlers").KINDS))
def test_every_kind_is_a_complete_unit_of_extension(kind):
    """What docs/kinds.md asks of a kind: its module in handlers/ (imports only handlers/:
    tests/test_layers.py), one ModelHandler subclass with its own decode, encode (or predictions),
    warm-up items and schemas, and the class hooks that `make worst-case` and `serving new` call
    instead of branching on the kind's name."""
    from handlers import KINDS
    from handlers.base import (DEFAULT_SETTINGS, KIND_HOOKS, SURFACE, ModelFile, ModelHandler,
                               kind_class)

    cls = kind_class(kind)
    assert cls.__module__ == f"handlers.{KINDS[kind].handler}" and issubclass(cls, ModelHandler)
    for hook in ("decode", "warmup_items", "request_schema", "answer_schema"):
        assert getattr(cls, hook) is not getattr(ModelHandler, hook), (kind, hook)
    assert cls.encode is not ModelHandler.encode or cls.predictions is not ModelHandler.predictions
    assert cls.__doc__, kind  # the one description of its request and answer (docs/models.md)
    # A kind writes hooks and nothing else public: its own helpers are private, and it never
    # overrides the surface the project calls (handlers/base.py: KIND_HOOKS, SURFACE).
    public = {name for c in cls.__mro__ if c not in (ModelHandler, object)
              for name, value in vars(c).items()
              if not name.startswith("_") and callable(getattr(cls, name))}
    assert public <= KIND_HOOKS, (kind, sorted(public - KIND_HOOKS))
    assert {name for name in vars(ModelHandler) if not name.startswith("_")
            and callable(getattr(ModelHandler, name))} == KIND_HOOKS | SURFACE
    settings = {**DEFAULT_SETTINGS, "max_image_pixels": 10_000, **cls.settings_defaults,
                "input_shape": [8, 8], "max_tokens": 16, "max_tokens_per_request": 64}
    worst = cls.worst_requests(settings)
    assert all(isinstance(body, bytes) and content_type for body, content_type in worst.values())
    # `serving new` hands every kind the same two files; each kind takes the one it serves and
    # refuses the other with its reason, never crashes.
    tensors = ModelFile([{"name": "x", "shape": ["batch", 3, 32, 32], "dtype": "float32"}], [10],
                        10, {})
    text = ModelFile([], [], 2, {"max_tokens": 64, "sequence_buckets": [16, 64]})
    answers = {}
    for name, model in (("tensors", tensors), ("text", text)):
        try:
            answers[name] = cls.scaffold(model, 3)
        except ValueError as e:
            assert str(e), (kind, name)
    [scaffold] = answers.values()
    assert set(scaffold.settings) <= set(cls.settings_defaults) | set(DEFAULT_SETTINGS), \
        (kind, scaffold.settings)
    assert len(scaffold.examples) == 3 and all(
        suffix.startswith(".") and isinstance(body, bytes) and body
        for suffix, body in scaffold.examples), kind
    assert all(isinstance(line, str) for line in scaffold.to_check)
