"""TorchServe handlers: one per kind of input, on the shared base in `handlers.base`."""

# Set by our launcher (serving.torchserve) for TorchServe's workers: the worker processes of all
# models on the server. Each worker's intra-op threads default to cores / that number: more threads
# than cores, e.g. three workers of two threads each on two cores, cut throughput several times.
WORKERS_ENV = "SERVING_WORKERS_TOTAL"

# What the build can produce and the workers can load (see handlers/artifacts.py).
TARGETS = ("eager", "torchscript", "inductor", "neuron")
PRECISIONS = ("fp32", "bf16", "fp16")
