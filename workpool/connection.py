"""Where a pool's Redis is: the given URL, else $WORKPOOL_REDIS_URL, else the embedded server."""

from __future__ import annotations

import os
from collections.abc import Generator
from contextlib import contextmanager

import redis

from workpool.errors import RedisUnavailable

ENV_URL = "WORKPOOL_REDIS_URL"
MAX_BACKOFF = 1.0  # s between reconnect attempts at most: retrying once a second is cheap


def resolve_url(url: str | None) -> str:
    """The URL to use; starts (or reuses) the per-user embedded server when none is configured."""
    if url:
        return url
    env = os.environ.get(ENV_URL)
    if env:
        return env
    from workpool.embedded import ensure_local_server  # noqa: PLC0415 - only when needed

    return ensure_local_server()


def sync_client(url: str) -> redis.Redis:
    """A binary-safe client (payloads stay bytes) with keepalive health checks."""
    return redis.Redis.from_url(url, decode_responses=False, health_check_interval=30,
                                socket_connect_timeout=5)


@contextmanager
def unavailable_as_typed(url: str) -> Generator[None, None, None]:
    """Turn redis-py's connection errors into RedisUnavailable naming the URL."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        msg = f"cannot reach Redis at {url} ({exc}); the call may or may not have taken " \
              "effect. Check the server and retry: an enqueue with key= is safe to repeat."
        raise RedisUnavailable(msg) from exc
