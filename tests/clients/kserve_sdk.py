"""KServe's own Python SDK (`kserve.InferenceRESTClient`, and `InferenceGRPCClient` for
"protocol": "grpc") calling a server, run by the tests with .venv-clients' interpreter (the SDK's
pins clash with the serving environment's).

Reads a JSON plan on stdin: {"url", "protocol": "v1" | "v2" | "grpc", "headers": {...}, "ready": [models],
"calls": [{"model", "body"} (v1) | {"model", "oip_inputs": [{"name", "datatype", "shape",
"data"}]} (v2; BYTES data base64)]}; writes what the SDK returned as JSON on stdout: `live`, each
model's `ready`, and per call its answer (v2: {name: {"datatype", "shape", "data"}}) or the HTTP
status and error the SDK raised.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys

import httpx
import numpy
from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest


def oip_request(model: str, inputs: list[dict], binary: bool = True) -> InferRequest:
    """The request; `binary` False: gRPC's typed contents instead of raw_input_contents."""
    tensors = []
    for spec in inputs:
        tensor = InferInput(spec["name"], spec["shape"], spec["datatype"])
        if spec["datatype"] == "BYTES":
            data = numpy.array([base64.b64decode(v) for v in spec["data"]], dtype=numpy.object_)
        else:
            data = numpy.array(spec["data"], dtype=numpy.float32)
        tensor.set_data_from_numpy(data.reshape(spec["shape"]), binary_data=binary)
        tensors.append(tensor)
    return InferRequest(model_name=model, infer_inputs=tensors)


def outputs_of(response) -> dict:
    outputs = {}
    for output in response.outputs:
        array = output.as_numpy()
        data = ([v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                 for v in array.reshape(-1)] if array.dtype == numpy.object_
                else array.reshape(-1).tolist())
        outputs[output.name] = {"datatype": output.datatype, "shape": list(array.shape),
                                "data": data}
    return outputs


async def run_grpc(plan: dict) -> dict:
    """v2 over gRPC; each call's inputs as typed contents (the SDK's binary_data=False)."""
    import grpc

    client = InferenceGRPCClient(plan["url"], timeout=60)
    metadata = [(k.lower(), v) for k, v in (plan.get("headers") or {}).items()]
    try:
        result = {"live": await client.is_server_live(headers=metadata), "ready": {},
                  "answers": []}
        for model in plan.get("ready", []):
            result["ready"][model] = await client.is_model_ready(model, headers=metadata)
        for call in plan["calls"]:
            try:
                response = await client.infer(
                    oip_request(call["model"], call["oip_inputs"], call.get("binary", False)),
                    headers=metadata)
                result["answers"].append({"status": 200, "body": outputs_of(response)})
            except grpc.RpcError as e:
                result["answers"].append({"status": e.code().name,
                                          "body": {"error": e.details()}})
        return result
    finally:
        await client.close()


async def run(plan: dict) -> dict:
    if plan.get("protocol") == "grpc":
        return await run_grpc(plan)
    client = InferenceRESTClient(RESTConfig(protocol=plan.get("protocol", "v1"), timeout=60))
    headers, url = plan.get("headers") or {}, plan["url"]
    try:
        result = {"live": await client.is_server_live(url, headers=headers), "ready": {},
                  "answers": []}
        for model in plan.get("ready", []):
            result["ready"][model] = await client.is_model_ready(url, model, headers=headers)
        for call in plan["calls"]:
            try:
                if "oip_inputs" in call:
                    response = await client.infer(url, oip_request(call["model"],
                                                                   call["oip_inputs"]),
                                                  model_name=call["model"], headers=headers)
                    result["answers"].append({"status": 200, "body": outputs_of(response)})
                    continue
                answer = await client.infer(url, call["body"], model_name=call["model"],
                                            headers=headers)
                result["answers"].append({"status": 200, "body": answer})
            except httpx.HTTPStatusError as e:
                result["answers"].append({"status": e.response.status_code,
                                          "body": e.response.json()})
        return result
    finally:
        await client.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(json.load(sys.stdin)))))
