"""`pool.metrics()`: what Prometheus scrapes of one pool. The counts by job name and the
histograms the scripts keep (workpool/wire/metrics.py), the pool's `stats`, its leader changes
and the age of its oldest waiting job, read in four round trips."""

from __future__ import annotations

from dataclasses import dataclass, field

from workpool.client.ops import Ops, Step
from workpool.client.stats import PoolStats, stats
from workpool.wire import metrics
from workpool.wire.keys import Keys
from workpool.wire.protocol import SPEC_FIELDS, text


@dataclass(frozen=True)
class Histogram:
    """One histogram of one job name: the count in each bucket of `metrics.BOUNDS_MS` (and one
    past them), and the sum observed, in seconds."""

    counts: list[int]
    sum: float

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound in seconds, observations at or under it), the last bound infinite."""
        bounds = [b / 1000 for b in metrics.BOUNDS_MS] + [float("inf")]
        out, total = [], 0
        for bound, n in zip(bounds, self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


@dataclass(frozen=True)
class NameMetrics:
    """The counters (`metrics.Metric` names) and histograms of one job or workflow name."""

    counters: dict[str, int] = field(default_factory=dict)
    duration: Histogram | None = None  #: attempts, from their start to their end
    wait: Histogram | None = None  #: jobs, from when they were due to their first start


@dataclass(frozen=True)
class PoolMetrics:
    """A snapshot of one pool for its metrics."""

    stats: PoolStats
    names: dict[str, NameMetrics]  #: by job (or workflow) name; metrics.OTHER past the cap
    leader_changes: int  #: main-loop leases taken afresh, ever (the fencing epoch)
    oldest_pending_age: float  #: s the longest-waiting due job (or unapplied request) has waited
    workflows_running: int


def pool_metrics(keys: Keys) -> Ops[PoolMetrics]:
    """Read the pool's metrics: its stats (three round trips), then one more."""
    pool_stats = yield from stats(keys)
    replies = yield Step([
        ("HGETALL", keys.metrics), ("GET", keys.epoch), ("SCARD", keys.workflows),
        ("EVAL", _OLDEST_DUE, 4, keys.priorities, keys.ready, keys.unstarted,
         keys.pending_start, keys.job(""), SPEC_FIELDS.index("due_at") + 1),
    ])
    now_ms, oldest_ms = (int(v) for v in replies[3])
    return PoolMetrics(
        stats=pool_stats, names=_by_name(replies[0]), leader_changes=int(replies[1] or 0),
        oldest_pending_age=max(0, now_ms - oldest_ms) / 1000 if oldest_ms >= 0 else 0.0,
        workflows_running=int(replies[2]))


def _by_name(raw: dict[bytes, bytes]) -> dict[str, NameMetrics]:
    """The `metrics` hash's fields `<metric>|<name>` grouped by name."""
    fields: dict[str, dict[str, int]] = {}
    for key, value in raw.items():
        metric, _, name = text(key).partition(metrics.SEPARATOR)
        fields.setdefault(name, {})[metric] = int(value)
    return {name: NameMetrics(
        counters={m: n for m, n in f.items() if m in _COUNTERS},
        duration=_histogram(f, metrics.DURATION), wait=_histogram(f, metrics.WAIT))
        for name, f in fields.items()}


_COUNTERS = frozenset(metrics.NAMES.values())


def _histogram(f: dict[str, int], histogram: str) -> Histogram | None:
    counts = [f.get(b, 0) for b in metrics.bucket_fields(histogram)]
    if not any(counts):
        return None
    return Histogram(counts, f.get(f"{histogram}:{metrics.SUM}", 0) / 1000)


# Read-only: {now, due time of the longest-waiting job} in ms (-1: none waits). The candidates
# are the head of each priority's band of `ready` (due jobs free to start; a band is in enqueue
# order) and the oldest request in pendingStart not applied yet. A pending job's spec is in
# `unstarted` (ARGV[2]: due_at's position in it), a retrying job's due time in its hash (ARGV[1]:
# the prefix of a job's hash key).
_OLDEST_DUE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local oldest = -1
local function seen(ms)
  if ms and (oldest < 0 or ms < oldest) then oldest = ms end
end
for _, p in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local low = -tonumber(p) * 1e12
  local head = redis.call('ZRANGEBYSCORE', KEYS[2], string.format('%.0f', low),
                          '(' .. string.format('%.0f', low + 1e12), 'LIMIT', 0, 1)
  if head[1] then
    local raw = redis.call('HGET', KEYS[3], head[1])
    local ok, spec = pcall(cmsgpack.unpack, raw or '')
    if ok and type(spec) == 'table' then seen(tonumber(spec[tonumber(ARGV[2])]))
    else seen(tonumber(redis.call('HGET', ARGV[1] .. head[1], 'due_at'))) end
  end
end
local first = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)
if first[1] then seen(tonumber(string.match(first[1][1], '^(%d+)'))) end
return {now, oldest}
"""
