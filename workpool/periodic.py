"""Periodic (cron) jobs: the main-loop holder enqueues one job per tick, on Redis's clock.

Each tick's job has the idempotency key `cron:<name>:<tick_ms>` and the tick is recorded in the
`cron` hash by the same fenced script, so however many processes run (and even if two main
loops overlap for a moment) a tick yields exactly one job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workpool.cron import Schedule
from workpool.protocol import Fields, text
from workpool.scripts import Call, script

if TYPE_CHECKING:
    from workpool.keys import Keys


@dataclass(frozen=True)
class CronJob:
    """A registered periodic job: its job name, schedule and missed-tick policy."""

    name: str
    schedule: Schedule
    catch_up: bool  #: run the latest missed tick once (True) or skip it (False)
    grace: float  #: seconds after its time a tick still counts as on time


@dataclass(frozen=True)
class TickDecision:
    """What to do about one cron job now: which tick, and whether to enqueue or skip it."""

    tick_ms: int
    enqueue: bool
    next_ms: int  #: the tick after it


def decide(job: CronJob, last_ms: int | None, now_ms: int) -> TickDecision | None:
    """The tick to handle at `now_ms` given the last one handled, or None if none is due.

    Ticks older than the latest due one were missed and are never enqueued; the latest runs if
    it is within `grace`, or if it was missed and `catch_up` is set (never on a first start,
    where nothing was missed).
    """
    latest = job.schedule.previous_at_or_before(now_ms)
    if latest is None or (last_ms is not None and latest <= last_ms):
        return None
    on_time = now_ms - latest <= job.grace * 1000
    enqueue = on_time or (job.catch_up and last_ms is not None)
    return TickDecision(latest, enqueue, job.schedule.next_after(latest))


def tick_call(keys: Keys, token: str, job: CronJob, decision: TickDecision,
              fields: Fields) -> Call:
    """The fenced script call that records (and maybe enqueues) one tick."""
    flat = [x for kv in fields.items() if kv[0] != "id" for x in kv]
    return Call(script("enqueueCronTick"), [keys.lease, keys.cron, keys.pending_start,
                                            keys.incoming],
                [token, job.name, decision.tick_ms, "1" if decision.enqueue else "0", *flat])


def last_ticks(raw: Mapping[bytes | str, bytes | str]) -> dict[str, int]:
    """The `cron` hash as name -> last tick (ms)."""
    return {text(k): int(v) for k, v in raw.items()}
