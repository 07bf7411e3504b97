"""What the dashboard's pages read of a pool, all of it read-only and bounded: its metrics, its
workers' heartbeats, the last hour per minute, and lists of jobs by state from the indexes the
scripts keep (`ended`, `running`, `ready`, `due`, `retrying`), never a scan of the keyspace."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, cast

import redis

from workpool.errors import JobNotFound
from workpool.types import JobStatus, State, status_from_hash
from workpool.wire.counters import Counter
from workpool.wire.keys import GROUP, Keys
from workpool.wire.protocol import job_fields, text

if TYPE_CHECKING:
    from workpool.client.metrics import PoolMetrics
    from workpool.client.pool import Workpool

PAGE = 50  #: jobs a list shows at once
LOOKED_AT = 2000  #: index entries a filtered page reads at most before it stops
STATES = ("pending", "running", "retrying", "done", "failed", "canceled")
ENDED = ("done", "failed", "canceled")  #: the lists read from the `ended` indexes
SERIES = (Counter.STARTED, Counter.SUCCEEDED, Counter.FAILED)


@dataclass(frozen=True)
class WorkerInfo:
    """A consumer of the pool's dispatch stream, with its heartbeat if it beats."""

    name: str
    alive: bool
    beat: dict[str, Any]  #: what its heartbeat says (pid, host, concurrency, running, stuck)
    beat_ttl_ms: int  #: ms before its heartbeat expires (-2: none)
    idle_ms: int  #: since it last read
    pending: int  #: entries it holds


@dataclass(frozen=True)
class PoolView:
    """Everything the pool pages show of one pool."""

    metrics: PoolMetrics
    workers: list[WorkerInfo]
    minutes: list[tuple[int, dict[str, int]]]  #: (epoch minute, counts), oldest first, 60


def pool_view(pool: Workpool) -> PoolView:
    """Read one pool for its pages."""
    return PoolView(pool.metrics(), workers(pool), minutes(pool))


def workers(pool: Workpool) -> list[WorkerInfo]:
    """The dispatch group's consumers, live ones first (a sharded pool's first shard's: each
    worker serves every shard)."""
    r, k = pool.redis, pool.config.shard_keys[0]
    try:
        consumers = r.xinfo_consumers(k.dispatch, GROUP)
    except redis.ResponseError:  # no stream or group yet (no main loop ran): no workers
        return []
    pipe = r.pipeline(transaction=False)
    for c in consumers:
        pipe.get(k.heartbeat(text(c["name"])))
        pipe.pttl(k.heartbeat(text(c["name"])))
    replies = pipe.execute()
    found = []
    for i, c in enumerate(consumers):
        raw, ttl = replies[2 * i], int(replies[2 * i + 1])
        try:
            beat = json.loads(raw) if raw else {}
        except ValueError:
            beat = {}
        found.append(WorkerInfo(text(c["name"]), raw is not None, beat if isinstance(beat, dict)
                                else {}, ttl, int(c["idle"]), int(c["pending"])))
    return sorted(found, key=lambda w: (not w.alive, w.name))


def minutes(pool: Workpool) -> list[tuple[int, dict[str, int]]]:
    """The last 60 minutes (Redis clock), each with its started, succeeded and failed counts
    (every shard's added up)."""
    r, shards = pool.redis, pool.config.shard_keys
    now = int(r.time()[0]) // 60
    span = range(now - 59, now + 1)
    pipe = r.pipeline(transaction=False)
    for minute in span:
        for k in shards:
            pipe.hmget(k.throughput(minute), *SERIES)
    counts = pipe.execute()
    return [(m, {s: sum(int(c[j] or 0) for c in counts[i * len(shards):(i + 1) * len(shards)])
                 for j, s in enumerate(SERIES)}) for i, m in enumerate(span)]


@dataclass(frozen=True)
class JobFilter:
    """A jobs list: its state and the filters on it (empty: any)."""

    state: str = "done"
    name: str = ""
    ckey: str = ""
    before: float | None = None  #: ended lists: only jobs that ended earlier (the next page)
    offset: int = 0  #: other lists: where the page starts
    since: float | None = None  #: s since the epoch: ended (or else enqueued) then or later
    until: float | None = None  #: ... and before this
    kind: str = ""  #: "workflow": workflows only ("" any)

    def matches(self, job: JobStatus, h: dict[str, bytes]) -> bool:
        """True when `job` (its fields `h`) passes the name, concurrency-key and, for a list
        other than an ended one, enqueue-time filters."""
        at = job.enqueued_at or 0.0
        return (not self.kind or text(h.get("kind")) == self.kind) and (
            not self.name or job.name == self.name) and (
            not self.ckey or text(h.get("ckey")) == self.ckey) and (
            self.state in ENDED or ((self.since is None or at >= self.since)
                                    and (self.until is None or at < self.until)))


