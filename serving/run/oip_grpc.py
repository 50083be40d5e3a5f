"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`: KServe's v2, Triton's
clients, perf_analyzer -i grpc), in front of the HTTP front door.

Each call becomes the front door's own REST request (`/v2/models/<m>/infer` with binary tensors,
`/v2/models/<m>`, `/ready`, `/config`, `/v2/health/*`), with the caller's `authorization`
metadata as its Authorization header. So a gRPC call meets exactly what an HTTP one does: the same
key check (401/403), the same per-model admission (503), the same body limit, the same handler
and its per-request errors. Only the envelope differs, and the answer's HTTP status becomes the
gRPC status (HTTP_TO_GRPC), the JSON `error` its message.

Why not TorchServe's own OIP gRPC (ts_open_inference_protocol): its ModelInfer
(frontend grpcimpl/OpenInferenceProtocolImpl.java, pytorch/serve as archived) rebuilds a JSON body
from each input's typed `contents` only and ignores `raw_input_contents`, which is how tritonclient
and KServe's SDK send tensors; and it would bypass the front door's key and admission.

The messages are built here from a descriptor rather than generated code: their field numbers
are KServe's grpc_predict_v2.proto (kserve/kserve, python/kserve/kserve/protocol/grpc/, at
aaac4e2) and, for ModelConfig (what perf_analyzer reads first), Triton's model_config.proto and
grpc_service.proto (as tritonclient 2.40.0 ships them). On the wire a message is only its field
numbers and types; the tests call this server with both projects' own clients.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from serving.run.frontdoor import PORT as FRONTDOOR_PORT
from serving.run.frontdoor import V2_GRPC_PORT
from serving.run.paths import ROOT

MAX_MESSAGE = 10 * 1024 * 1024 + 64 * 1024  # the front door's client_max_body_size, and a header
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # as the front door's routes
SERVICE = "inference.GRPCInferenceService"

# -- the messages ------------------------------------------------------------------------------------

# (field name, number, type, repeated); a type in TYPES is a scalar, any other a message here.
# `parameters` maps are their wire form, repeated (key, value) entries.
TYPES = {"string": 9, "bool": 8, "int64": 3, "int32": 5, "uint32": 13, "uint64": 4, "float": 2,
         "double": 1, "bytes": 12}
MESSAGES: dict[str, list[tuple[str, int, str, bool]]] = {
    "ServerLiveRequest": [], "ServerLiveResponse": [("live", 1, "bool", False)],
    "ServerReadyRequest": [], "ServerReadyResponse": [("ready", 1, "bool", False)],
    "ModelReadyRequest": [("name", 1, "string", False), ("version", 2, "string", False)],
    "ModelReadyResponse": [("ready", 1, "bool", False)],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [("name", 1, "string", False), ("version", 2, "string", False),
                               ("extensions", 3, "string", True)],
    "ModelMetadataRequest": [("name", 1, "string", False), ("version", 2, "string", False)],
    "TensorMetadata": [("name", 1, "string", False), ("datatype", 2, "string", False),
                       ("shape", 3, "int64", True)],
    "ModelMetadataResponse": [("name", 1, "string", False), ("versions", 2, "string", True),
                              ("platform", 3, "string", False),
                              ("inputs", 4, "TensorMetadata", True),
                              ("outputs", 5, "TensorMetadata", True)],
    # a oneof (parameter_choice) in the proto: at most one is set (see ONEOF)
    "InferParameter": [("bool_param", 1, "bool", False), ("int64_param", 2, "int64", False),
                       ("string_param", 3, "string", False), ("double_param", 4, "double", False),
                       ("uint64_param", 5, "uint64", False)],
    "ParameterEntry": [("key", 1, "string", False), ("value", 2, "InferParameter", False)],
    "InferTensorContents": [("bool_contents", 1, "bool", True), ("int_contents", 2, "int32", True),
                            ("int64_contents", 3, "int64", True),
                            ("uint_contents", 4, "uint32", True),
                            ("uint64_contents", 5, "uint64", True),
                            ("fp32_contents", 6, "float", True),
                            ("fp64_contents", 7, "double", True),
                            ("bytes_contents", 8, "bytes", True)],
    "InferTensor": [("name", 1, "string", False), ("datatype", 2, "string", False),
                    ("shape", 3, "int64", True), ("parameters", 4, "ParameterEntry", True),
                    ("contents", 5, "InferTensorContents", False)],
    "RequestedOutput": [("name", 1, "string", False), ("parameters", 2, "ParameterEntry", True)],
    "ModelInferRequest": [("model_name", 1, "string", False), ("model_version", 2, "string", False),
                          ("id", 3, "string", False), ("parameters", 4, "ParameterEntry", True),
                          ("inputs", 5, "InferTensor", True),
                          ("outputs", 6, "RequestedOutput", True),
                          ("raw_input_contents", 7, "bytes", True)],
    "ModelInferResponse": [("model_name", 1, "string", False),
                           ("model_version", 2, "string", False), ("id", 3, "string", False),
                           ("parameters", 4, "ParameterEntry", True),
                           ("outputs", 5, "InferTensor", True),
                           ("raw_output_contents", 6, "bytes", True)],
    "ModelConfigRequest": [("name", 1, "string", False), ("version", 2, "string", False)],
    # Triton's DataType is an enum: on the wire a varint, as int32 is
    "ModelInput": [("name", 1, "string", False), ("data_type", 2, "int32", False),
                   ("dims", 4, "int64", True)],
    "ModelOutput": [("name", 1, "string", False), ("data_type", 2, "int32", False),
                    ("dims", 3, "int64", True)],
    "ModelConfig": [("name", 1, "string", False), ("platform", 2, "string", False),
                    ("max_batch_size", 4, "int32", False), ("input", 5, "ModelInput", True),
                    ("output", 6, "ModelOutput", True)],
    "ModelConfigResponse": [("config", 1, "ModelConfig", False)],
    # grpc.health.v1 (grpc/grpc, doc/health-checking.md): what Kubernetes' gRPC probes call;
    # status 1 is SERVING, 2 NOT_SERVING (an enum: on the wire a varint)
    "HealthCheckRequest": [("service", 1, "string", False)],
    "HealthCheckResponse": [("status", 1, "int32", False)],
}
ONEOF = {"InferParameter": "parameter_choice"}
# Triton's DataType values, by the name after "TYPE_" (its BYTES tensors are TYPE_STRING).
TRITON_TYPES = {"BOOL": 1, "UINT8": 2, "UINT16": 3, "UINT32": 4, "UINT64": 5, "INT8": 6,
                "INT16": 7, "INT32": 8, "INT64": 9, "FP16": 10, "FP32": 11, "FP64": 12,
                "STRING": 13, "BF16": 14}
