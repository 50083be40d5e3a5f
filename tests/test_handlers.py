"""Handlers without a server: each handler's decode/encode, and the shared base's batch handling
with TorchServe's real Context class and small real TorchScript models."""

from __future__ import annotations

import io
import json
import platform

import numpy as np
import pytest
import torch
from PIL import Image
from ts.context import Context, RequestProcessor

from handlers.array_classifier import ArrayClassifier
from handlers.base import Payload, RequestError
from handlers.image_classifier import ImageClassifier
from handlers.text_embedder import TextEmbedder
from models.minilm.model import source_dir
from models.photos import encoded


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color=128 if mode == "L" else (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def refused(handler, payload: Payload) -> RequestError:
    with pytest.raises(RequestError) as caught:
        handler.read({"body": payload.data}, {"body": {"content-type": payload.content_type}})
    return caught.value


# -- Payload -------------------------------------------------------------------------------------

@pytest.mark.parametrize("row, expected", [
    ({"body": b"raw"}, b"raw"),
    ({"data": b"form"}, b"form"),
    ({"data": b"form", "topk": b"3"}, b"form"),      # query parameters arrive beside the body
    ({"image": b"only-field"}, b"only-field"),       # a multipart field under another name
])
def test_payload_picks_the_body(row, expected):
    assert Payload.from_row(row).data == expected


def test_payload_without_body_is_a_400():
    with pytest.raises(RequestError) as caught:
        Payload.from_row({})
    assert caught.value.status == 400 and caught.value.error == "empty_body"


def test_payload_reads_the_field_content_type():
    payload = Payload.from_row({"body": b"{}"}, {"body": {"content-type": "Application/JSON; charset=utf-8"}})
    assert payload.content_type == "application/json"


def test_payload_accepts_json_torchserve_already_parsed():
    assert Payload({"a": 1}).json() == {"a": 1}
    assert Payload(b'{"a": 1}').json() == {"a": 1}
    with pytest.raises(RequestError) as caught:
        Payload(b'{"a": ').json()
    assert caught.value.status == 400 and caught.value.error == "malformed_json"


# -- image classifier ----------------------------------------------------------------------------

def image_handler(**settings) -> ImageClassifier:
    handler = ImageClassifier()
    handler.configure(settings)
    return handler


@pytest.mark.parametrize("data", [png(640, 480), png(300, 900, "L"), png(50, 50, "RGBA"),
                                  encoded("chelsea", "JPEG")])
def test_image_decode_gives_a_crop_of_the_configured_size(data):
    [tensor] = image_handler().read({"body": data}, None)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32
    assert 0 <= float(tensor.min()) and float(tensor.max()) <= 255


def test_image_decode_keeps_the_centre():
    image = Image.new("RGB", (400, 200), (255, 0, 0))
    image.paste((0, 255, 0), (150, 0, 250, 200))  # a green band in the middle
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    [tensor] = image_handler(resize_size=224, crop_size=224).read({"body": buffer.getvalue()}, None)
    assert tensor[:, 112, 112].tolist() == [0.0, 255.0, 0.0]  # centre pixel is green


@pytest.mark.parametrize("data, status, error", [
    (b"this is not an image", 400, "not_an_image"),
    (encoded("chelsea", "JPEG")[:4000], 400, "corrupt_image"),
    (png(5000, 5000, "L"), 413, "too_large"),
    (b"", 400, "empty_body"),
])
def test_image_decode_refuses_bad_input(data, status, error):
    e = refused(image_handler(), Payload(data))
    assert (e.status, e.error) == (status, error)
    assert e.detail


def test_image_request_byte_limit():
    e = refused(image_handler(max_request_bytes=1000), Payload(png(640, 480) + b"\0" * 2000))
    assert (e.status, e.error) == (413, "too_large")


def test_image_encode_gives_top_k_labels_most_probable_first():
    handler = image_handler(top_k=3)
    handler.labels = [f"class{i}" for i in range(10)]
    logits = torch.tensor([[0.0, 5.0, 1.0, 3.0, 0, 0, 0, 0, 0, 0]])
    predictions = handler.encode(logits)["predictions"]
    assert [p["label"] for p in predictions] == ["class1", "class3", "class2"]
    assert predictions[0]["probability"] > predictions[1]["probability"] > predictions[2]["probability"]


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="crop"):
        image_handler(crop=3)


# -- array classifier ----------------------------------------------------------------------------

def digits_handler() -> ArrayClassifier:
    handler = ArrayClassifier()
    handler.configure({"input_key": "pixels", "input_shape": [8, 8], "value_range": [0, 16],
                       "num_classes": 10})
    return handler


def json_payload(value) -> Payload:
    return Payload(json.dumps(value).encode(), "application/json")


