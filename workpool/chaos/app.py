"""The pool the chaos workers run (`workpool worker workpool.chaos.app:pool`): jobs of every
shape and every outcome, each recording its start and end, and an on_complete handler that
sometimes fails.

Settings come from the environment the runner sets (see `settings.py`). Every job returns, or
fails naming, the attempt it ran under, so the checker can tell whose outcome was applied. A
record's `pid` is the worker process's (a job in the process executor runs in a child of it),
so the checker ties every attempt to the process a fault hit.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import multiprocessing
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import workpool
from workpool.chaos import flows
from workpool.chaos.history import own as recorder
from workpool.chaos.settings import ChaosSettings

P = ParamSpec("P")
T = TypeVar("T")

MAX_ATTEMPTS = 4
MAX_RESULT_BYTES = 64 * 1024
#: the jobs whose timeout the app sets (s); the others have none
TIMEOUTS = {"hang": 0.3, "stubborn": 0.3, "stuck": 0.5, "hog": 0.3, "crash": 5.0}
settings = ChaosSettings.from_env()
pool = workpool.Workpool(
    settings.pool, max_parallelism=settings.max_parallelism,
    retry=workpool.Retry(max_attempts=MAX_ATTEMPTS, initial_backoff=0.02, base=2.0),
    lease_ttl=settings.ttl, heartbeat_ttl=settings.ttl, retention=6 * 3600.0,
    max_result_bytes=MAX_RESULT_BYTES, replicas=settings.replicas, shards=settings.shards)


class FlakyError(Exception):
    """The planned failure of a flaky job's early attempts."""


class HandlerError(Exception):
    """The planned failure of an on_complete delivery."""


class DoomedError(workpool.NonRetryableError):
    """The planned failure of a job that must not be retried."""


def worker_pid(run: workpool.Running) -> int:
    """The pid of the worker process running `run` (its id is host-pid-random)."""
    return int(run.worker_id.rsplit("-", 2)[1])


def _started(run: workpool.Running) -> None:
    recorder().record("start", pid=worker_pid(run), job=run.job_id, a=run.attempt,
                      d=run.dispatched_at, to=TIMEOUTS.get(run.name), cp=os.getpid())


def _ended(run: workpool.Running, how: str, error: BaseException | None = None) -> None:
    recorder().record("end", pid=worker_pid(run), job=run.job_id, a=run.attempt, r=how,
                      err=type(error).__name__ if error is not None else None)


def recorded_async(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Record start and end (ok, error or cancelled by a timeout) around an async job."""
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        run = workpool.current()
        _started(run)
        try:
            value = await fn(*args, **kwargs)
        except asyncio.CancelledError:
            _ended(run, "cancelled")
            raise
        except Exception as exc:
            _ended(run, "error", exc)
            raise
        _ended(run, "ok")
        return value
    return wrapper


def recorded_sync(fn: Callable[P, T]) -> Callable[P, T]:
    """Record start and end around a sync job (it runs in a worker thread)."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        run = workpool.current()
        _started(run)
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            _ended(run, "error", exc)
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


@pool.job(name="hang", timeout=TIMEOUTS["hang"])
@recorded_async
async def hang(ms: int) -> str:
    await asyncio.sleep(ms / 1000)  # past its timeout on purpose: the worker cancels it
    return _attempt_tag()


@pool.job(name="doomed")
@recorded_async
async def doomed() -> str:
    raise DoomedError(f"planned failure of {_attempt_tag()}, not to be retried")


@pool.job(name="bulky")
@recorded_async
async def bulky() -> str:
    return _attempt_tag().ljust(MAX_RESULT_BYTES + 1, ".")  # over the cap: PayloadTooLarge


@pool.job(name="stubborn", timeout=TIMEOUTS["stubborn"])
@recorded_async
async def stubborn(ms: int) -> str:
    """Hung async code that ignores its timeout: it swallows the cancel and runs on."""
    until = time.monotonic() + ms / 1000
    while time.monotonic() < until:
        try:
            await asyncio.sleep(until - time.monotonic())
        except asyncio.CancelledError:
            continue  # on purpose: code that will not stop
    return _attempt_tag()


@pool.job(name="hog", timeout=TIMEOUTS["hog"])
@recorded_async
async def hog(ms: int) -> str:
    """Async code that blocks the event loop (a sync call in a coroutine) past its timeout."""
    time.sleep(ms / 1000)  # on purpose: the worker's event loop stalls
    return _attempt_tag()


_never = threading.Event()


@pool.job(name="stuck", timeout=TIMEOUTS["stuck"])
@recorded_sync
def stuck() -> str:
    """Hung sync code that never returns: a thread cannot be stopped (the worker counts it
    stuck and restarts itself when all are); in the process executor its child is killed."""
    _never.wait()
    return _attempt_tag()


@pool.job(name="crash", timeout=TIMEOUTS["crash"])
@recorded_sync
def crash(fail_until: int) -> str:
    """In the process executor, the child dies (os._exit) in the attempts before
    `fail_until`; run in a thread (where that would end the worker), it raises instead."""
    run = workpool.current()
    if run.attempt < fail_until:
        if multiprocessing.parent_process() is not None:
            recorder().record("crash", pid=worker_pid(run), job=run.job_id, a=run.attempt)
            os._exit(3)
        raise FlakyError(f"planned failure of {_attempt_tag()}")
    return _attempt_tag()


@pool.on_complete(name="record")
async def record(job_id: str, result: workpool.Result, context: Any) -> None:
    """Fails a seeded share of deliveries (retried by the engine); records the ones that succeed."""
    run = workpool.current()
    n, began = run.delivery, time.time()
    digest = hashlib.sha1(f"{settings.seed}:{job_id}:{n}".encode()).digest()
    if digest[0] < 256 * settings.callback_failure_rate:
        recorder().record("cb", pid=worker_pid(run), job=job_id, n=n, ok=False)
        raise HandlerError(f"planned failure of delivery {n}")
    recorder().record("cb", pid=worker_pid(run), job=job_id, n=n, ok=True, kind=result.kind,
                      value=result.value, error_type=result.error_type, t0=began,
                      d=run.dispatched_at)


pool.workflow(name="flow")(flows.flow)

if multiprocessing.parent_process() is None:  # a process image of a worker (not a child):
    recorder().record("boot")  # whatever the pid ran before (an execv restart) ended here
