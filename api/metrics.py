"""Prometheus metrics of the service, served at `/metrics` (admin key required).

Job figures (jobs by state, queue depth, job durations per method) are read from the
database at scrape time, so every API process answers the same for every worker; the
broker's own queue lengths are asked of the broker. Upload bytes are counted in the API
process that received them: scrape each API process (its counters start at 0 when it
starts, which Prometheus's `rate()` handles as a reset).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings
from store import metrics, outbox, workers
from store.jobs import STATES
from worker.enqueue import JobQueue

log = logging.getLogger(__name__)

# seconds: a quantization of a small model takes seconds, a search hours
DURATION_BUCKETS_S = (1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0)


class DatabaseCollector(Collector):
    """Collected at every scrape, from the rows and the broker."""

    def __init__(self, sessions: sessionmaker[Session], queue: JobQueue, settings: Settings):
        self.sessions = sessions
        self.queue = queue
        self.settings = settings

    def collect(self) -> Iterable[Metric]:
        with self.sessions() as session:
            by_state = metrics.jobs_by_state(session)
            queued = metrics.queued_by_queue(session)
            durations = metrics.duration_histograms(session, DURATION_BUCKETS_S)
            backlog = outbox.backlog(session)
            live = workers.live_counts(
                session,
                sorted({self.settings.queue_cpu, self.settings.queue_gpu, *queued}),
                dead_after_s=self.settings.worker_dead_after_s,
            )
        jobs = GaugeMetricFamily("squeeze_jobs", "Jobs by state", labels=["state"])
        for state in sorted(STATES):
            jobs.add_metric([state], by_state.get(state, 0))
        yield jobs
        queue_names = sorted({self.settings.queue_cpu, self.settings.queue_gpu, *queued})
        depth = GaugeMetricFamily(
            "squeeze_queue_depth", "Queued jobs per queue (database rows)", labels=["queue"]
        )
        for name in queue_names:
            depth.add_metric([name], queued.get(name, 0))
        yield depth
        live_workers = GaugeMetricFamily(
            "squeeze_workers_live", "Live workers consuming each queue", labels=["queue"]
        )
        for name in queue_names:
            live_workers.add_metric([name], live.get(name, 0))
        yield live_workers
        yield from self._broker_lengths(queue_names)
        yield GaugeMetricFamily(
            "squeeze_outbox_pending",
            "Job messages written with their jobs and not yet taken by the broker",
            value=backlog.pending,
        )
        yield GaugeMetricFamily(
            "squeeze_outbox_oldest_age_seconds",
            "Age of the oldest job message waiting in the outbox (0 when none waits)",
            value=backlog.oldest_age_s or 0.0,
        )
        histogram = HistogramMetricFamily(
            "squeeze_job_duration_seconds",
            "Run time of finished jobs (last attempt, start to end) per method and state",
            labels=["method", "state"],
        )
        for entry in durations:
            buckets = [
                (str(bound), count)
                for bound, count in zip(DURATION_BUCKETS_S, entry.bucket_counts, strict=True)
            ]
            histogram.add_metric(
                [entry.method, entry.state], [*buckets, ("+Inf", entry.count)], entry.sum_s
            )
        yield histogram

    def _broker_lengths(self, queue_names: list[str]) -> Iterable[Metric]:
        lengths = GaugeMetricFamily(
            "squeeze_broker_queue_length",
            "Messages waiting in the broker per queue (absent when the broker does not answer)",
            labels=["queue"],
        )
        try:
            for name in queue_names:
                lengths.add_metric([name], self.queue.queue_length(name))
        except Exception:  # a scrape must answer even when the broker is down
            log.warning("metrics: the broker did not answer for queue lengths", exc_info=True)
            return
        yield lengths


class ServiceMetrics:
    """One registry per app: the database collector and the API process's counters."""

    def __init__(self, sessions: sessionmaker[Session], queue: JobQueue, settings: Settings):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DatabaseCollector(sessions, queue, settings))
        self.upload_bytes = Counter(
            "squeeze_upload_bytes",
            "Bytes of accepted uploads received by this API process",
            ["kind"],
            registry=self.registry,
        )
        self.uploads = Counter(
            "squeeze_uploads",
            "Accepted uploads received by this API process",
            ["kind"],
            registry=self.registry,
        )
        for kind in ("model", "dataset"):  # present at 0 before the first upload
            self.upload_bytes.labels(kind)
            self.uploads.labels(kind)

    def uploaded(self, kind: str, size_bytes: int) -> None:
        self.upload_bytes.labels(kind).inc(size_bytes)
        self.uploads.labels(kind).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def get_metrics(request: Request) -> ServiceMetrics:
    service_metrics = request.app.state.metrics
    assert isinstance(service_metrics, ServiceMetrics)
    return service_metrics


MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
