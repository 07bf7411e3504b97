"""Writes a failover cannot take back: with `replicas=N` a call's writes are followed, on the
same connection, by `WAIT N timeout`, and the call returns only once N replicas hold them.

Redis replication is asynchronous: a master acknowledges a write before any replica has it,
so a failover can lose it. WAIT counts the replicas that acknowledged everything this very
connection wrote, so the writes and the WAIT go out in one pipeline on one connection to the
server holding the pool's slot (a cluster's node for it, a Sentinel's current master).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio
from redis.asyncio.cluster import PipelineCommand
from redis.exceptions import AskError, RedisClusterUnreachableError, SlotNotCoveredError

from workpool.core import validate
from workpool.errors import NotReplicated

Command = tuple[Any, ...]
MAX_REPLICAS = 100


@dataclass(frozen=True)
class Replication:
    """How many replicas must confirm a write (`replicas`), and for how long to wait
    (`timeout_ms`)."""

    replicas: int
    timeout_ms: int

    @classmethod
    def of(cls, replicas: int, timeout: float) -> Replication | None:
        """None when no confirmation is asked (`replicas=0`); checks both arguments."""
        validate.integer("replicas", replicas, 0, MAX_REPLICAS)
        ms = validate.seconds_ms("replica_timeout", timeout, 60_000, positive=True)
        return cls(replicas, ms) if replicas else None

    def check(self, acknowledged: Any) -> None:
        """Raise NotReplicated unless WAIT's reply counts enough replicas."""
        if isinstance(acknowledged, Exception):  # the server is no master any more, say
            msg = f"the write's confirmation (WAIT) failed: {acknowledged}; it may or may " \
                  "not have landed. Retry (an enqueue with key= is safe to repeat)."
            raise NotReplicated(msg) from acknowledged
        if int(acknowledged) < self.replicas:
            msg = f"only {acknowledged} of the {self.replicas} replicas asked for (replicas=) " \
                  f"confirmed the write within {self.timeout_ms} ms: it is on the master " \
                  "and a failover now could lose it. Retry (an enqueue with key= is safe " \
                  "to repeat), and check the replicas (INFO replication)."
            raise NotReplicated(msg)


def _commands(commands: list[Command], atomic: bool, rep: Replication) -> list[Command]:
    """The pipeline: the writes (inside MULTI/EXEC if atomic), then WAIT."""
    body = [("MULTI",), *commands, ("EXEC",)] if atomic else list(commands)
    return [*body, ("WAIT", rep.replicas, rep.timeout_ms)]


def _replies(raw: list[Any], atomic: bool, rep: Replication) -> list[Any]:
    """The writes' replies (errors as values, as a pipeline's `raise_on_error=False`), or
    EXEC's for a transaction, once WAIT counted enough replicas. A transaction refused raises
    its first refused command's error (nothing of it was written)."""
    *body, acknowledged = raw
    if isinstance(acknowledged, Exception):  # a write's own refusal says more
        for reply in body:
            if isinstance(reply, Exception):
                raise reply
    if atomic:
        result = body[-1]
        if isinstance(result, Exception):
            raise next((r for r in body if isinstance(r, Exception)), result)
        rep.check(acknowledged)
        return list(result)
    rep.check(acknowledged)
    return body


def node_client(client: redis.Redis, key: str) -> redis.Redis:
    """The client of the one server that holds `key` now: a cluster's node for its slot (its
    slot map read again if the node answers MOVED), else `client` itself."""
    if isinstance(client, redis.RedisCluster):
        return cast("redis.Redis", client.get_redis_connection(client.get_node_from_key(key)))
    return client


def send(client: redis.Redis, commands: list[Command], atomic: bool,
         rep: Replication) -> list[Any]:
    """Send `commands` (each naming keys of one slot) and WAIT for `rep.replicas`, in one
    round trip on one connection to the server holding that slot."""
    key = _first_key(commands)
    for attempt in (1, 2):
        try:
            pipe = node_client(client, key).pipeline(transaction=False)
            for command in _commands(commands, atomic, rep):
                pipe.execute_command(*command)
            raw = list(pipe.execute(raise_on_error=False))
        except _UNSENT:
            if attempt == 2 or not _is_cluster(client):
                raise
            client.exists(key)  # the cluster client reads its slot map again
            continue
        except _LOST:
            if _is_cluster(client):
                with contextlib.suppress(*_LOST, *_UNSENT):
                    client.exists(key)
            raise
        if attempt == 1 and _moved(client, raw):
            client.exists(key)
            continue
        return _replies(raw, atomic, rep)
    raise AssertionError  # unreachable: the second attempt returns or raises


async def on_node(client: redis.asyncio.Redis, key: str, *command: Any) -> Any:
    """`command` on the one server that holds `key` now (a cluster's node for its slot, on
    the cluster's own connections), its reply parsed as usual."""
    if isinstance(client, redis.asyncio.RedisCluster):
        return await client.execute_command(*command, target_nodes=client.get_node_from_key(key))
    return await client.execute_command(*command)


async def _apipeline(client: redis.asyncio.Redis, key: str, commands: list[Command]) -> list[Any]:
    """`commands` in one pipeline on one connection to the server holding `key` (errors as
    values)."""
    if isinstance(client, redis.asyncio.RedisCluster):
        queued = [PipelineCommand(i, *c) for i, c in enumerate(commands)]
        await client.get_node_from_key(key).execute_pipeline(queued)
        return [c.result for c in queued]
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return list(await pipe.execute(raise_on_error=False))


async def asend(client: redis.asyncio.Redis, commands: list[Command], atomic: bool,
                rep: Replication) -> list[Any]:
    """`send` for asyncio clients."""
    key = _first_key(commands)
    for attempt in (1, 2):
        try:
            raw = await _apipeline(client, key, _commands(commands, atomic, rep))
        except _UNSENT:
            if attempt == 2 or not _is_cluster(client):
                raise
            await client.exists(key)
            continue
        except _LOST:
            if _is_cluster(client):
                with contextlib.suppress(*_LOST, *_UNSENT):
                    await client.exists(key)
            raise
        if attempt == 1 and _moved(client, raw):
            await client.exists(key)
            continue
        return _replies(raw, atomic, rep)
    raise AssertionError  # unreachable: the second attempt returns or raises


def _first_key(commands: list[Command]) -> str:
    """The key the first command names (an EVALSHA's first KEYS entry): every command of one
    call names keys of that key's slot."""
    first = commands[0]
    at = 3 if str(first[0]).upper() in ("EVALSHA", "EVAL") else 1
    return str(first[at])


def _is_cluster(client: Any) -> bool:
    return isinstance(client, redis.RedisCluster | redis.asyncio.RedisCluster)


def _moved(client: Any, raw: list[Any]) -> bool:
    """The node no longer holds the slot (a failover or a resharding moved it): nothing of
    the pipeline was written, and the cluster's slot map must be read again."""
    return _is_cluster(client) and any(isinstance(r, AskError) for r in raw)


#: the cluster's map names no node for the slot: nothing was sent, so sending again is safe
#: once the cluster client (asked any keyed command: it follows failures itself) read it again
_UNSENT = (SlotNotCoveredError, RedisClusterUnreachableError)
#: the node went away mid-call: the writes may have landed, so never sent again here; the
#: slot map is read again for the caller's next try
_LOST = (redis.ConnectionError, redis.TimeoutError, OSError)
