"""A master lost (SIGKILL) or cut off (SIGSTOP past the failover timeout) in a real Redis
Cluster and behind real Sentinels: with `replicas=1` every acknowledged enqueue survives the
promotion of a replica and ends exactly once, and the lease's fencing still refuses a stale
leader, on the promoted replica and on the old master come back."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from helpers import eventually

from workpool import Workpool
from workpool.errors import NotReplicated, RedisUnavailable
from workpool.server.connection import sync_client
from workpool.server.embedded import RedisServer
from workpool.server.replication import Replication, node_client
from workpool.server.topology import LocalCluster, LocalSentinel
from workpool.testing.kit import running
from workpool.wire.calls import Engine
from workpool.wire.codes import Code
from workpool.wire.scripts import Call, run

T = TypeVar("T")
FAILOVER_TIMEOUT = 60.0
Topology = LocalCluster | LocalSentinel


@pytest.fixture(params=["cluster", "sentinel"])
def failing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Topology]:
    """A topology of this test alone (its master is killed): a 3-master cluster with a
    replica each, or a master with a replica behind one Sentinel."""
    made: Topology = LocalCluster.start(tmp_path / "c") if request.param == "cluster" \
        else LocalSentinel.start(tmp_path / "s")
    try:
        yield made
    finally:
        for node in made.nodes if isinstance(made, LocalCluster) else made.data:
            if node.running:
                os.kill(node.pid, signal.SIGCONT)
        made.stop()


def _master(topo: Topology, pool: Workpool) -> RedisServer:
    return topo.master_of(pool.keys.prefix) if isinstance(topo, LocalCluster) else topo.master()


def _promoted(topo: Topology, pool: Workpool, old: RedisServer) -> bool:
    if isinstance(topo, LocalCluster):
        return topo.promoted(pool.keys.prefix, old)
    return topo.promoted(old)


def _one(client: redis.Redis, call: Call[T], rep: Replication | None = None) -> T:
    """One script call's typed reply."""
    return call.parse(run(client, [call], rep)[0])


def _enqueue(pool: Workpool, job: Any, i: int) -> str:
    """Enqueue job `i` until Redis acknowledges it (replicas included); the same key each
    time, so a retry after an unacknowledged try is the same job."""
    def sent() -> str | None:
        try:
            return pool.enqueue(job, i, key=f"job-{i}")
        except RedisUnavailable:
            return None
    return eventually(sent, FAILOVER_TIMEOUT, f"enqueue {i} acknowledged")


def test_every_acknowledged_job_survives_the_masters_death_with_replicas(
    failing: Topology,
) -> None:
    pool = Workpool("fo", redis_url=failing.url, replicas=1, lease_ttl=1.0,
                    heartbeat_ttl=1.0, max_parallelism=8)

    @pool.job()
    def echo(i: int) -> int:
        return i

    with running(pool):
        before = [_enqueue(pool, echo, i) for i in range(40)]
        old = _master(failing, pool)
        old.kill()
        eventually(lambda: _promoted(failing, pool, old), FAILOVER_TIMEOUT, "a replica promoted")
        old.restart()  # the promoted master has no replica (replicas=1 waits) until it is back
        after = [_enqueue(pool, echo, i) for i in range(40, 80)]
        for i, job_id in enumerate(before + after):
            status = pool.wait(job_id, timeout=FAILOVER_TIMEOUT)
            assert (status.outcome, status.result) == ("succeeded", i), status
    assert pool.stats().counters["succeeded"] >= 80
    pool.close()


def test_a_stale_leader_is_refused_on_the_promoted_replica_and_on_the_old_master(
    failing: Topology,
) -> None:
    pool = Workpool("fence", redis_url=failing.url)
    client = sync_client(failing.url, socket_timeout=2)  # the old master is frozen a while
    rep = Replication.of(1, 5.0)
    engine = Engine(pool.keys)
    stale_token = _one(client, engine.acquire("loop-a", 1000, 10), rep).token
    old = _master(failing, pool)
    on_old = redis.Redis(host="127.0.0.1", port=old.port, socket_timeout=2)  # the old one
    os.kill(old.pid, signal.SIGSTOP)  # cut off past the failover timeout
    try:
        eventually(lambda: _promoted(failing, pool, old), FAILOVER_TIMEOUT, "a replica promoted")

        def taken_over() -> str | None:
            try:  # the client learns of the promotion from its first failures
                with_new = _one(client, engine.acquire("loop-b", 60_000, 10))
            except redis.RedisError:
                return None
            return with_new.token if with_new.code == Code.OK else None

        fresh = eventually(taken_over, FAILOVER_TIMEOUT, "the lease taken over on the replica")
    finally:
        os.kill(old.pid, signal.SIGCONT)
    assert int(fresh.split(":")[0]) > int(stale_token.split(":")[0])  # the epoch survived
    assert _one(client, engine.ingest(stale_token)).code == Code.NOT_LEADER
    # the old master, back, is a replica of the new one: the stale leader writes nothing there
    eventually(lambda: on_old.info("replication")["role"] == "slave", FAILOVER_TIMEOUT,
               "the old master rejoined as a replica")
    try:  # a cluster's replica redirects (MOVED); a Sentinel's has the new lease: NOT_LEADER
        assert _one(on_old, engine.ingest(stale_token)).code == Code.NOT_LEADER
    except redis.exceptions.MovedError:
        assert isinstance(failing, LocalCluster)
    assert _one(client, engine.ingest(fresh)).code == Code.OK
    on_old.close()
    client.close()


def test_too_few_replicas_is_not_replicated_with_the_write_on_the_master(
    failing: Topology,
) -> None:
    pool = Workpool("few", redis_url=failing.url, replicas=2, replica_timeout=0.2)
    with pytest.raises(NotReplicated, match="only 1 of the 2 replicas"):
        pool.enqueue("echo", 1, key="k")
    client = sync_client(failing.url)
    assert node_client(client, pool.keys.prefix).xlen(pool.keys.pending_start) == 1  # unconfirmed
    enough = Workpool("few", redis_url=failing.url, replicas=1)
    assert enough.enqueue("echo", 1, key="k")
    for done in (client, enough, pool):
        done.close()
