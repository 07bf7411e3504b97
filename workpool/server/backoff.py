"""How every loop that talks to Redis outlives an error: it logs what happened (an outage or a
passing refusal as a warning, a defect of ours with its traceback), waits a growing delay (or
until it is told to stop) and goes on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from workpool.core.failures import describe, error_type
from workpool.errors import NotReplicated
from workpool.server.connection import TRANSPORT_ERRORS, is_refusal

T = TypeVar("T")
MAX_BACKOFF = 1.0  # s between reconnect attempts at most: retrying once a second is cheap


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

    async def after(self, exc: BaseException, what: str, log: Any,
                    stop: asyncio.Event | None = None, **context: object) -> None:
        """Log that `what` failed with `exc` and wait the next delay (or until `stop` is set):
        a warning for an outage or a refusal that passes (OOM, BUSY, READONLY, ...), an
        error with the traceback for anything else, a defect whose traceback gets it fixed."""
        delay = self.next()
        if expected(exc):
            log.warning(what, error_type=error_type(exc),
                        error=describe(exc, with_traceback=False), backoff=delay, **context)
        else:
            log.error(what, error_type=error_type(exc), error=describe(exc), backoff=delay,
                      **context)
        await pause(stop, delay)


def expected(exc: BaseException) -> bool:
    """An error that a healthy program meets: Redis unreachable, refusing for a while, or its
    replicas behind (NotReplicated)."""
    return isinstance(exc, (*TRANSPORT_ERRORS, NotReplicated)) or is_refusal(exc)


async def pause(stop: asyncio.Event | None, seconds: float) -> None:
    """Wait for `seconds`, or until `stop` is set, whichever comes first."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def asked(what: str, call: Callable[[], Awaitable[T]], log: Any, stop: asyncio.Event,
                **context: object) -> T | None:
    """`call()`'s answer, asked again after each failure (an outage or a refusal passes)
    until one comes; None if `stop` is set first. For a question whose answer must never be
    assumed (is this attempt still ours?)."""
    backoff = Backoff()
    while not stop.is_set():
        try:
            return await call()
        except Exception as exc:  # any refusal: try again after a while
            await backoff.after(exc, f"could not {what}, retrying", log, stop, **context)
    return None