# Where each datatype's values are in InferTensorContents when a client sends no raw bytes.
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
            "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
            "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
            "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}
NUMPY = {"BOOL": numpy.bool_, "UINT8": numpy.uint8, "UINT16": numpy.uint16,
         "UINT32": numpy.uint32, "UINT64": numpy.uint64, "INT8": numpy.int8,
         "INT16": numpy.int16, "INT32": numpy.int32, "INT64": numpy.int64,
         "FP16": numpy.float16, "FP32": numpy.float32, "FP64": numpy.float64}


def message_classes() -> dict[str, type]:
    """MESSAGES as protobuf classes (package `inference`, proto3: repeated scalars packed)."""
    file = descriptor_pb2.FileDescriptorProto(name="serving_oip_grpc.proto", package="inference",
                                              syntax="proto3")
    for name, fields in MESSAGES.items():
        message = file.message_type.add(name=name)
        if name in ONEOF:
            message.oneof_decl.add(name=ONEOF[name])
        for field_name, number, kind, repeated in fields:
            field = message.field.add(
                name=field_name, number=number,
                label=3 if repeated else 1,  # LABEL_REPEATED, LABEL_OPTIONAL
                type=TYPES.get(kind, 11))  # 11: TYPE_MESSAGE
            if kind not in TYPES:
                field.type_name = f".inference.{kind}"
            if name in ONEOF:
                field.oneof_index = 0
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))
            for name in MESSAGES}


M = message_classes()

# -- from the front door's HTTP answer to a gRPC status ----------------------------------------------

HTTP_TO_GRPC = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
                405: grpc.StatusCode.UNIMPLEMENTED, 408: grpc.StatusCode.DEADLINE_EXCEEDED,
                411: grpc.StatusCode.INVALID_ARGUMENT, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
                415: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
                429: grpc.StatusCode.UNAVAILABLE, 500: grpc.StatusCode.INTERNAL,
                502: grpc.StatusCode.UNAVAILABLE, 503: grpc.StatusCode.UNAVAILABLE,
                504: grpc.StatusCode.DEADLINE_EXCEEDED, 507: grpc.StatusCode.RESOURCE_EXHAUSTED}


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def refusal(status: int, body: bytes) -> Refused:
    """The front door's or the handler's refusal (`{"error": ...}`, v2's one message, or
    `{"error", "detail"}`) as the gRPC status a client of the protocol expects."""
    try:
        answer = json.loads(body)  # TorchServe's own refusals say `message` (e.g. its 404)
        message = (answer.get("error") or answer.get("message") or "") \
            if isinstance(answer, dict) else ""
        if isinstance(answer, dict) and answer.get("detail"):
            message = f"{message}: {answer['detail']}"
    except ValueError:
        message = body[:300].decode("utf-8", "replace")
    code = HTTP_TO_GRPC.get(status, grpc.StatusCode.UNKNOWN if status < 500
                            else grpc.StatusCode.INTERNAL)
    return Refused(code, message or f"HTTP {status}")


