"""Pools' metrics in Prometheus's text format: a collector that reads each pool at every scrape
(so what it shows is what Redis holds, whichever process leads), and a server for it. The
counters are the scripts' own (kept in Redis, so they survive a leader change and any restart
of this exporter)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from workpool.client.metrics import Histogram, NameMetrics, PoolMetrics
from workpool.core import validate
from workpool.core.logs import logger
from workpool.errors import WorkpoolError
from workpool.wire import metrics
from workpool.wire.counters import Counter

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from workpool.client.pool import Workpool

#: counters by job (or workflow) name: family name (without _total) -> its metric and help
_BY_NAME = {
    "workpool_jobs_enqueued": (metrics.Metric.ENQUEUED, "Jobs created (by clients, cron ticks "
                               "and workflows)."),
    "workpool_jobs_started": (metrics.Metric.STARTED, "Attempts started."),
    "workpool_jobs_succeeded": (metrics.Metric.SUCCEEDED, "Jobs done succeeded."),
    "workpool_jobs_failed": (metrics.Metric.FAILED, "Jobs done failed (retries exhausted or "
                             "not retryable)."),
    "workpool_jobs_canceled": (metrics.Metric.CANCELED, "Jobs canceled."),
    "workpool_jobs_retried": (metrics.Metric.RETRIED, "Failed attempts followed by a retry."),
    "workpool_workflows_started": (metrics.Metric.WORKFLOWS_STARTED, "Workflows begun."),
    "workpool_workflows_succeeded": (metrics.Metric.WORKFLOWS_SUCCEEDED,
                                     "Workflows done succeeded."),
    "workpool_workflows_failed": (metrics.Metric.WORKFLOWS_FAILED, "Workflows done failed."),
    "workpool_workflows_canceled": (metrics.Metric.WORKFLOWS_CANCELED, "Workflows canceled."),
}
#: reason label of workpool_jobs_lost_total -> its metric
_LOST = {"timeout": metrics.Metric.TIMEOUTS, "worker_lost": metrics.Metric.WORKERS_LOST}
#: pool-wide counters of the stats hash: family name (without _total) -> counter and help
_POOL_COUNTERS = {
    "workpool_stale_completions": (Counter.STALE_COMPLETIONS, "Outcomes of attempts no longer "
                                   "current (a timed-out or lost attempt that reported late)."),
    "workpool_rejected_entries": (Counter.REJECTED, "Malformed stream entries set aside."),
    "workpool_duplicate_enqueues": (Counter.DUPLICATE_ENQUEUES, "Enqueues of an id that "
                                    "already existed (an idempotency key's repeats)."),
    "workpool_callbacks_delivered": (Counter.CALLBACKS_DELIVERED, "on_complete deliveries "
                                     "closed by the handler's success."),
    "workpool_callback_failures": (Counter.CALLBACK_FAILURES, "on_complete handler runs that "
                                   "failed (tried again)."),
    "workpool_callbacks_abandoned": (Counter.CALLBACKS_ABANDONED, "on_complete deliveries "
                                     "given up."),
    "workpool_workflow_replays": (Counter.REPLAYS, "Workflow replays handed to workers."),
}
_HISTOGRAMS = {
    "workpool_job_duration_seconds": ("duration", "Attempts, from their start to their end "
                                      "(reported, timed out, or their worker found lost)."),
    "workpool_job_queue_wait_seconds": ("wait", "Jobs, from when they were due to their "
                                        "first start."),
}


class PoolsCollector(Collector):
    """Reads every pool at each scrape. A pool whose Redis does not answer shows
    `workpool_up 0` (and is logged), the others as usual."""

    def __init__(self, pools: Sequence[Workpool]) -> None:
        self.pools = list(pools)

    def collect(self) -> Iterator[Metric]:
        """The families of every pool (prometheus_client calls this per scrape)."""
        up = GaugeMetricFamily("workpool_up", "1 when the pool's Redis answered this scrape.",
                               labels=["pool"])
        read: list[PoolMetrics] = []
        for pool in self.pools:
            try:
                read.append(pool.metrics())
            except WorkpoolError as exc:
                logger().warning("metrics: cannot read the pool", pool=pool.name, error=str(exc))
                up.add_metric([pool.name], 0)
            else:
                up.add_metric([pool.name], 1)
        yield up
        yield from families(read)


def families(pools: Sequence[PoolMetrics]) -> Iterator[Metric]:
    """The metric families of these pools' snapshots."""
    yield from _named_counters(pools)
    for family, (counter, doc) in _POOL_COUNTERS.items():
        c = CounterMetricFamily(family, doc, labels=["pool"])
        for p in pools:
            c.add_metric([p.stats.pool], p.stats.counters.get(counter, 0))
        yield c
    yield _per_pool(CounterMetricFamily(
        "workpool_leader_changes", "Main-loop leases taken afresh (the first one too).",
        labels=["pool"]), pools, lambda p: p.leader_changes)
    yield from _gauges(pools)
    yield from _histograms(pools)


