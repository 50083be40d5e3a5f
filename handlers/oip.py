"""The Open Inference Protocol's REST bodies (KServe "v2", Triton, MLServer): typed tensors in JSON,
or a JSON header followed by the tensors' raw bytes (the binary tensor data extension).

A request: `{"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype", "data" |
"parameters": {"binary_data_size": n}}], "outputs"?: [{"name", "parameters"?: {"binary_data"}}]}`;
with binary data the body is that JSON (its length in the `Inference-Header-Content-Length`
header) and then each binary input's bytes, in the order of `inputs`. BYTES tensors are, in
binary, each element's 4-byte little-endian length then its bytes; in JSON, strings.

Everything a client sent is checked before a tensor is made: the datatype is known, the shape's
element count matches the data, binary sizes add up to the body exactly; each refusal is a
RequestError for that request alone, answered as the protocol's one message (`{"error": ...}`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy

from handlers.errors import bad_request, request_header, unprocessable

if TYPE_CHECKING:  # the type only: base.py imports this module
    from handlers.base import Payload

HEADER_LENGTH = "inference-header-content-length"
NUMERIC = {"BOOL": numpy.bool_, "UINT8": numpy.uint8, "UINT16": numpy.uint16,
           "UINT32": numpy.uint32, "UINT64": numpy.uint64, "INT8": numpy.int8,
           "INT16": numpy.int16, "INT32": numpy.int32, "INT64": numpy.int64,
           "FP16": numpy.float16, "FP32": numpy.float32, "FP64": numpy.float64}
DATATYPES = (*NUMERIC, "BYTES")


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: numpy.ndarray | list[bytes]  # BYTES: the elements, flat, row-major
    in_json: bool = False  # a request's tensor sent in the JSON (BYTES: as strings)


@dataclass
class Request:
    inputs: dict[str, Tensor]
    id: str | None
    binary_outputs: dict[str, bool]  # output name -> answer it as binary data
    binary_default: bool  # the request's `binary_data_output` parameter


def header_length(headers: dict | None) -> int | None:
    value = request_header(headers, HEADER_LENGTH)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise bad_request("bad_header", f"{HEADER_LENGTH} is not a number: {value[:40]!r}") \
            from None


def parse(payload: Payload, json_length: int | None) -> Request:
    """One request's body -> its named input tensors."""
    body = payload.bytes() if not isinstance(payload.data, (dict, list)) else None
    if body is None:  # TorchServe parsed a JSON body already
        header, binary = payload.json(), b""
        if json_length is not None:
            raise bad_request("bad_binary", f"{HEADER_LENGTH} is set but the body is JSON only")
    elif json_length is None:
        header, binary = payload.json(), b""
    else:
        if not 0 < json_length <= len(body):
            raise bad_request("bad_binary", f"{HEADER_LENGTH} is {json_length:,}; the body has "
                              f"{len(body):,} bytes")
        header = dataclasses.replace(payload, data=body[:json_length],
                                     content_type="application/json").json()
        binary = body[json_length:]
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list) \
            or not header["inputs"]:
        raise unprocessable("missing_field", 'send {"inputs": [{"name", "shape", "datatype", '
                            '"data"}, ...]}')
    inputs, offset = {}, 0
    for i, entry in enumerate(header["inputs"]):
        tensor, offset = read_input(entry, f"inputs[{i}]", binary, offset)
        if tensor.name in inputs:
            raise unprocessable("duplicate_input", f"input {tensor.name!r} is sent twice")
        inputs[tensor.name] = tensor
    if offset != len(binary):
        raise bad_request("bad_binary", f"{len(binary) - offset:,} bytes after the last binary "
                          "input; the sizes do not add up to the body")
    parameters = header.get("parameters") if isinstance(header.get("parameters"), dict) else {}
    outputs = header.get("outputs") if isinstance(header.get("outputs"), list) else []
    binary_outputs = {}
    for entry in outputs:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            wanted = (entry.get("parameters") or {}) if isinstance(entry.get("parameters"),
                                                                   dict) else {}
            binary_outputs[entry["name"]] = bool(wanted.get("binary_data", False))
    request_id = header.get("id") if isinstance(header.get("id"), str) else None
    return Request(inputs, request_id, binary_outputs,
                   bool(parameters.get("binary_data_output", False)))


