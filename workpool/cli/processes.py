"""Commands that run for long: a worker, a main loop, the demo, the embedded server."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import threading
import time
from multiprocessing.process import BaseProcess
from typing import Any, cast

import click

from workpool.cli.context import (
    Settings,
    aligned,
    pool_for,
    until_signaled,
)
from workpool.core.logs import logger
from workpool.errors import WorkerFailed, WorkerStuck
from workpool.server.connection import ENV_URL, resolve_url
from workpool.server.embedded import (
    ensure_local_server,
    local_data_dir,
    local_server,
    stop_local_server,
)
from workpool.worker.threads import THREAD_PREFIX


@click.command()
@click.argument("spec", metavar="MODULE:POOL")
@click.option("--concurrency", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--executor", type=click.Choice(["thread", "process"]), default="thread",
              show_default=True, help="Where sync jobs run (async jobs run on the event loop).")
@click.option("--no-loop", is_flag=True, help="Do not compete for the main-loop lease.")
@click.option("--grace", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds running attempts get to finish after SIGTERM/SIGINT.")
@click.option("--worker-id", default=None, help="Consumer name (default host-pid-random).")
@click.pass_context
def worker(ctx: click.Context, *, spec: str, concurrency: int, executor: str, no_loop: bool,
           grace: float, worker_id: str | None) -> None:
    """Run the pool's jobs and on_complete handlers until SIGTERM/SIGINT."""
    from workpool.process import worker  # noqa: PLC0415 - keeps other commands light
    from workpool.worker.supervisor import ExecutorKind  # noqa: PLC0415

    settings = cast("Settings", ctx.obj)
    settings.setup_logging()
    pool = pool_for(ctx, spec, code=True)
    if settings.redis_url:
        os.environ[ENV_URL] = settings.redis_url  # child processes of the process executor
    runner = worker(pool, concurrency=concurrency, executor=cast("ExecutorKind", executor),
                    main_loop=not no_loop, worker_id=worker_id, grace=grace, pool_spec=spec)
    try:
        asyncio.run(until_signaled(runner.run))
    except WorkerStuck as exc:
        _restart(str(exc))
    except WorkerFailed as exc:  # say why first: threads left behind may end the process below
        click.echo(f"Error: {exc}", err=True)
        _leave_abandoned_attempts(1)
        sys.exit(1)
    _leave_abandoned_attempts(0)


def _restart(why: str) -> None:
    """Replace this process by a fresh `workpool worker` with the same arguments (the threads
    stuck in timed-out attempts go with the old process image): the worker supervises itself."""
    logger().error("restarting the worker process", reason=why)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _leave_abandoned_attempts(status: int) -> None:
    """Attempts still running after the grace period were left to the reaper (WorkerLost):
    exit now, with `status`, rather than wait for their threads or child processes at
    interpreter exit (a thread stuck in a job would keep the process for ever)."""

    def busy() -> list[threading.Thread | BaseProcess]:
        threads = [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]
        return [*threads, *multiprocessing.active_children()]

    deadline = time.monotonic() + 1.0  # idle ones end at once after the executor's shutdown
    while (left := busy()) and time.monotonic() < deadline:
        left[0].join(0.05)
    if not left:
        return
    children = [c for c in left if isinstance(c, BaseProcess)]
    logger().warning("exiting without the attempts still running after the grace period",
                     threads=len(left) - len(children), processes=len(children))
    for child in children:
        child.kill()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@click.command()
@click.argument("spec", metavar="MODULE:POOL")
@click.pass_context
def loop(ctx: click.Context, spec: str) -> None:
    """Run only a main loop for the pool (a standby one until it wins the lease; a sharded
    pool's: one per shard)."""
    from workpool.process import main_loops  # noqa: PLC0415

    cast("Settings", ctx.obj).setup_logging()
    asyncio.run(until_signaled(main_loops(pool_for(ctx, spec, code=True))))



@click.command()
@click.option("--jobs", default=300, show_default=True, type=click.IntRange(min=10))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(min=1),
              help="Give up if the jobs are not all finished after this many seconds.")
@click.pass_context
def demo(ctx: click.Context, jobs: int, workers: int, timeout: float) -> None:
    """Enqueue a few hundred jobs, run them on worker processes, show progress and counts."""
    from workpool.cli import demo as demo_module  # noqa: PLC0415

    settings = cast("Settings", ctx.obj)
    url = resolve_url(settings.redis_url)
    known = local_server() if settings.redis_url is None else None
    if known is not None:
        click.echo(f"using the embedded redis-server {known['version']} at {url} "
                   f"({known['binary']}; `workpool server stop` stops it)")
    click.echo(f"demo on {url}: {jobs} jobs, {workers} worker processes")
    if sys.stdout.isatty():  # a bar; else (a log, CI) a line of counts each tick
        with demo_module.progress_bar(jobs) as report:
            finished = demo_module.run(url, jobs, workers, timeout, click.echo, report=report)
    else:
        finished = demo_module.run(url, jobs, workers, timeout, click.echo)
    if not finished:
        raise click.ClickException("the demo did not finish every job in time")



@click.group()
def server() -> None:
    """The embedded per-user redis-server (used when no Redis URL is configured)."""


def _server_lines(known: dict[str, Any]) -> list[str]:
    return aligned([("url", str(known["url"])), ("pid", str(known["pid"])),
                     ("binary", str(known.get("binary", "?"))),
                     ("version", str(known.get("version", "?"))),
                     ("data", str(known.get("data", local_data_dir())))])


@server.command("start")
def server_start() -> None:
    """Start the embedded server if it is not running; print its URL."""
    ensure_local_server()
    known = local_server()
    click.echo("\n".join(_server_lines(known) if known else []))


@server.command("status")
def server_status() -> None:
    """Show the embedded server: URL, pid, binary and version, data directory."""
    known = local_server()
    if known is None:
        raise click.ClickException(f"the embedded server is not running (data directory "
                                   f"{local_data_dir()})")
    click.echo("\n".join(_server_lines(known)))


@server.command("stop")
def server_stop() -> None:
    """Stop the embedded server (its AOF keeps the jobs: the next use starts it again)."""
    known = stop_local_server()
    if known is None:
        click.echo(f"the embedded server was not running (data directory {local_data_dir()})")
    else:
        click.echo(f"stopped the embedded server at {known['url']} (pid {known['pid']})")


