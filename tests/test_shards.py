"""Sharded pools (`Workpool(name, shards=K)`) on one server and on a Redis Cluster: jobs spread
over the shards (a concurrency key keeps its jobs in one), found by id without naming a shard,
served by one worker per process for every shard, and never more running than the pool's one
max_parallelism, however the work is spread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from click.testing import CliRunner
from helpers import eventually

from workpool import ConfigurationError, WorkflowContext, Workpool
from workpool.cli.main import cli
from workpool.mainloop.loop import MainLoop
from workpool.process import main_loops
from workpool.server.connection import sync_client
from workpool.testing.kit import running
from workpool.types import State
from workpool.wire.keys import Keys
from workpool.wire.protocol import text
from workpool.wire.shards import shard_of

pytestmark = pytest.mark.topologies  # each test on one server and on a cluster

SHARDS = 4
RUNNING, PEAK = "{shardtest}:running", "{shardtest}:peak"
_ENTER = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
return n
"""


@pytest.fixture
def sharded(redis_url: str) -> Iterator[Workpool]:
    """A pool of 4 shards whose `hold` jobs record how many of them run at once."""
    pool = Workpool("sh", redis_url, shards=SHARDS, max_parallelism=6, lease_ttl=1.5,
                    heartbeat_ttl=2.0)
    counter = sync_client(redis_url)

    @pool.job()
    def hold(i: int, ms: int = 30) -> int:
        counter.eval(_ENTER, 2, RUNNING, PEAK)
        try:
            time.sleep(ms / 1000)  # the work itself
        finally:
            counter.decr(RUNNING)
        return i

    yield pool
    pool.close()
    counter.close()


def test_jobs_spread_over_the_shards_and_are_found_by_id_alone(sharded: Workpool,
                                                                redis_client: redis.Redis) -> None:
    plain = sharded.enqueue_many("hold", [(i,) for i in range(40)])
    keyed = [sharded.enqueue("hold", 100 + i, concurrency_key="user:7") for i in range(6)]
    named = sharded.enqueue("hold", 200, key="order-9")
    assert len({shard_of(j, SHARDS) for j in plain}) >= 3
    assert len({shard_of(j, SHARDS) for j in keyed}) == 1  # a key's jobs share one shard
    assert sharded.enqueue("hold", 200, key="order-9") == named  # idempotent across shards
    for job_id in plain + keyed + [named]:
        shard = Keys("sh", shard_of(job_id, SHARDS))
        assert redis_client.hexists(shard.unstarted, job_id) or \
            redis_client.sismember(shard.incoming, job_id)
    with running(sharded):
        results = [sharded.wait(j, timeout=60).result for j in plain + keyed + [named]]
    assert results == [*range(40), *range(100, 106), 200]
    stats = sharded.stats()
    assert (stats.counters["enqueued"], stats.counters["succeeded"]) == (47, 47)
    assert stats.pool == "sh" and stats.running == 0


def test_the_pools_max_parallelism_holds_across_every_shard(sharded: Workpool,
                                                             redis_client: redis.Redis) -> None:
    ids = sharded.enqueue_many("hold", [(i, 80) for i in range(60)])
    with running(sharded, concurrency=10):
        for job_id in ids:
            assert sharded.wait(job_id, timeout=120).state is State.DONE
    peak = int(redis_client.get(PEAK) or 0)
    assert 0 < peak <= 6  # never more than the one limit, with four shards of 10 slots each
    tokens = {text(k): int(v) for k, v in redis_client.hgetall(Keys("sh").tokens).items()}
    assert tokens["n"] == SHARDS
    assert sum(tokens[f"a:{i}"] for i in range(SHARDS)) <= 6


def test_cancel_configure_and_the_cli_reach_every_shard(sharded: Workpool,
                                                        redis_url: str) -> None:
    sharded.configure(paused=True, wait=0)
    ids = sharded.enqueue_many("hold", [(i,) for i in range(12)])
    with running(sharded):
        eventually(lambda: sharded.stats().pending == 12, 30, "every shard applied them")
        assert sharded.cancel(ids[0], wait=10).value == "canceled"
        assert sharded.cancel_many(ids[1:6]) == 5
        eventually(lambda: sharded.stats().counters.get("canceled") == 6, 30, "six canceled")
        result = CliRunner().invoke(cli, ["--redis-url", redis_url, "status", ids[7],
                                          "--pool", "sh"])
        assert result.exit_code == 0 and "pending" in result.output, result.output
        assert sharded.configure(paused=False, wait=10) == "applied"
        for job_id in ids[6:]:
            assert sharded.wait(job_id, timeout=60).outcome == "succeeded"


