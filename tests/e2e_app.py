"""The pool the end-to-end tests run in real worker processes (`e2e_app:pool`).

Jobs write their own records to Redis (`e2e:*` keys), so the tests judge the engine from what
the jobs saw rather than from the engine's counters. Short TTLs make recovery fast.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from workpool import Result, Retry, Workpool

MAX_PARALLELISM = 8
pool = Workpool("e2e", max_parallelism=MAX_PARALLELISM, lease_ttl=1.0, heartbeat_ttl=1.0,
                retry=Retry(max_attempts=5, initial_backoff=0.05, base=1.5))

RUNNING = "{e2e}:running"  #: jobs of `work` inside their body right now
PEAK = "{e2e}:peak"  #: the most `work` jobs ever inside their body at once
PIDS = "{e2e}:pids"  #: processes that ran a `work` job
CALLBACKS = "{e2e}:callbacks"  #: one `job id` per on_complete handler run, in order
GATE_TIMEOUT = 60.0

# Enter a job body: count it, and raise the peak if this is a new high.
_ENTER = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
return n
"""


def tries_key(i: int) -> str:
    """How many times job `i` of `work` ran its body."""
    return f"{{e2e}}:tries:{i}"


def started_key(gate: str) -> str:
    """The pids of the processes that started the `gated` job waiting on `gate`, in order."""
    return f"{{e2e}}:started:{gate}"


def gate_key(gate: str) -> str:
    """Set this key to let every `gated` job waiting on `gate` finish."""
    return f"{{e2e}}:gate:{gate}"


def ended_key(gate: str) -> str:
    """The pids of the processes whose `gated` job got past its gate."""
    return f"{{e2e}}:ended:{gate}"


@pool.job()
def work(i: int, fail_times: int = 0, sleep_ms: int = 10) -> int:
    """Sleep, fail the first `fail_times` runs, then return 2 * i; records its own concurrency."""
    r = pool.redis
    r.eval(_ENTER, 2, RUNNING, PEAK)
    try:
        r.sadd(PIDS, os.getpid())
        time.sleep(sleep_ms / 1000)
        if int(r.incr(tries_key(i))) <= fail_times:
            msg = f"job {i} fails this run on purpose"
            raise RuntimeError(msg)
        return 2 * i
    finally:
        r.decr(RUNNING)


@pool.job()
def gated(gate: str) -> str:
    """Record the start, then block until the test sets the gate key."""
    r = pool.redis
    r.rpush(started_key(gate), os.getpid())
    deadline = time.monotonic() + GATE_TIMEOUT
    while not r.exists(gate_key(gate)):
        if time.monotonic() > deadline:
            msg = f"gate {gate} was never opened"
            raise TimeoutError(msg)
        time.sleep(0.01)
    r.rpush(ended_key(gate), os.getpid())
    return "released"


def cancelled_key(gate: str) -> str:
    """The pids of the processes whose `gated_async` job was cancelled at its gate."""
    return f"{{e2e}}:cancelled:{gate}"


@pool.job()
async def gated_async(gate: str) -> str:
    """`gated` on the event loop: a cancel (the worker fencing itself) is recorded."""
    r = pool.aio.redis
    await r.rpush(started_key(gate), os.getpid())
    try:
        while not await r.exists(gate_key(gate)):
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        pool.redis.rpush(cancelled_key(gate), os.getpid())
        raise
    await r.rpush(ended_key(gate), os.getpid())
    return "released"


@pool.job()
def add(a: int, b: int) -> int:
    """A pure job for the CLI tests (runs in a child process under --executor process)."""
    return a + b


@pool.job()
def crash_once(i: int) -> int:
    """Leave its process at once on its first run (a crashing extension, say), then succeed."""
    if int(pool.redis.incr(f"{{e2e}}:crashes:{i}")) == 1:
        os._exit(3)
    return i


@pool.job(timeout=0.5)
def hang_sync(pid_key: str) -> None:
    """Record its process, then never finish on its own: its timeout must end it."""
    pool.redis.rpush(pid_key, os.getpid())
    time.sleep(GATE_TIMEOUT)


@pool.job()
def echo(*args: Any) -> list[Any]:
    """Return the arguments as received, to check how the CLI parses them."""
    return list(args)


@pool.on_complete()
def record(job_id: str, result: Result, context: Any) -> None:
    """Append one line per handler run, so the tests can count runs per job."""
    pool.redis.rpush(CALLBACKS, job_id)
