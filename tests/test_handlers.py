"""Handlers without a server: each handler's decode/encode, and the shared base's batch handling
with TorchServe's real Context class and small real TorchScript models."""

from __future__ import annotations

import io
import os
import json
import platform
from pathlib import Path
from typing import Any

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
from models.efficientnet_lite0.photos import encoded


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


def test_jpeg_scans_are_counted_without_decoding_and_a_thumbnail_is_not_a_scan():
    from handlers.image_classifier import jpeg_scans
    from handlers.image_classifier import jpeg_many_scans

    photo = Image.open(io.BytesIO(encoded("chelsea", "JPEG")))
    with_thumbnail = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 1
    photo.save(with_thumbnail, "JPEG", progressive=True, exif=exif.tobytes(),
               comment=b"\xff\xda" * 50)  # SOS-looking bytes inside a segment are skipped
    assert jpeg_scans(encoded("chelsea", "JPEG"), 1000) == 1          # baseline: one scan
    assert jpeg_scans(with_thumbnail.getvalue(), 1000) == 10          # libjpeg's progressive
    assert jpeg_scans(jpeg_many_scans(10_000, 500), 1000) == 500
    assert jpeg_scans(jpeg_many_scans(10_000, 500), 64) == 65          # stops past the limit
    assert jpeg_scans(png(10, 10), 64) == 0


def test_a_jpeg_of_too_many_scans_is_refused_before_its_pixels_are_decoded():
    """14,600 scans of 2 MP in 447 KB decode in ~10 s; refused in milliseconds."""
    import time

    from handlers.image_classifier import jpeg_many_scans

    started = time.perf_counter()
    e = refused(image_handler(), Payload(jpeg_many_scans(2_000_000, 14_600), "image/jpeg"))
    assert (e.status, e.error) == (422, "too_many_scans") and "32" in e.detail
    assert time.perf_counter() - started < 0.5
    [tensor] = image_handler().read({"body": jpeg_many_scans(1_000_000, 32)}, None)  # at the limit
    assert tensor.shape == (3, 224, 224)


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


@pytest.mark.parametrize("body", [b"   \n\t  ", "\u3000\u00a0\u2003".encode()])
def test_a_whitespace_only_text_is_refused_in_every_form(text_handler, body):
    """No embedding of nothing: a text of only whitespace is refused as plain text as in JSON
    (the plain form used to return an embedding for it)."""
    e = refused(text_handler, Payload(body, "text/plain"))
    assert (e.status, e.error) == (422, "empty_text")
    e = refused(text_handler, json_payload({"text": body.decode()}))
    assert (e.status, e.error) == (422, "empty_text")


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
    if not isinstance(module, torch.jit.ScriptModule):
        module = torch.jit.trace(module or Doubler(), torch.zeros(2, 8, 8))
    model = torch.jit.freeze(module.eval())
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


@pytest.mark.parametrize("target, file", [("torchscript", "model.pt"), ("eager", "model.pt2")])
def test_a_model_file_that_does_not_load_is_named_in_the_error(tmp_path, target, file):
    from handlers import artifacts

    (tmp_path / file).write_bytes(b"not a model")
    info = {"target": target, "precision": "fp32", "torch": torch.__version__,
            "arch": platform.machine()}
    with pytest.raises(artifacts.ArtifactLoadError, match=f"cannot load {file} \\({target}/fp32"):
        artifacts.load(tmp_path, file, info, torch.device("cpu"))


# -- isolation: whatever one request does, the others in its batch get their answers -------------

def grid_body(value) -> bytes:
    return json.dumps({"pixels": [[value] * 8] * 8}).encode()


@pytest.fixture
def digits_batch(tmp_path):
    context = make_context(tmp_path)
    handler = ArrayClassifier()
    handler.initialize(context)
    return handler, context


