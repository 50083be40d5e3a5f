"""The OpenAPI document of the models' inference endpoints: per model, its native operation and its
KServe v1 and Open Inference Protocol operations (served by the front door), with the request and answer schemas its handler
declares and every error answer. TorchServe's own OpenAPI
(/api-description) describes no bodies, so a schema-driven client or fuzzer cannot reach the
handlers through it; this one can. `python -m serving openapi [MODEL ...] > openapi.json`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import models
from handlers import KINDS
from handlers.base import ERROR_SCHEMA, JSON, OIP_ERROR_SCHEMA

# What TorchServe's frontend answers itself (no worker, queue full, body over max_request_size).
FRONTEND_ERROR_SCHEMA = {"type": "object", "required": ["code", "type", "message"],
                         "properties": {"code": {"type": "integer"}, "type": {"type": "string"},
                                        "message": {"type": "string"}}}
ERRORS = {
    "400": "the body is malformed (not JSON, not an image, not UTF-8, ...)",
    "404": "no such model on this server",
    "413": "the body, an image or a text is over the model's limits",
    "422": "well-formed but unusable: wrong shape, type, range or missing field",
    "500": "a bug in the handler or the model (the worker log has the traceback)",
    "503": "the model has all the requests it admits in flight (the front door: `busy`, with "
           "Retry-After), or it has no worker ready: retry later",
    "507": "the model ran out of memory on this request",
}


# What the front door answers itself, on every route (docker/nginx/nginx.conf).
FRONT_DOOR_ERRORS = {
    "401": "the key is missing or wrong (the front door checks it in every mode)",
    "403": "the key is one of another API (TorchServe's management key)",
    "415": "the body's content type is not one this operation takes",
}


def operation(spec, handler, operation_id: str, request: dict, answer: dict, errors: dict,
              more: str = "", error_schema: dict = ERROR_SCHEMA, binary_answer: bool = False
              ) -> dict:
    kind = KINDS[spec.kind]
    error = {"oneOf": [error_schema, FRONTEND_ERROR_SCHEMA]}
    responses = {"200": {"description": f"the answer: {kind.summary}",
                         "content": {"application/json": {"schema": answer}}}}
    if binary_answer:  # the OIP's binary extension: JSON, then the tensors
        responses["200"]["content"]["application/octet-stream"] = {
            "schema": {"type": "string", "format": "binary"}}
    for status, why in sorted(errors.items()):
        responses[status] = {"description": why,
                             "content": {"application/json": {"schema": error}}}
    return {"post": {
        "operationId": operation_id,
        "summary": spec.model_yaml.get("description", spec.name),
        "description": f"Kind `{spec.kind}`: {(type(handler).__doc__ or kind.summary).strip()}\n\n"
                       f"{more}Metadata (schemas, build, parity): GET "
                       f"/models/{spec.name}?customized=true on the management API.",
        "tags": [spec.kind],
        "requestBody": {"required": True, "content": {
            ctype: {"schema": schema} for ctype, schema in request.items()}},
        "responses": responses,
        "security": [{"inference_key": []}],
    }}


def native_operation(spec, handler) -> dict:
    return operation(spec, handler, f"predict_{spec.name}", handler.request_schema(),
                     handler.answer_schema(), {**ERRORS, **FRONT_DOOR_ERRORS})


def kserve_v1_operation(spec, handler) -> dict:
    v1 = handler.kserve_v1_schemas()
    return operation(spec, handler, f"kserve_v1_predict_{spec.name}", {JSON: v1["request"]},
                     v1["answer"], {**ERRORS, **FRONT_DOOR_ERRORS},
                     "KServe's v1 protocol, through the front door: one prediction per "
                     "instance.\n\n")


def oip_operation(spec, handler) -> dict:
    oip = handler.oip_schemas()
    return operation(spec, handler, f"oip_infer_{spec.name}", {JSON: oip["request"]},
                     oip["answer"], {**ERRORS, **FRONT_DOOR_ERRORS},
                     "The Open Inference Protocol (v2), through the front door; in JSON here, "
                     "binary tensor data too (docs/protocols.md).\n\n", OIP_ERROR_SCHEMA,
                     binary_answer=True)


def document(names: list[str] | None = None, server_url: str = "http://127.0.0.1:8080") -> dict:
    from models import sources

    paths = {}
    for name in names or models.names():
        spec = models.load(name)
        handler = sources.model_handler(spec)
        paths[f"/predictions/{name}"] = native_operation(spec, handler)
        paths[f"/v1/models/{name}:predict"] = kserve_v1_operation(spec, handler)
        paths[f"/v2/models/{name}/infer"] = oip_operation(spec, handler)
    return {
        "openapi": "3.0.3",
        "info": {"title": "Model serving: inference", "version": "1",
                 "description": "One operation per model folder. Every call needs the inference "
                                "key: Authorization: Bearer $(python -m serving key)."},
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {"securitySchemes": {"inference_key": {"type": "http", "scheme": "bearer"}}},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving openapi", description=__doc__)
    parser.add_argument("models", nargs="*", metavar="MODEL", help="default: every model folder")
    parser.add_argument("--server", default="http://127.0.0.1:8080")
    parser.add_argument("-o", "--out", help="write here instead of stdout")
    args = parser.parse_args(argv)
    text = json.dumps(document(args.models or None, args.server), indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0
