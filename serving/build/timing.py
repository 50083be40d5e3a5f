"""Timing models in this process: what the build ranks candidates by, and the benchmark measures."""

from __future__ import annotations

import statistics
import time

import torch


def paired_speedup(reference, candidate, inputs: tuple, rounds: int = 3,
                   block_seconds: float = 0.4) -> tuple[float, float]:
    """(candidate's median seconds per call, its speedup over the reference). Both run in this
    process, in alternating blocks (A B A B ...), and the speedup is the median of the blocks'
    ratios: on a shared VM, medians taken in different processes minutes apart differ by more than
    the effects measured here, and call-by-call interleaving makes each evict the other's caches."""
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
        ratios, candidate_times = [], []
        for _ in range(rounds):
            a = statistics.median(block(reference, runs[reference]))
            b_times = block(candidate, runs[candidate])
            candidate_times += b_times
            ratios.append(a / statistics.median(b_times))
    return statistics.median(candidate_times), statistics.median(ratios)


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
