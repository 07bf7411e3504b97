"""Where a worker runs job code: async jobs as tasks, sync code on a pool of threads. An attempt
is bounded by its timeout; a thread still busy with an attempt that ended (timed out or was
cancelled: a thread cannot be stopped) stays counted as stuck until it comes back, so the
worker's capacity is honest and no later job waits behind it unseen."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")
THREAD_PREFIX = "workpool-job"  #: job threads' names start with it (cli: abandoned at exit)


class AttemptTimedOut(Exception):
    """The attempt ran past its timeout: the engine's `Timeout`, not a TimeoutError the job
    raised itself (that one is reported as the job's own error)."""


class Stalled(Exception):
    """The worker may have stalled (paused, or its heartbeat lapsed) since it last made sure
    the attempt is still its own: raised just before the job's first instruction, instead of
    running it, so the worker asks again."""


Guard = Callable[[], bool]  #: True when the worker may have stalled since its last check


def guarded_call(guard: Guard, fn: Callable[..., T]) -> Callable[..., T]:
    """`fn`, run only if `guard()` is False at the moment it would begin (else Stalled)."""
    def call(*args: Any, **kwargs: Any) -> T:
        if guard():
            raise Stalled
        return fn(*args, **kwargs)
    return call


async def guarded_await(guard: Guard, fn: Callable[..., Awaitable[T]], args: Sequence[Any],
                        kwargs: Mapping[str, Any]) -> T:
    """`await fn(*args, **kwargs)`, begun only if `guard()` is False right then (else
    Stalled): no await lies between the guard and the coroutine's first instruction."""
    if guard():
        raise Stalled
    return await fn(*args, **kwargs)


class Escaped(Exception):
    """A job raised a BaseException that is no Exception (SystemExit, KeyboardInterrupt): it
    ends the attempt as that error, and never the worker."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(original)
        self.original = original


async def contained(work: Awaitable[T]) -> T:
    """`work`'s result; a SystemExit or KeyboardInterrupt it raises comes out as Escaped."""
    try:
        return await work
    except (Exception, asyncio.CancelledError):
        raise
    except BaseException as exc:
        raise Escaped(exc) from exc


async def bounded(work: Awaitable[T], timeout: float | None) -> T:
    """Await `work` for at most `timeout` seconds (None: no limit): AttemptTimedOut if it runs
    past, after cancelling it; whatever it raises itself passes through as itself."""
    if timeout is None:  # no task of its own: a cancel of ours reaches `work` as it is
        return await contained(work)
    task = asyncio.ensure_future(contained(work))
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        msg = f"ran past its timeout of {timeout:g} s"
        raise AttemptTimedOut(msg)
    return task.result()


def _awaitable(exc: BaseException) -> BaseException:
    """`exc` as an asyncio future can carry it: a StopIteration (next() on an exhausted
    iterator, say) cannot be set on one, so it comes out as a RuntimeError caused by it, as
    Python does for a coroutine (PEP 479); setting it as it is failed the hand-off and left the
    attempt waiting forever."""
    if isinstance(exc, StopIteration):
        wrapped = RuntimeError(f"the job raised StopIteration: {exc!r}")
        wrapped.__cause__ = exc
        return wrapped
    return exc


def _to_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """From a job thread: `fn(*args)` on the loop, unless the loop is closed (the worker is
    gone: nothing waits for the call any more)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        if not loop.is_closed():
            raise


class JobThreads:
    """`size` threads for sync jobs and handlers; `stuck` counts those still busy with an
    attempt that ended. `on_change` is called (on the event loop) whenever that count changes.
    Calls that end while the loop is busy come back in one wake-up of the loop, not one each:
    a wake-up is a write to the loop's self-pipe, a system call per job otherwise."""

    def __init__(self, size: int, on_change: Callable[[], None]) -> None:
        self._pool = ThreadPoolExecutor(size, thread_name_prefix=THREAD_PREFIX)
        self._stuck: set[Future[Any]] = set()
        self._on_change = on_change
        self._ended: deque[tuple[asyncio.Future[Any], Future[Any]]] = deque()
        self._lock = threading.Lock()
        self._woken = False  #: a drain of `_ended` is scheduled on the loop

    @property
    def stuck(self) -> int:
        """Threads busy with an attempt that already ended."""
        return len(self._stuck)

    async def run(self, fn: Callable[..., T], args: Sequence[Any], kwargs: Mapping[str, Any],
                  timeout: float | None) -> T:
        """Call `fn(*args, **kwargs)` on a thread, in this task's context (current() works)."""
        loop = asyncio.get_running_loop()
        call = partial(contextvars.copy_context().run, fn, *args, **kwargs)
        future = self._pool.submit(call)
        waiter: asyncio.Future[T] = loop.create_future()
        future.add_done_callback(partial(self._ended_on_thread, loop, waiter))
        try:
            return await bounded(waiter, timeout)
        finally:
            # Given up on (a timeout, a cancel): not taken by a thread yet, it never runs (now,
            # not at the loop's next turn, when a thread may have taken it); else the attempt
            # ended and its thread goes on: count it.
            if not future.done() and not future.cancel():
                self._stuck.add(future)
                future.add_done_callback(lambda f: _to_loop(loop, self._came_back, f))
                self._on_change()

    def _ended_on_thread(self, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[Any],
                         future: Future[Any]) -> None:
        """A call ended (on its thread): queued for the loop, which is woken once per drain."""
        self._ended.append((waiter, future))
        with self._lock:
            wake, self._woken = not self._woken, True
        if wake:
            try:
                _to_loop(loop, self._drain)
            except BaseException:
                with self._lock:  # not scheduled after all: the next call ending tries again
                    self._woken = False
                raise

    def _drain(self) -> None:
        """On the loop: every call ended since the wake-up passes its outcome to its waiter."""
        with self._lock:
            self._woken = False
        while self._ended:
            waiter, future = self._ended.popleft()
            if waiter.done():  # given up on (a timeout, a cancel)
                continue
            if future.cancelled():
                waiter.cancel()
            elif (exc := future.exception()) is not None:
                waiter.set_exception(_awaitable(exc))
            else:
                waiter.set_result(future.result())

    def _came_back(self, future: Future[Any]) -> None:
        self._stuck.discard(future)
        self._on_change()

    def shutdown(self) -> None:
        """Start no more work; threads still busy are left to finish (or to the process exit)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
