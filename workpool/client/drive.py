"""The two drivers of the sans-IO operations (client/ops.py): one sends each Step with a
blocking client, the other with an asyncio one. They are all that differs between `Workpool`
and `AsyncWorkpool`; every line of logic is in the operations."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis
import redis.asyncio

from workpool.client.ops import Ops, Step
from workpool.server import replication
from workpool.server.connection import unavailable_as_typed
from workpool.server.replication import Replication

T = TypeVar("T")
_DRAINED = 10_000  # notifications dropped at most before the read (a flood still gets read)
_ASYNC_POLL_S = 0.001  # the asyncio client reads nothing within a timeout of 0


def drive(client: redis.Redis, url: str, op: Ops[T], rep: Replication | None = None) -> T:
    """Run `op` to its result with a blocking client (Redis errors typed, naming `url`; its
    writes confirmed by `rep`'s replicas if given)."""
    steps = stream(client, url, op, rep)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            result: T = stop.value
            return result


def stream(client: redis.Redis, url: str, op: Ops[T],
           rep: Replication | None = None) -> Generator[Any, None, T]:
    """Run `op` with a blocking client, yielding the values its steps emit; returns its
    result."""
    pubsub: Any = None
    with unavailable_as_typed(url):
        try:
            step = next(op)
            while True:
                if step.listen is not None and pubsub is None:
                    pubsub = client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(step.listen)
                yield from step.emit
                if step.pause and pubsub is not None:
                    if pubsub.get_message(timeout=step.pause) is not None:
                        _drain(pubsub)
                elif step.pause:
                    time.sleep(step.pause)
                step = op.send(_send(client, step, rep))
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            if pubsub is not None:
                pubsub.close()


def _drain(pubsub: Any) -> None:
    """Drop the notifications queued behind the one that woke the wait: the read that follows
    sees what each of them announced, so a burst wakes one read, not one each."""
    for _ in range(_DRAINED):
        if pubsub.get_message(timeout=0) is None:
            return


def _send(client: redis.Redis, step: Step, rep: Replication | None) -> list[Any]:
    if rep is not None and step.writes:
        return _raised(replication.send(client, step.commands, step.atomic, rep))
    pipe = client.pipeline(transaction=step.atomic)
    for command in step.commands:
        pipe.execute_command(*command)
    return list(pipe.execute())


async def adrive(client: redis.asyncio.Redis, url: str, op: Ops[T],
                 rep: Replication | None = None) -> T:
    """`drive` with an asyncio client."""
    async with contextlib.aclosing(astream(client, url, op, rep)) as items:  # its pubsub at once
        async for item in items:
            if isinstance(item, Done):
                return cast("T", item.result)
    msg = "the operation ended without a result"
    raise AssertionError(msg)


@dataclass
class Done:
    """The last item `astream` yields: the operation's result (async generators return none)."""

    result: Any


async def astream(client: redis.asyncio.Redis, url: str, op: Ops[T],
                  rep: Replication | None = None) -> AsyncGenerator[Any, None]:
    """Run `op` with an asyncio client, yielding the values its steps emit, then Done(result)."""
    pubsub: Any = None
    with unavailable_as_typed(url):
        try:
            step = next(op)
            while True:
                if step.listen is not None and pubsub is None:
                    pubsub = client.pubsub(ignore_subscribe_messages=True)
                    await pubsub.subscribe(step.listen)
                for value in step.emit:
                    yield value
                if step.pause and pubsub is not None:
                    if await pubsub.get_message(timeout=step.pause) is not None:
                        await _adrain(pubsub)
                elif step.pause:
                    await asyncio.sleep(step.pause)
                step = op.send(await _asend(client, step, rep))
        except StopIteration as stop:
            yield Done(stop.value)
        finally:
            if pubsub is not None:
                await pubsub.aclose()


async def _adrain(pubsub: Any) -> None:
    """_drain for the asyncio driver (whose last look costs _ASYNC_POLL_S)."""
    for _ in range(_DRAINED):
        if await pubsub.get_message(timeout=_ASYNC_POLL_S) is None:
            return


async def _asend(client: redis.asyncio.Redis, step: Step, rep: Replication | None) -> list[Any]:
    if rep is not None and step.writes:
        return _raised(await replication.asend(client, step.commands, step.atomic, rep))
    pipe = client.pipeline(transaction=step.atomic)
    for command in step.commands:
        pipe.execute_command(*command)
    return list(await pipe.execute())


def _raised(replies: list[Any]) -> list[Any]:
    """The replies, unless one is an error: then that error, raised (as a pipeline does)."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies
