"""What every model's handler shares: request reading, limits, errors, batching, device, warm-up.

A kind's handler subclasses `ModelHandler` and writes only its hooks (KIND_HOOKS; docs/kinds.md
lists them all). The main ones:

    decode(payload) -> list of items   one request's body -> model-ready items (usually one)
    collate(items)  -> input tensors   items -> one batch for the model (default: stack)
    encode(outputs) -> JSON-able dict  the model's output rows for one request -> its answer
    warmup_items()  -> list of items   one representative item per input shape the model will see
    prediction(row) -> JSON-able       one item's answer, as KServe's v1 protocol lists it

The rest of the project calls only SURFACE: TorchServe calls `initialize(context)` once per worker
and `handle(data, context)` per batch of requests; each request gets its own answer, and a bad one
is answered with a 4xx JSON error (`{"error": ..., "detail": ...}`) without failing the others or
the worker. The machinery between them is private. Nothing here runs at import time, and nothing
imports TorchServe, so handlers are testable without a server."""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from handlers import CPU_ENV, WORKERS_ENV, artifacts
from handlers.cores import PLACEMENT_ENV, CoreShare, available_cores, place_worker
from handlers.deadline import DeadlineExceeded, deadline
from handlers.errors import RequestError, bad_request, request_header, unprocessable  # noqa: F401 (re-exported)
from handlers.metrics import HandlerMetrics

log = logging.getLogger(__name__)

JSON = "application/json"
BUILD_INFO = "build-info.json"  # written by the build into every archive: what the artifact is
MODEL_YAML = "model.yaml"  # the model folder's description, copied into every archive

