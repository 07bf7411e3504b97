"""The testing kit behind `pool.testing`: the real main loop and a real worker, run in this
process on demand (in a thread with its own event loop), a clock that jumps (the scripts take
their time from the main loop: core/config.py's clock_offset_ms), and what is enqueued, read
from Redis. Nothing is faked: the same scripts and the same worker as in production."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from workpool.core import validate
from workpool.core.kit import Enqueued
from workpool.errors import WaitTimeout
from workpool.process import worker
from workpool.wire.limits import MAX_RUN_AFTER_MS
from workpool.wire.protocol import decode_arguments, job_fields, text

if TYPE_CHECKING:
    from workpool.client.pool import Workpool
    from workpool.process import Shards
    from workpool.types import JobStatus
    from workpool.worker.supervisor import Worker

_POLL_S = 0.01  # between looks at whether the pool is idle
_LISTED = 10_000  # enqueued jobs read at most


class WorkerThread(threading.Thread):
    """A Worker (and its main-loop candidate, unless told otherwise) on its own event loop in a
    background thread: `running()` starts it and stops it gracefully."""

    def __init__(self, pool: Workpool, options: Mapping[str, Any]) -> None:
        super().__init__(name=f"worker-{pool.name}", daemon=True)
        self.pool, self.options = pool, dict(options)
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.worker: Worker | Shards | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None

    def run(self) -> None:
        """The thread: the worker until stopped (its error kept for stop() to raise)."""
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the caller's thread by stop()
            self.error = exc
        finally:
            self.started.set()

    async def _main(self) -> None:
        self._event_loop, self._stop_event = asyncio.get_running_loop(), asyncio.Event()
        self.worker = worker(self.pool, **self.options)
        self.started.set()
        await self.worker.run(self._stop_event)

    def stop(self, timeout: float) -> None:
        """Stop gracefully (the lease given up); raise what the worker raised, if anything."""
        if self._event_loop is not None and self._stop_event is not None and self.is_alive():
            self._event_loop.call_soon_threadsafe(self._stop_event.set)
        self.join(timeout)
        if self.is_alive():
            msg = f"the worker of pool {self.pool.name!r} did not stop within {timeout} s"
            raise WaitTimeout(msg)
        if self.error is not None:
            raise self.error


@contextmanager
def running(pool: Workpool, **options: Any) -> Iterator[Worker | Shards]:
    """Run a Worker of `pool` (with its main-loop candidate, unless `main_loop=False`) in a
    background thread until the block ends."""
    options.setdefault("grace", 2.0)
    options.setdefault("worker_id", f"testing-{pool.name}-{os.getpid()}")
    thread = WorkerThread(pool, options)
    thread.start()
    thread.started.wait(10)
    try:
        if thread.worker is None:
            thread.stop(10)
            msg = f"the worker of pool {pool.name!r} did not start"
            raise WaitTimeout(msg)
        yield thread.worker
    finally:
        thread.stop(30)


class Kit:
    """`pool.testing` (workpool.core.kit.TestingKit) for one pool."""

    def __init__(self, pool: Workpool) -> None:
        self.pool = pool

    def advance(self, seconds: float) -> None:
        """Move the pool's clock on by `seconds` (it never goes back)."""
        ms = validate.number("seconds", seconds, 0, MAX_RUN_AFTER_MS / 1000)
        self.pool.config.clock_offset_ms += round(ms * 1000)

    def now(self) -> float:
        """The pool's time: Redis's clock, moved on by advance()."""
        sec, usec = self.pool.redis.time()
        return int(sec) + int(usec) / 1e6 + self.pool.config.clock_offset_ms / 1000

    def run_until_idle(self, timeout: float = 10.0, *, concurrency: int = 10) -> list[JobStatus]:
        """Run the main loop and a worker (`concurrency` slots) here until nothing is left to
        do now (nothing due, running, being delivered or replayed: a job due later, after
        advance(), waits), then stop them; the jobs and workflows that ended meanwhile,
        oldest first. WaitTimeout, naming what was still going on, after `timeout` s."""
        validate.number("timeout", timeout, 0, 24 * 3600, above=True)
        began = self.now()
        deadline = time.monotonic() + timeout
        with running(self.pool, concurrency=concurrency) as w:
            quiet = 0
            while quiet < 2:  # twice in a row: nothing was between two steps of the loop
                busy = self._busy(w.id)
                quiet = 0 if busy else quiet + 1
                if busy and time.monotonic() > deadline:
                    msg = f"pool {self.pool.name!r} still busy after {timeout} s: {busy}"
                    raise WaitTimeout(msg)
                time.sleep(_POLL_S)  # a poll interval, not a wait for the condition
        ended = self.pool.ended_jobs(since=began - 0.001, limit=_LISTED)
        return sorted(ended, key=lambda j: j.finished_at or 0)

    def _busy(self, worker_id: str) -> str:
        """What the pool (every shard of it) still has to do now ('' when nothing)."""
        now_ms = round(self.now() * 1000)
        busy = [text(self.pool.redis.eval(
            _BUSY, 11, k.pending_start, k.pending_completion, k.running, k.ready, k.due,
            k.callbacks_due, k.replays_due, k.wf_timers, k.dispatch, k.inbox(worker_id),
            k.stats, now_ms, "workers")) for k in self.pool.config.shard_keys]
        return "; ".join(b for b in busy if b)

    def enqueued(self, name: str | None = None) -> list[Enqueued]:
        """Jobs enqueued and not started yet (of job `name`), oldest first: entries the main
        loop has not applied, then pending jobs it has."""
        r = self.pool.redis
        found: list[Enqueued] = []
        for k in self.pool.config.shard_keys:  # (a sharded pool's, shard after shard)
            entries = cast("list[tuple[bytes, dict[bytes, bytes]]]",
                           r.xrange(k.pending_start, count=_LISTED))
            for entry_id, f in entries:
                fields = {text(key): value for key, value in f.items()}
                if text(fields.get("op")) in ("enqueue", ""):
                    found.append(_enqueued(text(fields.get("id")) or text(entry_id), fields))
            for job_id, packed in sorted(r.hscan_iter(k.unstarted, count=1000),
                                         key=lambda kv: kv[0]):
                found.append(_enqueued(text(job_id), job_fields({}, packed)))
        return [e for e in found if name is None or e.name == name]

    def assert_enqueued(self, name: str, args: Sequence[Any] | None = None,
                        kwargs: Mapping[str, Any] | None = None) -> Enqueued:
        """The first enqueued job of `name` with these args (and these kwargs among its own);
        AssertionError listing what is enqueued if there is none."""
        every = self.enqueued()
        for e in every:
            if _matches(e, name, args, kwargs):
                return e
        shown = "; ".join(f"{e.name}{tuple(e.args)}" for e in every[:20]) or "nothing"
        wanted = name + ("" if args is None else str(tuple(args)))
        msg = f"no job {wanted} enqueued in pool {self.pool.name!r}; enqueued: {shown}"
        raise AssertionError(msg)

    def refute_enqueued(self, name: str, args: Sequence[Any] | None = None) -> None:
        """AssertionError if a job of `name` (with these args) is enqueued."""
        found = [e for e in self.enqueued(name) if _matches(e, name, args, None)]
        if found:
            msg = f"{len(found)} job(s) {name} enqueued in pool {self.pool.name!r}: " \
                  f"{found[0].id} {tuple(found[0].args)}"
            raise AssertionError(msg)


