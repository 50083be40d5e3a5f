"""A fixed-shape numeric array in (JSON), top-k classes out.

Body: `{"<input_key>": [[...], ...]}` (or the bare nested list), of the shape and value range set
in model-config.yaml, e.g. an 8x8 grid of pixel intensities 0..16 for the digits model.
KServe v1: each instance is such a body.
"""

from __future__ import annotations

import json
import math
from numbers import Real
from pathlib import Path

import torch

from handlers.base import JSON, ModelFile, ModelHandler, Payload, Scaffold, unprocessable
from handlers.classification import TopKAnswer, load_labels

FLOAT32_MAX = 3.4028234663852886e38
RANDOM_EXAMPLES = ("real inputs: examples/ holds random ones (parity inputs and load-test "
                   "payloads); put real requests there")


def shape_of(value, path: str = "input") -> list[int]:
    """The shape of a nested list of numbers; refuses ragged lists and non-numbers."""
    if isinstance(value, list):
        if not value:
            raise unprocessable("wrong_shape", f"{path} is an empty list")
        if all(type(v) is float or type(v) is int for v in value):  # what json.loads makes
            if all(math.isfinite(v) and abs(v) <= FLOAT32_MAX for v in value):
                return [len(value)]  # a row of numbers, checked in one pass, not one call each
        shapes = [shape_of(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if any(s != shapes[0] for s in shapes):
            raise unprocessable("wrong_shape", f"{path} is ragged: its rows differ in shape")
        return [len(value), *shapes[0]]
    if isinstance(value, bool) or not isinstance(value, Real):
        raise unprocessable("wrong_type", f"{path} is {type(value).__name__}, not a number")
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise unprocessable("out_of_range", f"{path} is not a finite 32-bit float")
    return []


class ArrayClassifier(TopKAnswer, ModelHandler):
    """A fixed-shape numeric array in (JSON), the top-k classes out."""

    settings_defaults = {"input_key": "inputs", "input_shape": None, "value_range": None,
                         "top_k": 3, "num_classes": None}

    @classmethod
    def worst_requests(cls, settings: dict) -> dict[str, tuple[bytes, str]]:
        key, width = settings.get("input_key", "inputs"), settings["max_json_number_chars"]
        shape = settings.get("input_shape") or [8, 8]
        longest = float("1." + "1" * (width - 3))
        grid: object = longest
        for size in reversed(shape):
            grid = [grid] * size
        flat = b"[" + b"0," * (settings["max_request_bytes"] // 2 - 16) + b"0]"
        return {"grid of longest numbers": (json.dumps({key: grid}).encode(), JSON),
                "largest body (flat numbers)": (b'{"%s": ' % key.encode() + flat + b"}", JSON),
                "deepest nesting admitted": (json.dumps({key: [[[[[[[[[0]]]]]]]]]}).encode(), JSON)}

    @classmethod
    def scaffold(cls, model: ModelFile, count: int) -> Scaffold:
        the_input = model.one_input_classifier()
        return Scaffold({"input_key": the_input["name"], "input_shape": the_input["shape"][1:],
                         "num_classes": model.num_outputs, "top_k": min(5, model.num_outputs)},
                        random_bodies([the_input], count), [RANDOM_EXAMPLES])

    def load_resources(self, model_dir: Path) -> None:
        self.labels = load_labels(model_dir, self.settings["num_classes"])

    def decode(self, payload: Payload) -> list[torch.Tensor]:
        body = payload.json()
        key = self.settings["input_key"]
        if isinstance(body, dict):
            if key not in body:
                raise unprocessable("missing_field", f"the JSON object has no {key!r} field")
            body = body[key]
        shape = shape_of(body, key)
        expected = self.settings["input_shape"]
        if expected is not None and shape != list(expected):
            raise unprocessable("wrong_shape", f"{key} has shape {shape}; expected {list(expected)}")
        tensor = torch.tensor(body, dtype=torch.float32)
        if self.settings["value_range"] is not None:
            low, high = self.settings["value_range"]
            if float(tensor.min()) < low or float(tensor.max()) > high:
                raise unprocessable("out_of_range", f"{key} values must lie in [{low}, {high}]")
        return [tensor]

    def oip_inputs(self) -> list[dict]:
        return [{"name": self.settings["input_key"], "datatype": "FP32",
                 "shape": [-1, *(self.settings["input_shape"] or [])]}]

    def warmup_items(self) -> list[torch.Tensor]:
        return [torch.zeros(self.settings["input_shape"])]

    def request_schema(self) -> dict:
        key = self.settings["input_key"]
        return {JSON: {"type": "object", "required": [key], "properties": {key: nested_array_schema(
            self.settings["input_shape"] or [], self.settings["value_range"])}}}


def nested_array_schema(shape, value_range=None, integer: bool = False) -> dict:
    """JSON Schema of a nested list of numbers of the given shape (None or a name: any length)."""
    schema: dict = {"type": "integer" if integer else "number"}
    if value_range is not None:
        schema["minimum"], schema["maximum"] = value_range
    for size in reversed(list(shape)):
        schema = {"type": "array", "items": schema, "minItems": 1,
                  **({"maxItems": size, "minItems": size} if isinstance(size, int) else {})}
    return schema


def random_input(spec: dict, batch: int, rng: torch.Generator | None = None) -> torch.Tensor:
    """Random values for an input of model.yaml's `inputs:` (name, shape with "batch" first,
    dtype), `batch` rows; other dynamic sizes are 16."""
    shape = [batch if d == "batch" else (16 if isinstance(d, str) else d) for d in spec["shape"]]
    if spec["dtype"].startswith(("int", "uint")):
        return torch.randint(0, 10, shape, generator=rng)
    if spec["dtype"] == "bool":
        return torch.randint(0, 2, shape, generator=rng).bool()
    return torch.rand(shape, generator=rng).to(getattr(torch, spec["dtype"]))


def random_bodies(inputs: list[dict], count: int) -> list[tuple[str, bytes]]:
    """`count` JSON requests of random values, one field per input (seeded: the same each time)."""
    rng = torch.Generator().manual_seed(0)
    return [(".json", json.dumps({spec["name"]: random_input(spec, 1, rng)[0].tolist()
                                  for spec in inputs}).encode()) for _ in range(count)]
