"""KServe's own Python SDK (`kserve.InferenceRESTClient`) calling a server, run by the tests with
.venv-clients' interpreter (the SDK's pins clash with the serving environment's).

Reads a JSON plan on stdin: {"url", "protocol": "v1", "headers": {...}, "ready": [models],
"calls": [{"model", "body"}]}; writes what the SDK returned as JSON on stdout: `live`, each
model's `ready`, and per call its answer or the HTTP status and error the SDK raised.
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
from kserve import InferenceRESTClient, RESTConfig


async def run(plan: dict) -> dict:
    client = InferenceRESTClient(RESTConfig(protocol=plan.get("protocol", "v1"), timeout=60))
    headers, url = plan.get("headers") or {}, plan["url"]
    try:
        result = {"live": await client.is_server_live(url, headers=headers), "ready": {},
                  "answers": []}
        for model in plan.get("ready", []):
            result["ready"][model] = await client.is_model_ready(url, model, headers=headers)
        for call in plan["calls"]:
            try:
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