@pytest.mark.parametrize("poison, status, error", [
    (b"[" * 100_000, 400, "too_deep"),                       # the C parser's recursion limit
    (b'{"pixels": ' + b"[" * 40 + b"]" * 40 + b"}", 400, "too_deep"),  # under it, over ours
    (b'{"pixels": [[' + b"9" * 5000 + b"]]}", 400, "number_too_long"),  # int() refuses 4,300+
    (b'{"pixels": [[1e999, 0, 0, 0, 0, 0, 0, 0]]}', 422, "out_of_range"),
    (json.dumps({"pixels": [[10 ** 39] * 8] * 8}).encode(), 422, "out_of_range"),  # > float32
    (b'{"pixels": "\\ud800"}', 422, "wrong_type"),
])
def test_a_hostile_json_body_fails_alone(digits_batch, poison, status, error):
    handler, context = digits_batch
    results = run_batch(handler, context, [grid_body(3), poison, grid_body(7)])
    assert [s for s, _ in results] == [200, status, 200]
    assert results[1][1]["error"] == error
    assert [r[1]["predictions"][0]["label"] for r in (results[0], results[2])] == ["3", "7"]


@pytest.mark.parametrize("body", [
    b'{"text": "' + b"1" * 60 + b'", "n": 7}',  # a long run of digits in a string is no number
    b'{"text": "' + b"[" * 40 + b'", "n": [7]}',  # brackets in a string do not nest
    b'{"n": ' + b"9" * 40 + b'}',  # a number at the limit
])
def test_json_limits_refuse_only_what_exceeds_them(body):
    """The raw-text scans that skip the limit checks must never refuse what the checks admit."""
    assert Payload(body, "application/json").json() == json.loads(body)


def test_an_exception_in_decode_is_answered_for_that_request_alone(digits_batch, caplog):
    handler, context = digits_batch
    decode = handler.decode

    def flaky(payload):
        text = payload.bytes()
        if b"value-error" in text:
            raise ValueError("cannot convert")       # input the decoder could not convert
        if b"bug" in text:
            raise KeyError("a bug in the handler")   # not the input's fault
        return decode(payload)

    handler.decode = flaky
    results = run_batch(handler, context, [grid_body(1), b'"value-error"', b'"bug"', grid_body(2)])
    assert [s for s, _ in results] == [200, 400, 500, 200]
    assert results[1][1]["error"] == "invalid_input"
    assert results[2][1]["error"] == "handler_error"
    assert "a bug in the handler" in caplog.text  # the traceback is logged


def test_a_request_past_its_decode_deadline_fails_alone_and_the_worker_goes_on(digits_batch):
    """A decode that would run for minutes (a loop standing in for any cost the limits miss) is
    stopped at max_decode_ms and answered 422 for itself; the others in its batch are answered
    and so is the next batch."""
    import time

    handler, context = digits_batch
    decode = handler.decode

    def slow_on_request(payload):
        if b"slow" in payload.bytes():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                pass
        return decode(payload)

    handler.decode = slow_on_request
    handler.settings["max_decode_ms"] = 100
    started = time.perf_counter()
    results = run_batch(handler, context, [grid_body(1), b'"slow"', grid_body(2)])
    elapsed = time.perf_counter() - started
    assert [s for s, _ in results] == [200, 422, 200]
    assert results[1][1]["error"] == "too_slow_to_decode" and "100 ms" in results[1][1]["detail"]
    assert elapsed < 2
    assert [s for s, _ in run_batch(handler, context, [grid_body(3)] * 4)] == [200] * 4


def test_the_decode_deadline_defaults_to_half_the_response_timeout_over_a_full_batch(tmp_path):
    context = make_context(tmp_path, batch_size=4)
    context.model_yaml_config["responseTimeout"] = 10
    handler = ArrayClassifier()
    handler.initialize(context)
    assert handler.settings["max_decode_ms"] == 1250
    assert handler.describe()["limits"]["max_decode_ms"] == 1250


def test_an_exception_in_encode_fails_only_that_request(digits_batch):
    handler, context = digits_batch
    encode = handler.encode

    def fragile(outputs):
        if int(outputs[0].argmax()) == 5:
            raise RuntimeError("cannot encode a five")
        return encode(outputs)

    handler.encode = fragile
    results = run_batch(handler, context, [grid_body(4), grid_body(5), grid_body(6)])
    assert [s for s, _ in results] == [200, 500, 200]
    assert results[1][1]["error"] == "handler_error"


