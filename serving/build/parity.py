"""The parity gate: an exported model against its eager reference, on real inputs.

fp32 must match the eager model to a relative error (max |diff| / max |eager|) of 1e-4. Lower
precisions change the numbers by design, so the gate is the model kind's: a classifier must keep
its top-1 answer on 99% of real inputs; an embedder must keep each embedding's direction (cosine
>= 0.99) and each input's nearest neighbour among the others on 99% of them (where the eager
model's choice is not a near-tie); a tensor model must keep each output's direction.

At every precision, where the model is served in batches, an input's answer must not depend on the
other inputs in its batch: answered alone, it matches its answer inside a batch to the fp32
tolerance. Dynamic int8 quantization fails this by design (it scales activations by the whole
batch's range, so one request's answer moves with strangers' requests: 0.6% on EfficientNet-Lite0,
15% on MiniLM, measured on an AMD EPYC); CPU kernels stay within 1e-6. fp16 and bf16 scale
nothing by the batch, but a GPU picks its kernels by batch size and they sum in other orders, so
there an answer may move by as much as the precision already moves it from fp32 (its relative
error), and at least one step of its rounding (its machine epsilon). Measured on an H200:
EfficientNet-Lite0's fp16 TorchScript moved by 3.8e-4, MiniLM's fp16 by 1.9e-3 and its bf16 by
1.9e-2, all over fp32's 1e-4.
"""

from __future__ import annotations

import torch

from serving.build.targets import DTYPES

FP32_MAX_RELATIVE_ERROR = 1e-4
LOW_PRECISION_MIN_AGREEMENT = 0.99
LOW_PRECISION_MIN_COSINE = 0.99


class ParityError(RuntimeError):
    pass


BATCH_CHECK_INPUTS = 8  # inputs answered alone against their batch: each is one more model call


def batch_tolerance(precision: str, relative_error: float) -> float:
    """How far an answer alone may be from its answer in a batch: fp32's tolerance (int8 too: its
    batch dependence is what this check is for), or, for fp16 and bf16, the precision's own
    distance from the fp32 reference, at least one step of its rounding."""
    dtype = DTYPES.get(precision, torch.float32)
    if dtype == torch.float32:  # fp32, and int8 (its layers hand on fp32)
        return FP32_MAX_RELATIVE_ERROR
    return max(FP32_MAX_RELATIVE_ERROR, torch.finfo(dtype).eps, relative_error)


def batch_dependence(exported, batches: list[tuple[torch.Tensor, ...]],
                     outputs: list[torch.Tensor]) -> float:
    """The largest relative difference (to that input's largest score) between an input's answer
    alone and its answer in its batch, over the first inputs of the first batch of several."""
    for batch, in_batch in zip(batches, outputs):
        if len(in_batch) > 1:
            break
    else:
        return 0.0
    worst = 0.0
    with torch.inference_mode():
        for i in range(min(BATCH_CHECK_INPUTS, len(in_batch))):
            alone = exported(*(x[i:i + 1] for x in batch)).float().cpu()[0]
            worst = max(worst, float((alone - in_batch[i]).abs().max() /
                                     in_batch[i].abs().max().clamp_min(1e-12)))
    return worst


NEIGHBOUR_MARGIN = 0.01  # cosine by which an input's nearest neighbour must beat the runner-up


def neighbour_agreement(reference: torch.Tensor, output: torch.Tensor) -> float:
    """Share of inputs whose nearest other input (by cosine) stays the same, among those where the
    eager model decides it by a margin; near-ties are a coin toss at any precision."""
    def similarities(e):
        e = torch.nn.functional.normalize(e, dim=-1)
        s = e @ e.T
        s.fill_diagonal_(-float("inf"))
        return s

    ref, out = similarities(reference), similarities(output)
    top2 = ref.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) >= NEIGHBOUR_MARGIN
    if not decided.any():
        return 1.0
    return float((ref.argmax(1) == out.argmax(1))[decided].float().mean())


def check_parity(name: str, gate: str, precision: str, eager: torch.nn.Module, exported,
                 batches: list[tuple[torch.Tensor, ...]], served_batch: int = 1) -> dict:
    """Compares an exported model with the eager one on real inputs; raises ParityError when the
    gate for its precision fails. `gate` (the model kind's): classifier, embedder or tensor.
    served_batch > 1 (the archive's batchSize): its answers must also not depend on the batch."""
    references, outputs = [], []
    with torch.inference_mode():
        for batch in batches:
            references.append(eager(*batch).float())
            outputs.append(exported(*batch).float().cpu())
    reference, output = torch.cat(references), torch.cat(outputs)
    result = {"inputs": len(reference),
              "relative_error": float((reference - output).abs().max() / reference.abs().max())}
    if gate == "classifier":
        result["top1_agreement"] = float((reference.argmax(-1) == output.argmax(-1)).float().mean())
    else:
        cosine = torch.nn.functional.cosine_similarity(reference, output, dim=-1)
        result["min_cosine"] = float(cosine.min())
        if gate == "embedder":
            result["neighbour_agreement"] = neighbour_agreement(reference, output)

    if precision == "fp32":
        result["gate"] = f"relative error <= {FP32_MAX_RELATIVE_ERROR:g}"
        passed = result["relative_error"] <= FP32_MAX_RELATIVE_ERROR
    elif gate == "classifier":
        result["gate"] = f"top-1 agreement >= {LOW_PRECISION_MIN_AGREEMENT:g}"
        passed = result["top1_agreement"] >= LOW_PRECISION_MIN_AGREEMENT
    elif gate == "tensor":
        result["gate"] = f"min cosine >= {LOW_PRECISION_MIN_COSINE:g}"
        passed = result["min_cosine"] >= LOW_PRECISION_MIN_COSINE
    else:
        result["gate"] = (f"min cosine >= {LOW_PRECISION_MIN_COSINE:g}, nearest-neighbour "
                          f"agreement >= {LOW_PRECISION_MIN_AGREEMENT:g}")
        passed = (result["min_cosine"] >= LOW_PRECISION_MIN_COSINE and
                  result["neighbour_agreement"] >= LOW_PRECISION_MIN_AGREEMENT)
    if served_batch > 1:
        result["batch_relative_error"] = batch_dependence(exported, batches, outputs)
        tolerance = batch_tolerance(precision, result["relative_error"])
        invariant = result["batch_relative_error"] <= tolerance
        result["gate"] += (f"; an input's answer alone within {tolerance:.2g} of its answer in "
                           "a batch")
        if passed and not invariant:
            why = (" Dynamic int8 scales activations by the whole batch." if precision == "int8"
                   else "")
            raise ParityError(
                f"an input's answer depends on the other inputs in its batch (relative error "
                f"{result['batch_relative_error']:.3g} alone against in a batch; at most "
                f"{tolerance:.2g}): served in batches of {served_batch}, one request's answer "
                f"would move with the requests beside it.{why} Serve it unbatched (batchSize: 1) "
                "or at another precision")
    figures = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in result.items() if k != "gate")
    if not passed:
        raise ParityError(f"fails its gate ({result['gate']}): {figures}")
    return result