# -- between the two protocols ---------------------------------------------------------------------

def parameter_value(parameter) -> bool | int | float | str:
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


def parameters_of(entries) -> dict:
    return {e.key: parameter_value(e.value) for e in entries}


def tensor_bytes(tensor, raw: bytes | None) -> bytes:
    """One input's data in the binary extension's form: raw_input_contents as sent, else its
    typed contents (BYTES: each element's 4-byte little-endian length, then the element)."""
    if raw is not None:
        return raw
    if tensor.datatype not in CONTENTS:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"wrong_datatype: input {tensor.name!r}: "
                      f"{tensor.datatype} has no typed contents; send raw_input_contents")
    values = getattr(tensor.contents, CONTENTS[tensor.datatype])
    if tensor.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in values)
    return numpy.asarray(values, dtype=NUMPY[tensor.datatype]).tobytes()


def rest_infer_body(request) -> tuple[bytes, int]:
    """A ModelInferRequest as the binary extension's body: its JSON header (every input binary,
    every output asked for as binary), then the inputs' bytes; and the header's length."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"bad_binary: {len(raw)} "
                      f"raw_input_contents for {len(request.inputs)} inputs")
    inputs, chunks = [], []
    for i, tensor in enumerate(request.inputs):
        data = tensor_bytes(tensor, raw[i] if raw else None)
        chunks.append(data)
        inputs.append({"name": tensor.name, "datatype": tensor.datatype,
                       "shape": list(tensor.shape),
                       "parameters": {**parameters_of(tensor.parameters),
                                      "binary_data_size": len(data)}})
    header: dict = {"inputs": inputs, "parameters": {**parameters_of(request.parameters),
                                                      "binary_data_output": True}}
    if request.id:
        header["id"] = request.id
    if request.outputs:
        header["outputs"] = [{"name": o.name, "parameters": {**parameters_of(o.parameters),
                                                             "binary_data": True}}
                             for o in request.outputs]
    encoded = json.dumps(header).encode()
    return encoded + b"".join(chunks), len(encoded)


def infer_response(body: bytes, header_length: int | None, model_version: str):
    """The front door's infer answer as a ModelInferResponse, every output in
    raw_output_contents (what tritonclient and KServe's SDK read first)."""
    header = json.loads(body[:header_length] if header_length is not None else body)
    binary = body[header_length:] if header_length is not None else b""
    response = M["ModelInferResponse"](model_name=header.get("model_name", ""),
                                       model_version=header.get("model_version") or model_version,
                                       id=header.get("id") or "")
    offset = 0
    for output in header.get("outputs", []):
        response.outputs.add(name=output["name"], datatype=output["datatype"],
                             shape=output["shape"])
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            response.raw_output_contents.append(binary[offset:offset + size])
            offset += size
        elif output["datatype"] == "BYTES":
            response.raw_output_contents.append(b"".join(
                struct.pack("<I", len(v.encode())) + v.encode() for v in output["data"]))
        else:
            response.raw_output_contents.append(
                numpy.asarray(output["data"], dtype=NUMPY[output["datatype"]]).tobytes())
    return response


# -- the service -------------------------------------------------------------------------------------

class Service:
    """Every RPC of the protocol as the front door's REST request at `upstream` (host:port)."""

    def __init__(self, upstream: str, timeout: float = 65.0) -> None:
        self.host, _, port = upstream.rpartition(":")
        self.port, self.timeout = int(port), timeout
        self.local = threading.local()

    def http(self, method: str, path: str, context, body: bytes = b"",
             headers: dict | None = None) -> tuple[int, dict, bytes]:
        """One request to the front door on this thread's kept-alive connection; the caller's
        key goes with it."""
        sent = dict(headers or {})
        key = dict(context.invocation_metadata()).get("authorization")
        if key:
            sent["Authorization"] = key
        remaining = context.time_remaining()
        timeout = self.timeout if remaining is None else max(0.1, min(self.timeout, remaining))
        # A kept-alive connection the front door closed: once more, on a new one (an inference
        # sent twice is answered twice; the models keep no state).
        for attempt in range(2):
            connection = getattr(self.local, "connection", None)
            if connection is None:
                connection = self.local.connection = http.client.HTTPConnection(
                    self.host, self.port, timeout=timeout)
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            try:
                connection.request(method, path, body=body or None, headers=sent)
                answer = connection.getresponse()
                data = answer.read()
                return answer.status, {k.lower(): v for k, v in answer.getheaders()}, data
            except (http.client.HTTPException, ConnectionError, OSError) as e:
                connection.close()
                self.local.connection = None
                if attempt or isinstance(e, TimeoutError):
                    raise Refused(grpc.StatusCode.UNAVAILABLE,
                                  f"the front door did not answer: {e}") from None
        raise AssertionError("unreachable")

    def get_json(self, path: str, context) -> dict:
        status, _, body = self.http("GET", path, context)
        if status != 200:
            raise refusal(status, body)
        return json.loads(body)

    @staticmethod
    def model_path(name: str, version: str = "") -> str:
        if not MODEL_NAME.fullmatch(name or ""):
            raise Refused(grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}")
        if version and not version.isdigit():
            raise Refused(grpc.StatusCode.NOT_FOUND, f"unknown version {version!r} of {name}")
        return f"/v2/models/{name}" + (f"/versions/{version}" if version else "")

    # The RPCs.
    def ServerLive(self, request, context):
        status, _, _ = self.http("GET", "/v2/health/live", context)
        return M["ServerLiveResponse"](live=status == 200)

    def Check(self, request, context):
        """grpc.health.v1's Check: SERVING while the front door behind answers its liveness."""
        status, _, _ = self.http("GET", "/v2/health/live", context)
        return M["HealthCheckResponse"](status=1 if status == 200 else 2)

    def ServerReady(self, request, context):
        status, _, body = self.http("GET", "/v2/health/ready", context)
        if status in (401, 403):
            raise refusal(status, body)
        return M["ServerReadyResponse"](ready=status == 200)

    def ServerMetadata(self, request, context):
        answer = self.get_json("/v2", context)
        return M["ServerMetadataResponse"](name=answer.get("name", ""),
                                           version=answer.get("version", ""),
                                           extensions=answer.get("extensions", []))

    def ModelReady(self, request, context):
        status, _, body = self.http("GET", self.model_path(request.name, request.version) +
                                    "/ready", context)
        if status == 503:  # no READY worker (TorchServe's own answer)
            return M["ModelReadyResponse"](ready=False)
        if status != 200:
            raise refusal(status, body)
        return M["ModelReadyResponse"](ready=bool(json.loads(body).get("ready")))

    def ModelMetadata(self, request, context):
        answer = self.get_json(self.model_path(request.name, request.version), context)

        def tensors(specs: list[dict]) -> list:  # REST's `parameters` have no field here
            return [M["TensorMetadata"](name=t["name"], datatype=t["datatype"], shape=t["shape"])
                    for t in specs]

        return M["ModelMetadataResponse"](
            name=answer["name"], versions=answer.get("versions", []),
            platform=answer.get("platform", ""), inputs=tensors(answer.get("inputs", [])),
            outputs=tensors(answer.get("outputs", [])))

    def ModelConfig(self, request, context):
        answer = self.get_json(self.model_path(request.name, request.version) + "/config",
                               context)

        def tensors(specs: list[dict], kind: str) -> list:
            return [M[kind](name=s["name"], dims=s["dims"], data_type=TRITON_TYPES.get(
                s["data_type"].removeprefix("TYPE_"), 0)) for s in specs]  # 0: TYPE_INVALID

        return M["ModelConfigResponse"](config=M["ModelConfig"](
            name=answer["name"], platform=answer.get("platform", ""),
            max_batch_size=int(answer.get("max_batch_size") or 0),
            input=tensors(answer.get("input", []), "ModelInput"),
            output=tensors(answer.get("output", []), "ModelOutput")))

    def ModelInfer(self, request, context):
        path = self.model_path(request.model_name, request.model_version) + "/infer"
        body, header_length = rest_infer_body(request)
        status, headers, answer = self.http("POST", path, context, body, {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(header_length)})
        if status != 200:
            raise refusal(status, answer)
        length = headers.get("inference-header-content-length")
        return infer_response(answer, int(length) if length is not None else None,
                              request.model_version)


RPCS = {"ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
        "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
        "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
        "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
        "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
        "ModelConfig": ("ModelConfigRequest", "ModelConfigResponse"),
        "ModelInfer": ("ModelInferRequest", "ModelInferResponse")}


HEALTH_SERVICE = "grpc.health.v1.Health"
HEALTH_RPCS = {"Check": ("HealthCheckRequest", "HealthCheckResponse")}


def answering(method):
    """An RPC whose refusals (Refused, or a request too broken to read) end the call with their
    status and message, and nothing else: a bug is INTERNAL, with its traceback on stderr."""
    def rpc(request, context):
        try:
            return method(request, context)
        except Refused as e:
            context.abort(e.code, e.message)
        except (ValueError, KeyError, TypeError, struct.error) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid_input: {e}")
    return rpc


def server(upstream: str, port: int, bind: str = "127.0.0.1", threads: int = 64) -> grpc.Server:
    """The gRPC server on bind:port (not started). `threads` bounds the calls in flight to the
    front door; up to 4x as many more wait, past that a call is refused RESOURCE_EXHAUSTED at
    once (the front door's own admission answers first, per model)."""
    service = Service(upstream)

    def handlers(rpcs: dict) -> dict:
        return {name: grpc.unary_unary_rpc_method_handler(
            answering(getattr(service, name)), request_deserializer=M[request].FromString,
            response_serializer=M[response].SerializeToString)
            for name, (request, response) in rpcs.items()}

    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="oip-grpc"),
        handlers=[grpc.method_handlers_generic_handler(SERVICE, handlers(RPCS)),
                  grpc.method_handlers_generic_handler(HEALTH_SERVICE, handlers(HEALTH_RPCS))],
        maximum_concurrent_rpcs=threads * 5,
        options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                 ("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.so_reuseport", 0)])
    if grpc_server.add_insecure_port(f"{bind}:{port}") == 0:
        raise OSError(f"cannot listen on {bind}:{port} (in use?)")
    return grpc_server