class FailsOnThirteen(torch.nn.Module):
    """Like Doubler, but raises when any row's first value is 13: a model one input breaks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0, 0] == 13).any()):
            raise RuntimeError("thirteen")
        return torch.nn.functional.one_hot(x[:, 0, 0].long() % 10, 10).float() * 2


def test_a_batch_the_model_fails_on_is_retried_request_by_request(tmp_path):
    context = make_context(tmp_path, module=torch.jit.script(FailsOnThirteen()))
    handler = ArrayClassifier()
    handler.initialize(context)
    results = run_batch(handler, context, [grid_body(2), grid_body(13), grid_body(8)])
    assert [s for s, _ in results] == [200, 500, 200]
    assert results[1][1]["error"] == "inference_failed"
    assert [results[0][1]["predictions"][0]["label"], results[2][1]["predictions"][0]["label"]] \
        == ["2", "8"]


def test_memory_exhausted_by_one_request_is_413_for_it_alone(digits_batch):
    handler, context = digits_batch
    decode = handler.decode

    def hungry(payload):
        if payload.bytes() == b'"huge"':
            raise MemoryError()
        return decode(payload)

    handler.decode = hungry
    results = run_batch(handler, context, [grid_body(1), b'"huge"'])
    assert [s for s, _ in results] == [200, 413]


def test_a_bug_outside_any_request_still_answers_every_request(digits_batch):
    handler, context = digits_batch
    handler.infer_requests = lambda accepted: 1 / 0  # a bug in the batch path itself
    results = run_batch(handler, context, [grid_body(1), grid_body(2)])
    assert [(s, b["error"]) for s, b in results] == [(500, "handler_error")] * 2


# -- bounded work per request --------------------------------------------------------------------

@pytest.mark.parametrize("width, height", [(1, 50_000), (50_000, 1), (3, 20_000)])
def test_an_extreme_aspect_ratio_is_refused_before_decoding(width, height):
    e = refused(image_handler(), Payload(png(width, height, "L")))
    assert (e.status, e.error) == (422, "wrong_shape")


@pytest.mark.parametrize("width, height", [(1, 50_000), (4000, 1)])
def test_resizing_work_does_not_grow_with_the_image_shape(width, height):
    import time

    handler = image_handler(max_aspect_ratio=None)
    started = time.perf_counter()
    [tensor] = handler.read({"body": png(width, height, "L")}, None)
    assert tensor.shape == (3, 224, 224)
    assert time.perf_counter() - started < 2.0  # resizing the whole image first took minutes


def test_a_tiny_image_is_scaled_up_to_the_crop():
    [tensor] = image_handler().read({"body": png(1, 1)}, None)
    assert tensor.shape == (3, 224, 224) and tensor[:, 0, 0].tolist() == [10.0, 20.0, 30.0]


RED, BLUE = (200, 10, 10), (10, 10, 200)


def exif_image(orientation) -> bytes:
    """40 x 20, the left half red and the right half blue, with an EXIF orientation (PNG: exact
    colours)."""
    image = Image.new("RGB", (40, 20), RED)
    image.paste(BLUE, (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "PNG", exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation, top, left", [
    (1, None, RED),        # as stored: red left, blue right
    (6, RED, None),        # rotate 90 degrees clockwise to display: the left half goes on top
    (8, BLUE, None),       # 90 degrees counter-clockwise: the right half on top
    (3, None, BLUE),       # 180 degrees
    (0, None, RED), (9, None, RED), (65535, None, RED),  # not orientations: the image as stored
])
def test_the_exif_orientation_is_applied_and_meaningless_values_leave_the_image(orientation, top,
                                                                                left):
    [tensor] = image_handler().read({"body": exif_image(orientation)}, None)
    assert tensor.shape == (3, 224, 224)
    colour = lambda y, x: tuple(int(v) for v in tensor[:, y, x].tolist())  # noqa: E731
    if top:
        assert colour(5, 112) == top and colour(218, 112) == (BLUE if top == RED else RED)
    else:
        assert colour(112, 5) == left and colour(112, 218) == (BLUE if left == RED else RED)


def test_text_with_a_lone_surrogate_is_400(text_handler):
    e = refused(text_handler, Payload(b'{"text": "ok \\ud800 then"}', "application/json"))
    assert (e.status, e.error) == (400, "not_utf8")


def test_tokens_per_request_are_bounded(text_handler):
    e = refused(text_handler, json_payload({"texts": ["word " * 300] * 9}))  # 9 x 256 > 2048
    assert (e.status, e.error) == (413, "too_large")
    assert len(text_handler.decode(json_payload({"texts": ["word " * 300] * 8}))) == 8


def test_texts_run_shortest_first_and_answer_in_request_order(text_handler):
    text_handler.batch_buckets = [1, 2]
    lengths = [30, 3, 200, 3, 17]
    text_handler.model = lambda ids, mask: mask.sum(1, keepdim=True).float()  # its own length
    seen = []
    collate = text_handler.collate
    text_handler.collate = lambda chunk: seen.append(len(max(chunk, key=len))) or collate(chunk)
    out = text_handler.infer([[7] * n for n in lengths])
    assert out[:, 0].tolist() == lengths
    assert seen == [3, 30, 200]  # chunks of two: (3, 3), (17, 30), (200)


# -- KServe v1 (`{"instances": [...]}` -> `{"predictions": [...]}`), from the same handlers -------

def run_v1_batch(handler, context, bodies: list[bytes], v1: list[bool]) -> list[tuple[int, dict]]:
    """Like run_batch, the requests marked True arriving as the front door passes v1 requests."""
    context.request_processor = [RequestProcessor({
        "body": {"content-type": "application/json"},
        **({"X-Inference-Protocol": "kserve-v1"} if is_v1 else {})}) for is_v1 in v1]
    answers = handler.handle([{"body": body} for body in bodies], context)
    return [(context.get_response_status(i)[0] or 200, json.loads(a)) for i, a in enumerate(answers)]


def v1_body(*instances) -> bytes:
    return json.dumps({"instances": list(instances)}).encode()


def test_v1_and_native_requests_share_a_batch_and_each_gets_its_own_envelope(digits_batch):
    handler, context = digits_batch
    grid = lambda v: [[v] * 8] * 8
    results = run_v1_batch(handler, context,
                           [grid_body(3), v1_body(grid(4), {"pixels": grid(5)}), grid_body(6)],
                           [False, True, False])
    assert [s for s, _ in results] == [200, 200, 200]
    assert results[0][1]["predictions"][0]["label"] == "3"
    [four, five] = results[1][1]["predictions"]  # one top-k list per instance, in order
    assert (four[0]["label"], five[0]["label"]) == ("4", "5")
    assert four == run_batch(handler, context, [grid_body(4)])[0][1]["predictions"]


@pytest.mark.parametrize("body, status, error, detail", [
    (json.dumps({"pixels": [[1] * 8] * 8}).encode(), 422, "missing_field", "instances"),
    (b'{"instances": []}', 422, "wrong_type", "non-empty"),
    (b'{"instances": {"a": 1}}', 422, "wrong_type", "non-empty"),
    (v1_body([[1] * 8] * 8, [[1] * 8] * 7), 422, "wrong_shape", "instances[1]"),
    (v1_body([[1] * 8] * 8, [[99] * 8] * 8), 422, "out_of_range", "instances[1]"),
    (v1_body(*[[[1] * 8] * 8] * 65), 413, "too_large", "instances"),
    (b'{"instances": [', 400, "malformed_json", ""),
    (b'{"instances": [null]}', 422, "wrong_type", "instances[0]"),    # found by schemathesis: 500
    (b'{"instances": ["[[1]]"]}', 422, "wrong_type", "instances[0]"),  # a string, not JSON text
])
def test_a_bad_v1_request_fails_alone_and_names_its_instance(digits_batch, body, status, error,
                                                            detail):
    handler, context = digits_batch
    results = run_v1_batch(handler, context, [body, v1_body([[2] * 8] * 8)], [True, True])
    assert results[0][0] == status and results[0][1]["error"] == error, results[0]
    assert detail in results[0][1]["detail"]
    assert results[1] == (200, {"predictions": [results[1][1]["predictions"][0]]})
    assert results[1][1]["predictions"][0][0]["label"] == "2"


def test_the_protocol_header_is_read_whatever_its_case_and_only_known_ones_switch():
    from handlers.base import KSERVE_V1, NATIVE, OIP_INFER, request_protocol

    assert request_protocol({"x-inference-protocol": "KServe-V1 "}) == KSERVE_V1
    assert request_protocol({"X-Inference-Protocol": "v2"}) == OIP_INFER
    assert request_protocol({"X-Inference-Protocol": "v3"}) == NATIVE
    assert request_protocol({"body": {"content-type": "application/json"}}) == NATIVE
    assert request_protocol(None) == NATIVE


def test_v1_images_arrive_as_base64_and_bad_base64_is_a_400():
    import base64

    handler = image_handler()
    image = png(64, 48)
    v1 = {"X-Inference-Protocol": "kserve-v1"}
    as_b64 = {"b64": base64.b64encode(image).decode()}
    [a, b] = handler.read({"body": v1_body(as_b64, as_b64)}, v1, "kserve-v1")
    [native] = handler.read({"body": image}, None)
    assert torch.equal(a, native) and torch.equal(b, native)
    for instance, status, error in (({"b64": "not base64!"}, 400, "bad_base64"),
                                    (base64.b64encode(image).decode(), 422, "wrong_type"),
                                    ({"b64": base64.b64encode(image[:60]).decode()}, 400, "corrupt_image")):
        with pytest.raises(RequestError) as caught:
            handler.read({"body": v1_body(instance)}, v1, "kserve-v1")
        assert (caught.value.status, caught.value.error) == (status, error)
        assert caught.value.detail.startswith("instances[0]") or error == "bad_base64"


def test_v1_texts_are_one_request_for_the_token_limit(text_handler):
    ids = text_handler.read({"body": v1_body("Hello world", "Bye")}, None, "kserve-v1")
    assert ids == text_handler.decode(json_payload({"texts": ["Hello world", "Bye"]}))
    with pytest.raises(RequestError) as caught:  # 9 x 256 tokens > 2048, as in native form
        text_handler.read({"body": v1_body(*["word " * 300] * 9)}, None, "kserve-v1")
    assert caught.value.status == 413
    with pytest.raises(RequestError) as caught:
        text_handler.read({"body": v1_body("fine", 7)}, None, "kserve-v1")
    assert caught.value.error == "wrong_type"


def test_v1_embeddings_are_the_native_rows(text_handler):
    outputs = torch.randn(3, 384)
    assert text_handler.predictions(outputs) == text_handler.encode(outputs)["embeddings"]


def test_v1_tensor_instances_are_objects_or_for_one_input_its_bare_list():
    from handlers.tensor import TensorHandler

    handler = TensorHandler()
    handler.inputs = [("x", [2, 3], "float32")]
    rows = [[1, 2, 3], [4, 5, 6]]
    [(bare,), (named,)] = handler.read({"body": v1_body(rows, {"x": rows})}, None, "kserve-v1")
    assert torch.equal(bare, named) and bare.shape == (2, 3)
    assert handler.predictions(torch.arange(6.0).reshape(2, 3)) == \
        [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    handler.inputs.append(("y", [1], "int64"))  # two inputs: only the object names them
    with pytest.raises(RequestError) as caught:
        handler.read({"body": v1_body(rows)}, None, "kserve-v1")
    assert (caught.value.status, caught.value.detail.split(":")[0]) == (422, "instances[0]")


@pytest.mark.parametrize("model", ["digits", "efficientnet_lite0", "minilm"])
def test_a_models_example_reads_to_the_same_items_in_every_protocol(model):
    """Each kind's native_instances hook turns the native example into v1 instances, and the OIP
    tensors are built from them: every protocol's request carries the example's own input, so
    the protocols' benchmark and load tests compare like with like."""
    import models
    from handlers.base import KSERVE_V1, NATIVE, OIP_INFER
    from models import sources
    from serving.perf import bench_protocols

    spec = models.load(model)
    handler = sources.model_handler(spec)
    protocol = {"native": NATIVE, "kserve-v1": KSERVE_V1, "v2-json": OIP_INFER,
                "v2-binary": OIP_INFER}
    items = {label: handler.read({"body": body}, {"body": {"content-type": headers["Content-Type"]},
                                                  **headers}, protocol[label])
             for label, (_, body, headers) in bench_protocols.requests_for(spec, handler).items()}
    assert set(items) == set(protocol)
    native = items.pop("native")
    for label, got in items.items():
        assert len(got) == len(native), label
        for ours, theirs in zip(got, native):
            assert (torch.equal(ours, theirs) if isinstance(ours, torch.Tensor)
                    else ours == theirs), label


