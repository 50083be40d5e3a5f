"""python -m serving runtimes: CPU runtimes and quantizations the build does not ship, measured as
the build measures its candidates, so the reason they are left out can be checked again on any CPU.

Each variant is made from the model's ONNX graph (the onnxruntime target's export), checked by the
build's parity gate (serving/build/parity.py: its precision's gate, and, for a model served in
batches, an input's answer alone against its answer in a batch) and timed against the eager model
with the build's paired timing, on the threads a busy worker has (serving/build/pipeline.py):

    onnxruntime/fp32          the build's own candidate, for comparison
    openvino/fp32             OpenVINO reading the ONNX graph, f32 inference precision
    openvino/bf16             the same at bf16 inference precision (CPUs with bf16 arithmetic)
    openvino/int8-weights     weights int8 per output channel (NNCF), computed in fp32
    openvino/int8             the same weights, activations quantized per token in groups of 32 as
                              they run (the CPU plugin's dynamic quantization): a token's scale
                              does not depend on the other requests in its batch, unlike dynamic
                              int8's per-batch scale. Where the CPU plugin does not apply it (it
                              did not on an AVX2-only EPYC), its answers equal int8-weights' and
                              the table says so.
    onnxruntime/static-int8   QDQ, weights int8 per channel, activations uint8 with fixed scales
                              from min-max calibration on the parity inputs: the inputs it is then
                              gated on, so its gate figures are a best case
    onnxruntime/static-int8-u8u8
                              the same with uint8 weights: on a CPU without VNNI (AVX2 only) the
                              u8×s8 kernels add pairs of products in 16 bits, which saturates
                              (ONNX Runtime's quantization docs); u8×u8 runs other kernels that
                              do not, so this row says how much of int8's loss there is saturation

Needs requirements-bench.txt (openvino, nncf). Writes run/runtimes/MODEL.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import models
from handlers.artifacts import OnnxRuntimeModel
from serving.build import parity, targets, timing
from serving.build.pipeline import Reference, reference
from serving.run.cpu import cpu_name, has_bf16

# Tokens per group sharing one activation scale in OpenVINO's dynamic quantization (its
# DYNAMIC_QUANTIZATION_GROUP_SIZE; 0 turns it off).
TOKEN_GROUP = 32


class OpenVinoModel:
    """An OpenVINO compiled model called as the build calls every candidate: tensors in, one out."""

    def __init__(self, model, threads: int, precision_hint: str, token_group: int = 0) -> None:
        import openvino

        config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                  "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision_hint,
                  "DYNAMIC_QUANTIZATION_GROUP_SIZE": token_group}
        self.compiled = openvino.Core().compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        result = self.request.infer([x.numpy() for x in inputs])
        return torch.from_numpy(np.array(result[self.compiled.output(0)]))


def onnx_graph(spec: models.ModelSpec, ref: Reference, work_dir: Path) -> Path:
    return targets.export("onnxruntime", ref.to_export, "fp32", spec.example_inputs(2), spec.dims,
                          spec.dim_ranges, work_dir / "onnx", "cpu", None, spec.channels_last,
                          spec.int8_skip)


def openvino_variants(graph: Path, threads: int) -> dict:
    import nncf
    import openvino

    read = lambda: openvino.Core().read_model(str(graph))  # noqa: E731 - compression changes it
    variants = {"openvino/fp32": lambda: OpenVinoModel(read(), threads, "f32")}
    if has_bf16():
        variants["openvino/bf16"] = lambda: OpenVinoModel(read(), threads, "bf16")

    def int8(token_group: int):
        weights = nncf.compress_weights(read(), mode=nncf.CompressWeightsMode.INT8_SYM)
        return OpenVinoModel(weights, threads, "f32", token_group)

    variants["openvino/int8-weights"] = lambda: int8(0)
    variants["openvino/int8"] = lambda: int8(TOKEN_GROUP)
    return variants


def static_int8(graph: Path, batches: list, threads: int, work_dir: Path,
                weights: str = "QInt8") -> OnnxRuntimeModel:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared, quantized = work_dir / "prepared.onnx", work_dir / f"static-int8-{weights}.onnx"
    quant_pre_process(str(graph), str(prepared), skip_symbolic_shape=True)
    names = OnnxRuntimeModel(str(graph), threads).inputs

    class ParityInputs(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{n: x.numpy() for n, x in zip(names, batch)} for batch in batches])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(prepared), str(quantized), ParityInputs(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=getattr(QuantType, weights),
                    calibrate_method=CalibrationMethod.MinMax,
                    op_types_to_quantize=["MatMul", "Conv", "Gemm"])
    return OnnxRuntimeModel(str(quantized), threads)


def measure(name: str, work_dir: Path) -> list[dict]:
    spec = models.load(name)
    ref = reference(spec, work_dir, name, timed=False)
    graph = onnx_graph(spec, ref, work_dir)
    variants = {"onnxruntime/fp32": lambda: OnnxRuntimeModel(str(graph), ref.threads)}
    variants.update(openvino_variants(graph, ref.threads))
    variants["onnxruntime/static-int8"] = lambda: static_int8(graph, ref.parity_batches,
                                                              ref.threads, work_dir)
    variants["onnxruntime/static-int8-u8u8"] = lambda: static_int8(
        graph, ref.parity_batches, ref.threads, work_dir, weights="QUInt8")
    rows, answers = [], {}
    for label, make in variants.items():
        started = time.perf_counter()
        model = make()
        row = {"model": name, "variant": label, "prepare_s": round(time.perf_counter() - started, 1)}
        precision = label.split("/")[1].split("-")[-1] if "int8" not in label else "int8"
        try:
            row["parity"] = parity.check_parity(name, spec.gate, precision, ref.eager, model,
                                                ref.parity_batches, served_batch=ref.batch)
            row["gate"] = "passes"
        except parity.ParityError as e:
            row["gate"], row["reason"] = "fails", str(e)
        with torch.inference_mode():
            answers[label] = model(*ref.parity_batches[0])
        with timing.torch_threads(ref.threads):
            paired = timing.paired_timing(ref.eager, model, ref.timing_inputs)
        row.update(batch=ref.batch, threads=ref.threads, ms=round(paired.candidate_s * 1000, 2),
                   eager_ms=round(paired.reference_s * 1000, 2), speedup=round(paired.speedup, 2),
                   spread=round(paired.spread, 2))
        print(f"[{name}] {label}: {row['gate']}, {row['speedup']:.2f}x eager "
              f"({row['ms']:.1f} ms per batch of {ref.batch})", flush=True)
        rows.append(row)
    if "openvino/int8" in answers:
        same = torch.equal(answers["openvino/int8"], answers["openvino/int8-weights"])
        for row in rows:
            if row["variant"] == "openvino/int8":
                row["dynamic_quantization"] = "not applied on this CPU" if same else "applied"
    return rows


def figures(row: dict) -> str:
    p = row.get("parity") or {}
    keys = ("top1_agreement", "min_cosine", "neighbour_agreement", "relative_error",
            "batch_relative_error")
    shown = ", ".join(f"{k} {p[k]:.3g}" for k in keys if k in p)
    # A failed gate's message ends with its figures, after the gate's own "(...): ".
    return shown or row.get("reason", "").rsplit("): ", 1)[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving runtimes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="default: every model folder that lists onnxruntime in its "
                        "build.targets (the variants start from its ONNX graph)")
    parser.add_argument("--out-dir", default="run/runtimes")
    args = parser.parse_args(argv)
    import openvino

    print(f"CPU: {cpu_name()} ({platform.machine()}); torch {torch.__version__}, OpenVINO "
          f"{openvino.__version__}", flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = args.models or [m for m in models.names() if "onnxruntime" in models.load(m).targets]
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            rows = measure(name, Path(tmp))
        (out / f"{name}.json").write_text(json.dumps({"cpu": cpu_name(), "rows": rows}, indent=2))
        print(f"\n{'variant':26s} {'gate':6s} {'x eager':>8s} {'ms/batch':>9s} "
              f"{'eager beside':>12s}  figures")
        for r in rows:
            note = f" (dynamic quantization {r['dynamic_quantization']})" \
                if "dynamic_quantization" in r else ""
            print(f"{r['variant']:26s} {r['gate']:6s} {r['speedup']:8.2f} {r['ms']:9.1f} "
                  f"{r['eager_ms']:12.1f}  {figures(r)}{note}")
        print(f"(batch {rows[0]['batch']}, {rows[0]['threads']} thread(s); written to "
              f"{out / (name + '.json')})\n")
    return 0
