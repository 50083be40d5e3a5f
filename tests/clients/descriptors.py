"""The protocol's messages as a project's own generated code defines them, run by the tests with
that project's environment: Triton's (tritonclient.grpc's service_pb2 and model_config_pb2, in
.venv-triton) or KServe's (kserve.protocol.grpc.grpc_predict_v2_pb2, in .venv-clients).

Reads {"module": ..., "messages": [full names, nested ones with dots]} on stdin; writes
{full name: [[field name, number, type, repeated], ...]} as JSON on stdout.
"""

from __future__ import annotations

import importlib
import json
import sys


def fields(module, full_name: str) -> list:
    outer, *nested = full_name.split(".")
    message = getattr(module, outer)
    for name in nested:
        message = getattr(message, name)
    return [[f.name, f.number, f.type, f.label == f.LABEL_REPEATED]  # protobuf 3 and 6 alike
            for f in message.DESCRIPTOR.fields]


if __name__ == "__main__":
    plan = json.load(sys.stdin)
    found = {}
    for module_name in plan["modules"]:
        module = importlib.import_module(module_name)
        for name in plan["messages"]:
            try:
                found.setdefault(name, fields(module, name))
            except AttributeError:
                continue
    print(json.dumps(found))
