"""A worker process: takes attempts and callback deliveries from the dispatch stream, runs the
registered function, and appends each outcome to pendingCompletion. That stream and its own
heartbeat key are all a worker writes.

1. A heartbeat thread keeps `hb:<worker>` alive (PX ttl), even while jobs hog the event loop.
2. The reader takes at most as many entries as it has free slots (XREADGROUP, blocking).
3. Async jobs run on the event loop; sync jobs in a thread pool, or in child processes that get
   and return msgpack bytes only.
4. Outcomes go to the outbox (outcomes.py): all that is ready goes in one round trip.
5. Unless told otherwise, the process also competes for the main-loop lease.
6. SIGTERM/SIGINT: stop taking work, let running attempts finish (up to `grace`), flush, give
   the lease back, delete the heartbeat so anything left is reaped at once as WorkerLost.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import os
import socket
import threading
import time
import traceback
import uuid
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, cast

import redis
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from workpool import child
from workpool.connection import MAX_BACKOFF
from workpool.current import Running, enter
from workpool.errors import NonRetryableError, SerializationError, UnknownJobName
from workpool.fencing import still_current
from workpool.keys import GROUP
from workpool.logs import logger
from workpool.loop import MainLoop, _wait
from workpool.outcomes import Outbox, Outcome
from workpool.protocol import as_text_map, decode, encode, text
from workpool.types import status_from_hash

if TYPE_CHECKING:
    from workpool.pool import Workpool

ExecutorKind = Literal["thread", "process"]
StreamReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]
_SEEN = 65536  # entry ids remembered, so a re-read of our pending entries skips what we took


class Worker:
    """Runs a pool's registered jobs and on_complete handlers."""

    def __init__(self, pool: Workpool, *, concurrency: int = 10, executor: ExecutorKind = "thread",
                 run_loop: bool = True, worker_id: str | None = None, grace: float = 30.0,
                 pool_spec: str | None = None) -> None:
        self.pool = pool
        self.concurrency = concurrency
        self.executor_kind = executor
        self.run_loop = run_loop
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.grace = grace
        self.pool_spec = pool_spec
        self.log = logger(pool=pool.name, worker=self.id)
        self._outbox = Outbox(pool.keys.pending_completion, self.log)
        self._inflight: set[asyncio.Task[None]] = set()
        self._executor: Executor | None = None
        self._beat_stop = threading.Event()
        self._slot_freed = asyncio.Event()
        self._seen: dict[bytes, None] = {}  # entry ids taken, oldest first (bounded)
        self._attempts: dict[asyncio.Task[None], tuple[str, int]] = {}  # begun: job, attempt
        self._fencing: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: redis.asyncio.Redis | None = None
        self._beat_at = time.monotonic()  # last heartbeat written (set by the heartbeat thread)
        self._resumed_at = -math.inf  # first heartbeat after a gap of over half a TTL

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set, then stop gracefully."""
        self._executor = self._make_executor()
        self._loop = asyncio.get_running_loop()
        beat = threading.Thread(target=self._heartbeat, name="workpool-heartbeat", daemon=True)
        self._beat_stop.clear()
        beat.start()
        client = redis.asyncio.Redis.from_url(self.pool.url, decode_responses=False,
                                              socket_connect_timeout=5)
        self._client = client
        loop_stop = asyncio.Event()
        loop_task = (asyncio.create_task(MainLoop(self.pool, owner=self.id).run(loop_stop))
                     if self.run_loop else None)
        await self._beat_once(client)  # alive before taking any entry, so none is reaped early
        flusher = asyncio.create_task(self._outbox.run(client))
        self.log.info("worker started", concurrency=self.concurrency, executor=self.executor_kind,
                      main_loop=self.run_loop)
        try:
            await self._read_forever(client, stop)
        finally:
            await self._drain()
            self._outbox.close()
            await flusher
            await self._outbox.flush(client)
            loop_stop.set()
            if loop_task is not None:
                await loop_task
            self._beat_stop.set()
            beat.join()
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
                await client.delete(self.pool.keys.heartbeat(self.id))
            await client.aclose()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self.log.info("worker stopped")

    def _make_executor(self) -> Executor:
        if self.executor_kind == "process":
            if self.pool_spec is None:
                msg = "the process executor needs pool_spec ('module:attribute') to import the pool"
                raise ValueError(msg)
            return ProcessPoolExecutor(self.concurrency, initializer=child.init,
                                       initargs=(self.pool_spec,))
        return ThreadPoolExecutor(self.concurrency, thread_name_prefix="workpool-job")

    async def _beat_once(self, client: redis.asyncio.Redis) -> None:
        """Set the heartbeat once, right away (the thread keeps it alive from then on)."""
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
            await client.set(self.pool.keys.heartbeat(self.id), f"pid={os.getpid()}",
                             px=round(self.pool.heartbeat_ttl * 1000))
            self._beat_at = time.monotonic()

    def _heartbeat(self) -> None:
        """Thread: refresh the heartbeat key every ttl/3 with its own connection."""
        ttl_ms = round(self.pool.heartbeat_ttl * 1000)
        key = self.pool.keys.heartbeat(self.id)
        client = redis.Redis.from_url(self.pool.url, socket_connect_timeout=5, socket_timeout=5)
        failures, last_beat = 0, time.monotonic()
        while not self._beat_stop.is_set():
            try:
                client.set(key, f"pid={os.getpid()}", px=ttl_ms)
                failures, previous, last_beat = 0, last_beat, time.monotonic()
                if last_beat - previous > self.pool.heartbeat_ttl / 2:
                    self._resumed_at = last_beat  # stalled (paused, or Redis away) until now
                self._beat_at = last_beat
                if last_beat - previous > self.pool.heartbeat_ttl and self._loop is not None:
                    self._loop.call_soon_threadsafe(self._lapsed)  # we may have been reaped
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self.log.warning("heartbeat failed", error=str(exc))
                failures += 1
            # After a failure try again soon: a short outage must not outlast the key's TTL.
            interval = self.pool.heartbeat_ttl / 3
            self._beat_stop.wait(min(0.05 * 2**failures, interval) if failures else interval)
        client.close()

    async def _drain(self) -> None:
        """Let running attempts finish within the grace period; abandon the rest to the reaper."""
        if not self._inflight:
            return
        self.log.info("waiting for running attempts", running=len(self._inflight),
                      grace=self.grace)
        _, pending = await asyncio.wait(self._inflight, timeout=self.grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    # -- reading ---------------------------------------------------------------------------

    async def _read_forever(self, client: redis.asyncio.Redis, stop: asyncio.Event) -> None:
        keys = self.pool.keys
        backoff = 0.1
        check_every = max(1.0, self.pool.heartbeat_ttl / 2)
        check_at = 0.0  # when to look for entries delivered to us that we never saw
        while not stop.is_set():
            free = await self._free_slots(stop)
            if free == 0:
                continue
            try:
                if time.monotonic() >= check_at:
                    await self._take_unseen(client)
                    check_at = time.monotonic() + check_every
                read_at = time.monotonic()
                reply = cast("StreamReply", await client.xreadgroup(
                    GROUP, self.id, {keys.dispatch: ">"}, count=free, block=500))
                backoff = 0.1
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await _wait(stop, 0.2)  # no main loop has created the group yet
                continue
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self.log.warning("redis unreachable, retrying", error=str(exc), backoff=backoff)
                check_at = 0.0  # a reply lost with the connection may have carried entries
                await _wait(stop, backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            for _stream, entries in reply or []:
                for entry_id, raw in entries:
                    self._spawn(entry_id, as_text_map(raw), client, read_at)

    async def _take_unseen(self, client: redis.asyncio.Redis) -> None:
        """Run the entries Redis delivered to us but we never saw: a read whose reply was lost
        with its connection (or silently retried by the client library) leaves them in our
        pending list, where nobody would ever run them, since we are alive. XPENDING and
        XRANGE read without touching the entries' delivery times (the timeouts' clock)."""
        dispatch = self.pool.keys.dispatch
        pending = await client.xpending_range(dispatch, GROUP, "-", "+", 256, self.id)
        unseen = [e for e in (cast("bytes", p["message_id"]) for p in pending)
                  if e not in self._seen]
        if not unseen:
            return
        pipe = client.pipeline(transaction=False)
        for entry_id in unseen:
            pipe.xrange(dispatch, entry_id, entry_id)
        for entry_id, found in zip(unseen, await pipe.execute(), strict=True):
            if found and found[0][1]:
                self.log.warning("running an entry delivered to us but never seen",
                                 entry=text(entry_id))
                self._spawn(entry_id, as_text_map(found[0][1]), client, -math.inf)

    async def _free_slots(self, stop: asyncio.Event) -> int:
        """Wait until a slot is free (or stop is set); return how many are free."""
        while len(self._inflight) >= self.concurrency and not stop.is_set():
            self._slot_freed.clear()
            waiters = {asyncio.create_task(self._slot_freed.wait()),
                       asyncio.create_task(stop.wait())}
            _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
        return 0 if stop.is_set() else self.concurrency - len(self._inflight)

    def _spawn(self, entry_id: bytes, f: dict[str, bytes], client: redis.asyncio.Redis,
               read_at: float) -> None:
        """Run one delivered entry; `read_at` is when the read that returned it was issued
        (-inf when unknown), the earliest moment Redis may have handed it to us."""
        self._seen[entry_id] = None
        if len(self._seen) > _SEEN:
            del self._seen[next(iter(self._seen))]
        if f.get("kind") == b"cb":
            task = asyncio.create_task(self._deliver(client, f))
        else:
            task = asyncio.create_task(self._attempt(f, client, read_at, time.monotonic()))
        self._inflight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._attempts.pop(task, None)
        self._slot_freed.set()

    def _lapsed(self) -> None:
        """Our heartbeat lapsed (paused, or Redis unreachable): check our running attempts."""
        if self._client is not None and self._attempts:
            task = asyncio.create_task(self._fence(self._client))
            self._fencing.add(task)
            task.add_done_callback(self._fencing.discard)

    async def _fence(self, client: redis.asyncio.Redis) -> None:
        """Cancel the attempts that were given away while we could not beat."""
        running = list(self._attempts.items())
        try:
            current = await still_current(client, self.pool.keys, [a for _, a in running])
        except (RedisConnectionError, RedisTimeoutError, OSError):
            return  # the next successful beat after a lapse tries again
        for (task, (job_id, attempt)), ok in zip(running, current, strict=True):
            if not ok:
                self.log.warning("cancelling an attempt given away while this worker was "
                                 "unreachable (a thread-run job cannot be stopped, only left)",
                                 job=job_id, attempt=attempt)
                task.cancel()

    # -- running ---------------------------------------------------------------------------

    async def _call(self, fn: Any, is_async: bool, args: list[Any], kwargs: dict[str, Any],
                    timeout: float | None) -> Any:
        if is_async:
            work = fn(*args, **kwargs)
        else:
            run = partial(contextvars.copy_context().run, fn, *args, **kwargs)  # keeps current()
            work = asyncio.get_running_loop().run_in_executor(self._executor, run)
        return await (work if timeout is None else asyncio.wait_for(work, timeout))

    async def _attempt(self, f: dict[str, bytes], client: redis.asyncio.Redis, read_at: float,
                       received: float) -> None:
        job_id, attempt, name = text(f.get("id")), text(f.get("attempt")), text(f.get("name"))
        enc = text(f.get("enc")) or "msgpack"
        log = self.log.bind(job=job_id, attempt=attempt, name=name)
        if self._stalled(read_at, received) and \
                not await self._mine(client, job_id, int(attempt or 0)):
            log.warning("skipping an attempt given away while this worker stalled")
            return
        # Begun: from here a lapsed heartbeat's fence may cancel it (until here, this check is
        # its fence: it is not listed, so it is never "cancelled" before it began).
        self._attempts[cast("asyncio.Task[None]", asyncio.current_task())] = (
            job_id, int(attempt or 0))
        out: Outcome = {"kind": "run", "id": job_id, "attempt": attempt}
        timeout_ms = int(f.get("timeout_ms") or 0)
        running = Running(job_id, name, int(attempt or 0), 0, self.id)
        enter(running)  # this task's own context: current() inside the job
        try:
            spec = self.pool.registry.job(name)
            if self.executor_kind == "process" and not spec.is_async:
                raw = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
                    self._executor, child.run, name, f.get("args") or b"",
                    f.get("kwargs") or b"", enc, running), timeout_ms / 1000 or None)
                out.update(ok="1", result=raw)
            else:
                args = decode(f.get("args") or b"", enc) or []
                kwargs = decode(f.get("kwargs") or b"", enc) or {}
                value = await self._call(spec.fn, spec.is_async, args, kwargs,
                                         timeout_ms / 1000 or None)
                out.update(ok="1", result=encode(value, "json" if enc == "json" else "msgpack"))
            log.debug("transition", transition="attempt_succeeded")
        except (UnknownJobName, NonRetryableError, SerializationError) as exc:
            out.update(ok="0", retryable="0", error_type=type(exc).__name__, error=str(exc))
            log.warning("transition", transition="attempt_failed", retryable=False,
                        error=str(exc))
        except asyncio.TimeoutError:
            out.update(ok="0", retryable="1", error_type="Timeout",
                       error=f"attempt {attempt} ran past its timeout of {timeout_ms} ms")
            log.warning("transition", transition="attempt_timed_out")
        except Exception as exc:
            out.update(ok="0", retryable="1", error_type=type(exc).__name__,
                       error=f"{exc}\n{_short_traceback(exc)}")
            log.warning("transition", transition="attempt_failed", retryable=True,
                        error=repr(exc))
        self._outbox.put(out)

    async def _deliver(self, client: redis.asyncio.Redis, f: dict[str, bytes]) -> None:
        job_id, n = text(f.get("id")), text(f.get("n"))
        log = self.log.bind(job=job_id, delivery=n)
        h = await self._job_hash(client, job_id)
        if text(h.get("cb")) != "pending" or text(h.get("cb_n")) != n:
            return  # superseded: the main loop already closed or re-issued this delivery
        out: Outcome = {"kind": "cb", "id": job_id, "n": n}
        handler = text(h.get("on_complete"))
        enter(Running(job_id, handler, 0, int(n), self.id))
        try:
            spec = self.pool.registry.handler(handler)
            result = status_from_hash(job_id, h).to_result()
            context = decode(h.get("context") or b"", text(h.get("enc")) or "msgpack")
            if spec.is_async:
                await spec.fn(job_id, result, context)
            else:
                await asyncio.get_running_loop().run_in_executor(
                    None, contextvars.copy_context().run, spec.fn, job_id, result, context)
            out["ok"] = "1"
            log.debug("transition", transition="callback_delivered")
        except Exception as exc:
            out.update(ok="0", error=f"{type(exc).__name__}: {exc}")
            log.warning("transition", transition="callback_failed", error=repr(exc))
        self._outbox.put(out)

    def _stalled(self, read_at: float, received: float) -> bool:
        """Could the reaper have given this attempt away before it begins? It waited half a
        TTL since it reached us, this process wrote no heartbeat for half a TTL, or such a
        gap ended after its read was issued (paused: Redis may have handed it to us long
        before we woke and looked; the heartbeat thread may beat first on waking). An entry
        from an unknown read (read_at -inf: a lost reply) is always checked."""
        now, half = time.monotonic(), self.pool.heartbeat_ttl / 2
        return read_at == -math.inf or now - received > half or now - self._beat_at > half \
            or self._resumed_at > read_at

    async def _mine(self, client: redis.asyncio.Redis, job_id: str, attempt: int) -> bool:
        """Is this attempt still the job's current one? (If Redis cannot say: assume so.)"""
        try:
            return (await still_current(client, self.pool.keys, [(job_id, attempt)]))[0]
        except (RedisConnectionError, RedisTimeoutError, OSError):
            return True

    async def _job_hash(self, client: redis.asyncio.Redis, job_id: str) -> dict[str, bytes]:
        """The job's hash; waits out a Redis outage (dropping the delivery would strand it)."""
        backoff = 0.1
        while True:
            try:
                raw = await client.hgetall(self.pool.keys.job(job_id))
                return as_text_map(cast("dict[bytes, bytes]", raw))
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self.log.warning("redis unreachable, retrying", error=str(exc), backoff=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)


def _short_traceback(exc: BaseException, limit: int = 5) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-limit))
