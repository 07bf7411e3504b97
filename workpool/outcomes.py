"""A worker's outcome outbox: attempts and deliveries hand their outcome over at once; one task
appends everything ready, up to 64 outcomes per `kind=batch` entry, in one round trip, and
keeps them through a Redis outage until they are written."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from workpool.connection import MAX_BACKOFF

Outcome = dict[str, str | bytes]
PER_ENTRY = 64  # outcomes per pendingCompletion entry (the main loop applies 256 per call)


class Outbox:
    """Outcomes waiting to be appended to the pool's pendingCompletion stream."""

    def __init__(self, stream: str, log: Any) -> None:
        self.stream, self.log = stream, log
        self._queue: asyncio.Queue[Outcome] = asyncio.Queue()
        self._closing = False

    def put(self, outcome: Outcome) -> None:
        self._queue.put_nowait(outcome)

    async def run(self, client: redis.asyncio.Redis) -> None:
        """Flush whenever something is ready, until close()."""
        while not self._closing:
            first = await self._queue.get()
            self._queue.put_nowait(first)
            await self.flush(client)

    def close(self) -> None:
        """Let run() end after one more flush. Never cancel it instead: a cancel mid-pipeline
        can drop the batch it holds, and redis-py may swallow the cancel."""
        self._closing = True
        self._queue.put_nowait({})  # {} only wakes the flusher

    async def flush(self, client: redis.asyncio.Redis) -> None:
        """Append every ready outcome in one round trip; on a Redis outage keep them, retry."""
        batch: list[list[str | bytes]] = []
        while not self._queue.empty():
            out = self._queue.get_nowait()
            if out:
                batch.append([x for pair in out.items() for x in pair])
        entries = [msgpack.packb(batch[i:i + PER_ENTRY], use_bin_type=False)  # Redis's Lua
                   for i in range(0, len(batch), PER_ENTRY)]                  # reads no bin
        backoff = 0.1
        while entries:
            try:
                pipe = client.pipeline(transaction=False)
                for packed in entries:
                    pipe.execute_command("XADD", self.stream, "*", "kind", "batch", "o", packed)
                await pipe.execute()
                return
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self.log.warning("could not append outcomes, retrying", error=str(exc),
                                 outcomes=len(batch), backoff=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
