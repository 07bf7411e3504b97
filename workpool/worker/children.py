"""Parent side of the process executor: a fixed number of spawned child processes
(worker/child.py) that run sync jobs one at a time. A child whose job dies, outlives its timeout
or is cancelled is killed and replaced on its own, so no job can break the others' children.

Children are spawned, not forked: a fresh interpreter inherits no event loop, threads or
signal wake-up fd (a forked child's signals would reach the parent's loop as its own).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from contextlib import suppress
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from workpool.current import Running
from workpool.errors import ConfigurationError
from workpool.worker import child
from workpool.worker.threads import Guard, Stalled

_STOP_GRACE = 2.0  #: seconds a child has to exit after SIGTERM on close() before SIGKILL


class ChildFailed(Exception):
    """The job raised in its child: its class name, its text with a short traceback (from
    workpool.core.failures.describe), and whether another attempt may help."""

    def __init__(self, error_type: str, message: str, retryable: bool) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type, self.message, self.retryable = error_type, message, retryable


class ChildLost(Exception):
    """The child died during the attempt (os._exit, a signal, the OOM killer); `exitcode` is
    its exit status, or minus the signal that killed it."""

    def __init__(self, exitcode: int | None) -> None:
        how = f"was killed by {signal.Signals(-exitcode).name}" if exitcode and exitcode < 0 \
            else f"exited with code {exitcode}"
        super().__init__(f"the child process running the job {how}")
        self.exitcode = exitcode


class _Child:
    """One child process and the parent's end of its pipe."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process, self.conn = process, conn
        self.loaded = False  #: the child reported that it imported the pool
        self.gone = asyncio.Event()  #: set once the process has exited and been reaped

    async def call(self, data: bytes, guard: Guard | None = None) -> list[Any]:
        """Send a request and return the child's reply; with a `guard`, checked right before
        the send (Stalled if it trips: nothing was sent)."""
        if guard is not None and guard():
            raise Stalled
        with suppress(ConnectionError):  # a child that died while idle shows as EOF below
            self.conn.send_bytes(data)
        return await self.reply()

    async def reply(self) -> list[Any]:
        """The child's next message, or ChildLost if the child died instead."""
        await _readable(self.conn.fileno())
        try:  # once a message starts, the child writes the rest of it at once
            return child.unpack(self.conn.recv_bytes())
        except (EOFError, OSError):
            await self.gone.wait()
            raise ChildLost(self.process.exitcode) from None

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if the process is still there after a grace period."""
        self.process.terminate()
        try:
            await asyncio.wait_for(self.gone.wait(), _STOP_GRACE)
        except asyncio.TimeoutError:
            self.process.kill()
            await self.gone.wait()


class Children:
    """`size` child processes that run registered sync jobs of the pool named by `pool_spec`
    ('module:attribute'); each can be killed and replaced without disturbing the others."""

    def __init__(self, size: int, pool_spec: str) -> None:
        self.size, self.pool_spec = size, pool_spec
        self._context = multiprocessing.get_context("spawn")
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        self._children: set[_Child] = set()  #: every child not yet reaped, idle or busy
        self._busy = 0
        self._closed = False

    @property
    def busy(self) -> int:
        """Children running a job now."""
        return self._busy

    async def start(self) -> None:
        """Start the children and wait until each has imported the pool; if one cannot, stop
        them all and raise why (ConfigurationError, or RuntimeError if a child died)."""
        for _ in range(self.size):
            self._idle.put_nowait(self._spawn())
        try:
            for each in list(self._children):
                await self._load(each)
        except BaseException:
            await self.close()
            raise

    async def run(self, name: str, args: bytes, kwargs: bytes, enc: str,  # noqa: PLR0917
                  running: Running, timeout: float | None, guard: Guard | None = None) -> bytes:
        """Run the sync job `name` in an idle child (waiting for one if all are busy) and return
        its encoded result. Raises ChildFailed, ChildLost, or asyncio.TimeoutError; on a
        timeout, a cancellation or a death, the child is killed, reaped and replaced. A
        `guard` that trips just before the request is sent raises Stalled (the child stays)."""
        data = child.request(name, args, kwargs, enc, running)
        each = await self._idle.get()
        self._busy += 1
        try:
            if not each.loaded:  # a replacement: its start does not count against the timeout
                await self._load(each)
            reply = await asyncio.wait_for(each.call(data, guard), timeout)
        except Stalled:
            self._idle.put_nowait(each)  # nothing was sent: the child is as it was
            raise
        except BaseException:
            self._replace(each)
            raise
        else:
            self._idle.put_nowait(each)
        finally:
            self._busy -= 1
        if reply[0] == "ok":
            return bytes(reply[1])
        raise ChildFailed(str(reply[1]), str(reply[2]), bool(reply[3]))

    async def close(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL after a short wait) and reap them all."""
        self._closed = True
        await asyncio.gather(*(each.stop() for each in self._children))
        while not self._idle.empty():  # a busy child's pipe is closed by its run()
            self._idle.get_nowait().conn.close()

    def _spawn(self) -> _Child:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(target=child.main, args=(theirs, self.pool_spec),
                                        name="workpool-child")
        process.start()
        theirs.close()
        spawned = _Child(process, ours)
        self._children.add(spawned)
        asyncio.get_running_loop().add_reader(process.sentinel, self._reap, spawned)
        return spawned

    def _reap(self, each: _Child) -> None:
        """The process of `each` exited: collect its exit status now, leaving no zombie."""
        asyncio.get_running_loop().remove_reader(each.process.sentinel)
        each.process.join()
        self._children.discard(each)
        each.gone.set()

    async def _load(self, each: _Child) -> None:
        try:
            reply = await each.reply()
        except ChildLost as exc:
            msg = f"a child process died while importing the pool {self.pool_spec!r}: {exc}"
            raise RuntimeError(msg) from None
        if reply[0] != "ok":
            msg = f"a child process could not import the pool {self.pool_spec!r}: " \
                  f"{reply[1]}: {reply[2]}"
            raise ConfigurationError(msg)
        each.loaded = True

    def _replace(self, each: _Child) -> None:
        """Kill `each` (reaped once it has exited) and, unless closing, spawn a child in its
        place."""
        each.process.kill()
        each.conn.close()
        if not self._closed:
            self._idle.put_nowait(self._spawn())


async def _readable(fd: int) -> None:
    """Wait, without blocking the loop, until `fd` is readable (data or EOF on a pipe; the
    exit of the process for a process sentinel)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
