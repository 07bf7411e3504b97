"""The pool the chaos workers run (`workpool worker workpool.chaos.app:pool`): jobs of every
shape, each recording its start and end, and an on_complete handler that sometimes fails.

Settings come from the environment the runner sets (see `settings.py`). Every job returns, or
fails naming, the attempt it ran under, so the checker can tell whose outcome was applied.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import workpool
from workpool.chaos.history import Recorder
from workpool.chaos.settings import ChaosSettings

P = ParamSpec("P")
T = TypeVar("T")

settings = ChaosSettings.from_env()
pool = workpool.Workpool(
    settings.pool, max_parallelism=settings.max_parallelism,
    retry=workpool.Retry(max_attempts=4, initial_backoff=0.02, base=2.0),
    lease_ttl=settings.ttl, heartbeat_ttl=settings.ttl, retention=6 * 3600.0)
_recorder: Recorder | None = None


class FlakyError(Exception):
    """The planned failure of a flaky job's early attempts."""


class HandlerError(Exception):
    """The planned failure of an on_complete delivery."""


def recorder() -> Recorder:
    """This process's history file (opened on first use, after the fork)."""
    global _recorder  # noqa: PLW0603 - one file per process
    if _recorder is None:
        _recorder = Recorder(Path(os.environ["WORKPOOL_CHAOS_DIR"]) / "history",
                             f"worker-{os.getpid()}")
    return _recorder


def _ended(run: workpool.Running, how: str) -> None:
    recorder().record("end", job=run.job_id, a=run.attempt, r=how)


def recorded_async(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Record start and end (ok, error or cancelled by a timeout) around an async job."""
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        run = workpool.current()
        recorder().record("start", job=run.job_id, a=run.attempt)
        try:
            value = await fn(*args, **kwargs)
        except asyncio.CancelledError:
            _ended(run, "cancelled")
            raise
        except Exception:
            _ended(run, "error")
            raise
        _ended(run, "ok")
        return value
    return wrapper


def recorded_sync(fn: Callable[P, T]) -> Callable[P, T]:
    """Record start and end around a sync job (it runs in a worker thread)."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        run = workpool.current()
        recorder().record("start", job=run.job_id, a=run.attempt)
        try:
            value = fn(*args, **kwargs)
        except Exception:
            _ended(run, "error")
            raise
        _ended(run, "ok")
        return value
    return wrapper


def _attempt_tag() -> str:
    return f"attempt {workpool.current().attempt}"


@pool.job(name="fast")
@recorded_async
async def fast() -> str:
    return _attempt_tag()


@pool.job(name="slow")
@recorded_async
async def slow(ms: int) -> str:
    await asyncio.sleep(ms / 1000)
    return _attempt_tag()


@pool.job(name="blocking")
@recorded_sync
def blocking(ms: int) -> str:
    time.sleep(ms / 1000)
    return _attempt_tag()


@pool.job(name="flaky")
@recorded_async
async def flaky(fail_until: int) -> str:
    if workpool.current().attempt < fail_until:
        raise FlakyError(f"planned failure of {_attempt_tag()}")
    return _attempt_tag()


@pool.job(name="hang", timeout=0.3)
@recorded_async
async def hang(ms: int) -> str:
    await asyncio.sleep(ms / 1000)  # past its timeout on purpose: the worker cancels it
    return _attempt_tag()


@pool.on_complete(name="record")
async def record(job_id: str, result: workpool.Result, context: Any) -> None:
    """Fails a seeded share of deliveries (retried by the engine); records the ones that succeed."""
    n = workpool.current().delivery
    digest = hashlib.sha1(f"{settings.seed}:{job_id}:{n}".encode()).digest()
    if digest[0] < 256 * settings.callback_failure_rate:
        recorder().record("cb", job=job_id, n=n, ok=False)
        raise HandlerError(f"planned failure of delivery {n}")
    recorder().record("cb", job=job_id, n=n, ok=True, kind=result.kind,
                      value=result.value, error_type=result.error_type)