def _named_counters(pools: Sequence[PoolMetrics]) -> Iterator[Metric]:
    for family, (metric, doc) in _BY_NAME.items():
        c = CounterMetricFamily(family, doc, labels=["pool", "name"])
        for p, name, m in _names(pools):
            if metric in m.counters:
                c.add_metric([p.stats.pool, name], m.counters[metric])
        yield c
    lost = CounterMetricFamily("workpool_jobs_lost", "Attempts the reaper ended: their timeout "
                               "passed, or their worker stopped heart-beating.",
                               labels=["pool", "name", "reason"])
    for p, name, m in _names(pools):
        for reason, metric in _LOST.items():
            if metric in m.counters:
                lost.add_metric([p.stats.pool, name, reason], m.counters[metric])
    yield lost


def _histograms(pools: Sequence[PoolMetrics]) -> Iterator[Metric]:
    for family, (histogram, doc) in _HISTOGRAMS.items():
        h = HistogramMetricFamily(family, doc, labels=["pool", "name"])
        for p, name, m in _names(pools):
            observed: Histogram | None = getattr(m, histogram)
            if observed is not None:
                h.add_metric([p.stats.pool, name], sum_value=observed.sum, buckets=[
                    ("+Inf" if b == float("inf") else repr(b), n)
                    for b, n in observed.cumulative()])
        yield h


def _names(pools: Sequence[PoolMetrics]) -> Iterator[tuple[PoolMetrics, str, NameMetrics]]:
    """Each pool's names in order."""
    for p in pools:
        for name, m in sorted(p.names.items()):
            yield p, name, m


def _gauges(pools: Sequence[PoolMetrics]) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("workpool_jobs", "Jobs per state now (pending: accepted, not "
                             "started yet, due or not).", labels=["pool", "state"])
    held = GaugeMetricFamily("workpool_jobs_held", "Due jobs held back by a limit now.",
                             labels=["pool", "reason"])
    for p in pools:
        s = p.stats
        for state, n in (("pending", s.pending), ("running", s.running),
                         ("retrying", s.retrying)):
            jobs.add_metric([s.pool, state], n)
        held.add_metric([s.pool, "rate_limit"], s.held_by_rate)
        held.add_metric([s.pool, "concurrency_key"], s.held_by_key)
    yield jobs
    yield held
    for family, doc, value in (
        ("workpool_running", "Attempts running now.", lambda p: p.stats.running),
        ("workpool_jobs_ready", "Due jobs free to start, waiting for a slot or the pool's rate "
         "limit.", lambda p: p.stats.ready),
        ("workpool_max_parallelism", "The limit in force (absent before any main loop ran).",
         lambda p: p.stats.max_parallelism),
        ("workpool_paused", "1 while the pool is paused.", lambda p: int(p.stats.paused)),
        ("workpool_oldest_pending_age_seconds", "How long the longest-waiting due job (or "
         "request not applied yet) has waited.", lambda p: p.oldest_pending_age),
        ("workpool_workers", "Worker processes with a live heartbeat.",
         lambda p: p.stats.workers),
        ("workpool_workflows_running", "Workflows running now.",
         lambda p: p.workflows_running),
    ):
        yield _per_pool(GaugeMetricFamily(family, doc, labels=["pool"]), pools, value)


def _per_pool(family: CounterMetricFamily | GaugeMetricFamily, pools: Sequence[PoolMetrics],
              value: Callable[[PoolMetrics], float | None]) -> Metric:
    """`family` with `value(pool)` for each pool (none where it is None)."""
    for p in pools:
        v = value(p)
        if v is not None:
            family.add_metric([p.stats.pool], v)
    return family


def registry_of(pools: Sequence[Workpool]) -> CollectorRegistry:
    """A registry holding only these pools' collector (no process metrics of this exporter)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolsCollector(pools))
    return registry


def serve(pools: Sequence[Workpool], host: str, port: int) -> WSGIServer:
    """Serve the pools' metrics at http://host:port/metrics in a background thread."""
    validate.integer("port", port, 0, 65535)
    server, _ = start_http_server(port, addr=host, registry=registry_of(pools))
    return server
