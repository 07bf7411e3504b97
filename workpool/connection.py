"""Where a pool's Redis is: the given URL, else $WORKPOOL_REDIS_URL, else the embedded server."""

from __future__ import annotations

import os
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import redis

from workpool import validate
from workpool.errors import RedisUnavailable

ENV_URL = "WORKPOOL_REDIS_URL"
MAX_BACKOFF = 1.0  # s between reconnect attempts at most: retrying once a second is cheap


SCHEMES = ("redis://", "rediss://", "unix://")


def check_url(name: str, url: Any) -> str:
    """A Redis URL redis-py can open (redis://, rediss:// or unix://)."""
    if not isinstance(url, str) or not url.startswith(SCHEMES):
        validate.fail(name, "a Redis URL starting with " + ", ".join(SCHEMES), url)
    return url


def resolve_url(url: str | None) -> str:
    """The URL to use; starts (or reuses) the per-user embedded server when none is configured."""
    if url:
        return check_url("redis_url", url)
    env = os.environ.get(ENV_URL)
    if env:
        return check_url(f"${ENV_URL}", env)
    from workpool.embedded import ensure_local_server  # noqa: PLC0415 - only when needed

    return ensure_local_server()


def sync_client(url: str, socket_timeout: float | None = None) -> redis.Redis:
    """A binary-safe client (payloads stay bytes) with keepalive health checks; a
    `socket_timeout` for one that must never wait on a frozen server for long."""
    return redis.Redis.from_url(url, decode_responses=False, health_check_interval=30,
                                socket_connect_timeout=5, socket_timeout=socket_timeout)


class Backoff:
    """Waits between the retries of a loop that met an error: `first` seconds, doubling up to
    `cap`; back to `first` after a success (reset)."""

    def __init__(self, first: float = 0.1, cap: float = MAX_BACKOFF) -> None:
        self.first, self.cap = first, cap
        self.delay = first

    def next(self) -> float:
        """The wait before the next try (and double it for the one after)."""
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        """A try succeeded: the next error waits `first` again."""
        self.delay = self.first


@contextmanager
def unavailable_as_typed(url: str) -> Generator[None, None, None]:
    """Turn redis-py's connection errors into RedisUnavailable naming the URL."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        msg = f"cannot reach Redis at {url} ({exc}); the call may or may not have taken " \
              "effect. Check the server and retry: an enqueue with key= is safe to repeat."
        raise RedisUnavailable(msg) from exc