# -- the Open Inference Protocol (v2) over REST, from the same handlers -----------------------------

def run_oip_batch(handler, context, requests_: list[tuple[bytes, dict]]) -> list[tuple[int, Any]]:
    """Each request's body and headers as TorchServe hands them over; JSON answers parsed, binary
    answers split into their JSON header and the bytes after it."""
    context.request_processor = [RequestProcessor({
        "body": {"content-type": headers.get("content-type", "application/json")},
        "X-Inference-Protocol": headers.get("protocol", "v2"), **headers}) for _, headers in requests_]
    answers = handler.handle([{"body": body} for body, _ in requests_], context)
    results = []
    for i, answer in enumerate(answers):
        status = context.get_response_status(i)[0] or 200
        length = context.get_response_headers(i).get("Inference-Header-Content-Length")
        if length is None:
            results.append((status, json.loads(answer)))
        else:
            results.append((status, (json.loads(answer[:int(length)]), answer[int(length):])))
    return results


def oip_json(name: str, datatype: str, array, **extra) -> bytes:
    array = np.asarray(array)
    return json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": list(array.shape),
                                   "data": array.reshape(-1).tolist()}], **extra}).encode()


def oip_binary(name: str, datatype: str, array: np.ndarray, outputs_binary: bool = True
               ) -> tuple[bytes, dict]:
    raw = array.tobytes()
    header = json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": list(array.shape),
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": outputs_binary}}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "content-type": "application/octet-stream"}


