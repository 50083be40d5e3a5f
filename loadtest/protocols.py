"""A native request in each protocol the front door speaks, for the load tests and the protocols'
benchmark: the same input whichever protocol carries it, so their figures compare like with like.

    native      POST /predictions/<m>          the body the model's kind reads
    kserve-v1   POST /v1/models/<m>:predict    {"instances": [...]}: the kind's native_instances hook
    v2-json     POST /v2/models/<m>/infer      the Open Inference Protocol, tensors in JSON
    v2-binary   POST /v2/models/<m>/infer      the same, with the binary tensor data extension

The OIP tensors follow the model's `oip_inputs`: texts are BYTES strings, a file (an image) a
BYTES element (base64 in JSON, as v1's "b64"), numbers their datatype's array.
"""

from __future__ import annotations

import base64
import json

import numpy

from handlers import oip
from handlers.base import JSON, Payload

PROTOCOLS = ("native", "kserve-v1", "v2-json", "v2-binary")
# The field every answer of a protocol has (native: the kind's own, handlers.KINDS). v2-binary
# sends binary tensors and asks for JSON outputs, as perf_analyzer and tritonclient do by default.
ANSWER_FIELD = {"kserve-v1": "predictions", "v2-json": "outputs", "v2-binary": "outputs"}


def oip_tensors(handler, native: bytes, content_type: str) -> tuple[list, list | None]:
    """The request's OIP input tensors (binary form), and where JSON needs them otherwise (a file
    as base64 text) that form; None where JSON carries the same tensors."""
    inputs = handler.oip_inputs()
    instances = handler.native_instances(Payload(native, content_type))
    first = inputs[0]
    if first["datatype"] == "BYTES" and (first.get("parameters") or {}).get(
            "content_type") == "str":  # texts
        return [oip.Tensor(first["name"], "BYTES", [len(instances)],
                           [t.encode() for t in instances])], None
    if first["datatype"] == "BYTES":  # a file (an image)
        return ([oip.Tensor(first["name"], "BYTES", [1], [native])],
                [oip.Tensor(first["name"], "BYTES", [1], [base64.b64encode(native)])])
    tensors = []  # numbers, named in each instance (or its bare array)
    for spec in inputs:
        rows = [i[spec["name"]] if isinstance(i, dict) else i for i in instances]
        array = numpy.asarray(rows, dtype=oip.NUMERIC[spec["datatype"]])
        tensors.append(oip.Tensor(spec["name"], spec["datatype"], list(array.shape), array))
    return tensors, None


def request_in(protocol: str, model: str, handler, native: bytes, content_type: str
               ) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of the native request `native` in `protocol`."""
    if protocol == "native":
        return f"/predictions/{model}", native, {"Content-Type": content_type}
    if protocol == "kserve-v1":
        instances = handler.native_instances(Payload(native, content_type))
        return (f"/v1/models/{model}:predict", json.dumps({"instances": instances}).encode(),
                {"Content-Type": JSON})
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    binary = protocol == "v2-binary"
    tensors, as_text = oip_tensors(handler, native, content_type)
    body, length = oip.request(tensors if binary or as_text is None else as_text, binary)
    headers = {"Content-Type": "application/octet-stream" if binary else JSON}
    if length is not None:
        headers["Inference-Header-Content-Length"] = str(length)
    return f"/v2/models/{model}/infer", body, headers
