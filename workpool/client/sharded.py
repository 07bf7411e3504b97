"""A sharded pool seen as one: requests grouped by the shard that holds each job, and what
each shard answers merged (stats, ended jobs, metrics, settings applied). With one shard every
function hands back its one answer unchanged."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence

import redis

from workpool.client.metrics import Histogram, NameMetrics, PoolMetrics
from workpool.client.stats import PoolStats
from workpool.core.config import PoolConfig
from workpool.types import Configured, JobStatus
from workpool.wire.keys import Keys
from workpool.wire.protocol import Fields, check_job_id
from workpool.wire.shards import place, shard_of


def by_shard(config: PoolConfig, job_ids: Iterable[str]) -> list[tuple[Keys, list[str]]]:
    """The ids grouped by the shard holding each, in order within a shard."""
    groups: dict[int, list[str]] = {}
    for job_id in job_ids:
        groups.setdefault(shard_of(check_job_id(job_id), config.shards), []).append(job_id)
    return [(config.shard_keys[i], ids) for i, ids in sorted(groups.items())]


def placed(config: PoolConfig, entries: list[Fields]) -> list[tuple[Keys, list[Fields]]]:
    """Entries with their shard named in their ids (see wire/shards.py), grouped by shard; a
    pool of one shard takes them as they are."""
    if config.shards == 1:
        return [(config.keys, entries)]
    return [(config.shard_keys[i], group) for i, group in place(entries, config.shards).items()]


def shard_count(client: redis.Redis, name: str) -> int:
    """How many shards pool `name` has, as its main loops told the coordinator (1 when none
    did: an unsharded pool, or one no loop ran yet)."""
    return int(client.hget(Keys(name).tokens, "n") or 1)


def applied(results: Sequence[Configured]) -> Configured:
    """A setting sent to every shard counts as applied once every shard applied it."""
    return "applied" if all(r == "applied" for r in results) else "sent"


def merge_stats(name: str, shards: Sequence[PoolStats]) -> PoolStats:
    """The pool's stats: each shard's counts added up (its settings and leader: the first
    shard's; its workers: the most any shard has, as every worker serves every shard)."""
    if len(shards) == 1:
        return shards[0]
    first = shards[0]
    added = {f.name: sum(getattr(s, f.name) for s in shards)
             for f in dataclasses.fields(PoolStats) if f.type == "int" and f.name != "workers"}
    by_priority: Counter[int] = Counter()
    counters: Counter[str] = Counter()
    for s in shards:
        by_priority.update(s.ready_by_priority)
        counters.update(s.counters)
    return dataclasses.replace(
        first, pool=name, **added, ready_by_priority=dict(by_priority), counters=dict(counters),
        workers=max(s.workers for s in shards), exists=any(s.exists for s in shards),
        rejected=[r for s in shards for r in s.rejected][:len(first.rejected) or 5])


def merge_ended(shards: Sequence[list[JobStatus]], limit: int) -> list[JobStatus]:
    """The `limit` newest of every shard's newest ended jobs."""
    if len(shards) == 1:
        return shards[0]
    every = [s for jobs in shards for s in jobs]
    return sorted(every, key=lambda s: s.finished_at or 0.0, reverse=True)[:limit]


def merge_metrics(name: str, shards: Sequence[PoolMetrics]) -> PoolMetrics:
    """The pool's metrics: counters and histograms by name added up over the shards."""
    if len(shards) == 1:
        return shards[0]
    names: dict[str, NameMetrics] = {}
    for shard in shards:
        for job, m in shard.names.items():
            was = names.get(job, NameMetrics())
            counters = Counter(was.counters)
            counters.update(m.counters)
            names[job] = NameMetrics(dict(counters), _added(was.duration, m.duration),
                                     _added(was.wait, m.wait))
    return PoolMetrics(
        stats=merge_stats(name, [s.stats for s in shards]), names=names,
        leader_changes=sum(s.leader_changes for s in shards),
        oldest_pending_age=max(s.oldest_pending_age for s in shards),
        workflows_running=sum(s.workflows_running for s in shards))


def _added(a: Histogram | None, b: Histogram | None) -> Histogram | None:
    """Two histograms of the same buckets added (either may be None)."""
    if a is None or b is None:
        return a or b
    return Histogram([x + y for x, y in zip(a.counts, b.counts, strict=True)], a.sum + b.sum)
