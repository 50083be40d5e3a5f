"""The Open Inference Protocol over gRPC (serving/run/oip_grpc.py), called by the clients of the
projects that define it: Triton's (tritonclient.grpc, perf_analyzer -i grpc) and KServe's
(InferenceGRPCClient), through the real front door to a real TorchServe, and checked against the
native endpoint's answers for the same inputs."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from models import MODELS_DIR
from serving.run import oip_grpc
from serving.run.oip_grpc import M
from tests.test_serving import (assert_same_predictions, native_answers, oip_inputs,
                                oip_predictions, v1_examples)

# Our messages and where each project's generated code has the same one (the proto's nested
# names; a map's entries are its generated ParametersEntry).
THEIRS = {"ServerLiveResponse": "ServerLiveResponse", "ServerReadyResponse": "ServerReadyResponse",
          "ModelReadyRequest": "ModelReadyRequest", "ModelReadyResponse": "ModelReadyResponse",
          "ServerMetadataResponse": "ServerMetadataResponse",
          "ModelMetadataRequest": "ModelMetadataRequest",
          "ModelMetadataResponse": "ModelMetadataResponse",
          "TensorMetadata": "ModelMetadataResponse.TensorMetadata",
          "InferParameter": "InferParameter",
          "ParameterEntry": "ModelInferRequest.ParametersEntry",
          "InferTensorContents": "InferTensorContents",
          "InferTensor": "ModelInferRequest.InferInputTensor",
          "RequestedOutput": "ModelInferRequest.InferRequestedOutputTensor",
          "ModelInferRequest": "ModelInferRequest", "ModelInferResponse": "ModelInferResponse",
          "ModelConfigRequest": "ModelConfigRequest", "ModelConfigResponse": "ModelConfigResponse",
          "ModelConfig": "ModelConfig", "ModelInput": "ModelInput", "ModelOutput": "ModelOutput"}
ENUM, INT32 = 14, 5  # Triton's DataType is an enum; on the wire a varint, as our int32


@pytest.mark.parametrize("environment, modules", [
    (".venv-triton", ["tritonclient.grpc.service_pb2", "tritonclient.grpc.model_config_pb2"]),
    (".venv-clients", ["kserve.protocol.grpc.grpc_predict_v2_pb2"]),
])
def test_every_field_is_numbered_and_typed_as_the_projects_own_code_has_it(client_environments,
                                                                           environment, modules):
    """On the wire a message is its field numbers and types: each of ours against the generated
    code Triton's and KServe's clients use (KServe's proto has no ModelConfig, and fewer
    InferParameter choices)."""
    from tests.clients import descriptors

    theirs = descriptors(environment, modules, sorted(set(THEIRS.values())))
    assert "ModelInferRequest" in theirs and "InferTensorContents" in theirs, sorted(theirs)
    compared = 0
    for ours, their_name in THEIRS.items():
        if their_name not in theirs:
            continue
        by_number = {number: (name, kind, label) for name, number, kind, label in theirs[their_name]}
        for field in M[ours].DESCRIPTOR.fields:
            if field.number not in by_number and ours == "InferParameter":
                continue  # double_param, uint64_param: Triton's, not in KServe's proto
            name, kind, repeated = by_number[field.number]
            assert (field.name, field.is_repeated) == (name, repeated), (ours, field.name, name)
            assert field.type == kind or (field.type, kind) == (INT32, ENUM), (ours, field.name)
            compared += 1
    assert compared > 50


def grpc_plan(server, address: str, calls: list[dict]) -> dict:
    """A client plan for the gRPC door: the key as gRPC metadata, whose keys are lowercase."""
    return {"url": address, "protocol": "grpc", "calls": calls,
            "headers": {k.lower(): v for k, v in server.auth("inference").items()}}


def test_tritonclient_grpc_gets_the_native_answers_on_every_model(server, grpc_door):
    from tests.clients import triton_client

    examples = v1_examples()
    result = triton_client({
        **grpc_plan(server, grpc_door, [{"model": m, "inputs": oip_inputs(m, examples[m])}
                                        for m in examples] +
                    [{"model": "digits", "inputs": [{"name": "pixels", "datatype": "FP32",
                                                     "shape": [1, 8, 7], "data": [1.0] * 56}]}]),
        "models": list(examples)})
    assert result["live"] and result["ready"]
    for model in examples:
        assert result["models"][model]["ready"] is True
        metadata = result["models"][model]["metadata"]
        assert metadata["name"] == model and [i["name"] for i in metadata["inputs"]] == \
            [i["name"] for i in oip_inputs(model, [])]
    *answers, refused = result["answers"]
    for model, answer in zip(examples, answers):
        assert "outputs" in answer, answer
        assert_same_predictions(model, oip_predictions(model, answer["outputs"]),
                                native_answers(server, model, examples[model]))
    assert refused["status"] == "StatusCode.INVALID_ARGUMENT" and \
        refused["error"].startswith("wrong_shape: "), refused


def test_kserve_sdk_grpc_client_gets_the_native_answers(server, grpc_door):
    """KServe's InferenceGRPCClient, with typed contents (fp32_contents, bytes_contents) where
    its SDK allows them and raw_input_contents for images."""
    from tests.clients import kserve_sdk

    examples = v1_examples()
    result = kserve_sdk({**grpc_plan(server, grpc_door, [
        {"model": m, "binary": m == "efficientnet_lite0", "oip_inputs": oip_inputs(m, examples[m])}
        for m in examples]), "ready": list(examples)})
    assert result["live"] is True and all(result["ready"].values()), result
    for model, answer in zip(examples, result["answers"]):
        assert answer["status"] == 200, answer
        assert_same_predictions(model, oip_predictions(model, answer["body"]),
                                native_answers(server, model, examples[model]))


def call(address: str, method: str, request, metadata=(), timeout: float = 30):
    """One RPC with the serving environment's grpc and our messages (the edge cases the
    clients above never send)."""
    request_type, response_type = oip_grpc.RPCS[method]
    with grpc.insecure_channel(address, options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024)]) as channel:
        rpc = channel.unary_unary(f"/{oip_grpc.SERVICE}/{method}",
                                  request_serializer=M[request_type].SerializeToString,
                                  response_deserializer=M[response_type].FromString)
        return rpc(request, metadata=metadata, timeout=timeout)


def digits_request(rows: int = 1, raw: list[bytes] | None = None):
    """`rows` copies of the digits example (a 0) as raw FP32, or `raw` as given."""
    grid = json.loads((MODELS_DIR / "digits" / "example.json").read_text())["pixels"]
    grids = np.array([grid] * rows, np.float32)
    request = M["ModelInferRequest"](model_name="digits", id="r1")
    request.inputs.add(name="pixels", datatype="FP32", shape=[rows, 8, 8])
    request.raw_input_contents.extend(raw if raw is not None else [grids.tobytes()])
    return request


def test_the_grpc_door_checks_keys_and_limits_as_the_front_door_and_refuses_alone(server,
                                                                                  grpc_door):
    auth = [("authorization", server.auth("inference")["Authorization"])]
    management = [("authorization", server.auth("management")["Authorization"])]
    refusals = []
    for request, metadata in (
            (digits_request(), ()),  # no key
            (digits_request(), [("authorization", "Bearer wrong-0123")]),
            (digits_request(), management),  # a key of another API
            (M["ModelInferRequest"](model_name="nope/../digits"), auth),
            (M["ModelInferRequest"](model_name="absent"), auth),
            (digits_request(raw=[b"", b""]), auth),  # two raw contents for one input
            (digits_request(raw=[b"\0" * 100]), auth),  # 100 bytes for 64 floats
            (digits_request(rows=65), auth),  # past max_items_per_request
            (digits_request(raw=[b"\0" * (11 * 1024 * 1024)]), auth)):  # past the body limit
        with pytest.raises(grpc.RpcError) as caught:
            call(grpc_door, "ModelInfer", request, metadata)
        refusals.append((caught.value.code(), caught.value.details().split(":")[0]))
    assert refusals == [
        (grpc.StatusCode.UNAUTHENTICATED, "unauthorized"),
        (grpc.StatusCode.UNAUTHENTICATED, "unauthorized"),
        (grpc.StatusCode.PERMISSION_DENIED, "forbidden"),
        (grpc.StatusCode.NOT_FOUND, "unknown model 'nope/../digits'"),
        (grpc.StatusCode.NOT_FOUND, "Model not found"),  # TorchServe's own message
        (grpc.StatusCode.INVALID_ARGUMENT, "bad_binary"),
        (grpc.StatusCode.INVALID_ARGUMENT, "wrong_shape"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, refusals[8][1]),
    ], refusals
    # Nothing above cost the door or the model anything: the next call is answered.
    answer = call(grpc_door, "ModelInfer", digits_request(2), auth)
    assert answer.model_name == "digits" and answer.id == "r1"
    labels = answer.raw_output_contents[[o.name for o in answer.outputs].index("label")]
    assert labels[4:5] == b"0" and len(answer.raw_output_contents) == len(answer.outputs) == 3
    config = call(grpc_door, "ModelConfig", M["ModelConfigRequest"](name="digits"), auth).config
    assert (config.max_batch_size, [(i.name, i.data_type, list(i.dims)) for i in config.input]) \
        == (64, [("pixels", oip_grpc.TRITON_TYPES["FP32"], [8, 8])])
    assert [o.data_type for o in config.output] == [oip_grpc.TRITON_TYPES[t]
                                                    for t in ("INT64", "STRING", "FP32")]


def test_perf_analyzer_drives_the_grpc_door_for_a_bounded_run(server, grpc_door, tmp_path):
    """perf_analyzer -i grpc reads the model's config and metadata and sends raw tensors; it
    stops at the first failed request."""
    import models
    from models import sources
    from serving.perf import bench_protocols

    spec = models.load("digits")
    rows = bench_protocols.perf_analyzer(spec, sources.model_handler(spec), grpc_door,
                                         {"authorization": server.auth("inference")[
                                             "Authorization"]}, [1, 2], 1.0, tmp_path, "grpc")
    assert [r["concurrency"] for r in rows] in ([1, 2], [1], [2]), rows
    assert all(r["ok_per_s"] > 5 and 0 < r["p50_ms"] <= r["p99_ms"] for r in rows), rows


def test_an_http_refusal_becomes_the_grpc_status_its_meaning_says():
    """The mapping in one place: what a gRPC client sees for each of the front door's answers."""
    assert oip_grpc.refusal(503, b'{"error": "busy", "detail": "retry"}').code == \
        grpc.StatusCode.UNAVAILABLE
    refused = oip_grpc.refusal(422, json.dumps({"error": "wrong_shape: x"}).encode())
    assert (refused.code, refused.message) == (grpc.StatusCode.INVALID_ARGUMENT, "wrong_shape: x")
    assert oip_grpc.refusal(502, b"<html>bad gateway</html>").code == grpc.StatusCode.UNAVAILABLE
    assert oip_grpc.refusal(418, b"").code == grpc.StatusCode.UNKNOWN


def test_the_health_check_kubernetes_grpc_probes_call_says_serving(grpc_door):
    """grpc.health.v1's Check (what a pod's `grpc:` probe calls, without a key): SERVING while
    the front door behind answers."""
    with grpc.insecure_channel(grpc_door) as channel:
        check = channel.unary_unary(
            f"/{oip_grpc.HEALTH_SERVICE}/Check",
            request_serializer=M["HealthCheckRequest"].SerializeToString,
            response_deserializer=M["HealthCheckResponse"].FromString)
        assert check(M["HealthCheckRequest"](service=""), timeout=10).status == 1  # SERVING