def read_input(entry: Any, where: str, binary: bytes, offset: int) -> tuple[Tensor, int]:
    if not isinstance(entry, dict):
        raise unprocessable("wrong_type", f"{where} is not an object")
    name, datatype, shape = entry.get("name"), entry.get("datatype"), entry.get("shape")
    if not isinstance(name, str) or not name:
        raise unprocessable("missing_field", f"{where} has no name")
    where = f"input {name!r}"
    if datatype not in DATATYPES:
        raise unprocessable("wrong_datatype", f"{where}: datatype {datatype!r} is not one of "
                            f"{', '.join(DATATYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                              and d >= 0 for d in shape):
        raise unprocessable("wrong_shape", f"{where}: shape must be a list of sizes >= 0")
    count = math.prod(shape)
    parameters = entry.get("parameters") if isinstance(entry.get("parameters"), dict) else {}
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 \
                or offset + size > len(binary):
            raise bad_request("bad_binary", f"{where}: binary_data_size {size!r} runs past the "
                              f"body ({len(binary) - offset:,} bytes left)")
        chunk, offset = binary[offset:offset + size], offset + size
        if datatype == "BYTES":
            data = split_bytes(chunk, where)
        else:
            itemsize = numpy.dtype(NUMERIC[datatype]).itemsize
            if len(chunk) != count * itemsize:
                raise unprocessable("wrong_shape", f"{where}: {len(chunk):,} bytes for shape "
                                    f"{shape} of {datatype} ({count * itemsize:,} bytes)")
            data = numpy.frombuffer(chunk, dtype=numpy.dtype(NUMERIC[datatype]).newbyteorder("<"))
    elif "data" in entry:
        data = json_data(entry["data"], datatype, where)
    else:
        raise unprocessable("missing_field", f"{where} has neither data nor binary_data_size")
    if len(data) != count:
        raise unprocessable("wrong_shape", f"{where}: {len(data):,} elements for shape {shape} "
                            f"({count:,})")
    if datatype != "BYTES":
        data = data.reshape(shape)
    return Tensor(name, datatype, shape, data, in_json=size is None), offset


def split_bytes(chunk: bytes, where: str) -> list[bytes]:
    elements, at = [], 0
    while at < len(chunk):
        if at + 4 > len(chunk):
            raise bad_request("bad_binary", f"{where}: a BYTES element's length is cut off")
        (length,) = struct.unpack_from("<I", chunk, at)
        if at + 4 + length > len(chunk):
            raise bad_request("bad_binary", f"{where}: a BYTES element of {length:,} bytes runs "
                              "past its tensor")
        elements.append(chunk[at + 4:at + 4 + length])
        at += 4 + length
    return elements


def json_data(data: Any, datatype: str, where: str) -> numpy.ndarray | list[bytes]:
    """JSON `data`: flat or nested (row-major) -> the elements."""
    flat: list = []
    stack = [data]
    while stack:  # iterative: nesting depth is already bounded by the JSON parser's limit
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
        else:
            flat.append(node)
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise unprocessable("wrong_type", f"{where}: BYTES data in JSON are strings")
        return [v.encode("utf-8", "surrogatepass") for v in flat]
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise unprocessable("wrong_type", f"{where}: BOOL data are true or false")
    elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise unprocessable("wrong_type", f"{where}: {datatype} data are numbers")
    elif datatype.startswith(("INT", "UINT")) and not all(isinstance(v, int) for v in flat):
        raise unprocessable("wrong_type", f"{where}: {datatype} data are integers")
    try:
        with numpy.errstate(over="raise"):
            return numpy.array(flat, dtype=NUMERIC[datatype])
    except (OverflowError, FloatingPointError, ValueError):
        raise unprocessable("out_of_range", f"{where}: a value does not fit {datatype}") from None


def tensor_bytes(tensor: Tensor) -> bytes:
    """A tensor in the binary extension's layout: little-endian, row-major; BYTES elements each
    after their 4-byte length."""
    if tensor.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in tensor.data)
    dtype = numpy.dtype(NUMERIC[tensor.datatype]).newbyteorder("<")
    return numpy.ascontiguousarray(tensor.data).astype(dtype).tobytes()


def encode(header: dict, key: str, tensors: list[Tensor], binary: set[str]
           ) -> tuple[bytes, int | None]:
    """`header` with `tensors` listed under `key` ("inputs" or "outputs"), those named in `binary`
    as binary data after the JSON: the body, and the JSON part's length when there is binary."""
    entries, chunks = [], []
    for tensor in tensors:
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if tensor.name in binary:
            chunk = tensor_bytes(tensor)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        elif tensor.datatype == "BYTES":
            entry["data"] = [v.decode("utf-8", "replace") for v in tensor.data]
        else:
            entry["data"] = numpy.asarray(tensor.data).reshape(-1).tolist()
        entries.append(entry)
    text = json.dumps({**header, key: entries}).encode()
    if not chunks:
        return text, None
    return text + b"".join(chunks), len(text)


def response(model: str, request_id: str | None, outputs: list[Tensor], binary: set[str]
             ) -> tuple[bytes, int | None]:
    """The answer's body, and the JSON part's length when some outputs are binary."""
    header = {"model_name": model, **({"id": request_id} if request_id is not None else {})}
    return encode(header, "outputs", outputs, binary)


def request(inputs: list[Tensor], binary: bool) -> tuple[bytes, int | None]:
    """A request's body (what a client sends; the protocol benchmark uses it)."""
    return encode({}, "inputs", inputs, {t.name for t in inputs} if binary else set())
