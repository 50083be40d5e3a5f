"""Named tensors in, the model's output tensor out: for models whose inputs are numbers already.

The inputs are model.yaml's `inputs:` (name, shape with `batch` first, dtype). A request is one
item, without the batch dimension:

    application/json           {"<input name>": nested list of that shape, ...} for every input
    application/octet-stream   one input only: its values as raw little-endian bytes, C order

Answer: `{"outputs": nested list, "shape": [...]}`: the model's output row for the request.
KServe v1: each instance is such a JSON object (or, for one input, its nested list); each
prediction is the output row's nested list.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from pathlib import Path

import torch

from handlers.array_classifier import RANDOM_EXAMPLES, nested_array_schema, random_bodies
from handlers.base import (JSON, ModelFile, ModelHandler, Payload, Scaffold, bad_request,
                           unprocessable)

BINARY = "application/octet-stream"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64, "int64": torch.int64, "int32": torch.int32,
          "uint8": torch.uint8, "bool": torch.bool}
# The Open Inference Protocol's datatype for each: bfloat16 travels as FP32 (numpy has no bf16).
OIP_DATATYPES = {"float32": "FP32", "float16": "FP16", "bfloat16": "FP32", "float64": "FP64",
                 "int64": "INT64", "int32": "INT32", "uint8": "UINT8", "bool": "BOOL"}
FLOAT32_MAX = 3.4028234663852886e38


def flat_values(value, path: str, shape: list[int]) -> list:
    """The numbers of a nested list that must have `shape`, row-major; refuses anything else."""
    out: list = []
    stack = [(value, path, 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth < len(shape):
            if not isinstance(node, list):
                raise unprocessable("wrong_shape", f"{where} is {type(node).__name__}; expected "
                                    f"a list of {shape[depth]}")
            if len(node) != shape[depth]:
                raise unprocessable("wrong_shape", f"{where} has {len(node)} entries; expected "
                                    f"{shape[depth]} (shape {shape})")
            stack.extend((child, f"{where}[{i}]", depth + 1)
                         for i, child in reversed(list(enumerate(node))))
        else:
            if isinstance(node, bool) or not isinstance(node, Real):
                raise unprocessable("wrong_type", f"{where} is {type(node).__name__}, not a number")
            out.append(node)
    return out


class TensorHandler(ModelHandler):
    """Named tensors in (JSON, or one raw binary tensor), the output tensor out."""

    request_content_types = (JSON, BINARY)

    @classmethod
    def scaffold(cls, model: ModelFile, count: int) -> Scaffold:
        model.refuse_text()
        return Scaffold({}, random_bodies(model.inputs, count), [RANDOM_EXAMPLES])

    def load_resources(self, model_dir: Path) -> None:
        inputs = self.model_yaml.get("inputs") or []
        if not inputs:
            raise ValueError("the tensor kind needs model.yaml `inputs:` (name, shape, dtype)")
        self.inputs = []
        for entry in inputs:
            shape = list(entry["shape"])[1:]
            if not all(isinstance(d, int) for d in shape):
                raise ValueError(f"input {entry['name']}: the tensor kind needs fixed sizes after "
                                 f"the batch dimension, got {entry['shape']}")
            self.inputs.append((entry["name"], shape, entry.get("dtype", "float32")))

    def _tensor(self, name: str, shape: list[int], dtype: str, value) -> torch.Tensor:
        values = flat_values(value, name, shape)
        if dtype == "bool":
            if any(v not in (0, 1) for v in values):
                raise unprocessable("out_of_range", f"{name} holds booleans: 0 or 1")
        elif dtype.startswith(("int", "uint")):
            info = torch.iinfo(DTYPES[dtype])
            for v in values:
                if not isinstance(v, Integral):
                    raise unprocessable("wrong_type", f"{name} holds integers ({dtype}); got {v!r}")
                if not info.min <= v <= info.max:
                    raise unprocessable("out_of_range", f"{name}: {v} does not fit {dtype}")
        elif any(not math.isfinite(v) or abs(v) > FLOAT32_MAX for v in values):
            raise unprocessable("out_of_range", f"{name} holds a value that is not a finite "
                                "32-bit float")
        return torch.tensor(values, dtype=DTYPES[dtype]).reshape(shape)

    def decode(self, payload: Payload) -> list[tuple[torch.Tensor, ...]]:
        if payload.content_type == BINARY:
            if len(self.inputs) != 1:
                raise bad_request("wrong_content", f"a binary body carries one input; this model "
                                  f"takes {len(self.inputs)}: send JSON")
            name, shape, dtype = self.inputs[0]
            data = payload.bytes()
            size = math.prod(shape) * torch.empty((), dtype=DTYPES[dtype]).element_size()
            if len(data) != size:
                raise unprocessable("wrong_shape", f"the body has {len(data):,} bytes; {name} "
                                    f"({dtype}, shape {shape}) takes {size:,}")
            tensor = torch.frombuffer(bytearray(data), dtype=DTYPES[dtype]).reshape(shape)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise unprocessable("out_of_range", f"{name} holds a value that is not finite")
            return [(tensor,)]
        body = payload.json()
        if not isinstance(body, dict):
            raise unprocessable("wrong_type", "send a JSON object with one field per input: " +
                                ", ".join(name for name, _, _ in self.inputs))
        missing = [name for name, _, _ in self.inputs if name not in body]
        if missing:
            raise unprocessable("missing_field", f"the JSON object has no {missing[0]!r} field")
        return [tuple(self._tensor(name, shape, dtype, body[name])
                      for name, shape, dtype in self.inputs)]

    def collate(self, items) -> tuple[torch.Tensor, ...]:
        return tuple(torch.stack([item[i] for item in items]) for i in range(len(self.inputs)))

    def instance_payload(self, instance) -> Payload:
        if len(self.inputs) == 1 and isinstance(instance, list):
            instance = {self.inputs[0][0]: instance}
        return super().instance_payload(instance)

    def native_instances(self, payload: Payload) -> list:
        if payload.content_type == BINARY:  # the one input's values, as JSON numbers
            return [{self.inputs[0][0]: item[0].tolist()} for item in self.decode(payload)]
        return super().native_instances(payload)

    def encode(self, outputs: torch.Tensor) -> dict:
        row = outputs[0]
        return {"outputs": self.prediction(row), "shape": list(row.shape)}

    def prediction(self, row: torch.Tensor) -> list:
        return row.tolist()

    def prediction_schema(self) -> dict:
        return {"type": "array"}

    def oip_inputs(self) -> list[dict]:
        return [{"name": name, "datatype": OIP_DATATYPES[dtype], "shape": [-1, *shape]}
                for name, shape, dtype in self.inputs]

    def oip_outputs(self, outputs: torch.Tensor | None) -> list[dict]:
        if outputs is None:
            return [{"name": "output", "datatype": "FP32",
                     "shape": [-1, *(self.output_row_shape or [-1])]}]
        return [{"name": "output", "datatype": "FP32", "shape": list(outputs.shape),
                 "data": outputs.float().numpy()}]

    def instance_schema(self) -> dict:
        body = self.request_schema()[JSON]
        if len(self.inputs) == 1:
            return {"oneOf": [body, body["properties"][self.inputs[0][0]]]}
        return body

    def warmup_items(self) -> list[tuple[torch.Tensor, ...]]:
        return [tuple(torch.zeros(shape, dtype=DTYPES[dtype]) for _, shape, dtype in self.inputs)]

    def request_schema(self) -> dict:
        schemas = {JSON: {"type": "object", "required": [n for n, _, _ in self.inputs],
                          "properties": {name: nested_array_schema(
                              shape, integer=dtype.startswith(("int", "uint")))
                              for name, shape, dtype in self.inputs}}}
        if len(self.inputs) == 1:
            schemas[BINARY] = {"type": "string", "format": "binary"}
        return schemas

    def answer_schema(self) -> dict:
        return {"type": "object", "required": ["outputs", "shape"], "properties": {
            "outputs": {}, "shape": {"type": "array", "items": {"type": "integer"}}}}