def test_array_decode_accepts_object_or_bare_list():
    grid = np.arange(64).reshape(8, 8) % 17
    for body in ({"pixels": grid.tolist()}, grid.tolist()):
        [tensor] = digits_handler().decode(json_payload(body))
        assert torch.equal(tensor, torch.tensor(grid, dtype=torch.float32))


@pytest.mark.parametrize("body, error", [
    ({"pixels": [[1, 2], [3, 4]]}, "wrong_shape"),
    ({"pixels": [[0] * 8] * 7 + [[0] * 7]}, "wrong_shape"),       # ragged
    ({"pixels": [[0] * 8] * 7 + [["a"] * 8]}, "wrong_type"),
    ({"pixels": [[0] * 8] * 7 + [[True] * 8]}, "wrong_type"),
    ({"pixels": [[0] * 8] * 7 + [[17] * 8]}, "out_of_range"),
    ({"pixels": [[-1] * 8] * 8}, "out_of_range"),
    ({"pixels": []}, "wrong_shape"),
    ({"image": [[0] * 8] * 8}, "missing_field"),
    ("just a string", "wrong_type"),
])
def test_array_decode_refuses_wrong_input_with_422(body, error):
    with pytest.raises(RequestError) as caught:
        digits_handler().decode(json_payload(body))
    assert (caught.value.status, caught.value.error) == (422, error)


def test_array_decode_refuses_non_finite_numbers():
    with pytest.raises(RequestError) as caught:
        digits_handler().decode(Payload(b'{"pixels": [[NaN, 0, 0, 0, 0, 0, 0, 0]]}'))
    assert caught.value.error == "out_of_range"


# -- text embedder -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_handler() -> TextEmbedder:
    handler = TextEmbedder()
    handler.load_resources(source_dir())  # the package's own tokenizer.json, as the .mar ships it
    return handler


def test_text_decode_accepts_the_three_forms(text_handler):
    one = text_handler.decode(json_payload({"text": "Hello world"}))
    many = text_handler.decode(json_payload({"texts": ["Hello world", "Bye"]}))
    plain = text_handler.decode(Payload(b"Hello world", "text/plain"))
    assert one == many[:1] == plain
    assert one[0][0] == 101 and one[0][-1] == 102  # [CLS] ... [SEP]


def test_text_decode_truncates_to_max_tokens(text_handler):
    [ids] = text_handler.decode(json_payload({"text": "word " * 1000}))
    assert len(ids) == 256


@pytest.mark.parametrize("body, status, error", [
    ({"texts": [1]}, 422, "wrong_type"),
    ({"texts": "not a list"}, 422, "wrong_type"),
    ({"texts": ["  "]}, 422, "empty_text"),
    ({"sentences": ["a"]}, 422, "missing_field"),
    ({"text": "x" * 10_001}, 413, "too_large"),
    ({"texts": ["a"] * 65}, 413, "too_large"),
])
def test_text_decode_refuses_bad_input(text_handler, body, status, error):
    e = refused(text_handler, json_payload(body))
    assert (e.status, e.error) == (status, error)


def test_text_decode_refuses_invalid_utf8(text_handler):
    e = refused(text_handler, Payload(b"\xff\xfe", "text/plain"))
    assert (e.status, e.error) == (400, "not_utf8")


def test_text_collate_pads_to_the_next_bucket(text_handler):
    ids, mask = text_handler.collate([[101, 7, 102], [101] + [7] * 20 + [102]])
    assert ids.shape == mask.shape == (2, 32)
    assert mask.sum(1).tolist() == [3, 22]
    assert ids[0, 3:].eq(0).all()


def test_text_warmup_covers_every_bucket(text_handler):
    lengths = [len(ids) for ids in text_handler.warmup_items()]
    assert lengths == [16, 32, 64, 128, 256]


# -- the base's batch handling, with a real Context and a real TorchScript model -----------------

