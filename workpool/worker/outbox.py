"""A worker's outcome outbox: attempts and deliveries hand their outcome over at once; one task
appends everything ready in one round trip, packed `kind=batch` entries of at most
MAX_OUTCOMES_PER_ENTRY outcomes and ENTRY_BYTES each (a larger outcome goes alone). Whatever
Redis answers (an outage, OOM, BUSY, READONLY), the outcomes are kept and written again after a
backoff: the flusher never stops before the worker does."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
import redis.asyncio

from workpool.core.failures import describe, error_type
from workpool.server import replication
from workpool.server.backoff import Backoff
from workpool.server.replication import Replication
from workpool.wire.limits import MAX_OUTCOMES_PER_ENTRY
from workpool.worker.outcome import Outcome

Fields = dict[str, str | bytes]
ENTRY_BYTES = 1 << 20  #: bytes of outcomes packed in one entry (one larger outcome: alone)


def pack(outcomes: list[Fields]) -> list[bytes]:
    """The `o` fields of the entries carrying `outcomes`, in order."""
    entries: list[bytes] = []
    items: list[list[str | bytes]] = []
    size = 0
    for out in outcomes:
        item = [x for pair in out.items() for x in pair]
        item_size = sum(len(x) for x in item)
        if items and (len(items) == MAX_OUTCOMES_PER_ENTRY or size + item_size > ENTRY_BYTES):
            entries.append(msgpack.packb(items, use_bin_type=False))  # Redis's Lua reads no bin
            items, size = [], 0
        items.append(item)
        size += item_size
    if items:
        entries.append(msgpack.packb(items, use_bin_type=False))
    return entries


class Outbox:
    """Outcomes waiting to be appended to the pool's pendingCompletion stream."""

    def __init__(self, stream: str, log: Any, rep: Replication | None = None) -> None:
        self.stream, self.log, self.rep = stream, log, rep  # rep: replicas confirm each flush
        self._queue: asyncio.Queue[Fields] = asyncio.Queue()
        self._unwritten: list[bytes] = []  #: packed entries a failed round trip left
        self._closing = False

    def put(self, outcome: Outcome) -> None:
        """Queue one outcome for the next flush."""
        self._queue.put_nowait(outcome.fields())

    async def run(self, client: redis.asyncio.Redis) -> None:
        """Flush whenever something is ready, until close(); back off while Redis refuses."""
        backoff = Backoff()
        while not self._closing:
            if not self._unwritten:
                first = await self._queue.get()
                self._queue.put_nowait(first)
            if await self.flush(client):
                backoff.reset()
            else:
                await asyncio.sleep(backoff.next())

    def close(self) -> None:
        """Let run() end after one more flush. Never cancel it instead: a cancel mid-pipeline
        can drop the batch it holds, and redis-py may swallow the cancel."""
        self._closing = True
        self._queue.put_nowait({})  # {} only wakes the flusher

    async def flush(self, client: redis.asyncio.Redis) -> bool:
        """Append every ready outcome in one round trip; True when all are written (else the
        ones not written are kept for the next flush, and the refusal is logged)."""
        ready: list[Fields] = []
        while not self._queue.empty():
            out = self._queue.get_nowait()
            if out:
                ready.append(out)
        self._unwritten.extend(pack(ready))
        if not self._unwritten:
            return True
        commands = [("XADD", self.stream, "*", "kind", "batch", "o", packed)
                    for packed in self._unwritten]
        try:
            replies = await self._send(client, commands)
        except Exception as exc:  # an outage, or replicas behind: all of them are kept
            self._refused(exc, len(self._unwritten))
            return False
        failed = [(packed, r) for packed, r in zip(self._unwritten, replies, strict=True)
                  if isinstance(r, Exception)]
        self._unwritten = [packed for packed, _ in failed]
        if failed:
            self._refused(failed[0][1], len(failed))
        return not failed

    async def _send(self, client: redis.asyncio.Redis, commands: list[tuple[Any, ...]],
                    ) -> list[Any]:
        """One round trip (a failover must not lose an outcome its worker counts as sent:
        with `replicas=` a flush counts only once they confirm it; sent again, it is stale)."""
        if self.rep is not None:
            return await replication.asend(client, commands, False, self.rep)
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))

    def _refused(self, exc: BaseException, entries: int) -> None:
        self.log.warning("could not append outcomes, retrying", entries=entries,
                         error_type=error_type(exc), error=describe(exc, with_traceback=False))

    async def drain(self, client: redis.asyncio.Redis, within: float) -> int:
        """Flush until everything is written or `within` seconds passed (a worker stopping);
        returns how many entries could not be written (their attempts will be reaped)."""
        deadline, backoff = time.monotonic() + within, Backoff()
        while not await self.flush(client):
            if time.monotonic() + backoff.delay > deadline:
                break
            await asyncio.sleep(backoff.next())
        return len(self._unwritten)
