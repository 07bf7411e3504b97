"""Where a pool's Redis is: the given URL, else $WORKPOOL_REDIS_URL, else the embedded server.
A URL names one server (redis://, rediss://, unix://), a Redis Cluster
(redis+cluster://host:port[,host:port...]) or a Sentinel-managed master
(redis+sentinel://host:port[,host:port...]/MASTERNAME)."""

from __future__ import annotations

import os
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any, cast

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.cluster import ClusterNode
from redis.exceptions import RedisClusterUnreachableError, SlotNotCoveredError

from workpool.core import validate
from workpool.errors import RedisRefused, RedisUnavailable
from workpool.server.urls import CLUSTER, SCHEMES, Topology, is_topology, parse

ENV_URL = "WORKPOOL_REDIS_URL"
#: what a call raises when Redis cannot be reached or answers too late (a cluster whose slot
#: has no master for the moment included)
TRANSPORT_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError,
                    RedisClusterUnreachableError, SlotNotCoveredError)
#: error codes of a server that refuses for a while (redis-py strips the code of some of them)
_REFUSALS = ("OOM", "BUSY", "READONLY", "MISCONF", "LOADING", "MASTERDOWN", "NOREPLICAS",
             "TRYAGAIN", "UNBLOCKED", "CLUSTERDOWN")
#: (a cluster's slot moved to another node, MOVED or ASK: the command was not run there)
_REFUSAL_CLASSES = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError,
                    redis.exceptions.BusyLoadingError, redis.exceptions.ClusterDownError,
                    redis.exceptions.TryAgainError, redis.exceptions.AskError)


def is_refusal(exc: BaseException) -> bool:
    """A reply refusing a command for the moment (the server is out of memory, busy with a
    script, a replica, loading, or cannot persist; a blocked read cut short by a change of
    role), as opposed to a defect of the call. In a pipeline redis-py puts its own words
    before the server's error code; a script refused at its first write names the code after
    the script's position (`Error running script ...: -READONLY ...`)."""
    if isinstance(exc, _REFUSAL_CLASSES):
        return True
    if not isinstance(exc, redis.ResponseError):
        return False
    reply = str(exc).rpartition(" of pipeline caused error: ")[2]
    if reply.startswith("Error running script"):
        reply = reply.rpartition(": -")[2]
    return reply.split(" ", 1)[0] in _REFUSALS


def check_url(name: str, url: Any) -> str:
    """A Redis URL workpool can open (see the module's docstring)."""
    if not isinstance(url, str) or not url.startswith(SCHEMES):
        validate.fail(name, "a Redis URL starting with " + ", ".join(SCHEMES), url)
    if is_topology(url):
        problem = parse(url).problem
        if problem:
            validate.fail(name, problem, url)
    return url


def resolve_url(url: str | None) -> str:
    """The URL to use; starts (or reuses) the per-user embedded server when none is configured."""
    if url:
        return check_url("redis_url", url)
    env = os.environ.get(ENV_URL)
    if env:
        return check_url(f"${ENV_URL}", env)
    from workpool.server.embedded import ensure_local_server  # noqa: PLC0415 - only when needed

    return ensure_local_server()


def _options(socket_timeout: float | None) -> dict[str, Any]:
    """Every client alike: binary-safe (payloads stay bytes), keepalive health checks, a
    bounded connect; a `socket_timeout` for one that must never wait on a frozen server."""
    return {"decode_responses": False, "health_check_interval": 30,
            "socket_connect_timeout": 5, "socket_timeout": socket_timeout}


def sync_client(url: str, socket_timeout: float | None = None) -> redis.Redis:
    """A blocking client for `url` (see _options); a cluster's client is typed as the Redis it
    stands in for (every call of a pool names keys of one slot)."""
    if not is_topology(url):
        return redis.Redis.from_url(url, **_options(socket_timeout))
    where = parse(url)
    options = {**_options(socket_timeout or TOPOLOGY_TIMEOUT), **where.credentials}
    if where.scheme == CLUSTER:
        return cast("redis.Redis", redis.RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in where.hosts], **options))
    sentinel = redis.sentinel.Sentinel(where.hosts, sentinel_kwargs=_sentinel_options(where))
    return cast("redis.Redis", sentinel.master_for(where.master, redis_class=_SentinelMaster,
                                                   **options))


