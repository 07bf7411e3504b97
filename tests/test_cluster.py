"""Pools on a real Redis Cluster (3 masters, a replica each): spread over its nodes by their
hash tags, served by workers of one process, and followed through a change of topology (a
replica taking its master's slots over, so every command meets MOVED)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from helpers import eventually, node_of

from workpool import Workpool
from workpool.server.connection import sync_client
from workpool.server.embedded import RedisServer
from workpool.server.topology import LocalCluster
from workpool.server.urls import parse
from workpool.testing.kit import running


def _echo_pool(name: str, url: str) -> Workpool:
    pool = Workpool(name, redis_url=url, lease_ttl=1.0, heartbeat_ttl=1.0)

    @pool.job()
    def echo(i: int) -> int:
        return i

    return pool


def test_pools_spread_over_the_nodes_and_one_process_serves_them_all(
    workpool_redis_cluster: LocalCluster, workpool_redis_cluster_url: str,
) -> None:
    by_node: dict[int, str] = {}
    for i in range(64):  # a pool's hash tag decides its node
        node = workpool_redis_cluster.master_of(f"{{wp:p{i}}}:")
        by_node.setdefault(node.port, f"p{i}")
    assert len(by_node) == 3
    pools = [_echo_pool(name, workpool_redis_cluster_url) for name in by_node.values()]
    client = sync_client(workpool_redis_cluster_url)
    with running(pools[0]), running(pools[1]), running(pools[2]):
        ids = {p.name: p.enqueue_many("echo", [(i,) for i in range(30)]) for p in pools}
        for pool in pools:
            assert [pool.wait(j, timeout=30).result for j in ids[pool.name]] == list(range(30))
    for port, name in by_node.items():
        holder = node_of(client, f"{{wp:{name}}}:")
        assert holder.connection_pool.connection_kwargs["port"] == port
        assert holder.exists(f"{{wp:{name}}}:stats")  # its keys live on that node alone
    for pool in pools:
        pool.close()
    client.close()


def test_a_replica_taking_the_slots_over_is_followed_by_every_actor(tmp_path: Path) -> None:
    cluster = LocalCluster.start(tmp_path / "c")
    try:
        pool = _echo_pool("moved", cluster.url)
        with running(pool):
            before = pool.enqueue_many("echo", [(i,) for i in range(30)])
            old = cluster.master_of(pool.keys.prefix)
            replica = next(n for n in cluster.nodes if n is not old and _replica_of(n, old))
            asked = [0.0]

            def took_over() -> bool:  # a manual failover gives up after 5 s (a busy machine)
                if cluster.promoted(pool.keys.prefix, old):
                    return True
                if time.monotonic() - asked[0] > 8:
                    with redis.Redis(port=replica.port) as admin:
                        admin.execute_command("CLUSTER FAILOVER")
                    asked[0] = time.monotonic()
                return False

            eventually(took_over, 60, "the replica took over")
            after = pool.enqueue_many("echo", [(i,) for i in range(30, 60)])
            results = [pool.wait(j, timeout=30).result for j in before + after]
        assert results == list(range(60))
        pool.close()
    finally:
        cluster.stop()


def _replica_of(node: RedisServer, master: RedisServer) -> bool:
    with redis.Redis(port=node.port) as admin:
        return bool(admin.info("replication").get("master_port") == master.port)


@pytest.mark.parametrize(("url", "hosts", "master", "credentials"), [
    ("redis+cluster://10.0.0.1:7000,10.0.0.2:7001", [("10.0.0.1", 7000), ("10.0.0.2", 7001)],
     "", {}),
    ("rediss+cluster://u:p%40ss@h:7000", [("h", 7000)], "", {"ssl": True, "username": "u",
                                                              "password": "p@ss"}),
    ("redis+sentinel://:secret@[::1]:26379,s2:26380/my%20master",
     [("::1", 26379), ("s2", 26380)], "my master", {"username": None, "password": "secret"}),
])
def test_cluster_and_sentinel_urls_name_their_nodes_master_and_credentials(
    url: str, hosts: list[tuple[str, int]], master: str, credentials: dict[str, object],
) -> None:
    where = parse(url)
    assert (where.hosts, where.master, where.credentials, where.problem) == (
        hosts, master, credentials, "")


def test_a_sharded_pool_with_replicas_confirms_each_shards_writes_on_its_own_node(
    workpool_redis_cluster: LocalCluster, workpool_redis_cluster_url: str,
) -> None:
    pool = Workpool("shrep", redis_url=workpool_redis_cluster_url, shards=3, replicas=1,
                    lease_ttl=1.0, heartbeat_ttl=1.0)

    @pool.job()
    def echo(i: int) -> int:
        return i

    nodes = {workpool_redis_cluster.master_of(k.prefix).port for k in pool.config.shard_keys}
    assert len(nodes) > 1  # the shards live on different nodes
    ids = pool.enqueue_many("echo", [(i,) for i in range(30)])
    with running(pool):
        assert [pool.wait(j, timeout=30).result for j in ids] == list(range(30))
    assert pool.stats().counters["succeeded"] == 30
    pool.close()
