"""Per-batch handler metrics, emitted through TorchServe's metrics (declared in metrics.yaml), which
the frontend exposes to Prometheus: stage latency histograms, batch sizes, answers by status.

Each observation is a log line the worker prints and the frontend parses: about 40 us of Python
logging each, five per batch. Written before the batch's answers, they delayed every answer by
0.2 ms (digits answers one request in 2-6 ms, by CPU), so a thread of the worker's own writes them
while the worker waits for its next batch."""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter

log = logging.getLogger(__name__)

STAGE_SECONDS = "handler_stage_seconds"
BATCH_SIZE = "handler_batch_size"
RESPONSES = "handler_responses_total"


class HandlerMetrics:
    def __init__(self, metrics_cache, model_name: str) -> None:
        self.model_name = model_name
        self.stage_seconds = self.batch_size = self.responses = None
        self._batches: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        if metrics_cache is None:
            return  # outside TorchServe (unit tests): nothing to emit to
        from ts.metrics.metric_type_enum import MetricTypes

        try:
            self.stage_seconds = metrics_cache.get_metric(STAGE_SECONDS, MetricTypes.HISTOGRAM)
            self.batch_size = metrics_cache.get_metric(BATCH_SIZE, MetricTypes.HISTOGRAM)
            self.responses = metrics_cache.get_metric(RESPONSES, MetricTypes.COUNTER)
        except Exception as e:  # noqa: BLE001 - a server without our metrics.yaml still serves
            log.warning("handler metrics off: %s is not declared in TorchServe's metrics_config "
                        "(%s); use this project's metrics.yaml", STAGE_SECONDS, e)
            self.stage_seconds = self.batch_size = self.responses = None

    def record(self, stages: dict[str, float], batch_size: int, statuses: list[int],
               protocols: list[str]) -> None:
        """Queues one batch's observations for the writer thread; returns at once."""
        if self.stage_seconds is None:
            return
        if self._writer is None:  # started in the worker that records, not before it is forked
            self._writer = threading.Thread(target=self._write_forever, name="handler-metrics",
                                            daemon=True)
            self._writer.start()
        self._batches.put((stages, batch_size, statuses, protocols))

    def _write_forever(self) -> None:
        while True:
            batch = self._batches.get()
            try:
                self.write(*batch)
            except Exception:  # noqa: BLE001 - a metric must never stop the ones after it
                log.exception("writing handler metrics failed")

    def write(self, stages: dict[str, float], batch_size: int, statuses: list[int],
              protocols: list[str]) -> None:
        for stage, seconds in stages.items():
            self.stage_seconds.add_or_update(seconds, [self.model_name, stage])
        self.batch_size.add_or_update(batch_size, [self.model_name])
        for (status, protocol), count in Counter(zip(statuses, protocols)).items():
            self.responses.add_or_update(count, [self.model_name, str(status), protocol])