class _SentinelMaster(redis.Redis):
    """A Sentinel's master client that closes its connections to the Sentinels with its own."""

    def close(self) -> None:
        super().close()
        pool: Any = self.connection_pool  # a SentinelConnectionPool
        for sentinel in pool.sentinel_manager.sentinels:
            sentinel.close()


class _AsyncSentinelMaster(redis.asyncio.Redis):
    """`_SentinelMaster` for asyncio."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool: Any = self.connection_pool  # a SentinelConnectionPool
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


#: s a call to a cluster node or a Sentinel's master may wait for its reply: a master cut off
#: (frozen, not closed) would otherwise hold it until it comes back, long after a replica took
#: over; the longest blocking read workpool makes (a main loop's idle wait) is 10 s
TOPOLOGY_TIMEOUT = 30.0


def _sentinel_options(where: Topology) -> dict[str, Any]:
    """How to talk to the Sentinels themselves: a bounded wait, their own credentials."""
    return {"socket_timeout": 5, "socket_connect_timeout": 5, **where.credentials}


#: connections an asyncio client opens at most (a wait or watch holds one while it listens):
#: more calls at once wait for a free one, for ASYNC_CONNECTION_WAIT s at most
ASYNC_CONNECTIONS = 1000
ASYNC_CONNECTION_WAIT = 30.0


def async_client(url: str, socket_timeout: float | None = None) -> redis.asyncio.Redis:
    """An asyncio client for `url` (see _options); made in the event loop that uses it. Calls
    beyond ASYNC_CONNECTIONS at once wait (ASYNC_CONNECTION_WAIT s at most, then
    RedisUnavailable) for a connection instead of failing at once with "Too many connections"
    (redis-py's default pool, 100), so a burst of calls, many waits and watches, or a worker
    with a high --concurrency are served in turn."""
    if not is_topology(url):
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=ASYNC_CONNECTIONS, timeout=ASYNC_CONNECTION_WAIT,
            **_options(socket_timeout))
        return redis.asyncio.Redis.from_pool(pool)
    where = parse(url)
    options = {**_options(socket_timeout or TOPOLOGY_TIMEOUT), **where.credentials}
    if where.scheme == CLUSTER:
        return cast("redis.asyncio.Redis", redis.asyncio.RedisCluster(
            startup_nodes=[AsyncClusterNode(h, p) for h, p in where.hosts],
            max_connections=ASYNC_CONNECTIONS, **options))
    sentinel = redis.asyncio.sentinel.Sentinel(
        where.hosts, sentinel_kwargs=_sentinel_options(where))
    return cast("redis.asyncio.Redis", sentinel.master_for(
        where.master, redis_class=_AsyncSentinelMaster, **options))


@contextmanager
def unavailable_as_typed(url: str) -> Generator[None, None, None]:
    """Turn redis-py's connection errors into RedisUnavailable naming the URL, and a server's
    passing refusals (OOM, BUSY, READONLY, ...) into RedisRefused."""
    try:
        yield
    except (redis.RedisError, RedisClusterUnreachableError, SlotNotCoveredError) as exc:
        if not is_refusal(exc):
            if isinstance(exc, TRANSPORT_ERRORS):
                msg = f"cannot reach Redis at {url} ({exc}); the call may or may not have " \
                      "taken effect. Check the server and retry: an enqueue with key= is " \
                      "safe to repeat."
                raise RedisUnavailable(msg) from exc
            raise
        msg = f"Redis at {url} refused the call for now ({type(exc).__name__}: {exc}). " \
              "Retry once it recovers (an enqueue with key= is safe to repeat); if it " \
              "persists, see the server's maxmemory, replica and persistence settings."
        raise RedisRefused(msg) from exc
