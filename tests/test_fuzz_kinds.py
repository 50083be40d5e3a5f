"""Fuzzing the kinds no shipped model uses (tensor, text_classifier), through their real handlers
initialised from real archives: a user's CNN (torch.export) and a tiny BERT classifier (Hugging
Face directory), each made, written by `serving new` and built here, outside models/. The
invariants are tests/test_fuzz.py's: a hostile request between two good ones gets 2xx or 4xx, and
the good ones their normal answer."""

from __future__ import annotations

import struct

import pytest
from hypothesis import strategies as st

import models
from serving.build import scaffold
from serving.build.pipeline import build
from tests import user_models
from tests.fuzz_inputs import COMMON, raw_json, texts_bodies
from tests.test_fuzz import Fuzzer, fuzz

number = st.integers() | st.floats() | st.integers(-(10 ** 30), 10 ** 30) | st.booleans()
grid = st.lists(st.lists(number, min_size=16, max_size=16), min_size=16, max_size=16)
tensor_bodies = st.one_of(
    grid.map(lambda g: {"image": [g]}),
    st.recursive(number, lambda inner: st.lists(inner, max_size=17), max_leaves=300).map(
        lambda v: {"image": v}),
    st.dictionaries(st.text(max_size=8), number, max_size=3),
)
binary_bodies = st.one_of(
    st.binary(max_size=2048),
    st.lists(st.floats(width=32), min_size=256, max_size=256).map(
        lambda values: struct.pack("<256f", *values)),  # the right size, NaN and inf included
)
HOSTILE = {
    "fuzz_tensor": st.one_of(COMMON, st.tuples(tensor_bodies.map(raw_json),
                                               st.just("application/json")),
                             st.tuples(binary_bodies, st.just("application/octet-stream"))),
    "fuzz_text_classifier": st.one_of(COMMON, texts_bodies()),
}
SOURCES = {"fuzz_tensor": (user_models.save_exported, "cnn.pt2"),
           "fuzz_text_classifier": (user_models.save_tiny_bert_classifier, "bert")}


@pytest.fixture(scope="module", params=list(HOSTILE))
def fuzzer(request, builds_or_serves, tmp_path_factory):
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    make, file = SOURCES[name]
    folder, _ = scaffold.create(name, make(tmp / file), models_dir=tmp / "models")
    spec = models.ModelSpec.from_folder(folder)
    build(name, model_store=tmp / "store", work_root=tmp / "work", target="torchscript",
          precision="fp32", spec=spec)
    good = ((folder / spec.example_request[0]).read_bytes(), spec.example_request[1])
    fuzzer = Fuzzer(name, tmp / "serve", model_store=tmp / "store", good=good)
    yield fuzzer
    print(f"\n[fuzz] {name}: {fuzzer.calls} batches, hostile answers by status "
          f"{dict(sorted(fuzzer.statuses.items()))}, slowest batch {fuzzer.slowest * 1000:.0f} ms")


def test_hostile_requests_to_the_new_kinds_fail_alone(fuzzer):
    fuzz(fuzzer, HOSTILE[fuzzer.model.name])
