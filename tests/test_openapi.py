"""The published OpenAPI document against the real server: schemathesis (pinned) generates bodies
from each model's request schema, valid and invalid, and every answer must be no 5xx, a status the
document lists, and a body that matches the schema documented for that status."""

from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from serving.build import openapi

DOCUMENT = openapi.document()
# schemathesis 4.32.5 builds its coverage cases while pytest collects; for KServe v1 digits (up to 64
# instances of 8x8 numbers) that took ~100 s of every collection, `make test-fast` included. Its
# boundaries are tested by hand (tests/test_handlers.py: 65 instances -> 413); the random phases
# still fuzz it.
schema = schemathesis.openapi.from_dict(DOCUMENT)
schema.config.operations = SchemathesisConfig.from_dict({"operations": [
    {"include-path": "/v1/models/digits:predict", "phases": {"coverage": {"enabled": False}}},
]}).projects.default.operations
schema.config.generation.update(modes=["positive", "negative"], database="none")
EXAMPLES = int(os.environ.get("OPENAPI_EXAMPLES", "40"))
# Every call through the front door, as clients reach the models, with the key (its refusals:
# tests/test_frontdoor.py).
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def test_every_model_folder_is_a_native_a_v1_and_a_v2_operation_with_its_schemas():
    import models

    assert sorted(DOCUMENT["paths"]) == sorted(
        [f"/predictions/{n}" for n in models.names()] +
        [f"/v1/models/{n}:predict" for n in models.names()] +
        [f"/v2/models/{n}/infer" for n in models.names()])
    for name in models.names():
        for path in (f"/predictions/{name}", f"/v1/models/{name}:predict",
                     f"/v2/models/{name}/infer"):
            post = DOCUMENT["paths"][path]["post"]
            assert post["requestBody"]["content"] and "200" in post["responses"]
            assert {"400", "413", "422", "503"} <= set(post["responses"])


@schema.include(path_regex="^/predictions/").parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_native_answer_matches_the_document(case, server, front_door):
    case.call_and_validate(base_url=front_door.url, headers=server.auth("inference"),
                           checks=CHECKS, timeout=30)


@schema.include(path_regex="^/v[12]/").parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_v1_and_v2_answer_through_the_front_door_matches_the_document(case, server,
                                                                          front_door):
    case.call_and_validate(base_url=f"http://127.0.0.1:{front_door.port}",
                           headers=server.auth("inference"), checks=CHECKS, timeout=30)
