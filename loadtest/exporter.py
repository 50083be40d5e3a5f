"""The load generator's client-side metrics for Prometheus, read from Locust's own statistics.

Locust's master (or its single process) holds every worker's request statistics, including a
histogram of response times rounded to 1 ms (10 ms above 100 ms, 100 ms above 1 s). This collector
turns them into Prometheus series when scraped, so the figures are the same in --headless, with
--processes and with master/worker on several hosts, and nothing is counted twice.

    loadtest_request_duration_seconds{model_name, protocol}   histogram of request latency
    loadtest_requests_total{model_name, status, protocol}     requests by HTTP status ("error": no
                                                              answer)

`protocol` is what the run's users speak (--protocol: native, kserve-v1, v2-json, v2-binary).
    loadtest_users                                    users running
    loadtest_cpu_percent{process}                     CPU use of each load-generator process
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

# Seconds. Dense where model latencies live, up to Locust's own request timeouts.
BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1,
           0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 60.0)

HTTP_STATUS = re.compile(r"^HTTP (\d{3})\b")


def cumulative_buckets(response_times_ms: dict[int, int]) -> list[tuple[str, int]]:
    """Locust's {rounded ms: count} -> Prometheus's cumulative (upper bound, count) pairs."""
    total = sum(response_times_ms.values())
    return [(repr(bound), sum(n for ms, n in response_times_ms.items() if ms / 1000 <= bound))
            for bound in BUCKETS] + [("+Inf", total)]


def status_counts(entries, errors) -> dict[tuple[str, str], int]:
    """(model, status) -> requests. Our users mark every non-200 answer as a failure named
    'HTTP <status>'; other failures (no answer at all) count as status 'error'."""
    counts: dict[tuple[str, str], int] = {}
    for entry in entries:
        if entry.num_requests - entry.num_failures:
            counts[(entry.name, "200")] = entry.num_requests - entry.num_failures
    for error in errors:
        match = HTTP_STATUS.match(str(error.error))
        key = (error.name, match.group(1) if match else "error")
        counts[key] = counts.get(key, 0) + error.occurrences
    return counts


class LocustCollector:
    def __init__(self, environment) -> None:
        self.environment = environment

    def collect(self):
        stats = self.environment.stats
        protocol = getattr(self.environment.parsed_options, "protocol", None) or "native"
        entries = [e for e in stats.entries.values() if e.num_requests]
        latency = HistogramMetricFamily("loadtest_request_duration_seconds",
                                        "Request latency seen by the load generator",
                                        labels=["model_name", "protocol"])
        for entry in entries:
            latency.add_metric([entry.name, protocol], cumulative_buckets(entry.response_times),
                               sum_value=entry.total_response_time / 1000)
        yield latency

        requests = CounterMetricFamily("loadtest_requests", "Requests by HTTP status",
                                       labels=["model_name", "status", "protocol"])
        for (model, status), count in sorted(status_counts(entries, stats.errors.values()).items()):
            requests.add_metric([model, status, protocol], count)
        yield requests

        runner = self.environment.runner
        users = GaugeMetricFamily("loadtest_users", "Users running")
        users.add_metric([], runner.user_count if runner else 0)
        yield users

        cpu = GaugeMetricFamily("loadtest_cpu_percent", "CPU use of each load-generator process",
                                labels=["process"])
        if runner is not None:
            cpu.add_metric(["master" if hasattr(runner, "clients") else "local"],
                           runner.current_cpu_usage)
            for worker_id, worker in getattr(runner, "clients", {}).items():
                cpu.add_metric([str(worker_id)], worker.cpu_usage)
        yield cpu


def serve(environment, port: int, host: str = "127.0.0.1") -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LocustCollector(environment))
    start_http_server(port, addr=host, registry=registry)