class Doubler(torch.nn.Module):
    """Returns 10 'logits' whose largest is the input's first value, so answers are checkable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(x[:, 0, 0].long() % 10, 10).float() * 2


def make_context(tmp_path, batch_size: int = 4, module: torch.nn.Module | None = None,
                 info: dict | None = None, **handler_settings) -> Context:
    model = torch.jit.freeze(torch.jit.trace(module or Doubler(), torch.zeros(2, 8, 8)).eval())
    torch.jit.save(model, str(tmp_path / "model.pt"))
    (tmp_path / "build-info.json").write_text(json.dumps(info or {
        "target": "torchscript", "precision": "fp32", "device": "cpu",
        "torch": torch.__version__, "arch": platform.machine()}))
    manifest = {"model": {"serializedFile": "model.pt"}}
    return Context("digits", str(tmp_path), manifest, batch_size, None, "0.12.0",
                   model_yaml_config={"minWorkers": 1, "handler": {
                       "input_key": "pixels", "input_shape": [8, 8], "value_range": [0, 16],
                       "num_classes": 10, **handler_settings}})


def run_batch(handler, context, bodies: list[bytes]) -> list[tuple[int, dict]]:
    context.request_processor = [RequestProcessor({"body": {"content-type": "application/json"}})
                                 for _ in bodies]
    answers = handler.handle([{"body": body} for body in bodies], context)
    return [(context.get_response_status(i)[0] or 200, json.loads(a)) for i, a in enumerate(answers)]


def test_a_bad_request_fails_alone_in_its_batch(tmp_path):
    context = make_context(tmp_path)
    handler = ArrayClassifier()
    handler.initialize(context)
    grid = lambda v: json.dumps({"pixels": [[v] * 8] * 8}).encode()
    results = run_batch(handler, context, [grid(3), b"{broken", grid(7), grid(99)])
    statuses = [status for status, _ in results]
    assert statuses == [200, 400, 200, 422]
    assert results[0][1]["predictions"][0]["label"] == "3"
    assert results[2][1]["predictions"][0]["label"] == "7"
    assert results[1][1]["error"] == "malformed_json" and results[3][1]["error"] == "out_of_range"
    assert context.get_response_headers(0)["x-batch-size"] == "4"


def test_batches_larger_than_the_model_batch_are_split(tmp_path):
    context = make_context(tmp_path, batch_size=2)
    handler = ArrayClassifier()
    handler.initialize(context)
    bodies = [json.dumps({"pixels": [[v] * 8] * 8}).encode() for v in range(5)]
    results = run_batch(handler, context, bodies)
    assert [r[1]["predictions"][0]["label"] for r in results] == ["0", "1", "2", "3", "4"]


def test_initialize_warms_every_batch_bucket(tmp_path):
    context = make_context(tmp_path, batch_size=4)
    handler = ArrayClassifier()
    seen = []
    original = handler.infer
    handler.infer = lambda items: seen.append(len(items)) or original(items)  # records, then runs
    handler.initialize(context)
    assert sorted(set(seen)) == [1, 2, 3, 4]


def test_a_failing_model_answers_500_json_and_the_handler_keeps_serving(tmp_path):
    context = make_context(tmp_path)
    handler = ArrayClassifier()
    handler.initialize(context)
    good = json.dumps({"pixels": [[1] * 8] * 8}).encode()
    working_model = handler.model
    handler.model = torch.jit.script(torch.nn.Linear(3, 3))  # wrong input size: raises in forward
    [(status, body)] = run_batch(handler, context, [good])
    assert status == 500 and body["error"] == "inference_failed"
    handler.model = working_model
    [(status, body)] = run_batch(handler, make_context(tmp_path), [good])
    assert status == 200 and body["predictions"][0]["label"] == "1"


class BatchSizeReporter(torch.nn.Module):
    """Answers, for every row, the class equal to the number of rows it was run with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.ones(x.shape[0], dtype=torch.long) * x.shape[0]
        return torch.nn.functional.one_hot(rows % 10, 10).float()


def test_a_partial_batch_is_padded_to_the_fixed_size_and_sliced_back(tmp_path):
    # As for a Neuron artifact traced at batch 4: batch_buckets [4] pads 3 requests to 4 rows.
    context = make_context(tmp_path, batch_size=4, module=BatchSizeReporter(), batch_buckets=[4])
    handler = ArrayClassifier()
    handler.initialize(context)
    assert handler.batch_buckets == [4]
    bodies = [json.dumps({"pixels": [[v] * 8] * 8}).encode() for v in (1, 2, 3)]
    results = run_batch(handler, context, bodies)
    assert [status for status, _ in results] == [200, 200, 200]
    assert [body["predictions"][0]["label"] for _, body in results] == ["4", "4", "4"]


@pytest.mark.parametrize("info, message", [
    ({"target": "inductor", "arch": "aarch64"}, "compiled for aarch64"),
    ({"target": "inductor", "torch": "2.9.1"}, "compiled with torch 2.9.1"),
    ({"target": "torchscript", "torch": "2.4.0"}, "saved with torch 2.4.0"),
    ({"target": "inductor", "device": "cuda"}, "compiled for CUDA"),
    ({"target": "neuron"}, "pip install torch-neuronx"),
    ({"target": "tensorrt"}, "unknown target"),
])
def test_a_worker_refuses_an_artifact_built_for_another_machine(tmp_path, info, message):
    from handlers.artifacts import IncompatibleArtifact

    here = {"precision": "fp32", "device": "cpu", "torch": torch.__version__,
            "arch": platform.machine()}
    context = make_context(tmp_path, info={**here, **info})
    with pytest.raises(IncompatibleArtifact, match=message) as caught:
        ArrayClassifier().initialize(context)
    assert "rebuild" in str(caught.value) or "pip install" in str(caught.value) or \
        "unknown" in str(caught.value)
