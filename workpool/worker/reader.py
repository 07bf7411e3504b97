"""A worker's reader: takes entries from the dispatch stream, and from its own inbox (the
replays of the workflows it keeps live), while it has free slots, and runs each as a task (an
attempt, an on_complete delivery or a replay).

It reads at most as many entries as slots are free (XREADGROUP, blocking); a thread stuck in
an attempt that timed out takes a slot until it comes back. It also runs the entries Redis
delivered to this worker that it never saw (a read whose reply was lost with its connection),
which nobody else would ever run while the worker is alive.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

import redis.asyncio
from redis.exceptions import ResponseError

from workpool.server.backoff import Backoff, pause
from workpool.wire.keys import GROUP, Keys
from workpool.wire.protocol import text, with_spec

StreamReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]
#: runs one entry: (entry id, fields, when the read that returned it was issued, when it came)
Run = Callable[[bytes, dict[str, bytes], float, float], Coroutine[Any, Any, None]]
PENDING_PAGE = 256  #: our pending entries read per check for ones never seen


def _no_group(exc: ResponseError) -> bool:
    """Does Redis say the stream or its group is not there (yet)?"""
    return "NOGROUP" in str(exc) or "requires the key to exist" in str(exc)


def entry_time(entry_id: bytes) -> float:
    """When an entry was written (its id's Redis time), in seconds since the epoch."""
    return int(entry_id.partition(b"-")[0]) / 1000


class Reader:
    """Feeds one worker's slots from the dispatch stream."""

    def __init__(self, keys: Keys, consumer: str, slots: int, halt: asyncio.Event, log: Any,
                 *, stuck: Callable[[], int], run: Run, check_every: float) -> None:
        self.keys, self.consumer, self.slots, self.halt, self.log = keys, consumer, slots, \
            halt, log
        self.inbox = keys.inbox(consumer)
        self._inbox_open = False
        self._stuck, self._run, self._check_every = stuck, run, check_every
        self.inflight: set[asyncio.Task[None]] = set()  #: entries being run
        #: (stream, entry id) of the entries taken and not seen acknowledged yet
        self._taken: dict[tuple[str, bytes], float] = {}
        self._slot_freed = asyncio.Event()

    def freed(self) -> None:
        """A slot may be free (an entry ended, a stuck thread came back, the worker halts)."""
        self._slot_freed.set()

    async def read_forever(self, client: redis.asyncio.Redis) -> None:
        """Read and run entries until the worker halts; outlives any error."""
        backoff = Backoff()
        check_at = 0.0  # when to look for entries delivered to us that we never saw
        while not self.halt.is_set():
            free = await self._free_slots()
            if free == 0:
                continue
            try:
                if not self._inbox_open:
                    await self._open_inbox(client)
                if time.monotonic() >= check_at:
                    await self.take_unseen(client)
                    check_at = time.monotonic() + self._check_every
                read_at = time.monotonic()
                reply = cast("StreamReply", await client.xreadgroup(
                    GROUP, self.consumer, {self.keys.dispatch: ">", self.inbox: ">"},
                    count=free, block=500))
                backoff.reset()
            except ResponseError as exc:
                if _no_group(exc):  # no main loop has made the group yet, or the reaper
                    self._inbox_open = False  # dropped our inbox (we were silent)
                    await pause(self.halt, 0.2)
                    continue
                await backoff.after(exc, "could not read work, retrying", self.log, self.halt)
                continue
            except Exception as exc:  # an outage, or a defect: never the end
                check_at = 0.0  # a reply lost with the connection may have carried entries
                await backoff.after(exc, "could not read work, retrying", self.log, self.halt)
                continue
            for stream, entries in reply or []:
                for entry_id, raw in entries:
                    self._spawn(text(stream), entry_id, with_spec(raw), read_at)

    async def _open_inbox(self, client: redis.asyncio.Redis) -> None:
        """Join the dispatch group (NOGROUP until a main loop made it), then make our inbox
        and its group: the reaper finds (and at last drops) an inbox through its consumer."""
        await client.xgroup_createconsumer(self.keys.dispatch, GROUP, self.consumer)
        try:
            await client.xgroup_create(self.inbox, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._inbox_open = True

    async def take_unseen(self, client: redis.asyncio.Redis) -> None:
        """Run the entries Redis delivered to us but we never saw. Our whole pending list is
        read, a page at a time (entries still running fill its first pages: an unseen one
        behind them must not wait for them). An entry taken is remembered until it leaves that
        list (the main loop acknowledged it), however many newer ones come, so a long attempt
        is never taken for an unseen one. XPENDING and XRANGE read without touching the
        entries' delivery times (the timeouts' clock). Both streams: the dispatch stream and
        our inbox."""
        asked = time.monotonic()
        ids: list[tuple[str, bytes]] = []
        for stream in (self.keys.dispatch, self.inbox):
            start = "-"
            while True:
                try:
                    page = await client.xpending_range(stream, GROUP, start, "+",
                                                       PENDING_PAGE, self.consumer)
                except ResponseError as exc:  # no such group (yet): nothing delivered there
                    if not _no_group(exc):
                        raise
                    break
                ids += [(stream, cast("bytes", p["message_id"])) for p in page]
                if len(page) < PENDING_PAGE:
                    break
                start = "(" + text(ids[-1][1])
        listed = set(ids)
        for taken, taken_at in list(self._taken.items()):  # acknowledged since: forget
            if taken not in listed and taken_at < asked:
                del self._taken[taken]
        unseen = [e for e in ids if e not in self._taken]
        if not unseen:
            return
        pipe = client.pipeline(transaction=False)
        for stream, entry_id in unseen:
            pipe.xrange(stream, entry_id, entry_id)
        for (stream, entry_id), found in zip(unseen, await pipe.execute(), strict=True):
            if found and found[0][1]:
                self.log.warning("running an entry delivered to us but never seen",
                                 entry=text(entry_id))
                self._spawn(stream, entry_id, with_spec(found[0][1]), -math.inf)

    async def _free_slots(self) -> int:
        """Wait until a slot is free (or the worker halts); return how many are free."""
        while not self.halt.is_set():
            free = self.slots - len(self.inflight) - self._stuck()
            if free > 0:
                return free
            self._slot_freed.clear()
            waiters = {asyncio.create_task(self._slot_freed.wait()),
                       asyncio.create_task(self.halt.wait())}
            _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
        return 0

    def _spawn(self, stream: str, entry_id: bytes, f: dict[str, bytes], read_at: float) -> None:
        """Run one delivered entry; `read_at` is when the read that returned it was issued
        (-inf when unknown), the earliest moment Redis may have handed it to us."""
        self._taken[(stream, entry_id)] = received = time.monotonic()
        task = asyncio.create_task(self._run(entry_id, f, read_at, received))
        self.inflight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.inflight.discard(task)
        self._slot_freed.set()

    async def drain(self, grace: float) -> None:
        """Let running entries finish within `grace` s; cancel the rest (left to the reaper)."""
        if not self.inflight:
            return
        self.log.info("waiting for running attempts", running=len(self.inflight), grace=grace)
        _, pending = await asyncio.wait(self.inflight, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