# The body of every refused request, whatever the kind (JSON Schema, for metadata and OpenAPI);
# the Open Inference Protocol's is one message.
ERROR_SCHEMA = {"type": "object", "required": ["error", "detail"],
                "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}}
OIP_ERROR_SCHEMA = {"type": "object", "required": ["error"],
                    "properties": {"error": {"type": "string"}}}

# Field names a request body may arrive under: raw POST bodies are "body"; multipart uploads use the
# form field's name, for which "data" and "file" are the usual ones.
PAYLOAD_FIELDS = ("data", "body", "file")

# KServe's v1 protocol: `POST /v1/models/<m>:predict` with `{"instances": [...]}`, answered
# `{"predictions": [...]}`, one per instance. The front door (docker/nginx/nginx.conf) routes it
# to TorchServe's /predictions/<m> with this header; the same handler reads and answers it.
# The Open Inference Protocol ("v2"; handlers/oip.py) is routed the same way: `/v2/models/<m>/infer`
# as OIP_INFER, and the model's metadata, readiness and Triton-style configuration (GETs the front
# door sends on as POSTs) as OIP_METADATA, OIP_READY and OIP_CONFIG, answered by a worker of the
# model without running it (perf_analyzer reads the configuration before it sends anything).
PROTOCOL_HEADER = "x-inference-protocol"
NATIVE, KSERVE_V1 = "native", "kserve-v1"
OIP_INFER, OIP_METADATA, OIP_READY, OIP_CONFIG = "v2", "v2-metadata", "v2-ready", "v2-config"
PROTOCOLS = (NATIVE, KSERVE_V1, OIP_INFER, OIP_METADATA, OIP_READY, OIP_CONFIG)
OIP_ASKS = (OIP_METADATA, OIP_READY, OIP_CONFIG)
BINARY_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class EncodedAnswer:
    """An answer already in its bytes: the OIP's JSON, or (json_length set) its binary
    extension's JSON header then tensors."""

    body: bytes
    json_length: int | None = None


@dataclass(frozen=True)
class ModelFile:
    """What `serving new` learnt of a user's model file: what a kind's `scaffold` hook reads."""

    inputs: list[dict]  # each input's name, shape (with "batch" first) and dtype
    output_shape: list[int]  # one row's output, from a trial call; [] where none was made
    num_outputs: int | None  # classes or labels, where known
    text: dict  # a Hugging Face directory's tokenizer settings; {} for a tensor program

    # A kind's refusal (ValueError) is shown after "--kind <kind>: ".

    def refuse_text(self) -> None:
        """For the kinds that read tensors, images or arrays, not tokenized text."""
        if self.text:
            raise ValueError("a Hugging Face directory serves as text_classifier or text_embedder")

    def one_input_classifier(self) -> dict:
        """The one input of a model that answers (batch, classes), as the classifier kinds need."""
        self.refuse_text()
        if len(self.inputs) != 1 or not self.num_outputs:
            raise ValueError(f"needs one input and a (batch, classes) output; this model has "
                             f"{len(self.inputs)} inputs and output {self.output_shape}")
        return self.inputs[0]


@dataclass(frozen=True)
class Scaffold:
    """What a kind writes into a new model folder (`serving new`), beside the model file."""

    settings: dict[str, Any]  # model-config.yaml `handler:`
    examples: list[tuple[str, bytes]]  # (file suffix, body) of each example request
    to_check: list[str]  # what is a guess, for the user to check


DEFAULT_SETTINGS: dict[str, Any] = {
    "max_request_bytes": 8 * 1024 * 1024,
    "max_json_depth": 32,  # nesting of arrays/objects in a JSON body
    "max_json_number_chars": 40,  # digits of one JSON number: int() of 4,300+ digits raises
    "max_image_pixels": 12_000_000,  # decompression bombs: checked before pixels are decoded
    "max_text_chars": 10_000,
    "max_items_per_request": 64,
    # Reading one request (parsing, decoding) stops here with a 422 (handlers/deadline.py).
    # Default: responseTimeout / (2 x batchSize), so a full batch of requests at this limit ends
    # at half the responseTimeout, and TorchServe never kills a worker because of its input.
    "max_decode_ms": None,
    "batch_buckets": None,  # batch sizes the model runs at; default: every size up to batchSize
    # Most threads a worker runs; it takes fewer while other workers of the server are busy
    # (handlers/cores.py). Default: every core.
    "torch_threads": None,
}


@dataclass(frozen=True)
class Payload:
    """One request's body, however it arrived (raw body, JSON, multipart form field)."""

    data: bytes | str | dict | list
    content_type: str = ""
    max_json_depth: int = DEFAULT_SETTINGS["max_json_depth"]
    max_json_number_chars: int = DEFAULT_SETTINGS["max_json_number_chars"]

    @classmethod
    def from_row(cls, row: dict, headers: dict | None = None, **limits) -> "Payload":
        """Picks the body out of a TorchServe request row (`{"body": ...}`, `{"data": ...}`, ...)."""
        fields = {k: v for k, v in row.items() if v is not None}
        name = next((f for f in PAYLOAD_FIELDS if f in fields), None)
        if name is None and len(fields) == 1:
            name = next(iter(fields))
        if name is None:
            raise bad_request("empty_body", "the request has no body; send the input as the "
                              "request body or as a multipart field named 'data'")
        content_type = ""
        field_headers = (headers or {}).get(name)
        if isinstance(field_headers, dict):
            content_type = field_headers.get("content-type") or ""
        data = fields[name]
        if isinstance(data, bytearray):
            data = bytes(data)
        return cls(data, content_type.split(";")[0].strip().lower(), **limits)

    def size(self) -> int:
        if isinstance(self.data, bytes):
            return len(self.data)
        if isinstance(self.data, str):
            return len(self.data.encode())
        return len(json.dumps(self.data))

    def is_empty(self) -> bool:
        return self.data in (b"", "", None)

    def bytes(self) -> bytes:
        if isinstance(self.data, bytes):
            return self.data
        if isinstance(self.data, str):
            return self.data.encode()
        raise bad_request("wrong_content", "expected a binary body, got JSON")

    def json(self) -> Any:
        """The body as JSON, within the depth and number-length limits, decided while parsing:
        a 4,300-digit integer or a 100,000-deep array never reaches the handler's own code."""
        if isinstance(self.data, (dict, list)):
            value = self.data  # TorchServe already parsed it
        else:
            def number(text: str, convert=float):
                if len(text) > self.max_json_number_chars:
                    raise bad_request("number_too_long", f"a JSON number has {len(text):,} "
                                      f"characters; the limit is {self.max_json_number_chars}")
                return convert(text)

            # The checks cost more than the parse itself (two Python calls per number: 35 of the
            # 47 us digits' 8x8 grid took), so a scan of the raw text decides first whether they
            # can fire: no run of number characters longer than the limit, no number that long.
            checked = may_hold_long_number(self.data, self.max_json_number_chars)
            try:
                value = (json.loads(self.data, parse_int=lambda t: number(t, int),
                                    parse_float=number) if checked else json.loads(self.data))
            except RecursionError:
                raise bad_request("too_deep", "the JSON body is nested too deeply") from None
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise bad_request("malformed_json", f"the body is not valid JSON: {e}") from None
            if openings(self.data) <= self.max_json_depth:
                return value  # fewer brackets than the depth limit: nothing can nest deeper
        if json_depth(value, self.max_json_depth) > self.max_json_depth:
            raise bad_request("too_deep", f"the JSON body nests deeper than "
                              f"{self.max_json_depth} levels")
        return value

    def text(self) -> str:
        if isinstance(self.data, str):
            return self.data
        if isinstance(self.data, bytes):
            try:
                return self.data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise bad_request("not_utf8", f"the body is not UTF-8 text: {e}") from None
        raise bad_request("wrong_content", "expected text, got JSON")


@functools.lru_cache(maxsize=16)
def number_run(limit: int, text: bool) -> re.Pattern:
    """A run of the characters JSON numbers are made of, longer than `limit`."""
    pattern = r"[-+.0-9eE]{%d,}" % (limit + 1)
    return re.compile(pattern if text else pattern.encode())


def may_hold_long_number(data: bytes | str, limit: int) -> bool:
    """False when no number in this JSON text can be longer than `limit` characters."""
    return number_run(limit, isinstance(data, str)).search(data) is not None


def openings(data: bytes | str) -> int:
    """Opening brackets in a JSON text: a bound on its nesting (those inside strings count too)."""
    return (data.count("[") + data.count("{") if isinstance(data, str)
            else data.count(b"[") + data.count(b"{"))


def json_depth(value: Any, limit: int) -> int:
    """How deep arrays and objects nest in a parsed JSON value; stops counting past `limit`.
    Iterative: a recursive walk would itself hit Python's recursion limit."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (list, dict)):
            deepest = max(deepest, depth)
            if deepest > limit:
                break
            stack.extend((child, depth + 1) for child in
                         (node.values() if isinstance(node, dict) else node))
    return deepest


def failure_answer(error: BaseException, stage: str) -> RequestError:
    """What one request is answered when reading or answering it raised `error`.

    A RequestError says so itself. Exceptions that parsing and converting untrusted input raise
    (bad values, bad Unicode, nesting too deep) are the input's fault: 400. Memory exhausted by
    one request: 413. Anything else is a bug in the handler: 500, with the traceback logged.
    """
    if isinstance(error, RequestError):
        return error
    if isinstance(error, DeadlineExceeded):
        return unprocessable("too_slow_to_decode", f"reading this request took {error} (the "
                             "limit for one request); send a smaller or simpler input")
    if isinstance(error, MemoryError):
        return RequestError(413, "too_large", "the request needs more memory than the worker has")
    if isinstance(error, RecursionError):
        return bad_request("too_deep", "the input is nested too deeply")
    if stage == "read" and isinstance(error, INPUT_ERRORS):
        return bad_request("invalid_input", f"{type(error).__name__}: {str(error)[:300]}")
    log.error("handler error while %s a request", "reading" if stage == "read" else "answering",
              exc_info=error)
    return RequestError(500, "handler_error", "the handler failed on this request; the worker log "
                        "has the traceback")


# Raised by parsing and converting what a client sent; anything else from decode() is a bug.
INPUT_ERRORS = (ValueError, OverflowError, UnicodeError, EOFError)


def is_fatal(error: BaseException) -> bool:
    """Exceptions that must stop the worker rather than be answered. Everything else derived from
    BaseException is answered, e.g. a Rust extension's panic (pyo3's PanicException)."""
    return isinstance(error, (KeyboardInterrupt, SystemExit, GeneratorExit))


# The hooks a kind writes (docs/kinds.md); a kind overrides nothing else, and its own helpers are
# private (tests/test_model_folders.py checks both).
KIND_HOOKS = frozenset({
    "load_resources", "decode", "collate", "encode", "warmup_items", "run_order", "prediction",
    "predictions", "instance_payload", "decode_instances", "native_instances", "oip_inputs",
    "oip_outputs", "request_schema", "answer_schema", "instance_schema", "prediction_schema",
    "worst_requests", "scaffold", "enforce_limit"})
# What the rest of the project calls on a handler: TorchServe (initialize, handle); the in-process
# server, benchmarks and tests (configure, read, infer, infer_requests); the build's OpenAPI
# document (describe and the protocols' schemas). Everything else is private to this module, and
# nothing outside handlers/ reaches it (tests/test_layers.py checks).
SURFACE = frozenset({"configure", "initialize", "handle", "describe", "read", "infer",
                     "infer_requests", "kserve_v1_schemas", "oip_schemas"})


class ModelHandler:
    """Base of every handler: the kind's hooks, the surface the project calls, and the private
    machinery (reading, limits, errors, batching, devices, warm-up, metrics) between them."""

    settings_defaults: dict[str, Any] = {}  # a subclass's own settings and their defaults
    request_content_types: tuple[str, ...] = (JSON,)

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {}
        self.model_yaml: dict = {}  # model.yaml
        self.configure({})
        self.model = None  # the loaded artifact: a callable from tensors to a tensor
        self.build_info: dict = {}
        self.device = torch.device("cpu")
        self.batch_buckets: list[int] = [1]
        self._metrics = HandlerMetrics(None, "")
        self._core_share = CoreShare(None, 1)
        self._pools: list[int] = []  # the thread counts warmed up: torch's own until loaded
        self.output_row_shape: list[int] | None = None  # one item's output: known after warm-up

    # -- the kind's hooks (KIND_HOOKS): what a kind writes -------------------------------------

    def load_resources(self, model_dir: Path) -> None:
        """Loads what decode/encode need besides the model (labels, tokenizer)."""

    def decode(self, payload: Payload) -> list[Any]:
        """One request's body -> its model-ready items (usually one); refuses bad input with
        `bad_request`/`unprocessable`."""
        raise NotImplementedError

    def collate(self, items: Sequence[Any]) -> tuple[torch.Tensor, ...]:
        """Items -> one batch of the model's input tensors."""
        return (torch.stack(list(items)),)

    def encode(self, outputs: torch.Tensor) -> Any:
        """One request's output rows -> its JSON answer."""
        raise NotImplementedError

    def warmup_items(self) -> list[Any]:
        """One representative item per input shape the model will see."""
        raise NotImplementedError

    def run_order(self, items: Sequence[Any]) -> list[int]:
        """The order items run in; a subclass groups similar items so less padding is run."""
        return list(range(len(items)))

    def prediction(self, row: torch.Tensor) -> Any:
        """One item's answer: an entry of v1's `predictions`."""
        raise NotImplementedError

    def predictions(self, outputs: torch.Tensor) -> list[Any]:
        return [self.prediction(row) for row in outputs]

    def instance_payload(self, instance: Any) -> Payload:
        """One v1 instance as the body decode() reads; by default a JSON value, as the body would
        be (the image kind takes `{"b64": ...}`). A scalar goes back to its JSON text: a string
        instance must stay a string, never be parsed as the JSON it may hold."""
        if not isinstance(instance, (dict, list)):
            instance = json.dumps(instance).encode()
        return Payload(instance, JSON, int(self.settings["max_json_depth"]),
                       int(self.settings["max_json_number_chars"]))

    def decode_instances(self, instances: list[Any]) -> list[Any]:
        """A v1 request's instances -> items, one per instance; a refusal names the instance."""
        items: list[Any] = []
        for i, instance in enumerate(instances):
            try:
                decoded = self.decode(self.instance_payload(instance))
            except RequestError as e:
                raise RequestError(e.status, e.error, f"instances[{i}]: {e.detail}") from None
            if len(decoded) != 1:
                raise unprocessable("wrong_shape", f"instances[{i}] holds {len(decoded)} inputs; "
                                    "an instance is one input")
            items.extend(decoded)
        return items

    def native_instances(self, payload: Payload) -> list[Any]:
        """A native request's inputs as KServe v1 instances: what a v1 client sends for the same
        request (the protocols' benchmark and load tests send each example in every protocol)."""
        return [payload.json()]

    def oip_inputs(self) -> list[dict]:
        """The model's inputs in the Open Inference Protocol: [{"name", "datatype", "shape"}],
        the batch dimension first (-1). A BYTES input is [-1, 1], one element per row (Triton's
        tools need a dimension past the batch; a request may send [N] too); one holding text says
        `"parameters": {"content_type": "str"}`, as KServe's SDK marks strings."""
        raise NotImplementedError

    def oip_outputs(self, outputs: torch.Tensor | None) -> list[dict]:
        """The model's outputs: their metadata (outputs=None: shape with -1 first), or with the
        output rows of a request, each with its `data` (numpy array; BYTES: a list of bytes)."""
        raise NotImplementedError

    def request_schema(self) -> dict:
        """JSON Schema of a request body (per content type: {content type: schema})."""
        raise NotImplementedError

    def answer_schema(self) -> dict:
        """JSON Schema of a 200 answer."""
        raise NotImplementedError

    def instance_schema(self) -> dict:
        """JSON Schema of one v1 instance: by default the JSON body's."""
        return self.request_schema()[JSON]

    def prediction_schema(self) -> dict:
        """JSON Schema of one entry of v1's `predictions`."""
        raise NotImplementedError

    @classmethod
    def worst_requests(cls, settings: dict[str, Any]) -> dict[str, tuple[bytes, str]]:
        """The costliest requests the limits in `settings` still admit, by name, as (body,
        content type): what `make worst-case` times next to a normal full batch. {} where every
        admitted request costs the same (fixed shapes)."""
        return {}

    @classmethod
    def scaffold(cls, model: ModelFile, count: int) -> Scaffold:
        """A new folder of this kind for `model`: its `handler:` settings, `count` example
        requests and what to check. Raises ValueError, saying why, where this kind cannot
        serve the model."""
        raise NotImplementedError

    def enforce_limit(self, name: str, value: int, what: str) -> None:
        """A hook's helper: refuses with a 413 when `value` passes the setting `name`."""
        limit = self.settings[name]
        if limit is not None and value > limit:
            raise RequestError(413, "too_large", f"{what} is {value:,}; the limit is {limit:,}")

    # -- the surface (SURFACE): what TorchServe and serving/ call -------------------------------

    def configure(self, settings: dict[str, Any]) -> None:
        """Settings come from model-config.yaml's `handler:` section, over the defaults."""
        merged = {**DEFAULT_SETTINGS, **self.settings_defaults}
        unknown = set(settings) - set(merged)
        if unknown:
            raise ValueError(f"unknown handler settings in model-config.yaml: {sorted(unknown)}")
        merged.update(settings)
        self.settings = merged

    def initialize(self, context) -> None:
        started = time.perf_counter()
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        yaml_config = context.model_yaml_config or {}
        self.configure(yaml_config.get("handler") or {})
        if (model_dir / MODEL_YAML).exists():
            import yaml

            self.model_yaml = yaml.safe_load((model_dir / MODEL_YAML).read_text()) or {}

        batch_size = int(properties.get("batch_size") or 1)
        if self.settings["max_decode_ms"] is None:
            timeout_s = float(yaml_config.get("responseTimeout") or 120)  # TorchServe's default
            self.settings["max_decode_ms"] = int(timeout_s * 1000 / (2 * batch_size))
        buckets = self.settings["batch_buckets"] or range(1, batch_size + 1)
        self.batch_buckets = sorted({int(b) for b in buckets if 0 < int(b) <= batch_size}
                                    | {batch_size})

        placed_on = place_worker(context.model_name)  # before threads: they count its CPUs
        max_threads = int(self.settings["torch_threads"] or available_cores())
        self._core_share = CoreShare.from_env(max_threads)
        workers = int(os.environ.get(WORKERS_ENV) or yaml_config.get("minWorkers") or 1)
        if not self._core_share.shared:  # no launcher to share cores through: a fixed split
            torch.set_num_threads(max(1, min(max_threads, available_cores() // workers)))

        gpu_id = properties.get("gpu_id")
        if gpu_id is not None and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{gpu_id}")

        self.build_info = json.loads((model_dir / BUILD_INFO).read_text())
        serialized = context.manifest["model"]["serializedFile"]
        self.model = artifacts.load(model_dir, serialized, self.build_info, self.device)
        self.device = artifacts.artifact_device(self.build_info, self.device)
        # A runtime whose pool is sized at load (ORT) gets one per thread count the core share
        # may give this worker, each warmed up below.
        self._pools = [torch.get_num_threads()]
        if hasattr(self.model, "add_pools"):
            self._pools = self._core_share.thread_counts(workers)
            self.model.add_pools(self._pools)
        self.load_resources(model_dir)
        self._warm_up()
        self._metrics = HandlerMetrics(getattr(context, "metrics", None), context.model_name)
        log.info("%s ready: %s/%s on %s with %s threads%s, batch buckets %s, in %.1fs; CPU: %s, "
                 "torch's kernels %s, %s", context.model_name, self.build_info["target"],
                 self.build_info["precision"], self.device,
                 f"up to {self._core_share.max_threads} (cores shared by the busy workers)"
                 if self._core_share.shared else torch.get_num_threads(),
                 f" on CPUs {sorted(placed_on)} ({PLACEMENT_ENV})" if placed_on else "",
                 self.batch_buckets, time.perf_counter() - started, platform.machine(),
                 torch.backends.cpu.get_cpu_capability(),
                 " ".join(f"{k}={os.environ[k]}" for k in CPU_ENV if k in os.environ) or "no CPU settings")

    def handle(self, data: list[dict], context) -> list[Any]:
        """One answer per request, whatever happens: TorchServe fails the whole batch (503) when
        anything leaves this method, so nothing does."""
        if is_describe(context):
            try:
                return [json.dumps(self.describe(getattr(context, "model_name", "")))]
            except Exception:  # noqa: BLE001 - a describe bug must not take the worker's batch
                log.exception("describing the model failed")
                return [json.dumps({"error": "describe_failed",
                                    "detail": "the worker log has the traceback"})]
        started = time.perf_counter()
        responses: list[Any] = [None] * len(data)
        statuses: list[int] = [200] * len(data)
        stages: dict[str, float] = {}

        model_name = getattr(context, "model_name", "")
        protocols = [request_protocol(self._request_headers(context, idx)) for idx in range(len(data))]

        def refuse(idx: int, error: RequestError) -> None:
            statuses[idx] = error.status
            responses[idx] = self._reply(context, idx, error.status, error.body(protocols[idx]))

        envelopes: dict[int, Any] = {}
        try:
            accepted: list[tuple[int, list[Any]]] = []
            for idx, row in enumerate(data):
                try:
                    if protocols[idx] in OIP_ASKS:  # no input, no model run
                        responses[idx] = self._reply(context, idx, 200,
                                                    self._oip_ask(protocols[idx], model_name))
                        continue
                    with deadline((self.settings["max_decode_ms"] or 0) / 1000):
                        items, envelopes[idx] = self._read_request(
                            row, self._request_headers(context, idx), protocols[idx])
                    accepted.append((idx, items))
                except BaseException as e:  # noqa: BLE001 - answered per request, see failure_answer
                    if is_fatal(e):
                        raise
                    refuse(idx, failure_answer(e, "read"))
            stages["preprocess"] = time.perf_counter() - started

            step = time.perf_counter()
            outputs = self.infer_requests(accepted)
            stages["inference"] = time.perf_counter() - step

            step = time.perf_counter()
            for idx, request_items in accepted:
                output = outputs[idx]
                if isinstance(output, RequestError):
                    refuse(idx, output)
                    continue
                try:
                    responses[idx] = self._reply(context, idx, 200, self._protocol_answer(
                        output, protocols[idx], envelopes.get(idx), model_name))
                except BaseException as e:  # noqa: BLE001
                    if is_fatal(e):
                        raise
                    refuse(idx, failure_answer(e, "encode"))
            stages["postprocess"] = time.perf_counter() - step
        except BaseException as e:  # noqa: BLE001 - a bug here must still answer each request
            if is_fatal(e):
                raise
            log.exception("handler error outside any one request")
            for idx in range(len(data)):
                if responses[idx] is None:
                    refuse(idx, RequestError(500, "handler_error", "the handler failed on this "
                                             "batch; the worker log has the traceback"))

        for idx in range(len(data)):
            context.set_response_header(idx, "x-batch-size", str(len(data)))
        try:
            self._metrics.record(stages, len(data), statuses, protocols)
        except Exception:  # noqa: BLE001 - metrics must never cost an answer
            log.exception("recording handler metrics failed")
        return responses

    def describe(self, model_name: str = "") -> dict:
        """What a client needs to call this model: its kind, request and answer formats, and what
        was built (TorchServe's describe API with ?customized=true answers this)."""
        info = self.build_info
        return {
            "model": model_name or info.get("name", ""),
            "kind": self.model_yaml.get("kind", ""),
            "description": self.model_yaml.get("description") or
                           (type(self).__doc__ or "").strip().split("\n")[0],
            "request": self.request_schema(),
            "answer": self.answer_schema(),
            "error": ERROR_SCHEMA,
            "kserve_v1": self.kserve_v1_schemas(),
            "limits": {k: v for k, v in self.settings.items() if k.startswith("max_")},
            "batch_buckets": self.batch_buckets,
            "build": {k: info.get(k) for k in ("target", "precision", "device", "arch", "torch",
                                              "chosen_because", "parity", "evaluation",
                                              "built_at") if k in info},
        }

    def read(self, row: dict, headers: dict | None, protocol: str = NATIVE) -> list[Any]:
        """One request (a TorchServe row and its headers) -> its items, as `handle` reads it:
        every limit applied, a refusal raised as its RequestError."""
        return self._read_request(row, headers, protocol)[0]

    def infer(self, items: Sequence[Any]) -> torch.Tensor:
        """Runs the model over any number of items, in batches of the warmed-up sizes; the rows
        come back in the items' order."""
        order = self.run_order(items)
        outputs = []
        largest = self.batch_buckets[-1]
        with self._core_share.running():
            for start in range(0, len(order), largest):
                chunk = [items[i] for i in order[start:start + largest]]
                n = len(chunk)
                chunk += [chunk[-1]] * (self._bucket(n) - n)  # padding rows are dropped below
                inputs = tuple(t.to(self.device, non_blocking=True) for t in self.collate(chunk))
                with torch.inference_mode():
                    out = self.model(*inputs)
                outputs.append(out[:n].float().cpu())
        rows = torch.cat(outputs)
        return rows[torch.argsort(torch.tensor(order))] if order != sorted(order) else rows

    def infer_requests(self, accepted: list[tuple[int, list[Any]]]) -> dict[int, Any]:
        """Runs the model over every accepted request's items at once; if that fails, runs each
        request alone, so one request that breaks the model fails alone. Returns each request's
        output rows, or the RequestError it is answered with."""
        if not accepted:
            return {}
        items = [item for _, request_items in accepted for item in request_items]
        try:
            outputs = self.infer(items)
        except BaseException as e:  # noqa: BLE001
            if is_fatal(e):
                raise
            log.exception("inference failed on a batch of %d requests%s", len(accepted),
                          "; retrying each alone" if len(accepted) > 1 else "")
            if len(accepted) == 1:
                return {accepted[0][0]: inference_failure(e)}
            return {idx: self._infer_alone(request_items) for idx, request_items in accepted}
        answers, offset = {}, 0
        for idx, request_items in accepted:
            answers[idx] = outputs[offset:offset + len(request_items)]
            offset += len(request_items)
        return answers

    def kserve_v1_schemas(self) -> dict:
        """v1's request and answer for this model, as JSON Schema."""
        limit = self.settings["max_items_per_request"]
        return {"request": {"type": "object", "required": ["instances"], "properties": {
                    "instances": {"type": "array", "items": self.instance_schema(), "minItems": 1,
                                  **({"maxItems": limit} if limit is not None else {})}}},
                "answer": {"type": "object", "required": ["predictions"], "properties": {
                    "predictions": {"type": "array", "items": self.prediction_schema()}}}}

    def oip_schemas(self) -> dict:
        """The Open Inference Protocol's JSON request and answer for this model, as JSON Schema
        (the binary extension's bodies are not JSON)."""
        inputs = self.oip_inputs()
        tensor = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
            "name": {"type": "string"}, "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "data": {"type": "array"}, "parameters": {"type": "object"}}}
        request_input = {**tensor, "required": ["name", "datatype", "shape", "data"],
                         "properties": {**tensor["properties"],
                                        "name": {"enum": [i["name"] for i in inputs]},
                                        "datatype": {"enum": sorted({i["datatype"]
                                                                     for i in inputs})}}}
        return {"request": {"type": "object", "required": ["inputs"], "properties": {
                    "id": {"type": "string"}, "parameters": {"type": "object"},
                    "inputs": {"type": "array", "items": request_input, "minItems": 1},
                    "outputs": {"type": "array", "items": {
                        "type": "object", "required": ["name"], "properties": {
                            "name": {"enum": [o["name"] for o in self.oip_outputs(None)]},
                            "parameters": {"type": "object"}}}}}},
                "answer": {"type": "object", "required": ["model_name", "outputs"], "properties": {
                    "model_name": {"type": "string"}, "id": {"type": "string"},
                    "outputs": {"type": "array", "items": tensor}}}}

    # -- the machinery: private to this module ---------------------------------------------------

    def _warm_up(self) -> None:
        """Runs every batch size and input shape twice, so live traffic never pays for the first
        call of a shape (TorchScript profiles and specialises per shape; compiled code and oneDNN
        set up per shape too)."""
        threads = torch.get_num_threads()
        try:
            for pool in self._pools or [threads]:
                torch.set_num_threads(pool)
                for item in self.warmup_items():
                    for size in self.batch_buckets:
                        for _ in range(2):
                            rows = self.infer([item] * size)
                            self.output_row_shape = list(rows.shape[1:])
        finally:
            torch.set_num_threads(threads)

    def _read_request(self, row: dict, headers: dict | None, protocol: str = NATIVE
                     ) -> tuple[list[Any], Any]:
        """One request -> its items, and what its answer needs to know of it (OIP: the request)."""
        payload = Payload.from_row(row, headers,
                                   max_json_depth=int(self.settings["max_json_depth"]),
                                   max_json_number_chars=int(self.settings["max_json_number_chars"]))
        self.enforce_limit("max_request_bytes", payload.size(), "the request body in bytes")
        if payload.is_empty():
            raise bad_request("empty_body", "the request body is empty")
        envelope = None
        if protocol == KSERVE_V1:
            items = self.decode_instances(self._v1_instances(payload))
        elif protocol == OIP_INFER:
            from handlers import oip  # oip imports this module: imported on first use

            envelope = oip.parse(payload, oip.header_length(headers))
            items = self.decode_instances(self._oip_instances(envelope))
        else:
            items = self.decode(payload)
        if not items:
            raise unprocessable("no_input", "the request holds no input")
        self.enforce_limit("max_items_per_request", len(items), "the number of inputs")
        return items, envelope

    def _v1_instances(self, payload: Payload) -> list[Any]:
        body = payload.json()
        if not isinstance(body, dict) or "instances" not in body:
            raise unprocessable("missing_field", 'KServe v1: send {"instances": [...]}, one entry '
                                "per input")
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise unprocessable("wrong_type", '"instances" must be a non-empty list')
        self.enforce_limit("max_items_per_request", len(instances), "the number of instances")
        return instances

    def _oip_instances(self, request) -> list[Any]:
        """An OIP request's tensors -> v1-style instances (one per row of the batch dimension),
        decoded as v1's are: the same checks and limits whichever protocol carried the input."""
        import numpy

        declared = self.oip_inputs()
        unknown = sorted(set(request.inputs) - {d["name"] for d in declared})
        if unknown:
            raise unprocessable("unknown_input", f"input {unknown[0]!r}: this model takes "
                                + ", ".join(repr(d["name"]) for d in declared))
        columns, rows = [], None
        for spec in declared:
            tensor = request.inputs.get(spec["name"])
            if tensor is None:
                raise unprocessable("missing_field", f"input {spec['name']!r} is missing")
            where = f"input {spec['name']!r}"
            if tensor.datatype != spec["datatype"]:  # as strict as Triton
                raise unprocessable("wrong_datatype", f"{where} is {spec['datatype']}, not "
                                    f"{tensor.datatype}")
            expected = spec["shape"]
            if spec["datatype"] == "BYTES":
                if len(tensor.shape) not in (1, 2) or tensor.shape[1:] not in ([], [1]):
                    raise unprocessable("wrong_shape", f"{where} has shape {tensor.shape}; "
                                        "expected [batch] or [batch, 1]")
                values: list = list(tensor.data)
                if (spec.get("parameters") or {}).get("content_type") == "str":
                    try:
                        values = [v.decode("utf-8") for v in values]
                    except UnicodeDecodeError as e:
                        raise bad_request("not_utf8", f"{where}: not UTF-8 text: {e}") from None
                elif tensor.in_json:  # files (images) in JSON strings: base64, as v1's "b64"
                    values = [decode_base64({"b64": v.decode("utf-8", "replace")}, where)
                              for v in values]
            else:
                if len(tensor.shape) != len(expected) or any(
                        e >= 0 and e != s for e, s in zip(expected[1:], tensor.shape[1:])):
                    raise unprocessable("wrong_shape", f"{where} has shape {tensor.shape}; "
                                        f"expected {expected} (-1: any size)")
                data = tensor.data.astype(numpy.uint8) if tensor.datatype == "BOOL" else tensor.data
                if data.dtype.kind == "f" and not bool(numpy.isfinite(data).all()):
                    raise unprocessable("out_of_range", f"{where} holds a value that is not "
                                        "finite")
                values = [row.tolist() for row in data]
            if rows is not None and len(values) != rows:
                raise unprocessable("wrong_shape", f"{where} has {len(values)} rows; the other "
                                    f"inputs have {rows}")
            rows = len(values)
            columns.append((spec["name"], values))
        self.enforce_limit("max_items_per_request", rows or 0, "the batch size")
        if len(columns) == 1:
            return columns[0][1]
        return [{name: values[i] for name, values in columns} for i in range(rows or 0)]

    def _protocol_answer(self, output: torch.Tensor, protocol: str, envelope: Any = None,
               model_name: str = "") -> Any:
        if protocol == KSERVE_V1:
            return {"predictions": self.predictions(output)}
        if protocol == OIP_INFER:
            return self._oip_answer(output, envelope, model_name)
        return self.encode(output)

    def _oip_answer(self, output: torch.Tensor, request, model_name: str) -> Any:
        from handlers import oip

        outputs = self.oip_outputs(output)
        names = [o["name"] for o in outputs]
        wanted = request.binary_outputs
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise unprocessable("unknown_output", f"output {unknown[0]!r}: this model answers "
                                + ", ".join(map(repr, names)))
        chosen = [o for o in outputs if not wanted or o["name"] in wanted]
        binary = {o["name"] for o in chosen if wanted.get(o["name"], request.binary_default)}
        return EncodedAnswer(*oip.response(
            model_name, request.id,
            [oip.Tensor(o["name"], o["datatype"], list(o["shape"]), o["data"]) for o in chosen],
            binary))

    def _oip_ask(self, protocol: str, model_name: str) -> dict:
        if protocol == OIP_METADATA:
            return self._oip_metadata(model_name)
        if protocol == OIP_CONFIG:
            return self._oip_config(model_name)
        return {"name": model_name, "ready": True}

    def _oip_metadata(self, model_name: str) -> dict:
        return {"name": model_name, "versions": ["1"], "platform": "pytorch_torchserve",
                "inputs": self.oip_inputs(), "outputs": self.oip_outputs(None)}

    def _oip_config(self, model_name: str) -> dict:
        """Triton's model configuration (`GET /v2/models/<m>/config`), which its tools read: the
        most items one request may carry, and the tensors without their batch dimension."""
        def tensors(specs: list[dict]) -> list[dict]:
            return [{"name": s["name"], "dims": s["shape"][1:],
                     "data_type": "TYPE_STRING" if s["datatype"] == "BYTES"
                     else f"TYPE_{s['datatype']}"} for s in specs]

        return {"name": model_name, "platform": "pytorch_torchserve",
                "max_batch_size": int(self.settings["max_items_per_request"] or 0),
                "input": tensors(self.oip_inputs()), "output": tensors(self.oip_outputs(None))}

    def _bucket(self, n: int) -> int:
        return next(b for b in self.batch_buckets if b >= n)

    def _infer_alone(self, items: list[Any]) -> Any:
        try:
            return self.infer(items)
        except BaseException as e:  # noqa: BLE001
            if is_fatal(e):
                raise
            log.exception("inference failed on a request alone")
            return inference_failure(e)

    @staticmethod
    def _request_headers(context, idx: int) -> dict | None:
        processor = getattr(context, "request_processor", None)
        if not processor or idx >= len(processor) or processor[idx] is None:
            return None
        return processor[idx].get_request_properties()

    @staticmethod
    def _reply(context, idx: int, status: int, body: Any) -> str | bytes:
        if isinstance(body, EncodedAnswer):
            if body.json_length is None:
                context.set_response_content_type(idx, JSON)
            else:
                context.set_response_content_type(idx, BINARY_TYPE)
                context.set_response_header(idx, "Inference-Header-Content-Length",
                                            str(body.json_length))
            return body.body
        if status != 200:
            context.set_response_status(status, body.get("error", ""), idx)
        context.set_response_content_type(idx, JSON)
        return json.dumps(body)


def request_protocol(headers: dict | None) -> str:
    """The protocol a request speaks, from PROTOCOL_HEADER."""
    value = (request_header(headers, PROTOCOL_HEADER) or "").strip().lower()
    return value if value in PROTOCOLS else NATIVE


def decode_base64(value: Any, where: str) -> bytes:
    """Binary data in JSON, as KServe's v1 and TensorFlow Serving carry it: `{"b64": "..."}`."""
    if not isinstance(value, dict) or set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise unprocessable("wrong_type", f'{where}: send binary data as {{"b64": "<base64>"}}')
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad_request("bad_base64", f"{where}: not valid base64: {e}") from None


def is_describe(context) -> bool:
    """TorchServe's describe API (`GET /models/NAME?customized=true`) reaches the worker as a
    request with the header `describe: True`."""
    try:
        return context.get_request_header(0, "describe") == "True"
    except Exception:  # noqa: BLE001 - no such request: an ordinary batch
        return False


def handler_class(module) -> type:
    """The ModelHandler subclass a handler module defines (TorchServe instantiates it)."""
    import inspect

    [cls] = [c for _, c in inspect.getmembers(module, inspect.isclass)
             if issubclass(c, ModelHandler) and c.__module__ == module.__name__]
    return cls


def kind_class(kind: str) -> type:
    """The handler class of a kind (model.yaml `kind:`, a key of handlers.KINDS)."""
    import importlib

    from handlers import KINDS

    return handler_class(importlib.import_module(f"handlers.{KINDS[kind].handler}"))


def inference_failure(error: BaseException) -> RequestError:
    if isinstance(error, MemoryError):
        return RequestError(507, "out_of_memory", "the model ran out of memory on this request")
    return RequestError(500, "inference_failed", "the model failed on this request; see the "
                        "worker log")
