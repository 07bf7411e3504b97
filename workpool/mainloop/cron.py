"""Periodic (cron) jobs: the main-loop holder enqueues one job per tick, on Redis's clock.

Each tick's job has the id `cron:<name>:<tick_ms>` (no idempotency key reaches it) and the tick
is recorded in the `cron` hash by the same fenced script, so however many processes run (and
even if two main loops overlap for a moment) a tick yields exactly one job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workpool.core.schedule import CronJob
from workpool.wire.protocol import Fields, text
from workpool.wire.replies import TickReply, parse_tick
from workpool.wire.scripts import Call, script

if TYPE_CHECKING:
    from workpool.wire.keys import Keys


MAX_TICKS = 100  #: ticks one loop pass handles per cron job; more go in the next pass


@dataclass(frozen=True)
class TickDecision:
    """What to do about one tick of a cron job: enqueue it, or record it as missed."""

    tick_ms: int
    enqueue: bool
    next_ms: int  #: the tick after it


def decide(job: CronJob, last_ms: int | None, now_ms: int,
           limit: int = MAX_TICKS) -> list[TickDecision]:
    """The ticks to handle at `now_ms` given the last one handled, oldest first.

    Every tick after the last one handled and at most `grace` old runs, so a leader handover or
    a short outage delays ticks and drops none. Ticks older than that were missed (every process
    was down): the latest of them is recorded as skipped, or runs once with `catch_up`; older
    ones never run. On a first start (no tick handled yet) nothing was missed: only the latest
    tick is looked at, and it runs if it is within its grace. At most `limit` decisions: the
    rest come at the next pass.
    """
    latest = job.schedule.previous_at_or_before(now_ms)
    if latest is None or (last_ms is not None and latest <= last_ms):
        return []
    grace_ms = round(job.grace * 1000)
    if last_ms is None:
        return [TickDecision(latest, now_ms - latest <= grace_ms, job.schedule.next_after(latest))]
    out: list[TickDecision] = []
    tick = job.schedule.next_after(last_ms)
    if now_ms - tick > grace_ms:  # missed ticks: one decision for the latest of them
        missed = job.schedule.previous_at_or_before(now_ms - grace_ms - 1)
        if missed is not None and missed > last_ms:
            out.append(TickDecision(missed, job.catch_up, job.schedule.next_after(missed)))
            tick = out[-1].next_ms
    while tick <= now_ms and len(out) < limit:
        out.append(TickDecision(tick, True, job.schedule.next_after(tick)))
        tick = out[-1].next_ms
    return out


def tick_call(keys: Keys, token: str, job: CronJob, decision: TickDecision,
              fields: Fields) -> Call[TickReply]:
    """The fenced script call that records (and maybe enqueues) one tick."""
    flat = [x for kv in fields.items() if kv[0] != "id" for x in kv]
    return Call(script("enqueueCronTick"), [keys.lease, keys.cron, keys.pending_start,
                                            keys.incoming],
                [token, job.name, decision.tick_ms, "1" if decision.enqueue else "0", *flat],
                parse_tick)


def last_ticks(raw: Mapping[bytes | str, bytes | str]) -> dict[str, int]:
    """The `cron` hash as name -> last tick (ms)."""
    return {text(k): int(v) for k, v in raw.items()}