def test_a_shard_with_all_the_work_gets_every_slot_the_others_do_not_use(
        sharded: Workpool, redis_client: redis.Redis) -> None:
    ids = [sharded.enqueue("hold", i, 400, concurrency_key="one") for i in range(24)]
    busy = shard_of(ids[0], SHARDS)
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(int(redis_client.zcard(Keys("sh", busy).running)))
            stop.wait(0.01)  # a sampling interval, not a wait for a condition

    watcher = threading.Thread(target=watch)
    with running(sharded, concurrency=10):
        watcher.start()
        for job_id in ids:
            sharded.wait(job_id, timeout=120)
        stop.set()
        watcher.join()
    assert max(seen) == 6  # the one shard reached the pool's whole limit, and no more


def test_a_workflow_runs_in_its_shard_and_its_steps_are_found_by_id(redis_url: str) -> None:
    pool = Workpool("shflow", redis_url, shards=SHARDS, lease_ttl=1.5, heartbeat_ttl=2.0)
    pool.job(name="double")(lambda x: 2 * x)

    @pool.workflow(name="twice")
    async def twice(ctx: WorkflowContext, x: int) -> int:
        return int(await ctx.step("double", int(await ctx.step("double", x))))

    with running(pool):
        flows = [pool.start_workflow("twice", i) for i in range(8)]
        assert [pool.wait(f, timeout=60).result for f in flows] == [4 * i for i in range(8)]
    assert len({shard_of(f, SHARDS) for f in flows}) > 1
    for flow in flows:
        steps = pool.workflow_status(flow).steps
        assert [s.job_id for s in steps] == [f"{flow}:1", f"{flow}:2"]
        assert all(pool.status(s.job_id).outcome == "succeeded" for s in steps)
        assert {shard_of(s.job_id, SHARDS) for s in steps} == {shard_of(flow, SHARDS)}
    pool.close()


def test_the_pools_rate_limit_holds_across_every_shard(redis_url: str,
                                                       redis_client: redis.Redis) -> None:
    pool = Workpool("shrate", redis_url, shards=SHARDS, rate_limit="10/1s", lease_ttl=1.5,
                    heartbeat_ttl=2.0)
    clock = sync_client(redis_url)

    @pool.job()
    def stamp(i: int) -> int:
        seconds, micros = clock.time()
        clock.rpush("{shardtest}:starts", seconds * 1000 + micros // 1000)
        return i

    ids = pool.enqueue_many("stamp", [(i,) for i in range(40)])
    assert len({shard_of(j, SHARDS) for j in ids}) == SHARDS
    with running(pool, concurrency=10):
        for job_id in ids:
            assert pool.wait(job_id, timeout=60).outcome == "succeeded"
    starts = sorted(int(t) for t in redis_client.lrange("{shardtest}:starts", 0, -1))
    busiest = max(sum(1 for t in starts if first <= t < first + 1000) for first in starts)
    assert busiest <= 20  # one bucket: its 10 and 10 more a second, in any second
    pool.close()
    clock.close()


def test_workpool_loop_runs_every_shards_main_loop_and_a_sharded_pool_has_none_of_its_own(
        sharded: Workpool, redis_client: redis.Redis) -> None:
    with pytest.raises(ConfigurationError, match="main loop per shard"):
        MainLoop(sharded)

    async def lead() -> list[int]:
        stop = asyncio.Event()
        leading = asyncio.create_task(main_loops(sharded)(stop))
        held: list[int] = []
        deadline = time.monotonic() + 30
        while len(held) < SHARDS and time.monotonic() < deadline:
            held = [i for i in range(SHARDS) if redis_client.exists(Keys("sh", i).lease)]
            await asyncio.sleep(0.02)  # a poll interval
        stop.set()
        await leading
        return held

    assert asyncio.run(lead()) == list(range(SHARDS))  # a lease on every shard
    assert not any(redis_client.exists(Keys("sh", i).lease) for i in range(SHARDS))  # given up
