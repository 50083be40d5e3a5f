"""What the tests may expect of numbers computed along different paths: a batch of 4 and a batch
of 1, or one CPU's kernels and another's, do not give bit-identical floats. An AMD EPYC with
AVX-512 moved a probability's 6th decimal between batch sizes (0.372759 vs 0.37276), and int8
dynamic quantization scales activations per batch, so a borderline digit's answer can flip between
the build's batches and one served alone (353 vs 354 held-out digits right; int8 ships only
unbatched, serving/build/parity.py). The tests compare answers within these bounds, never byte for
byte."""

from __future__ import annotations

PROBABILITY_TOLERANCE = 1e-4
# Share of held-out items whose answer may flip between the build's batches of 64 and served
# batches of 1, by precision: fp32 differs by ~1e-7 relative (no flip expected); reduced precisions
# change activations with the batch (int8's dynamic scales) or round coarser (bf16).
HELD_OUT_FLIP_SHARE = {"fp32": 0.0, "bf16": 0.01, "fp16": 0.01, "int8": 0.01}


def assert_same_top_k(answer: list[dict], reference: list[dict],
                      abs_tolerance: float = PROBABILITY_TOLERANCE) -> None:
    """Two top-k answers agree up to float rounding: the same first class, every class both name
    with probabilities within the tolerance, and a class only one names (two near-equal classes at
    the tail may swap) no more probable than the other's last, within the tolerance."""
    assert answer[0]["index"] == reference[0]["index"], (answer, reference)
    mine = {p["index"]: p["probability"] for p in answer}
    theirs = {p["index"]: p["probability"] for p in reference}
    for index in mine.keys() & theirs.keys():
        assert abs(mine[index] - theirs[index]) <= abs_tolerance, (index, answer, reference)
    for ours, other in ((mine, theirs), (theirs, mine)):
        for index in ours.keys() - other.keys():
            assert ours[index] <= min(other.values()) + abs_tolerance, (index, answer, reference)


def assert_held_out_count_matches(served_right: int, built: dict, precision: str) -> None:
    """The served count of right answers equals the build's, within the flips the precision allows
    (`built` is a build's "evaluation": held_out_correct and held_out_size)."""
    allowed = int(HELD_OUT_FLIP_SHARE[precision] * built["held_out_size"])
    assert abs(served_right - built["held_out_correct"]) <= allowed, (
        f"{served_right} served right vs {built['held_out_correct']} at build "
        f"({precision}: at most {allowed} may flip)")