def _enqueued(job_id: str, f: Mapping[str, bytes]) -> Enqueued:
    enc = "json" if text(f.get("enc")) == "json" else "msgpack"
    args, kwargs = decode_arguments(f.get("args") or b"", f.get("kwargs") or b"", enc)
    return Enqueued(job_id, text(f.get("name")), list(args), dict(kwargs))


def _matches(e: Enqueued, name: str, args: Sequence[Any] | None,
             kwargs: Mapping[str, Any] | None) -> bool:
    return e.name == name and (args is None or e.args == list(args)) and (
        kwargs is None or all(e.kwargs.get(k, _ABSENT) == v for k, v in kwargs.items()))


_ABSENT = object()

# Read-only: what the pool still has to do now, '' when nothing. Requests or outcomes not
# applied, attempts running, jobs ready or due (ARGV[1]: now, ms), deliveries, replays and
# timers due, dispatch entries (or the worker's inbox ones, KEYS[10]) not read or not acked
# (group ARGV[2]), jobs held back by a limit (the stats hash's gauges, KEYS[11]).
_BUSY = """
local now = ARGV[1]
local function after(a, b)  -- stream id a is later than b
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, bm = tonumber(am) or 0, tonumber(bm) or 0
  return am > bm or (am == bm and (tonumber(as) or 0) > (tonumber(bs) or 0))
end
local function unread(stream)
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
  if not ok then return 0 end
  for _, g in ipairs(groups) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f.name == ARGV[2] then
      local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
      local behind = last and after(last[1], f['last-delivered-id']) and 1 or 0
      return tonumber(f.pending) + behind
    end
  end
  return redis.call('XLEN', stream)
end
local checks = {
  {'requests not applied', redis.call('XLEN', KEYS[1])},
  {'outcomes not applied', redis.call('XLEN', KEYS[2])},
  {'attempts running', redis.call('ZCARD', KEYS[3])},
  {'jobs ready to start', redis.call('ZCARD', KEYS[4])},
  {'jobs due', redis.call('ZCOUNT', KEYS[5], '-inf', now)},
  {'on_complete deliveries due', redis.call('ZCOUNT', KEYS[6], '-inf', now)},
  {'replays due', redis.call('ZCOUNT', KEYS[7], '-inf', now)},
  {'workflow timers due', redis.call('ZCOUNT', KEYS[8], '-inf', now)},
  {'dispatch entries not done', unread(KEYS[9])},
  {'inbox entries not done', unread(KEYS[10])},
  {'jobs held by a limit', (tonumber(redis.call('HGET', KEYS[11], 'held_by_rate')) or 0) +
                           (tonumber(redis.call('HGET', KEYS[11], 'held_by_key')) or 0)},
}
for _, c in ipairs(checks) do
  if c[2] > 0 then return c[2] .. ' ' .. c[1] end
end
return ''
"""
