"""Harness for calling the Lua scripts directly: the `Pool` under test, its constants, @covers."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

import redis

from workpool import Workpool
from workpool.wire.calls import Engine
from workpool.wire.codes import Code
from workpool.wire.keys import GROUP, Keys
from workpool.wire.protocol import as_text_map, encode, text, with_spec
from workpool.wire.replies import (
    BatchReply,
    LeaseReply,
    ReapReply,
    StartReply,
    parse_batch,
    parse_lease,
    parse_reap,
    parse_start,
)
from workpool.wire.scripts import Call, run
from workpool.wire.statemachine import ABSENT, step

from . import job_fields

SEED = "seed-1"
OWNER, OTHER = "loop-a", "loop-b"
LEASE_MS = 60_000
RETENTION_MS = 3_600_000
BACKOFF_MS, BASE = 1000, 2.0
FAR = 10**9  #: ms: "much later" for clocks passed to the scripts

F = TypeVar("F", bound=Callable[..., Any])
COVERED: set[tuple[str, Code]] = set()


def covers(event: str, code: Code) -> Callable[[F], F]:
    """Mark a test as the one for the TABLE row (event, code)."""

    def mark(fn: F) -> F:
        COVERED.add((event, code))
        return fn

    return mark


def assert_table(event: str, before: str, code: Code, after: str, *facts: str) -> None:
    """The table, given the facts that hold, predicts what the scripts did."""
    row = step(event, before, dict.fromkeys(facts, True))
    assert (row.code, row.target or before) == (code, after), row


def jitter(seed: str, job_id: str, attempt: int) -> float:
    """The scripts' jitter: 0.5 + the first 32 bits of sha1(seed:id:attempt) / 2**32."""
    digest = hashlib.sha1(f"{seed}:{job_id}:{attempt}".encode()).hexdigest()
    return 0.5 + int(digest[:8], 16) / 2**32


def retry_due(now: int, job_id: str, attempt: int, backoff_ms: int = BACKOFF_MS,
              base: float = BASE) -> int:
    """Due time of the retry after failed `attempt`: now + backoff * base**(attempt-1) * jitter."""
    return now + int(backoff_ms * base ** (attempt - 1) * jitter(SEED, job_id, attempt))


def entries(reply: Any) -> list[tuple[str, dict[str, bytes]]]:
    """Stream entries (XRANGE or one stream of XREADGROUP) as (entry id, fields)."""
    return [(text(eid), as_text_map(f)) for eid, f in reply or []]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `predicate` until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.001)


