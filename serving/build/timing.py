"""Timing models in this process: what the build ranks candidates by, and the benchmark measures."""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch


# Blocks' speedups further apart than this (largest / smallest) are measured again; still past it
# after NOISY_RETRIES, the pairing is reported as noisy and the build does not rank by it.
NOISY_SPREAD = 1.3
NOISY_RETRIES = 2


@contextmanager
def torch_threads(threads: int):
    """torch's intra-op threads set to `threads` for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Paired:
    """A candidate timed against the reference in alternating blocks, in this process."""

    reference_s: float  # the reference's median seconds per call, in these blocks
    speedup: float      # the median of the blocks' ratios
    spread: float       # largest block ratio / smallest: how much the machine moved meanwhile

    @property
    def candidate_s(self) -> float:
        """Seconds per call that agree with the speedup printed beside them."""
        return self.reference_s / self.speedup

    @property
    def noisy(self) -> bool:
        return self.spread > NOISY_SPREAD


def paired_timing(reference, candidate, inputs: tuple, rounds: int = 3,
                  block_seconds: float = 0.4) -> Paired:
    """The candidate against the reference, measured again while the blocks disagree by more
    than NOISY_SPREAD (a busy machine), keeping the steadiest attempt."""
    best = None
    for _ in range(1 + NOISY_RETRIES):
        attempt = paired_once(reference, candidate, inputs, rounds, block_seconds)
        if best is None or attempt.spread < best.spread:
            best = attempt
        if not best.noisy:
            break
    return best


def paired_speedup(reference, candidate, inputs: tuple, rounds: int = 3,
                   block_seconds: float = 0.4) -> tuple[float, float]:
    """(candidate's seconds per call, its speedup over the reference): paired_timing's."""
    paired = paired_timing(reference, candidate, inputs, rounds, block_seconds)
    return paired.candidate_s, paired.speedup


def paired_once(reference, candidate, inputs: tuple, rounds: int, block_seconds: float) -> Paired:
    """Both run in this process, in alternating blocks (A B A B ...), and the speedup is the
    median of the blocks' ratios: on a shared VM, medians taken in different processes minutes
    apart differ by more than the effects measured here, and call-by-call interleaving makes each
    evict the other's caches."""
    def block(model, runs: int) -> list[float]:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            model(*inputs)
            times.append(time.perf_counter() - started)
        return times

    with torch.inference_mode():
        warm = {m: min(block(m, 3)) for m in (reference, candidate)}
        runs = {m: max(3, min(200, int(block_seconds / max(t, 1e-6)))) for m, t in warm.items()}
        ratios, reference_medians = [], []
        for _ in range(rounds):
            a = statistics.median(block(reference, runs[reference]))
            b = statistics.median(block(candidate, runs[candidate]))
            reference_medians.append(a)
            ratios.append(a / b)
    return Paired(statistics.median(reference_medians), statistics.median(ratios),
                  max(ratios) / min(ratios))


def call_times(model, inputs: tuple, min_runs: int = 10, budget: float = 1.0,
               max_runs: int = 1000) -> list[float]:
    """Seconds per call, after two warm-up calls: at least min_runs, more while under budget."""
    with torch.inference_mode():
        for _ in range(2):
            model(*inputs)
        times: list[float] = []
        while len(times) < min_runs or (sum(times) < budget and len(times) < max_runs):
            started = time.perf_counter()
            model(*inputs)
            times.append(time.perf_counter() - started)
    return times


def median_seconds(model, inputs: tuple) -> float:
    return statistics.median(call_times(model, inputs))
