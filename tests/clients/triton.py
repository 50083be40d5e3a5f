"""Triton's Python clients (`tritonclient.http`, `tritonclient.grpc`) calling a server, run by the
tests with .venv-triton's interpreter (tritonclient 2.40 pins protobuf 3).

Reads a JSON plan on stdin: {"url": "host:port", "protocol": "http", "headers": {...},
"models": [names whose metadata and readiness to ask], "calls": [{"model", "binary": bool,
"inputs": [{"name", "datatype", "shape", "data"}]}]} (BYTES data: base64 strings); writes what
the client returned as JSON on stdout: `live`, `ready`, per model its metadata and readiness, per
call its outputs ({name: {"datatype", "shape", "data"}}, BYTES as text) or the error it raised.
"""

from __future__ import annotations

import base64
import json
import sys

import numpy

NUMPY = {"BOOL": numpy.bool_, "UINT8": numpy.uint8, "INT32": numpy.int32, "INT64": numpy.int64,
         "FP16": numpy.float16, "FP32": numpy.float32, "FP64": numpy.float64}


def as_numpy(spec: dict) -> numpy.ndarray:
    if spec["datatype"] == "BYTES":
        values = [base64.b64decode(v) for v in spec["data"]]
        return numpy.array(values, dtype=numpy.object_).reshape(spec["shape"])
    return numpy.array(spec["data"], dtype=NUMPY[spec["datatype"]]).reshape(spec["shape"])


def run(plan: dict) -> dict:
    if plan.get("protocol", "http") == "grpc":
        import tritonclient.grpc as client
    else:
        import tritonclient.http as client
    from tritonclient.utils import InferenceServerException

    server = client.InferenceServerClient(url=plan["url"])
    headers = plan.get("headers") or {}
    result = {"live": server.is_server_live(headers=headers),
              "ready": server.is_server_ready(headers=headers), "models": {}, "answers": []}
    for model in plan.get("models", []):
        metadata = server.get_model_metadata(model, headers=headers)
        if not isinstance(metadata, dict):  # gRPC: a protobuf message
            from google.protobuf.json_format import MessageToDict

            metadata = MessageToDict(metadata, preserving_proto_field_name=True)
        result["models"][model] = {"ready": server.is_model_ready(model, headers=headers),
                                   "metadata": metadata}
    for call in plan["calls"]:
        inputs = []
        for spec in call["inputs"]:
            tensor = client.InferInput(spec["name"], spec["shape"], spec["datatype"])
            if plan.get("protocol", "http") == "grpc":
                tensor.set_data_from_numpy(as_numpy(spec))
            else:
                tensor.set_data_from_numpy(as_numpy(spec), binary_data=call.get("binary", True))
            inputs.append(tensor)
        try:
            # A copy: tritonclient writes the binary header length into the dict it is given,
            # and the next JSON-only call would carry it.
            answer = server.infer(call["model"], inputs, headers=dict(headers))
        except InferenceServerException as e:
            result["answers"].append({"error": e.message(), "status": e.status()})
            continue
        outputs = {}
        for output in answer.get_response()["outputs"] if plan.get("protocol", "http") != "grpc" \
                else answer.get_response(as_json=True)["outputs"]:
            array = answer.as_numpy(output["name"])
            data = ([v.decode("utf-8", "replace") for v in array.reshape(-1)]
                    if array.dtype == numpy.object_ else array.reshape(-1).tolist())
            outputs[output["name"]] = {"datatype": output["datatype"],
                                       "shape": list(array.shape), "data": data}
        result["answers"].append({"outputs": outputs})
    return result


if __name__ == "__main__":
    print(json.dumps(run(json.load(sys.stdin))))
