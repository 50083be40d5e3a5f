"""The served benchmark's second peer: the same .mar, with the same handler's decode/encode, under
Triton Inference Server (PyTriton's bundled `tritonserver`): Triton does the HTTP (the Open Inference
Protocol, with its binary-data extension), the queue, the dynamic batcher and the model instances.

Benchmark-only (requirements-pytriton.txt, in .venv-pytriton: PyTriton's Python stub needs Debian's
CPython 3.11, and the venv reads the project's packages from .venv; `make bench-serve` builds it).
One input, `body` (BYTES: the request body as a client would POST it to TorchServe), and one
output, `answer` (BYTES: the handler's JSON answer), so that the work per request is the same as
TorchServe's and LitServe's. A request the handler refuses fails its whole batch with Triton's
error, the handler's reason in it (PyTriton turns an exception into a 500 for every request of the
batch, as LitServe's batched loop does); the benchmark sends only good requests.

    python -m serving.perf.triton_peer MODEL --http-port P --content-type TYPE \
        [--batch 8] [--delay-us 1000] [--instances 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

INPUT, OUTPUT = "body", "answer"


def request_body(payload: bytes) -> tuple[bytes, dict[str, str]]:
    """One v2 inference request with `payload` as the BYTES input, in the binary-data extension:
    a JSON header, then the tensor's bytes (a 4-byte little-endian length, then the bytes)."""
    tensor = len(payload).to_bytes(4, "little") + payload
    header = json.dumps({
        "inputs": [{"name": INPUT, "shape": [1, 1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(tensor)}}],
        "outputs": [{"name": OUTPUT, "parameters": {"binary_data": False}}],
    }).encode()
    return header + tensor, {"Inference-Header-Content-Length": str(len(header))}


def infer_function(model: str, model_store: str, content_type: str):
    """One model instance: the archive's handler, initialised as a TorchServe worker's."""
    import numpy as np
    from pytriton.decorators import batch

    from handlers.base import RequestError
    from serving.run.inprocess import LoadedModel

    work = Path(tempfile.mkdtemp(prefix=f"triton-peer-{model}-"))
    handler = LoadedModel(model, work, Path(model_store)).handler
    headers = {"body": {"content-type": content_type}}

    @batch
    def infer(**inputs):
        requests = []
        for row in inputs[INPUT]:
            try:
                requests.append(handler.read({"body": bytes(row[0])}, headers))
            except Exception as e:  # noqa: BLE001 - the handler's own refusal, as TorchServe's
                from handlers.base import failure_answer

                requests.append(failure_answer(e, "read"))
        accepted = [(i, items) for i, items in enumerate(requests)
                    if not isinstance(items, RequestError)]
        outputs = handler.infer_requests(accepted)
        answers = []
        for i, items in enumerate(requests):
            output = outputs.get(i, items)
            if isinstance(output, RequestError):
                raise ValueError(output.body())  # the whole batch fails, with this reason
            answers.append([json.dumps(handler.encode(output)).encode()])  # as TorchServe's reply
        return {OUTPUT: np.array(answers, dtype=object)}

    return infer


def main(argv: list[str] | None = None) -> int:
    from serving.run.paths import MODEL_STORE

    parser = argparse.ArgumentParser(prog="python -m serving.perf.triton_peer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--content-type", required=True, help="of the bodies it will be sent")
    parser.add_argument("--model-store", default=str(MODEL_STORE))
    parser.add_argument("--batch", type=int, default=8, help="the dynamic batcher's largest batch")
    parser.add_argument("--delay-us", type=int, default=1000, help="its queue delay")
    parser.add_argument("--instances", type=int, default=1, help="model instances")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared by instances)")
    args = parser.parse_args(argv)

    import torch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    from handlers import WORKERS_ENV
    from handlers.cores import SHARE_ENV

    os.environ.setdefault(WORKERS_ENV, "1")
    os.environ.pop(SHARE_ENV, None)  # no TorchServe launcher: a fixed thread count
    functions = [infer_function(args.model, args.model_store, args.content_type)
                 for _ in range(args.instances)]
    torch.set_num_threads(args.threads)  # after the handlers' own setting, which this replaces
    config = TritonConfig(http_address="127.0.0.1", http_port=args.http_port,
                          grpc_address="127.0.0.1", grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, allow_gpu_metrics=False,
                          log_verbose=0, exit_on_error=True)
    with Triton(config=config) as triton:
        triton.bind(args.model, infer_func=functions,
                    inputs=[Tensor(name=INPUT, dtype=bytes, shape=(1,))],
                    outputs=[Tensor(name=OUTPUT, dtype=bytes, shape=(1,))],
                    config=ModelConfig(max_batch_size=args.batch, batcher=DynamicBatcher(
                        max_queue_delay_microseconds=args.delay_us)),
                    strict=False)
        print(f"Triton serving {args.model} on 127.0.0.1:{args.http_port}", flush=True)
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
