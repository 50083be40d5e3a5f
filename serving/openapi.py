"""The OpenAPI document of the models' inference endpoints: one operation per model, with the request
and answer schemas its handler declares and every error answer. TorchServe's own OpenAPI
(/api-description) describes no bodies, so a schema-driven client or fuzzer cannot reach the
handlers through it; this one can. `python -m serving openapi [MODEL ...] > openapi.json`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import models
from handlers import KINDS
from handlers.base import ERROR_SCHEMA

# What TorchServe's frontend answers itself (no worker, queue full, body over max_request_size).
FRONTEND_ERROR_SCHEMA = {"type": "object", "required": ["code", "type", "message"],
                         "properties": {"code": {"type": "integer"}, "type": {"type": "string"},
                                        "message": {"type": "string"}}}
ERRORS = {
    "400": "the body is malformed (not JSON, not an image, not UTF-8, ...); also no or a wrong "
           "inference key (TorchServe answers a failed token check with 400 InvalidKeyException)",
    "404": "no such model on this server",
    "413": "the body, an image or a text is over the model's limits",
    "422": "well-formed but unusable: wrong shape, type, range or missing field",
    "500": "a bug in the handler or the model (the worker log has the traceback)",
    "503": "the model's queue is full, or it has no worker ready: retry later",
    "507": "the model ran out of memory on this request",
}


def operation(spec, handler) -> dict:
    kind = KINDS[spec.kind]
    error = {"oneOf": [ERROR_SCHEMA, FRONTEND_ERROR_SCHEMA]}
    responses = {"200": {"description": f"the answer: {kind.summary}",
                         "content": {"application/json": {"schema": handler.answer_schema()}}}}
    for status, why in ERRORS.items():
        responses[status] = {"description": why,
                             "content": {"application/json": {"schema": error}}}
    return {"post": {
        "operationId": f"predict_{spec.name}",
        "summary": spec.card.get("description", spec.name),
        "description": f"Kind `{spec.kind}`: {(type(handler).__doc__ or kind.summary).strip()}\n\n"
                       f"Metadata (schemas, build, parity): GET /models/{spec.name}?customized=true "
                       "on the management API.",
        "tags": [spec.kind],
        "requestBody": {"required": True, "content": {
            ctype: {"schema": schema} for ctype, schema in handler.request_schema().items()}},
        "responses": responses,
        "security": [{"inference_key": []}],
    }}


def document(names: list[str] | None = None, server_url: str = "http://127.0.0.1:8080") -> dict:
    from serving import sources

    paths = {}
    for name in names or models.names():
        spec = models.load(name)
        paths[f"/predictions/{name}"] = operation(spec, sources.model_handler(spec))
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
