"""Client operations written once as sans-IO generators, driven by a sync or an async client.

Each generator yields a `Step` (commands to send in one round trip, and whether as MULTI/EXEC)
and receives their replies, so `Workpool` and `AsyncWorkpool` share every line of logic.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from workpool.errors import JobNotFound
from workpool.keys import GROUP, Keys
from workpool.protocol import Fields, as_text_map, is_stream_id, text
from workpool.types import JobStatus, State, status_from_hash

Command = tuple[Any, ...]


@dataclass
class Step:
    """Commands for one round trip; `atomic` sends them as one MULTI/EXEC transaction."""

    commands: list[Command]
    atomic: bool = False


Ops = Generator[Step, list[Any], Any]

_PAGE = 1000


def enqueue_commands(keys: Keys, entries: Sequence[Fields]) -> list[Command]:
    """XADD each enqueue entry, and mark the ids as accepted so status() answers at once."""
    commands: list[Command] = []
    for fields in entries:
        flat = [x for pair in fields.items() for x in pair]
        commands.append(("XADD", keys.pending_start, "*", *flat))
    ids = [f["id"] for f in entries]
    commands.append(("SADD", keys.incoming, *ids))
    return commands


def enqueue(keys: Keys, entries: Sequence[Fields]) -> Ops:
    """Append enqueue entries in one MULTI/EXEC: all of them are accepted, or none."""
    yield Step(enqueue_commands(keys, entries), atomic=True)
    return [text(f["id"]) for f in entries]


def status(keys: Keys, job_id: str) -> Ops:
    """The job's status; pending while its enqueue entry waits to be applied."""
    commands: list[Command] = [("HGETALL", keys.job(job_id)), ("SISMEMBER", keys.incoming, job_id)]
    if is_stream_id(job_id):
        commands.append(("XRANGE", keys.pending_start, job_id, job_id))
    replies = yield Step(commands)
    h = as_text_map(replies[0])
    if h:
        return status_from_hash(job_id, h)
    if replies[1] or (len(replies) > 2 and replies[2]):
        return JobStatus(id=job_id, state=State.PENDING)
    msg = f"no job {job_id!r} in this pool: it was never enqueued here, its entry was rejected " \
          "as malformed (see `workpool stats`), or it finished longer ago than the retention"
    raise JobNotFound(msg)


def cancel(keys: Keys, job_ids: Iterable[str]) -> Ops:
    """Append cancel requests; the main loop applies them in order after earlier enqueues."""
    ids = list(job_ids)
    for start in range(0, len(ids), _PAGE):
        page = ids[start:start + _PAGE]
        yield Step([("XADD", keys.pending_start, "*", "op", "cancel", "id", i) for i in page])
    return len(ids)


def cancel_all(keys: Keys) -> Ops:
    """Cancel every job not finished now: pending, retrying, running and not yet applied ones.

    Pages through the accepted ids, the due set and the running set with SCAN cursors (each
    page one round trip), appending one cancel request per job; returns how many were sent.
    The order follows jobs (incoming -> due -> running -> due again for attempts that failed
    meanwhile), so a job moving on during the scan is not missed. A seen id is sent once.
    """
    sent = 0
    seen: set[str] = set()
    passes = (("SSCAN", keys.incoming), ("ZSCAN", keys.due), ("ZSCAN", keys.running),
              ("ZSCAN", keys.due))
    for kind, key in passes:
        cursor: Any = 0
        while True:
            reply = yield Step([(kind, key, cursor, "COUNT", _PAGE)])
            cursor, items = reply[0]
            members = {text(m) for m in ([m for m, _ in items] if kind == "ZSCAN" else items)}
            if members - seen:
                sent += yield from cancel(keys, sorted(members - seen))
                seen |= members
            if int(cursor) == 0:
                break
    return sent


def configure(keys: Keys, max_parallelism: int) -> Ops:
    """Append a live-configuration request; the main loop applies it at once."""
    yield Step([("XADD", keys.pending_start, "*", "op", "config",
                 "max_parallelism", max_parallelism)])
    return None


@dataclass(frozen=True)
class PoolStats:
    """Counts per state, running vs limit, throughput and anomaly counters of one pool."""

    pool: str
    pending: int
    running: int
    retrying: int
    max_parallelism: int | None
    accepted_not_applied: int  #: enqueue entries the main loop has not applied yet
    leader: str | None  #: lease token of the main-loop holder, if any
    workers: int  #: worker processes with a live heartbeat that have read from the pool
    finished_last_minute: int
    counters: dict[str, int] = field(default_factory=dict)
    rejected: list[dict[str, str]] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Jobs finished per second over the last minute."""
        return self.finished_last_minute / 60


def stats(keys: Keys, rejected_shown: int = 5) -> Ops:
    """Read the pool's counters and gauges in two round trips."""
    (now,) = yield Step([("TIME",)])
    minute = int(now[0]) // 60
    replies = yield Step([
        ("ZCARD", keys.due), ("ZCARD", keys.running), ("HGETALL", keys.stats),
        ("HGET", keys.config, "max_parallelism"), ("SCARD", keys.incoming), ("GET", keys.lease),
        ("XREVRANGE", keys.rejected, "+", "-", "COUNT", rejected_shown),
        ("GET", keys.throughput(minute)), ("GET", keys.throughput(minute - 1)),
        ("EVAL", _LIVE_WORKERS, 1, keys.dispatch, GROUP, keys.prefix),
    ])
    counters = {text(k): int(v) for k, v in replies[2].items()}
    retrying = counters.get("retrying", 0)
    this_minute, last_minute = int(replies[7] or 0), int(replies[8] or 0)
    elapsed = int(now[0]) % 60 + 1
    return PoolStats(
        pool=keys.pool,
        pending=int(replies[0]) - retrying + int(replies[4]),
        running=int(replies[1]),
        retrying=retrying,
        max_parallelism=None if replies[3] is None else int(replies[3]),
        accepted_not_applied=int(replies[4]),
        leader=text(replies[5]) or None,
        workers=int(replies[9]),
        finished_last_minute=this_minute + last_minute * (60 - elapsed) // 60,
        counters=counters,
        # raw fields of a rejected entry may be any bytes (bad msgpack): shown escaped, never fatal
        rejected=[{text(k): v.decode("utf-8", "backslashreplace") for k, v in entry.items()}
                  for _, entry in replies[6]],
    )


# Read-only: consumers of the dispatch group whose heartbeat is live (0 before the group exists).
_LIVE_WORKERS = """
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local live = 0
for _, c in ipairs(consumers) do
  if redis.call('EXISTS', ARGV[2] .. 'hb:' .. c[2]) == 1 then live = live + 1 end
end
return live
"""
