"""Loads the Lua transition scripts and runs them, one round trip per batch of calls.

Each `lua/<verbNoun>-<numKeys>.lua` file is expanded once (`-- @include name` pulls in
`lua/includes/name.lua`, each at most once) and prefixed with the shared tables of result codes
(`C`), limits (`L`), counter names (`N`), key suffixes (`K`), the field order of a job's packed
spec (`SPEC`) and the reply layouts (`R`), each written once in Python. Calls go by
EVALSHA; a NOSCRIPT reply (after SCRIPT FLUSH, a restart or a failover) loads the script and
repeats just the calls that missed, which is safe because each script checks everything
before its first write and fails a whole call or none of it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from typing import Any, Generic, TypeVar

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from workpool.server import replication
from workpool.server.replication import Replication
from workpool.wire import codes, counters, keys, limits, metrics, protocol, replies

_INCLUDE = re.compile(r"^-- @include (\w+)\s*$", re.MULTILINE)
_FILE = re.compile(r"^(\w+)-(\d+)\.lua$")

Arg = str | int | float | bytes
T = TypeVar("T")


@dataclass(frozen=True)
class Script:
    """One transition script: its name, how many KEYS it takes, expanded source and SHA1."""

    name: str
    num_keys: int
    source: str

    @cached_property
    def sha(self) -> str:
        """SHA1 of the expanded source, as Redis names it in EVALSHA (hashed once: every call
        names it, and hashing 10-40 KB of source each time cost the main loop ~15 us a call)."""
        return hashlib.sha1(self.source.encode()).hexdigest()


@dataclass(frozen=True)
class Call(Generic[T]):
    """One script invocation: which script, its KEYS and its ARGV, and how its reply is read
    (`parse`: the reply's dataclass, wire/replies.py)."""

    script: Script
    keys: Sequence[str]
    args: Sequence[Arg]
    parse: Callable[[Sequence[Any]], T]

    def command(self) -> tuple[Arg, ...]:
        """The EVALSHA command for this call."""
        if len(self.keys) != self.script.num_keys:
            msg = f"{self.script.name} takes {self.script.num_keys} keys, got {len(self.keys)}"
            raise ValueError(msg)
        return ("EVALSHA", self.script.sha, self.script.num_keys, *self.keys, *self.args)


def _expand(text: str, lua_dir: Any, seen: set[str]) -> str:
    def include(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in seen:
            return ""
        seen.add(name)
        return _expand((lua_dir / "includes" / f"{name}.lua").read_text(), lua_dir, seen)

    return _INCLUDE.sub(include, text)


@cache
def scripts() -> dict[str, Script]:
    """All transition scripts by name (e.g. `startJobs`), expanded once per process."""
    lua_dir = resources.files("workpool") / "lua"
    found: dict[str, Script] = {}
    for entry in lua_dir.iterdir():
        match = _FILE.match(entry.name)
        if match:
            source = (codes.lua_prelude() + limits.lua_prelude() + counters.lua_prelude()
                      + metrics.lua_prelude() + keys.lua_prelude() + protocol.lua_prelude()
                      + replies.lua_prelude()
                      + _expand(entry.read_text(), lua_dir, set()))
            found[match.group(1)] = Script(match.group(1), int(match.group(2)), source)
    return found


def script(name: str) -> Script:
    """The script called `name`; KeyError names the ones that exist."""
    return scripts()[name]


def _missed(results: Sequence[Any]) -> list[int]:
    return [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]


def _raise_errors(results: Sequence[Any]) -> list[Any]:
    for r in results:
        if isinstance(r, Exception):
            raise r
    return list(results)


def run(client: redis.Redis, calls: Sequence[Call[Any]],
        rep: Replication | None = None) -> list[Any]:
    """Run `calls` in one pipeline (one round trip), their writes confirmed by `rep`'s
    replicas if given; reload scripts Redis lost, then retry those."""
    results = _pipeline(client, calls, rep)
    missed = _missed(results)
    if missed:
        for s in {calls[i].script for i in missed}:
            client.script_load(s.source)
        again = _pipeline(client, [calls[i] for i in missed], rep)
        for i, r in zip(missed, again, strict=True):
            results[i] = r
    return _raise_errors(results)


def _pipeline(client: redis.Redis, calls: Sequence[Call[Any]],
              rep: Replication | None) -> list[Any]:
    if rep is not None:
        return replication.send(client, [c.command() for c in calls], False, rep)
    pipe = client.pipeline(transaction=False)
    for c in calls:
        pipe.execute_command(*c.command())
    return list(pipe.execute(raise_on_error=False))


async def arun(client: redis.asyncio.Redis, calls: Sequence[Call[Any]],
               rep: Replication | None = None) -> list[Any]:
    """`run` for asyncio clients."""
    results = await _apipeline(client, calls, rep)
    missed = _missed(results)
    if missed:
        for s in {calls[i].script for i in missed}:
            await client.script_load(s.source)
        again = await _apipeline(client, [calls[i] for i in missed], rep)
        for i, r in zip(missed, again, strict=True):
            results[i] = r
    return _raise_errors(results)


async def _apipeline(client: redis.asyncio.Redis, calls: Sequence[Call[Any]],
                     rep: Replication | None) -> list[Any]:
    if rep is not None:
        return await replication.asend(client, [c.command() for c in calls], False, rep)
    pipe = client.pipeline(transaction=False)
    for c in calls:
        pipe.execute_command(*c.command())
    return list(await pipe.execute(raise_on_error=False))


class Replies:
    """The calls of one round trip, each reply read by its own call's parser: `add` returns
    a handle whose `value` is the typed reply once `arun` has run them all."""

    def __init__(self) -> None:
        self._calls: list[Call[Any]] = []
        self.values: list[Any] = []  #: the typed replies, once run

    def add(self, call: Call[T]) -> Reply[T]:
        """Queue `call`; its typed reply is the handle's `value` after `arun`."""
        self._calls.append(call)
        return Reply(self, len(self._calls) - 1)

    async def arun(self, client: redis.asyncio.Redis, rep: Replication | None = None) -> None:
        """Send every call in one round trip and read each reply (writes confirmed by `rep`)."""
        raw = await arun(client, self._calls, rep)
        self.values = [c.parse(r) for c, r in zip(self._calls, raw, strict=True)]


@dataclass(frozen=True)
class Reply(Generic[T]):
    """The typed reply of one call of a `Replies` round trip."""

    replies: Replies
    index: int

    @property
    def value(self) -> T:
        """The reply (the round trip must have run)."""
        value: T = self.replies.values[self.index]
        return value