def test_oip_json_and_binary_requests_answer_the_native_top_k(digits_batch):
    handler, context = digits_batch
    grids = np.stack([np.full((8, 8), v, np.float32) for v in (3, 6)])
    binary_body, binary_headers = oip_binary("pixels", "FP32", grids)
    [(s1, as_json), (s2, (header, raw))] = run_oip_batch(handler, context, [
        (oip_json("pixels", "FP32", grids, id="r1"), {}), (binary_body, binary_headers)])
    assert (s1, s2) == (200, 200)
    assert as_json["id"] == "r1" and as_json["model_name"] == "digits"
    outputs = {o["name"]: o for o in as_json["outputs"]}
    assert outputs["index"]["shape"] == [2, 3] and outputs["label"]["data"][0] == "3"
    assert outputs["label"]["data"][3] == "6"  # row-major: the second grid's first class
    native = [run_batch(handler, context, [grid_body(v)])[0][1]["predictions"] for v in (3, 6)]
    assert outputs["probability"]["data"] == pytest.approx(
        [p["probability"] for top in native for p in top], abs=1e-6)
    # Binary outputs: sizes in the header, the tensors after it, in the outputs' order.
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sum(sizes) == len(raw) and "data" not in header["outputs"][0]
    index = np.frombuffer(raw[:sizes[0]], "<i8").reshape(2, 3)
    assert index.tolist() == np.array(outputs["index"]["data"]).reshape(2, 3).tolist()


@pytest.mark.parametrize("body, headers, status, error", [
    (oip_json("pixels", "BYTES", np.array(["a"])), {}, 422, "wrong_datatype"),
    (oip_json("pixels", "FP32", np.zeros((1, 8, 7))), {}, 422, "wrong_shape"),
    (oip_json("pixels", "FP8", np.zeros((1, 8, 8))), {}, 422, "wrong_datatype"),
    (oip_json("pixels", "FP64", np.zeros((1, 8, 8))), {}, 422, "wrong_datatype"),
    (oip_json("image", "FP32", np.zeros((1, 8, 8))), {}, 422, "unknown_input"),
    (json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 8, 8],
                             "data": [1.0] * 63}]}).encode(), {}, 422, "wrong_shape"),
    (json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 8, 8],
                             "data": [1.0] * 64}], "outputs": [{"name": "logits"}]}).encode(), {},
     422, "unknown_output"),
    (b'{"inputs": []}', {}, 422, "missing_field"),
    (oip_binary("pixels", "FP32", np.zeros((1, 8, 8), np.float32))[0][:-10],  # truncated tensor
     oip_binary("pixels", "FP32", np.zeros((1, 8, 8), np.float32))[1], 400, "bad_binary"),
    (oip_binary("pixels", "FP32", np.zeros((1, 8, 8), np.float32))[0],  # header length past body
     {"Inference-Header-Content-Length": "99999", "content-type": "application/octet-stream"},
     400, "bad_binary"),
    (oip_binary("pixels", "FP32", np.zeros((1, 8, 8), np.float32))[0] + b"tail",
     oip_binary("pixels", "FP32", np.zeros((1, 8, 8), np.float32))[1], 400, "bad_binary"),
    (oip_binary("pixels", "FP32", np.zeros((1, 8, 8), np.float32))[0],
     {"Inference-Header-Content-Length": "many", "content-type": "application/octet-stream"},
     400, "bad_header"),
    (oip_binary("pixels", "FP32", np.full((1, 8, 8), np.nan, np.float32))[0],
     oip_binary("pixels", "FP32", np.zeros((1, 8, 8), np.float32))[1], 422, "out_of_range"),
    (oip_json("pixels", "FP32", np.full((1, 8, 8), 99.0)), {}, 422, "out_of_range"),
])
def test_a_malformed_oip_request_gets_an_error_for_itself_alone(digits_batch, body, headers,
                                                               status, error):
    handler, context = digits_batch
    good = oip_json("pixels", "FP32", np.full((1, 8, 8), 2.0))
    [(bad_status, bad), (ok_status, ok)] = run_oip_batch(handler, context,
                                                          [(body, headers), (good, {})])
    assert (bad_status, bad["error"].split(":")[0]) == (status, error), bad
    assert set(bad) == {"error"}  # the protocol's error body: one message
    assert ok_status == 200 and ok["outputs"][1]["data"][0] == "2"


