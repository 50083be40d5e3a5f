"""The served benchmark's peer: the same .mar, with the same handler's decode/encode, under LitServe.

Benchmark-only (requirements-bench.txt): it answers how much of the served cost is TorchServe's and
how much is the work itself. The handler is initialised from the archive exactly as a TorchServe
worker initialises it (serving.run.inprocess.LoadedModel); LitServe does the HTTP, the queue and the
batching. LitServe parses only JSON and form bodies, so binary inputs go as a multipart field
named "data" (the load generator sends the same multipart body to TorchServe, which reads it too).

    python -m serving.perf.litserve_peer MODEL --port P [--batch 8] [--batch-timeout 0.02] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import litserve as ls
from fastapi import HTTPException

from handlers import WORKERS_ENV


class ArchiveAPI(ls.LitAPI):
    def __init__(self, model: str, model_store: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model_name, self.model_store = model, model_store

    def setup(self, device) -> None:
        from serving.run.inprocess import LoadedModel

        work = Path(tempfile.mkdtemp(prefix=f"peer-{self.model_name}-"))
        self.loaded = LoadedModel(self.model_name, work, Path(self.model_store))
        self.handler = self.loaded.handler

    def decode_request(self, request):
        from handlers.base import failure_answer

        if hasattr(request, "get") and request.get("data") is not None and hasattr(request["data"], "file"):
            upload = request["data"]
            row, headers = {"data": upload.file.read()}, {"data": {"content-type": upload.content_type or ""}}
        else:  # a JSON body, already parsed by LitServe
            row, headers = {"body": request}, None
        try:
            return self.handler.read(row, headers)
        except Exception as e:  # noqa: BLE001 - answered by encode_response
            return failure_answer(e, "read")

    def batch(self, inputs):
        return inputs

    def predict(self, requests):
        from handlers.base import RequestError

        single = self.max_batch_size <= 1  # LitServe does not batch then: one request, not a list
        requests = [requests] if single else requests
        accepted = [(i, items) for i, items in enumerate(requests) if not isinstance(items, RequestError)]
        outputs = self.handler.infer_requests(accepted)
        answers = [outputs.get(i, items) for i, items in enumerate(requests)]
        return answers[0] if single else answers

    def unbatch(self, outputs):
        return outputs

    def encode_response(self, output):
        from handlers.base import RequestError

        if isinstance(output, RequestError):
            raise HTTPException(output.status, detail=output.body())
        return self.handler.encode(output)


def main(argv: list[str] | None = None) -> int:
    from serving.run.paths import MODEL_STORE

    parser = argparse.ArgumentParser(prog="python -m serving.perf.litserve_peer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-store", default=str(MODEL_STORE))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batch-timeout", type=float, default=0.02, help="seconds")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ.setdefault(WORKERS_ENV, str(args.workers))
    api = ArchiveAPI(args.model, args.model_store, max_batch_size=args.batch,
                     batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers, timeout=60)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning",
               generate_client_file=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
