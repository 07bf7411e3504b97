"""`workpool top`: one pool seen live in a terminal (rich): jobs per state, running against the
limit, rates, each job name's counts, and the latest failures."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from rich.console import Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from workpool.wire.metrics import Metric

if TYPE_CHECKING:
    from rich.console import RenderableType

    from workpool.client.metrics import PoolMetrics
    from workpool.client.pool import Workpool
    from workpool.types import JobStatus

FAILURES_SHOWN = 10
NAMES_SHOWN = 12
_RATES = (("started", Metric.STARTED), ("succeeded", Metric.SUCCEEDED),
          ("failed", Metric.FAILED))
_NAME_COLUMNS = (("enqueued", Metric.ENQUEUED), ("started", Metric.STARTED),
                 ("succeeded", Metric.SUCCEEDED), ("failed", Metric.FAILED),
                 ("retried", Metric.RETRIED), ("lost", Metric.TIMEOUTS))


@dataclass(frozen=True)
class Snapshot:
    """What one frame shows, read at monotonic time `at`."""

    metrics: PoolMetrics
    failures: list[JobStatus]
    at: float

    def total(self, metric: str) -> int:
        """A counter summed over every job name (workers lost counted with timeouts)."""
        extra = Metric.WORKERS_LOST if metric == Metric.TIMEOUTS else None
        return sum(m.counters.get(metric, 0) + (m.counters.get(extra, 0) if extra else 0)
                   for m in self.metrics.names.values())


def read(pool: Workpool) -> Snapshot:
    """A snapshot of `pool` now (five round trips)."""
    return Snapshot(pool.metrics(), pool.ended_jobs(limit=FAILURES_SHOWN, failed=True),
                    time.monotonic())


def render(now: Snapshot, before: Snapshot | None = None) -> RenderableType:
    """A frame: `before`, the previous snapshot, gives the rates over the interval."""
    m, s = now.metrics, now.metrics.stats
    head = Text.assemble(
        (f"pool {s.pool}", "bold"), f"   leader {s.leader or 'none'}   workers {s.workers}",
        ("   PAUSED" if s.paused else "", "bold red"))
    limit = s.max_parallelism
    states = Table.grid(padding=(0, 2))
    states.add_row("running", f"{s.running} of {limit if limit is not None else '?'}",
                   ProgressBar(total=max(limit or 1, 1), completed=min(s.running, limit or 0),
                               width=30))
    for label, value in (("pending", f"{s.pending} ({s.ready} ready to start)"),
                         ("retrying", str(s.retrying)),
                         ("held", f"{s.held_by_rate} by rate limits, {s.held_by_key} by "
                                  "concurrency keys"),
                         ("oldest waiting", f"{m.oldest_pending_age:.1f} s"),
                         ("workflows", f"{m.workflows_running} running")):
        states.add_row(label, value, "")
    return Group(head, states, _rates(now, before), _names(m), _failures(now.failures))


def _rates(now: Snapshot, before: Snapshot | None) -> RenderableType:
    line = Text(f"finished {now.metrics.stats.throughput:.1f}/s over the last minute")
    if before is not None and now.at > before.at:
        span = now.at - before.at
        line.append(f"; over the last {span:.0f} s: " + ", ".join(
            f"{label} {(now.total(metric) - before.total(metric)) / span:.1f}/s"
            for label, metric in _RATES))
    return line


def _names(m: PoolMetrics) -> RenderableType:
    table = Table(title="by job name (all time)", title_justify="left", expand=False)
    table.add_column("name")
    for label, _ in _NAME_COLUMNS:
        table.add_column(label, justify="right")
    table.add_column("mean attempt", justify="right")
    busiest = sorted(m.names.items(), key=lambda kv: -kv[1].counters.get(Metric.STARTED, 0))
    for name, counts in busiest[:NAMES_SHOWN]:
        c = counts.counters
        lost = c.get(Metric.TIMEOUTS, 0) + c.get(Metric.WORKERS_LOST, 0)
        d = counts.duration
        mean = f"{d.sum / n:.3f} s" if d is not None and (n := sum(d.counts)) else ""
        table.add_row(name, *(str(lost if metric == Metric.TIMEOUTS else c.get(metric, 0))
                              for _, metric in _NAME_COLUMNS), mean)
    return table


def _failures(failures: list[JobStatus]) -> RenderableType:
    table = Table(title="latest failures", title_justify="left")
    for column in ("ended (UTC)", "job", "name", "error"):
        table.add_column(column, overflow="fold" if column == "error" else "ellipsis")
    for job in failures:
        ended = datetime.fromtimestamp(job.finished_at or 0, timezone.utc).strftime("%H:%M:%S")
        lines = (job.error or "").strip().splitlines()  # the message, then the traceback
        error = f"{job.error_type or 'Error'}: {lines[0] if lines else ''}"
        table.add_row(ended, job.id, job.name, error[:160])
    if not failures:
        table.add_row("", "", "", "none within the retention")
    return table