def test_oip_metadata_and_readiness_are_answered_without_running_the_model(digits_batch):
    handler, context = digits_batch
    handler.model = None  # calling it would raise
    [(s1, metadata), (s2, ready)] = run_oip_batch(handler, context, [
        (b"", {"protocol": "v2-metadata"}), (b"", {"protocol": "v2-ready"})])
    assert (s1, s2) == (200, 200) and ready == {"name": "digits", "ready": True}
    assert metadata["name"] == "digits"
    assert metadata["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 8, 8]}]
    assert [o["name"] for o in metadata["outputs"]] == ["index", "label", "probability"]


def test_oip_texts_are_bytes_elements_decoded_as_utf8(text_handler):
    import struct

    texts = [b"Hello world", "caf\u00e9".encode()]
    raw = b"".join(struct.pack("<I", len(t)) + t for t in texts)
    header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(header))}
    ids = text_handler.read({"body": header + raw}, headers, "v2")
    assert ids == text_handler.decode(json_payload({"texts": ["Hello world", "caf\u00e9"]}))
    bad = struct.pack("<I", 2) + b"\xff\xfe"
    header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(bad)}}]}).encode()
    with pytest.raises(RequestError) as caught:
        text_handler.read({"body": header + bad}, {"Inference-Header-Content-Length":
                                                   str(len(header))}, "v2")
    assert (caught.value.status, caught.value.error) == (400, "not_utf8")


