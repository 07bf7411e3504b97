"""A worker's liveness and its own fencing, in one place.

The heartbeat thread keeps `hb:<worker>` alive (heartbeat.py). A worker that stalled (a paused
process, a Redis outage) may have been declared lost meanwhile and its attempts given to
others. So before it begins an attempt it has held for long it asks Redis whether the attempt
is still its own (`confirmed`), a guard stops the job just before its first instruction if a
stall may have come since (`stalled`), and after its heartbeat lapsed it asks about every
attempt it runs and cancels the ones given away (`fence`). Redis's own fencing (attempt
numbers) makes their outcomes stale anyway; this stops the work itself, so a zombie does not
keep calling out.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio

from workpool.core.config import PoolConfig
from workpool.server.backoff import Backoff, asked, pause
from workpool.wire.keys import Keys
from workpool.worker.heartbeat import Heartbeat


async def still_current(client: redis.asyncio.Redis, keys: Keys,
                        attempts: Sequence[tuple[str, int]]) -> list[bool]:
    """For each (job id, attempt): is the job running that very attempt? One round trip."""
    if not attempts:
        return []
    pipe = client.pipeline(transaction=False)
    for job_id, _ in attempts:
        pipe.hmget(keys.job(job_id), ["state", "attempts"])
    replies = await pipe.execute()
    return [state == b"running" and number == str(attempt).encode()
            for (_, attempt), (state, number) in zip(attempts, replies, strict=True)]


class Liveness:
    """One worker's heartbeat, stall detection and self-fencing."""

    def __init__(self, config: PoolConfig, worker_id: str, client: redis.asyncio.Redis,
                 halt: asyncio.Event, log: Any) -> None:
        self.config, self.worker_id, self.client, self.halt = config, worker_id, client, halt
        self.log = log
        self.key = config.keys.heartbeat(worker_id)
        self._heartbeat: Heartbeat | None = None
        self._attempts: dict[asyncio.Task[Any], tuple[str, int]] = {}  # begun: job, attempt
        self._fencing: set[asyncio.Task[None]] = set()

    def start(self, value: Callable[[], str], ended: Callable[[], object]) -> None:
        """Beat from now on in a thread of its own; `value` is what the key holds, `ended`
        is called (in the event loop) if that thread stops."""
        loop = asyncio.get_running_loop()
        self._heartbeat = Heartbeat(
            self.config.url, self.key, self.config.heartbeat_ttl, value, self.log,
            lapsed=lambda: loop.call_soon_threadsafe(self._lapsed),
            ended=lambda: loop.call_soon_threadsafe(ended))
        self._heartbeat.start()

    async def beat_once(self, value: str) -> None:
        """Set the heartbeat once, right away (the thread keeps it alive from then on)."""
        with contextlib.suppress(Exception):
            await self.client.set(self.key, value,
                                  px=round(self.config.heartbeat_ttl * 1000))
            if self._heartbeat is not None:
                self._heartbeat.beaten()

    async def stop(self) -> None:
        """Stop beating and delete the key, so what is left is reaped at once as WorkerLost."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
        with contextlib.suppress(Exception):
            await self.client.delete(self.key)

    @property
    def running(self) -> int:
        """How many attempts have begun and not ended."""
        return len(self._attempts)

    def hold(self, task: asyncio.Task[Any], job_id: str, attempt: int) -> None:
        """`task` runs this attempt from now: a lapsed heartbeat's fence may cancel it."""
        self._attempts[task] = (job_id, attempt)

    def release(self, task: asyncio.Task[Any]) -> None:
        """`task` runs the attempt no more (it ended, or stopped before its first step)."""
        self._attempts.pop(task, None)

    def stalled(self, read_at: float, received: float) -> bool:
        """Could the reaper have given this attempt away before it begins? It waited half a
        TTL since it reached us, this process wrote no heartbeat for half a TTL, or such a
        gap ended after its read was issued (paused: Redis may have handed it to us long
        before we woke and looked; the heartbeat thread may beat first on waking). An entry
        from an unknown read (read_at -inf: a lost reply) is always checked."""
        now, half = time.monotonic(), self.config.heartbeat_ttl / 2
        beat = self._heartbeat
        beat_at, resumed_at = (beat.beat_at, beat.resumed_at) if beat else (now, -math.inf)
        return read_at == -math.inf or now - received > half or now - beat_at > half \
            or resumed_at > read_at

    async def confirmed(self, job_id: str, attempt: int, read_at: float,
                        received: float) -> float | None:
        """When this attempt was last known to be ours with no stall since (None: it is not
        ours, or the worker stops). Without a stall since its read, that is now; else Redis is
        asked, and asked again while a stall may have come between asking and the answer."""
        since, got, backoff, asked_before = read_at, received, Backoff(), False
        while self.stalled(since, got):
            if asked_before:  # stalled again (or still: heartbeats refused): wait a little
                await pause(self.halt, backoff.next())
            asked_at = time.monotonic()
            if self.halt.is_set() or not await self.mine(job_id, attempt):
                return None
            since = got = asked_at
            asked_before = True
        return time.monotonic()

    async def mine(self, job_id: str, attempt: int) -> bool:
        """Is this attempt still the job's current one? Asked until Redis answers (False if the
        worker stops meanwhile): to begin one that was given away would run it twice at once."""
        current = await asked(
            "check that an attempt is still ours",
            lambda: still_current(self.client, self.config.keys, [(job_id, attempt)]),
            self.log, self.halt, job=job_id, attempt=attempt)
        return bool(current and current[0])

    def _lapsed(self) -> None:
        """Our heartbeat lapsed (paused, or Redis unreachable): check our running attempts."""
        if self._attempts:
            task = asyncio.create_task(self.fence())
            self._fencing.add(task)
            task.add_done_callback(self._fencing.discard)

    async def fence(self) -> None:
        """Cancel the attempts that were given away while we could not beat."""
        running = list(self._attempts.items())
        try:
            current = await still_current(self.client, self.config.keys,
                                          [a for _, a in running])
        except Exception:  # the next successful beat after a lapse tries again
            return
        for (task, (job_id, attempt)), ok in zip(running, current, strict=True):
            if not ok:
                self.log.warning("cancelling an attempt given away while this worker was "
                                 "unreachable (a thread-run job cannot be stopped, only left)",
                                 job=job_id, attempt=attempt)
                task.cancel()