def job_filter(q: dict[str, str]) -> JobFilter:
    """The jobs list a query asks for (a value it cannot read is left out)."""
    state = q.get("state", "done")
    if state not in STATES:
        state = "done"
    try:
        before = float(q["before"]) if q.get("before") else None
        offset = max(0, int(q.get("offset") or 0))
    except ValueError:
        before, offset = None, 0
    return JobFilter(state, q.get("name", ""), q.get("ckey", ""), before, offset,
                           _utc(q.get("from")), _utc(q.get("to")))


def _utc(text: str | None) -> float | None:
    """A `datetime-local` field's value, read as UTC, in seconds since the epoch."""
    try:
        return datetime.fromisoformat(text or "").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def list_jobs(pool: Workpool, f: JobFilter) -> tuple[list[JobStatus], str | None]:
    """A page of jobs in state `f.state`, newest first where the index has an order, with the
    cursor of the next page (None: no more). Filters are applied while reading the index, at
    most LOOKED_AT entries a page."""
    r, shards = pool.redis, pool.config.shard_keys
    ended: list[float] = []  # the ended lists: each id's end (ms), for the next page's cursor
    if f.state in ENDED:  # newest first over every shard's index
        ends = [t for t in (f.before, f.until) if t is not None]
        top = f"({int(min(ends) * 1000)}" if ends else "+inf"
        bottom = "-inf" if f.since is None else str(int(f.since * 1000))
        scored = sorted((pair for k in shards for pair in cast(
            "list[tuple[bytes, float]]", r.zrevrangebyscore(
                k.ended_failed if f.state == "failed" else k.ended, top, bottom, start=0,
                num=LOOKED_AT, withscores=True))), key=lambda p: -p[1])[:LOOKED_AT]
        ids, ended = [text(i) for i, _ in scored], [float(t) for _, t in scored]
    else:  # the others in each shard's order, shard after shard
        upto = f.offset + LOOKED_AT
        ids = [i for k in shards for i in _in_state(r, k, f.state, upto)][f.offset:upto]
    page, read = _page(pool, ids, f)
    if len(page) < PAGE and read == len(ids) and len(ids) < LOOKED_AT:
        return page, None
    if ended:
        return page, f"before={ended[read - 1] / 1000}"
    return page, f"offset={f.offset + read}"


def _in_state(r: Any, k: Keys, state: str, upto: int) -> list[str]:
    """The first `upto` ids of a shard's jobs in `state` (running, retrying, or pending: due
    ones in line, by priority then enqueue order, then scheduled ones)."""
    if state == "running":
        return [text(i) for i in _members(r.zrevrange(k.running, 0, upto - 1))]
    if state == "retrying":
        return sorted(text(i) for i in _members(r.smembers(k.retrying)))[:upto]
    ready = [text(i) for i in _members(r.zrange(k.ready, 0, upto - 1))]
    return (ready + [text(i) for i in _members(r.zrange(k.due, 0, upto - 1))])[:upto]


def _members(reply: Any) -> list[bytes]:
    """A reply of members (a list or a set of bytes), as a list."""
    return list(cast("list[bytes] | set[bytes]", reply))


def _page(pool: Workpool, ids: list[str], f: JobFilter) -> tuple[list[JobStatus], int]:
    """Up to PAGE jobs of `ids` that pass the filter, and how many ids were read for them."""
    r = pool.redis
    page: list[JobStatus] = []
    read = 0
    for first in range(0, len(ids), PAGE):
        chunk = ids[first:first + PAGE]
        pipe = r.pipeline(transaction=False)
        for job_id in chunk:
            k = pool.config.keys_for(job_id)
            pipe.hgetall(k.job(job_id))
            pipe.hget(k.unstarted, job_id)
        replies = pipe.execute()
        for i, job_id in enumerate(chunk):
            read += 1
            h = job_fields(replies[2 * i], replies[2 * i + 1])
            if not h:
                continue
            job = status_from_hash(job_id, h)
            if f.state == "canceled" and job.state != State.CANCELED:
                continue
            if f.state == "done" and job.state != State.DONE:
                continue
            if f.matches(job, h):
                page.append(job)
                if len(page) == PAGE:
                    return page, read
    return page, read


def find(pool: Workpool, query: str) -> JobStatus | None:
    """The job whose id, or idempotency key, is `query` (None: neither; a sharded pool's key
    may be in any shard)."""
    shards = pool.config.shards
    keyed = [f"key:{query}"] if shards == 1 else [f"key:{query}@{i}" for i in range(shards)]
    for job_id in (query, *keyed):
        try:
            return pool.status(job_id)
        except (JobNotFound, ValueError):
            continue
    return None
