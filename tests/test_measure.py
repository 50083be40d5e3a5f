"""The measurement core (serving/perf/measure.py) that the served benchmark, the protocol benchmark,
the tuner and `deploy measure` share: its rules on made-up points. The served runs that use it are
in tests/test_served_bench.py and tests/test_deploy.py."""

from __future__ import annotations

import time

import pytest

from serving.perf.measure import LADDER, best_within, climb, percentile, refused, time_calls


def test_the_percentile_is_the_nearest_rank():
    values = sorted(float(v) for v in range(1, 101))  # 1..100
    assert percentile(values, 0.5) == 51.0 and percentile(values, 0.99) == 99.0
    assert percentile(values, 0.0) == 1.0 and percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) != percentile([], 0.5)  # nan: no answer is not a latency of 0


def test_the_best_point_is_the_fastest_within_the_limit_that_refused_nothing():
    points = [{"ok_per_s": 100, "p99_ms": 20, "errors": 0},
              {"ok_per_s": 300, "p99_ms": 90, "errors": 0},
              {"ok_per_s": 400, "p99_ms": 80, "errors": 3},     # refused some: out
              {"ok_per_s": 500, "p99_ms": 400, "errors": 0}]    # over the limit: out
    assert best_within(points, 100) is points[1]
    assert best_within(points, 10) is None
    simulated = [{"throughput": 50.0, "p99_ms": 5, "refused": 0},
                 {"throughput": 90.0, "p99_ms": 6, "refused": 1}]
    assert best_within(simulated, 10, rate="throughput", errors="refused") is simulated[0]


def test_refusals_are_every_answer_but_200():
    assert refused({"statuses": {"200": 90, "503": 7, "429": 3}}) == 10
    assert refused({"statuses": {"200": 5}}) == 0


def point(clients: int, rps: float, p99: float, errors: int = 0) -> dict:
    return {"clients": clients, "ok_per_s": rps, "p99_ms": p99, "errors": errors}


@pytest.mark.parametrize("curve, at_least, stops_at", [
    ({1: (50, 10), 2: (100, 12), 4: (180, 15), 8: (185, 30), 16: (195, 60)}, 4, 8),  # stops growing
    ({1: (50, 10), 2: (100, 12), 4: (180, 300)}, 2, 4),                                 # past the p99
    ({1: (50, 10), 2: (100, 12), 4: (180, 300), 8: (300, 400)}, 8, 8),                  # climbs to at_least
    ({1: (50, 10), 2: (0, 12, 5)}, 16, 2),                                              # a refusal ends it
])
def test_the_ladder_is_climbed_while_the_p99_holds_and_throughput_grows(curve, at_least, stops_at):
    asked = []

    def run(clients: int) -> dict:
        asked.append(clients)
        return point(clients, *curve[clients])

    points = climb(run, p99_ms=100, at_least=at_least)
    assert asked == [c for c in LADDER if c <= stops_at] and points[-1]["clients"] == stops_at


def test_time_calls_warms_up_then_times_at_least_min_runs_and_checks_each_answer():
    calls = []

    def call():
        calls.append(time.perf_counter())
        return len(calls)

    seen = []
    times = time_calls(call, min_runs=5, budget_s=0.0, warmup=2, check=seen.append)
    assert len(times) == 5 and len(calls) == 7 and seen == [3, 4, 5, 6, 7]

    def must_be_200(status: int) -> None:
        assert status == 200, status

    with pytest.raises(AssertionError):
        time_calls(lambda: 500, min_runs=1, budget_s=0.0, warmup=0, check=must_be_200)
