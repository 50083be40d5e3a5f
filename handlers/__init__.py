"""TorchServe handlers: one per kind of model, on the shared base in `handlers.base`."""

from __future__ import annotations

from typing import NamedTuple

# Set by our launcher (serving.run.torchserve) for TorchServe's workers: the worker processes of all
# models on the server. Each worker's intra-op threads default to cores / that number: more threads
# than cores, e.g. three workers of two threads each on two cores, cut throughput several times.
WORKERS_ENV = "SERVING_WORKERS_TOTAL"
# The CPU settings the launcher gives the workers (serving.run.cpu.worker_environment); each worker
# logs the ones it got, so the worker log says what a figure ran with (Graviton's included).
CPU_ENV = ("OMP_NUM_THREADS", "LRU_CACHE_CAPACITY", "THP_MEM_ALLOC_ENABLE", "DNNL_DEFAULT_FPMATH_MODE")

# What the build can produce and the workers can load (see handlers/artifacts.py).
TARGETS = ("eager", "torchscript", "inductor", "neuron", "onnxruntime")
# int8: dynamic quantization of the Linear layers (torch's), or of the MatMuls (ONNX Runtime's)
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


class Kind(NamedTuple):
    handler: str  # module in handlers/
    answer: str   # the field every 200 answer has
    gate: str     # parity gate for low precisions: classifier (top-1), embedder, tensor (cosine)
    summary: str


# The kinds of model a folder can declare (model.yaml `kind:`). Each handler's docstring and its
# request_schema()/answer_schema() are the one description of its request and answer.
KINDS = {
    "image_classifier": Kind("image_classifier", "predictions", "classifier",
                             "an image (JPEG, PNG, ...) in, the top-k classes out"),
    "array_classifier": Kind("array_classifier", "predictions", "classifier",
                             "a fixed-shape numeric array in (JSON), the top-k classes out"),
    "text_embedder": Kind("text_embedder", "embeddings", "embedder",
                          "texts in, one L2-normalised embedding per text out"),
    "text_classifier": Kind("text_classifier", "predictions", "classifier",
                            "texts in, the top-k labels per text out (Hugging Face sequence "
                            "classification)"),
    "tensor": Kind("tensor", "outputs", "tensor",
                   "named tensors in (JSON, or one raw binary tensor), the output tensor out"),
}
