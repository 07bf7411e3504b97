"""`workpool stats`: counts per state, admission holds, limits, throughput and anomalies."""

from __future__ import annotations

from dataclasses import dataclass, field

from workpool.client.ops import Ops, Step
from workpool.wire.counters import Counter
from workpool.wire.keys import GROUP, Keys
from workpool.wire.protocol import text

_ENDED = (Counter.SUCCEEDED, Counter.FAILED, Counter.CANCELED)  # a minute's terminal counts
_RANK = 10**12  # ready-set rank = -priority * 1e12 + seq (see lua/includes/admission.lua)


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of one pool."""

    pool: str
    pending: int  #: accepted jobs waiting for their first start (due or not), applied or not
    running: int
    retrying: int
    ready: int  #: due jobs free to start now, waiting for a slot or a pool-wide token
    held_by_rate: int  #: due jobs held by their job name's rate limit
    held_by_key: int  #: due jobs waiting for their concurrency key's limit
    ready_by_priority: dict[int, int]
    settings: dict[str, str]  #: effective settings (live overrides over code defaults)
    accepted_not_applied: int  #: enqueue entries the main loop has not applied yet
    leader: str | None  #: lease token of the main-loop holder, if any
    workers: int  #: worker processes with a live heartbeat that have read from the pool
    threads_stuck: int  #: their job threads still busy with attempts that timed out
    finished_last_minute: int
    exists: bool = True  #: False when nothing of the pool is in Redis (no such pool)
    counters: dict[str, int] = field(default_factory=dict)
    rejected: list[dict[str, str]] = field(default_factory=list)

    @property
    def max_parallelism(self) -> int | None:
        """The limit in force (None before any main loop ran)."""
        value = self.settings.get("max_parallelism")
        return None if value is None else int(value)

    @property
    def paused(self) -> bool:
        """True while the pool is paused by `configure(paused=True)`."""
        return self.settings.get("paused") == "1"

    @property
    def throughput(self) -> float:
        """Jobs finished per second over the last minute."""
        return self.finished_last_minute / 60


def stats(keys: Keys, rejected_shown: int = 5) -> Ops[PoolStats]:
    """Read the pool's counters and gauges in three round trips."""
    (now,) = yield Step([("TIME",)])
    minute = int(now[0]) // 60
    replies = yield Step([
        ("HLEN", keys.unstarted), ("ZCARD", keys.running), ("HGETALL", keys.stats),
        ("HGETALL", keys.defaults), ("EVAL", _NOT_APPLIED, 1, keys.pending_start, *_SCAN),
        ("GET", keys.lease), ("XREVRANGE", keys.rejected, "+", "-", "COUNT", rejected_shown),
        ("HMGET", keys.throughput(minute), *_ENDED),
        ("HMGET", keys.throughput(minute - 1), *_ENDED),
        ("EVAL", _LIVE_WORKERS, 1, keys.dispatch, GROUP, keys.prefix),
        ("HGETALL", keys.config), ("ZCARD", keys.ready), ("SMEMBERS", keys.priorities),
        ("EXISTS", keys.defaults, keys.stats, keys.pending_start, keys.unstarted, keys.lease),
    ])
    priorities = sorted(int(p) for p in replies[12])
    counts = yield Step([("ZCOUNT", keys.ready, -p * _RANK, f"({-p * _RANK + _RANK}")
                         for p in priorities])
    counters = {text(k): int(v) for k, v in replies[2].items()}
    settings = {text(k): text(v) for k, v in replies[3].items()}
    settings.update({text(k): text(v) or "none" for k, v in replies[10].items()})
    retrying = counters.get(Counter.RETRYING, 0)
    this_minute, last_minute = (sum(int(n or 0) for n in replies[i]) for i in (7, 8))
    elapsed = int(now[0]) % 60 + 1
    return PoolStats(
        pool=keys.pool,
        pending=int(replies[0]) + int(replies[4]),
        running=int(replies[1]),
        retrying=retrying,
        ready=int(replies[11]),
        held_by_rate=counters.get(Counter.HELD_BY_RATE, 0),
        held_by_key=counters.get(Counter.HELD_BY_KEY, 0),
        ready_by_priority={p: int(n) for p, n in zip(priorities, counts, strict=True) if n},
        settings=settings,
        accepted_not_applied=int(replies[4]),
        leader=text(replies[5]) or None,
        workers=int(replies[9][0]),
        threads_stuck=int(replies[9][1]),
        finished_last_minute=this_minute + last_minute * (60 - elapsed) // 60,
        counters=counters,
        # raw fields of a rejected entry may be any bytes (bad msgpack): shown escaped, never fatal
        rejected=[{text(k): v.decode("utf-8", "backslashreplace") for k, v in entry.items()}
                  for _, entry in replies[6]],
        exists=int(replies[13]) > 0,
    )


# Read-only: consumers of the dispatch group whose heartbeat is live, and the job threads they
# report stuck in timed-out attempts (a heartbeat holds the worker's JSON; {0, 0} before the
# group exists).
_LIVE_WORKERS = """
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return {0, 0} end
local live, stuck = 0, 0
for _, c in ipairs(consumers) do
  local beat = redis.call('GET', ARGV[2] .. 'hb:' .. c[2])
  if beat then
    live = live + 1
    local parsed, info = pcall(cjson.decode, beat)
    if parsed and type(info) == 'table' then stuck = stuck + (tonumber(info.stuck) or 0) end
  end
end
return {live, stuck}
"""

_SCAN = (10_000, 1 << 20)  # pendingStart entries, bytes looked at; beyond, each is an enqueue
# Read-only: enqueue requests in pendingStart (not applied yet), without cancels and configs.
# Read 16 entries at a time and stop after ARGV[1] entries or ARGV[2] bytes, so a stream of
# large entries costs a bounded read; what is left is counted as enqueues (the common case).
_NOT_APPLIED = """
local n, seen, bytes, from = 0, 0, 0, '-'
while seen < tonumber(ARGV[1]) and bytes < tonumber(ARGV[2]) do
  local entries = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', 16)
  for _, e in ipairs(entries) do
    local op = 'enqueue'
    for i = 1, #e[2], 2 do
      bytes = bytes + #e[2][i] + #e[2][i + 1]
      if e[2][i] == 'op' then op = e[2][i + 1] end
    end
    if op == 'enqueue' then n = n + 1 end
  end
  seen = seen + #entries
  if #entries < 16 then break end
  from = '(' .. entries[#entries][1]
end
return n + math.max(0, redis.call('XLEN', KEYS[1]) - seen)
"""
