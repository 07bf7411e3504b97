"""The pool's metrics by job name (fields `<metric>|<name>` of `{wp:P}:metrics`), written once for
both languages: the scripts count them in the transitions they make (`lua_prelude()` renders the
names and the histograms' buckets as `M`, `M_BOUNDS`, `M_DURATION`, `M_WAIT`) and
workpool/observe/metrics.py reads them by the same names for Prometheus."""

from __future__ import annotations

from typing import Final


class Metric:
    """The counters kept per job (or workflow) name."""

    ENQUEUED: Final = "enqueued"  #: jobs created (by a client, a cron tick or a workflow)
    STARTED: Final = "started"  #: attempts started
    SUCCEEDED: Final = "succeeded"  #: jobs done succeeded
    FAILED: Final = "failed"  #: jobs done failed
    CANCELED: Final = "canceled"  #: jobs canceled
    RETRIED: Final = "retried"  #: failed attempts followed by a retry
    TIMEOUTS: Final = "timeouts"  #: attempts the reaper failed as Timeout
    WORKERS_LOST: Final = "workers_lost"  #: attempts the reaper failed as WorkerLost
    WORKFLOWS_STARTED: Final = "workflows_started"  #: workflows begun
    WORKFLOWS_SUCCEEDED: Final = "workflows_succeeded"  #: workflows done succeeded
    WORKFLOWS_FAILED: Final = "workflows_failed"  #: workflows done failed
    WORKFLOWS_CANCELED: Final = "workflows_canceled"  #: workflows canceled


NAMES: Final = {name: value for name, value in vars(Metric).items() if name.isupper()}

#: Upper bounds (ms, inclusive) of both histograms' buckets: an attempt's duration (start to
#: its end: reported, timed out or its worker found lost) and a job's wait for its first start
#: (from when it was due). From 5 ms to an hour: the work this queue runs is long-lived.
BOUNDS_MS: Final = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000,
                    300_000, 900_000, 3_600_000)
DURATION: Final = "duration"  #: histogram: `duration:<i>` counts bucket i (1-based, the last
WAIT: Final = "wait"  #: one past BOUNDS_MS), `duration:sum` the ms observed in all
SUM: Final = "sum"

#: the name label of every name past MAX_NAMES (not a valid job name: nothing else has it)
OTHER: Final = "(other)"
MAX_NAMES: Final = 1000  #: job names counted apart (the SET `{wp:P}:metricNames`)
SEPARATOR: Final = "|"  #: between a metric and its name in a field (never in a job name)


def bucket_fields(histogram: str) -> list[str]:
    """The field name of each bucket of `histogram`, in order (the last one past the bounds)."""
    return [f"{histogram}:{i}" for i in range(1, len(BOUNDS_MS) + 2)]


def lua_prelude() -> str:
    """Render the names as `M`, the bounds as `M_BOUNDS`, each histogram's fields (bucket i at
    index i, the sum at `.sum`) as `M_DURATION` and `M_WAIT`, and MAX_NAMES, OTHER and SEPARATOR
    as `M_LIMIT`."""
    def fields(histogram: str) -> str:
        return ("{" + ", ".join(f"'{f}'" for f in bucket_fields(histogram))
                + f", sum = '{histogram}:{SUM}'}}")
    body = ", ".join(f"{name}='{value}'" for name, value in NAMES.items())
    return (f"local M = {{{body}}}\n"
            + f"local M_BOUNDS = {{{', '.join(str(b) for b in BOUNDS_MS)}}}\n"
            + f"local M_DURATION = {fields(DURATION)}\nlocal M_WAIT = {fields(WAIT)}\n"
            + f"local M_LIMIT = {{names = {MAX_NAMES}, other = '{OTHER}', "
            + f"separator = '{SEPARATOR}'}}\n")