def probe(address: str, timeout: float = 5) -> bool:
    """Whether a gRPC door at host:port answers ServerLive (the front door's liveness behind it):
    `make up`'s wait, and compose's health check (--probe)."""
    with grpc.insecure_channel(address) as channel:
        live = channel.unary_unary(f"/{SERVICE}/ServerLive",
                                   request_serializer=M["ServerLiveRequest"].SerializeToString,
                                   response_deserializer=M["ServerLiveResponse"].FromString)
        try:
            return live(M["ServerLiveRequest"](), timeout=timeout).live
        except grpc.RpcError:
            return False


def start_process(upstream: str, port: int, log: Path, timeout: float = 30) -> subprocess.Popen:
    """`python -m serving grpc` in front of `upstream` on 127.0.0.1:`port`, its own process as
    `make up` runs it (the tests and the protocols' benchmark), once it answers; output to `log`."""
    with open(log, "ab") as output:
        process = subprocess.Popen([sys.executable, "-m", "serving", "grpc", "--upstream",
                                    upstream, "--port", str(port)], cwd=ROOT, stdout=output,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not probe(f"127.0.0.1:{port}", timeout=1):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the gRPC door did not start; see {log}")
        time.sleep(0.2)
    return process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving grpc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", default=os.environ.get("GRPC_UPSTREAM",
                                                             f"127.0.0.1:{FRONTDOOR_PORT}"),
                        help="the HTTP front door, host:port")
    parser.add_argument("--port", type=int,
                        default=int(os.environ.get("SERVING_V2_GRPC_PORT") or V2_GRPC_PORT))
    parser.add_argument("--bind", default=os.environ.get("GRPC_BIND", "127.0.0.1"),
                        help="where it listens (default loopback; 0.0.0.0 inside a container)")
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--drain-grace", type=float, default=5.0, help="seconds the calls in "
                        "flight get to finish after SIGTERM (new ones are refused at once)")
    parser.add_argument("--probe", action="store_true", help="exit 0 when the door on --port "
                        "answers ServerLive, else 1 (a container's health check)")
    args = parser.parse_args(argv)
    if args.probe:
        return 0 if probe(f"127.0.0.1:{args.port}") else 1
    grpc_server = server(args.upstream, args.port, args.bind, args.threads)
    grpc_server.start()
    print(f"OIP gRPC on {args.bind}:{args.port}, in front of http://{args.upstream}", flush=True)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait()
    grpc_server.stop(grace=args.drain_grace).wait()  # what it accepted is answered first
    return 0


if __name__ == "__main__":
    sys.exit(main())
