"""The main loop: the one actor that moves jobs between states.

1. Competes for the pool's lease (`acquireLease`); only the holder acts, and every script it
   runs checks the lease token, so a paused or partitioned old holder is rejected by Redis.
2. Each tick sends one pipeline (one round trip): renew the lease when due, apply client
   requests, apply worker outcomes, start due jobs into free slots, and reap lost attempts
   when due. Each script bounds its work to one batch. Requests and outcomes are applied
   only while their stream holds entries (startJobs reports both lengths; the XREAD that
   ends an idle wait says which woke it): an idle call costs Redis as much as ~40 jobs' work.
3. When a tick leaves nothing to do, it blocks on XREAD over both request streams until a new
   entry arrives or the next timer (due job, callback retry, reap, lease renewal) fires.
4. A shard's loop starts jobs only within its grant of the pool's slots (tokens.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar, cast

import redis.asyncio
from redis.exceptions import ResponseError

from workpool.core.config import HasConfig, PoolConfig, config_of
from workpool.core.logs import logger
from workpool.mainloop.cron import decide, last_ticks, tick_call
from workpool.mainloop.server_check import check_server
from workpool.mainloop.tokens import Grant
from workpool.server.backoff import Backoff, expected, pause
from workpool.server.connection import async_client
from workpool.wire.calls import Engine
from workpool.wire.codes import Code
from workpool.wire.protocol import text
from workpool.wire.replies import BatchReply, LeaseReply, ReapReply, StartReply
from workpool.wire.scripts import Call, Replies, arun

T = TypeVar("T")
_NOTHING = BatchReply(Code.OK, 0, "", [])  #: a stream with no entries: its script not called
_MS_ROUNDING_S = 0.002  #: a reap timed by Redis ms comes this much late, never early


@dataclass
class _Cursor:
    """Last applied entry id per stream: XREAD wakes only for entries after them; and whether
    each stream may hold entries not applied yet (its script is called only then)."""

    start: str = "0-0"
    completion: str = "0-0"
    requests: bool = True
    outcomes: bool = True


class MainLoop:
    """Runs the pool's transitions while it holds the lease; stands by otherwise."""

    def __init__(self, pool: PoolConfig | HasConfig, *, owner: str | None = None,
                 batch: int = 256, reap_interval: float | None = None) -> None:
        self.config = pool = config_of(pool)
        self.owner = owner or uuid.uuid4().hex
        self.engine = Engine(pool.keys, pool.engine_settings(batch))
        self.ttl_ms = round(pool.lease_ttl * 1000)
        self.reap_interval = reap_interval or min(1.0, pool.heartbeat_ttl / 4)
        self.token: str | None = None
        self.log = logger(pool=pool.name, loop=self.owner[:8])
        self._renew_at, self._reap_at = 0.0, 0.0
        self._cursor = _Cursor()
        self._cron_last: dict[str, int] = {}
        self._cron_next: dict[str, int] = {}
        #: since when this loop's own writes (lease acquired, then renewed) have all landed,
        #: with no error or stall since: only then could workers' heartbeats be written too
        #: (None: not so; a prompt read says nothing, OOM and READONLY refuse writes alone)
        self._writing_since: float | None = None
        self._stall_s = pool.heartbeat_ttl / 4  # a round trip this much slower: a stall
        self._grace_s = pool.heartbeat_ttl / 2  # the reaper's silence grace
        self._clock: tuple[int, float] | None = None  # (Redis ms, monotonic) of a reply
        self.grant = Grant.of(pool, self.engine)  # a shard's (None: a pool of one shard)

    async def run(self, stop: asyncio.Event) -> None:
        """Act as main loop until `stop` is set. It outlives any error: Redis away or refusing
        (OOM, BUSY, READONLY, a script error) or a defect of its own; it logs, backs off and
        goes on (after a defect it gives the lease up first, so another candidate may lead)."""
        client = async_client(self.config.url)
        backoff = Backoff()
        try:
            while not stop.is_set():
                try:
                    if self.token is None:
                        await self._campaign(client, stop)
                    else:
                        await self._tick(client, stop)
                    backoff.reset()
                except Exception as exc:  # an outage, a refusal, a script error, a defect
                    self._writing_since = None
                    if not expected(exc) and not isinstance(exc, ResponseError):
                        await self._release(client)  # a defect: let another candidate lead
                    await backoff.after(exc, "main loop step failed, retrying", self.log, stop)
        finally:
            await self._release(client)
            await client.aclose()

    async def _timed(self, reply: Awaitable[T], expected_s: float = 0.0) -> T:
        """Await one round trip; one slower than expected by a stall's margin marks trouble
        (Redis frozen, or this process paused): heartbeats may have lapsed meanwhile."""
        began = time.monotonic()
        result = await reply
        if time.monotonic() - began > expected_s + self._stall_s:
            self._writing_since = None
        return result

    def _reap_sent_ms(self) -> int | None:
        """Redis time now (from the last reply), if this loop's writes have landed for the
        last grace: the reaper then knows heartbeats could be written all along. A new leader,
        or one back from an error or a stall, is not trusted for a grace (it suspects afresh)."""
        since = self._writing_since
        if self._clock is None or since is None or time.monotonic() - since < self._grace_s:
            return None
        redis_ms, at = self._clock
        return redis_ms + round((time.monotonic() - at) * 1000)

    async def _campaign(self, client: redis.asyncio.Redis, stop: asyncio.Event) -> None:
        calls = Replies()
        acquired = calls.add(self._acquire())
        await self._timed(calls.arun(client, self.config.replication))
        lease = acquired.value
        if lease.code == Code.OK:
            self._lead(lease.token)
            for finding in await check_server(client, self.config.keys.prefix,
                                              self.config.replicas):  # what can lose jobs
                getattr(self.log, finding.level)(finding.message)
            self._cron_last = last_ticks(await client.hgetall(self.config.keys.cron))
            self._cron_next = {}
            return
        await pause(stop, min(max(lease.ttl_ms, 50) / 1000, self.config.lease_ttl / 3))

    def _acquire(self) -> Call[LeaseReply]:
        """Take or renew the lease; a new holder writes the settings the code declares."""
        return self.engine.acquire(self.owner, self.ttl_ms, self.config.max_parallelism,
                                   self.config.declared_settings())

    def _lead(self, token: str) -> None:
        self.token = token
        self._writing_since = time.monotonic()  # the lease was just written
        self._renew_at = time.monotonic() + self.config.lease_ttl / 3
        self._reap_at = 0.0
        self._cursor = _Cursor()
        self.log.info("main loop lease acquired", epoch=int(token.split(":", 1)[0]))

    def _lose(self, why: str) -> None:
        self.log.warning("main loop lease lost", reason=why, token=self.token)
        self.token, self._writing_since = None, None
        if self.grant is not None:
            self.grant.forget()

    async def _tick(self, client: redis.asyncio.Redis, stop: asyncio.Event) -> None:
        assert self.token is not None
        token, now = self.token, time.monotonic()
        seed = secrets.token_hex(8)
        reap_now = now >= self._reap_at and self._clock is not None  # first, learn Redis's clock
        calls = Replies()
        renewed = calls.add(self._acquire()) if now >= self._renew_at else None
        cursor = self._cursor
        clock = f"+{self.config.clock_offset_ms}" if self.config.clock_offset_ms else None
        ingested = calls.add(self.engine.ingest(token, clock)) if cursor.requests else None
        applied = calls.add(self.engine.apply(token, seed, clock)) if cursor.outcomes else None
        caps = self.grant.caps(now) if self.grant is not None else (None, None)
        started = calls.add(self.engine.start(token, clock, *caps))
        reaped = calls.add(self.engine.reap(token, seed, clock,
                                            sent_ms=self._reap_sent_ms())) if reap_now else None
        await self._timed(calls.arun(client, self.config.replication))
        if renewed is not None:
            lease = renewed.value
            if lease.code != Code.OK or lease.token != token:
                self._lose("lease renewal refused")
                return
            self._renew_at = now + self.config.lease_ttl / 3
            if self._writing_since is None:  # writes land again (after an error or a stall)
                self._writing_since = now
        ingest = ingested.value if ingested is not None else _NOTHING
        apply_ = applied.value if applied is not None else _NOTHING
        start = started.value
        if Code.NOT_LEADER in (ingest.code, apply_.code, start.code):
            self._lose("fencing rejected a script")
            return
        self._clock = (start.now_ms, time.monotonic())
        if self.grant is not None and \
                not await self.grant.after_start(client, token, start, now, clock):
            self._lose("the coordinator refused a stale shard loop")
            return
        if reaped is not None:
            self._reaped(reaped.value)
            self._reap_at = self._next_reap(now, reaped.value.next_lost_ms)
        self._log_batch(ingest, "request")
        self._log_batch(apply_, "outcome")
        for job_id in start.ids:
            self.log.debug("transition", job=job_id, transition="start")
        await self._cron(client, start.now_ms)
        cursor.start = ingest.last_entry_id or cursor.start
        cursor.completion = apply_.last_entry_id or cursor.completion
        cursor.requests, cursor.outcomes = start.requests_waiting > 0, start.outcomes_waiting > 0
        batch = self.engine.settings.batch
        granted = self.grant is not None and start.ready and self.grant.cap(now) > start.running
        if (ingest.applied >= batch or apply_.applied >= batch or start.started >= batch
                or start.promoted >= batch or granted):
            return  # more work is waiting (or slots were just granted): go again at once
        await self._idle(client, stop, self._idle_ms(start, now))

    async def _cron(self, client: redis.asyncio.Redis, now_ms: int) -> None:
        """Enqueue (or record as missed) the due ticks of each periodic job, in one round trip:
        every tick within its grace runs, a leader handover included (periodic.decide)."""
        token = self.token
        due = [job for job in self.config.crons if self._cron_next.get(job.name, 0) <= now_ms]
        if not due or token is None:
            return
        calls, decided = Replies(), []
        for job in due:
            decisions = decide(job, self._cron_last.get(job.name), now_ms)
            if not decisions:
                self._cron_next[job.name] = job.schedule.next_after(now_ms)
                continue
            (fields,) = self.config.entries(job.name, [()], {})  # the script names the job
            for decision in decisions:
                decided.append((job, decision, calls.add(
                    tick_call(self.config.keys, token, job, decision, fields))))
        await calls.arun(client, self.config.replication)
        for job, decision, reply in decided:
            code = reply.value.code
            if code == Code.NOT_LEADER:
                self._lose("fencing rejected enqueueCronTick")
                return
            self._cron_last[job.name] = decision.tick_ms
            self._cron_next[job.name] = decision.next_ms
            if code == Code.DUPLICATE_ENQUEUE:
                continue  # another main loop handled it (overlapping leaders)
            if decision.enqueue:
                self.log.info("cron tick", job=job.name, tick_ms=decision.tick_ms,
                              late_ms=now_ms - decision.tick_ms, transition="enqueued")
            else:
                self.log.warning("cron ticks missed: no main loop ran for longer than the "
                                 "grace; the latest missed tick is skipped (catch_up=True would "
                                 "run it once)", job=job.name, tick_ms=decision.tick_ms,
                                 grace=job.grace, transition="skipped_missed")

    def _next_reap(self, now: float, next_lost_ms: int) -> float:
        """When to reap again: after the interval, or as soon as the first worker suspected
        now would be lost (Redis ms, -1: none), so a recovery never waits out an interval."""
        at = now + self.reap_interval
        if next_lost_ms >= 0 and self._clock is not None:
            redis_ms, seen = self._clock  # Redis had passed redis_ms when the reply was seen
            at = min(at, seen + (next_lost_ms - redis_ms) / 1000 + _MS_ROUNDING_S)
        return at

    def _reaped(self, reap: ReapReply) -> None:
        if reap.code == Code.NOT_LEADER:
            self._lose("fencing rejected reapLost")
        elif reap.timed_out or reap.lost or reap.redelivered:
            self.log.warning("reaped attempts", timed_out=reap.timed_out, worker_lost=reap.lost,
                             callbacks_redelivered=reap.redelivered)

    def _log_batch(self, reply: BatchReply, kind: str) -> None:
        for job_id, code in reply.outcomes:
            level = "warning" if code in (Code.REJECTED, Code.STALE_COMPLETION) else "debug"
            getattr(self.log, level)("transition", job=job_id, transition=code.name.lower(),
                                     entry=kind)

    def _idle_ms(self, start: StartReply, now: float) -> int:
        """How long nothing can happen unless a new entry arrives."""
        waits = [self._renew_at - now, self._reap_at - now, 10.0]  # 10: within TOPOLOGY_TIMEOUT
        redis_now = start.now_ms
        if start.running < start.max_parallelism:
            for t in (start.next_due_ms, start.next_admission_ms):
                if t is not None:
                    waits.append((t - redis_now) / 1000)
        if start.next_callback_ms is not None:
            waits.append((start.next_callback_ms - redis_now) / 1000)
        waits += [(t - redis_now) / 1000 for t in self._cron_next.values()]
        return max(1, round(min(waits) * 1000))

    async def _idle(self, client: redis.asyncio.Redis, stop: asyncio.Event, ms: int) -> None:
        if stop.is_set():
            return
        keys, cursor = self.config.keys, self._cursor
        woken = await self._timed(client.xread({keys.pending_start: cursor.start,
                                                keys.pending_completion: cursor.completion},
                                               count=1, block=ms), ms / 1000)
        streams = {text(name) for name, _ in cast("list[tuple[bytes, object]]", woken or [])}
        cursor.requests = cursor.requests or keys.pending_start in streams
        cursor.outcomes = cursor.outcomes or keys.pending_completion in streams

    async def _release(self, client: redis.asyncio.Redis) -> None:
        if self.token is None:
            return
        with contextlib.suppress(Exception):
            await arun(client, [self.engine.release(self.token)])
            self.log.info("main loop lease released")
        self.token = None