@dataclass
class Pool:
    """A pool under test: a client, the engine, a lease token, and Redis helpers."""

    r: redis.Redis
    client: Workpool
    engine: Engine
    token: str

    @property
    def keys(self) -> Keys:
        return self.engine.keys

    def clock(self) -> int:
        """Redis's clock in ms (entry ids, hence enqueued_at, come from it)."""
        sec, usec = self.r.time()
        return int(sec) * 1000 + int(usec) // 1000

    def call(self, c: Call[Any]) -> Any:
        return run(self.r, [c])[0]

    def ingest(self, now: int, token: str | None = None) -> BatchReply:
        return parse_batch(self.call(self.engine.ingest(token or self.token, now)))

    def apply(self, now: int, token: str | None = None) -> BatchReply:
        return parse_batch(self.call(self.engine.apply(token or self.token, SEED, now)))

    def start(self, now: int, token: str | None = None) -> StartReply:
        return parse_start(self.call(self.engine.start(token or self.token, now)))

    def reap(self, now: int, token: str | None = None) -> ReapReply:
        return parse_reap(self.call(self.engine.reap(token or self.token, SEED, now)))

    def acquire(self, owner: str) -> LeaseReply:
        return parse_lease(self.call(self.engine.acquire(owner, LEASE_MS, 10)))

    def job(self, job_id: str) -> dict[str, bytes]:
        return job_fields(self.r, self.keys, job_id)

    def state(self, job_id: str) -> str:
        """The job's state as the table names it (done/succeeded, absent, ...)."""
        h = self.job(job_id)
        if not h:
            return ABSENT
        state = text(h["state"])
        return f"done/{text(h['outcome'])}" if state == "done" else state

    def stat(self, name: str) -> int:
        return int(self.r.hget(self.keys.stats, name) or 0)

    def score(self, zset: str, job_id: str) -> float | None:
        return self.r.zscore(zset, job_id)

    def finish_run(self, job_id: str, attempt: int, *, ok: bool, retryable: bool = True,
                   result: Any = None, error: str = "boom", error_type: str = "ValueError",
                   worker: str | None = None) -> None:
        """Append a run outcome exactly as a worker does (`worker`: the one that ran it)."""
        out: dict[str, str | bytes] = {"kind": "run", "id": job_id, "attempt": str(attempt)}
        if worker is not None:
            out["worker"] = worker
        if ok:
            out.update(ok="1", result=encode(result))
        else:
            out.update(ok="0", retryable="1" if retryable else "0", error_type=error_type,
                       error=error)
        self.r.xadd(self.keys.pending_completion, out)  # type: ignore[arg-type]

    def finish_callback(self, job_id: str, n: int, *, ok: bool, retryable: bool = True) -> None:
        """Append an on_complete delivery outcome exactly as a worker does."""
        out: dict[str, str | bytes] = {"kind": "cb", "id": job_id, "n": str(n)}
        out.update(ok="1") if ok else out.update(ok="0", error="RuntimeError: handler down")
        if not retryable:
            out["retryable"] = "0"
        self.r.xadd(self.keys.pending_completion, out)  # type: ignore[arg-type]

    def beat(self, worker: str) -> None:
        self.r.set(self.keys.heartbeat(worker), "pid=1", px=LEASE_MS)

    def deliver(self, worker: str, count: int = 10) -> list[tuple[str, dict[str, bytes]]]:
        """XREADGROUP as worker `worker`: the dispatch entries it now holds."""
        reply: Any = self.r.xreadgroup(GROUP, worker, {self.keys.dispatch: ">"}, count=count)
        return [e for _, stream in reply or [] for e in entries(stream)]

    def dispatched(self, kind: str | None = None) -> list[tuple[str, dict[str, bytes]]]:
        """Entries in the dispatch stream (optionally of one kind), read as a worker reads them
        (with_spec: a run entry's packed spec as fields)."""
        raw = cast("list[tuple[bytes, dict[bytes, bytes]]]", self.r.xrange(self.keys.dispatch))
        found = [(text(eid), with_spec(f)) for eid, f in raw]
        return [e for e in found if kind is None or e[1]["kind"] == kind.encode()]

    def held(self) -> int:
        """Dispatch entries delivered and not acknowledged."""
        return int(self.r.xpending(self.keys.dispatch, GROUP)["pending"])

    def running_job(self, *args: Any, worker: str | None = "w1", **options: Any) -> tuple[str, int]:
        """Enqueue, ingest and start one job at Redis's clock; deliver it to a live worker."""
        job_id = self.client.enqueue("work", *args, **options)
        t = self.clock()
        assert self.ingest(t).outcomes == [(job_id, Code.ENQUEUED)]
        assert self.start(t).ids == [job_id]
        if worker is not None:
            self.beat(worker)
            assert [f["id"] for _, f in self.deliver(worker)] == [job_id.encode()]
        return job_id, t

    def two_started(self) -> int:
        """Enqueue, ingest and start two jobs at Redis's clock (no worker has them yet); returns
        that time."""
        first, second = self.client.enqueue("work", 1), self.client.enqueue("work", 2)
        t = self.clock()
        self.ingest(t)
        assert sorted(self.start(t).ids) == sorted([first, second])
        return t

    def delivering(self, handler: str) -> tuple[str, int]:
        """A job that succeeded at time `t` (returned with it), its on_complete delivery 1
        taken by worker w1."""
        job_id, t = self.running_job(on_complete=handler)
        self.finish_run(job_id, 1, ok=True)
        assert self.apply(t).codes == [Code.SUCCEEDED]
        assert len(self.deliver("w1")) == 1
        return job_id, t

    def retrying_job(self, **options: Any) -> tuple[str, int]:
        """A job whose first attempt failed (retryable) at time `now`, returned with it."""
        job_id, t = self.running_job(**options)
        self.finish_run(job_id, 1, ok=False)
        now = t + 5
        assert self.apply(now).outcomes == [(job_id, Code.RETRY_SCHEDULED)]
        return job_id, now

    def snapshot(self) -> dict[bytes, bytes | None]:
        """DUMP of every key of the pool: equal snapshots mean nothing was written."""
        names = sorted(self.r.scan_iter(match=self.keys.prefix + "*"))
        return {k: self.r.dump(k) for k in names}


@contextmanager
def leased(client: Workpool, r: redis.Redis, *,
           silence_grace_ms: int | None = None) -> Iterator[Pool]:
    """`client`'s pool with the main-loop lease held, for a test to drive its scripts (with
    `silence_grace_ms` 0, a silent worker is lost at the first reap); the client is closed
    after."""
    settings = client.config.engine_settings()
    if silence_grace_ms is not None:
        settings = replace(settings, silence_grace_ms=silence_grace_ms)
    engine = Engine(client.keys, settings)
    lease = parse_lease(run(r, [engine.acquire(OWNER, LEASE_MS, 10)])[0])
    try:
        yield Pool(r, client, engine, lease.token)
    finally:
        client.close()