def test_oip_images_are_bytes_elements_or_base64_strings_in_json():
    import base64

    handler = image_handler()
    image = png(64, 48)
    [native] = handler.read({"body": image}, None)
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(image) + 4}}]}).encode()
    import struct

    [binary] = handler.read({"body": header + struct.pack("<I", len(image)) + image},
                            {"Inference-Header-Content-Length": str(len(header))}, "v2")
    [in_json] = handler.read({"body": oip_json("image", "BYTES", np.array(
        [base64.b64encode(image).decode()]))}, None, "v2")
    assert torch.equal(binary, native) and torch.equal(in_json, native)
    with pytest.raises(RequestError) as caught:
        handler.read({"body": oip_json("image", "BYTES", np.array(["not base64!"]))}, None, "v2")
    assert (caught.value.status, caught.value.error) == (400, "bad_base64")


# -- where a model's workers run (SERVING_CPUS) -----------------------------------------------------

def test_a_placement_names_models_and_cpu_lists():
    from handlers.cores import placement

    assert placement("digits=0 efficientnet_lite0,minilm=1-3", available={0, 1, 2, 3}) == {
        "digits": frozenset({0}), "efficientnet_lite0": frozenset({1, 2, 3}),
        "minilm": frozenset({1, 2, 3})}
    assert placement("a=0,2-3", available={0, 1, 2, 3}) == {"a": frozenset({0, 2, 3})}
    assert placement("", available={0}) == {}


@pytest.mark.parametrize("spec, says", [
    ("digits", "not MODEL"), ("=0", "not MODEL"), ("digits=x", "not a CPU list"),
    ("digits=3-1", "runs backwards"), ("digits=7", "no CPU 7 here"),
    ("digits=0 digits=1", "placed twice")])
def test_a_wrong_placement_says_what_is_wrong(spec, says):
    from handlers.cores import placement

    with pytest.raises(ValueError, match=says):
        placement(spec, available={0, 1})


def test_a_placed_worker_runs_every_thread_on_its_cpus(tmp_path):
    """In a process of its own (pinning is for the process's life), with threads started before
    the placement, as torch's are when the handler pins itself: every one moves."""
    import subprocess
    import sys

    code = ("import os, threading, time\n"
            "stop = threading.Event()\n"
            "threads = [threading.Thread(target=stop.wait) for _ in range(3)]\n"
            "[t.start() for t in threads]\n"
            "from handlers.cores import place_worker\n"
            "placed = place_worker('digits')\n"
            "tasks = [int(t) for t in os.listdir('/proc/self/task')]\n"
            "print(sorted(placed), len(tasks) >= 4, all(os.sched_getaffinity(t) == {0} for t in tasks))\n"
            "print(place_worker('minilm'))\n"
            "stop.set()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "SERVING_CPUS": "digits=0"}, cwd=Path(__file__).parents[1],
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[0] True True", "None"], done.stdout


def test_metrics_are_written_after_the_answer_by_a_thread_of_their_own():
    """TorchServe's own metrics cache with this project's metrics.yaml; its log lines captured
    where the frontend would read them. The capture blocks until released: `record` must return
    while the lines are still unwritten (they cost 0.2 ms per batch on the answer's path)."""
    import logging
    import threading
    import time
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    from handlers.metrics import HandlerMetrics

    cache = MetricsCacheYamlImpl(config_file_path=str(Path(__file__).parents[1] / "metrics.yaml"))
    cache.initialize_cache()
    release, lines = threading.Event(), []

    class Capture(logging.Handler):
        def emit(self, record):
            release.wait(10)
            lines.append(record.getMessage())

    logger = logging.getLogger("ts.metrics.caching_metric")
    capture, level = Capture(), logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    try:
        metrics = HandlerMetrics(cache, "digits")
        metrics.record({"preprocess": 0.001, "inference": 0.002, "postprocess": 0.003}, 2,
                       [200, 400], ["native", "native"])
        assert lines == []  # returned while the writer waits on the capture
        release.set()
        for _ in range(100):
            if len(lines) == 6:
                break
            time.sleep(0.05)
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
    names = [line.split("[METRICS]")[1].split(":")[0] for line in lines]
    assert names == ["handler_stage_seconds.Seconds"] * 3 + ["handler_batch_size.Count"] + \
        ["handler_responses_total.Count"] * 2, lines
    assert "stage:inference" in lines[1] and "status:400" in lines[5]
