"""`workpool demo`: a pool with a napping job, a flaky job and an on_complete handler, and the
driver that runs a few hundred of them on real worker processes (`workpool.cli.demo:pool`).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from workpool.client.pool import Workpool
from workpool.types import Result, Retry
from workpool.wire.counters import Counter

if TYPE_CHECKING:
    from rich.console import Console

#: shows progress: seconds since the start, the counts (_counts)
Report = Callable[[float, dict[str, int]], None]

POOL_ENV = "WORKPOOL_DEMO_POOL"  #: the driver names a fresh pool per run; workers read it here
_TICK = 0.5  # seconds between progress lines
_STOP_TIMEOUT = 15.0


def build(name: str) -> Workpool:
    """The demo pool: a job that naps, a job that fails at random, and a tallying handler."""
    demo = Workpool(name, max_parallelism=16, retention=600.0,
                    retry=Retry(max_attempts=10, initial_backoff=0.05, base=1.5))

    @demo.job()
    def nap(ms: int) -> int:
        time.sleep(ms / 1000)
        return ms

    @demo.job()
    def flaky(i: int) -> int:
        if random.random() < 0.3:
            msg = f"flaky job {i} failed this attempt (a retry will likely succeed)"
            raise RuntimeError(msg)
        return i

    @demo.on_complete()
    def tally(job_id: str, result: Result, context: Any) -> None:
        demo.redis.hincrby(demo.keys.prefix + "demo:tally", result.kind, 1)

    return demo


pool = build(os.environ.get(POOL_ENV, "demo"))


def _enqueue(demo: Workpool, jobs: int) -> int:
    """Enqueue `jobs` jobs (one of them delayed, then canceled); return how many have a handler."""
    rnd = random.Random()
    flaky, with_handler = jobs // 5, jobs // 10
    naps = jobs - 1 - flaky - with_handler
    demo.enqueue_many("nap", [(rnd.randint(1, 10),) for _ in range(naps)])
    demo.enqueue_many("flaky", [(i,) for i in range(flaky)])
    demo.enqueue_many("nap", [(rnd.randint(1, 10),) for _ in range(with_handler)],
                      on_complete="tally", context="demo")
    demo.cancel(demo.enqueue("nap", 1, run_after=3600))
    return with_handler


def _counts(demo: Workpool) -> dict[str, int]:
    s = demo.stats()
    c = s.counters
    return {"pending": s.pending, "running": s.running, "retrying": s.retrying,
            "succeeded": c.get(Counter.SUCCEEDED, 0), "failed": c.get(Counter.FAILED, 0),
            "canceled": c.get(Counter.CANCELED, 0), "retries": c.get(Counter.RETRIED, 0),
            "handlers_run": c.get(Counter.CALLBACKS_DELIVERED, 0)}


def _line(counts: dict[str, int]) -> str:
    return "  ".join(f"{name} {n}" for name, n in counts.items())


def _finished(counts: dict[str, int]) -> int:
    return counts["succeeded"] + counts["failed"] + counts["canceled"]


def lines(echo: Callable[[str], None]) -> Report:
    """Progress as a line of counts each tick (a log, or output that is not a terminal)."""
    return lambda elapsed, counts: echo(f"{elapsed:6.1f}s  {_line(counts)}")


@contextmanager
def progress_bar(jobs: int, console: Console | None = None) -> Iterator[Report]:
    """Progress as a bar of the jobs ended, with the counts beside it (a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn  # noqa: PLC0415

    with Progress(TextColumn("ended"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), console=console) as bar:
        task = bar.add_task("", total=jobs)
        yield lambda elapsed, counts: bar.update(task, completed=_finished(counts),
                                                 description=_line(counts))


def _follow(demo: Workpool, procs: list[subprocess.Popen[bytes]], *, jobs: int, handlers: int,
            timeout: float, echo: Callable[[str], None],
            report: Report) -> dict[str, int] | None:
    """Report progress until every job is terminal and every handler ran; None on a failure."""
    start = time.monotonic()
    while True:
        counts = _counts(demo)
        report(time.monotonic() - start, counts)
        if _finished(counts) >= jobs and counts["handlers_run"] >= handlers:
            return counts
        exited = [p.returncode for p in procs if p.poll() is not None]
        if exited:
            echo(f"a worker exited early (status {exited[0]})")
            return None
        if time.monotonic() - start > timeout:
            echo(f"not finished after {timeout} s")
            return None
        time.sleep(_TICK)


def _stop(procs: list[subprocess.Popen[bytes]], echo: Callable[[str], None]) -> None:
    """SIGTERM every worker (graceful stop), SIGKILL the ones still running after a while."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if procs:
        echo("workers stopped, exit status " + ", ".join(str(p.returncode) for p in procs))


def _clean(demo: Workpool) -> None:
    """Delete every key of the run's pool, so demos leave nothing behind on a shared server."""
    keys = list(demo.redis.scan_iter(match=demo.keys.prefix + "*", count=1000))
    for i in range(0, len(keys), 500):
        demo.redis.unlink(*keys[i:i + 500])


def run(url: str, jobs: int, workers: int, timeout: float, echo: Callable[[str], None], *,
        report: Report | None = None) -> bool:
    """Run the demo on a fresh pool at `url`, reporting progress with `report` (lines by
    default); True when every job finished in time."""
    name = f"demo-{uuid.uuid4().hex[:8]}"
    demo = build(name)
    demo.use_url(url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        handlers = _enqueue(demo, jobs)
        echo(f"pool {name}: enqueued {jobs} jobs ({jobs // 5} flaky, {handlers} with "
             "on_complete, 1 delayed by an hour and canceled at once)")
        env = {**os.environ, POOL_ENV: name}
        procs = [subprocess.Popen(
            [sys.executable, "-m", "workpool", "--redis-url", url, "--log-level", "ERROR",
             "worker", "workpool.cli.demo:pool", "--worker-id", f"{name}-w{i}"], env=env)
            for i in range(workers)]
        counts = _follow(demo, procs, jobs=jobs, handlers=handlers, timeout=timeout, echo=echo,
                         report=report or lines(echo))
        if counts is not None:
            echo(f"final: done {counts['succeeded'] + counts['failed']} (succeeded "
                 f"{counts['succeeded']}, failed {counts['failed']})  canceled "
                 f"{counts['canceled']}  pending {counts['pending']}  running "
                 f"{counts['running']}  retrying {counts['retrying']}  (retries "
                 f"{counts['retries']}, on_complete handlers run {counts['handlers_run']})")
        return counts is not None
    finally:
        _stop(procs, echo)
        _clean(demo)
        demo.close()
