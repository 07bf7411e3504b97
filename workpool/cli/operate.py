"""Commands for operators: the pools' metrics for Prometheus, and a live view in the terminal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol, cast

import click

from workpool.cli.context import Settings, pool_for, until_signaled
from workpool.core.logs import logger
from workpool.errors import WorkpoolError

if TYPE_CHECKING:
    from workpool.client.pool import Workpool

DEFAULT_METRICS_PORT = 9808


@click.command()
@click.argument("specs", metavar="POOL...", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=DEFAULT_METRICS_PORT, show_default=True,
              type=click.IntRange(0, 65535), help="Port to listen on (0: any free one).")
@click.pass_context
def metrics(ctx: click.Context, specs: tuple[str, ...], host: str, port: int) -> None:
    """Serve the pools' metrics for Prometheus at http://HOST:PORT/metrics until
    SIGTERM/SIGINT (each POOL a name, or MODULE:POOL)."""
    from workpool.operate.prometheus import serve  # noqa: PLC0415 - keeps other commands light

    pools = _pools(ctx, specs)
    names = [pool.name for pool in pools]
    with _listening(host, port):
        server = serve(pools, host, port)
    url = f"http://{host}:{server.server_port}/metrics"
    click.echo(f"serving the metrics of {', '.join(names)} at {url}")
    logger().info("serving metrics", url=url, pools=names)
    _until_signaled(server)


@click.command()
@click.argument("spec", metavar="POOL")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one view and exit (for scripts).")
@click.pass_context
def top(ctx: click.Context, spec: str, interval: float, once: bool) -> None:
    """A live view of a pool: jobs per state, running against the limit, rates, each job
    name's counts and the latest failures (POOL a name, or MODULE:POOL); Ctrl-C ends it."""
    from rich.console import Console, Group  # noqa: PLC0415 - keeps other commands light
    from rich.live import Live  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    from workpool.operate.top import read, render  # noqa: PLC0415

    pool = pool_for(ctx, spec)
    first = read(pool)
    if not first.metrics.stats.exists:
        raise click.ClickException(f"no pool named {pool.name!r} at {pool.url}: nothing of it "
                                   "is in Redis (check the name, and --redis-url)")
    console = Console()
    if once:
        console.print(render(first))
        return
    try:
        with Live(render(first), console=console, auto_refresh=False, screen=False) as live:
            before = first
            while True:
                time.sleep(interval)  # the refresh period, not a wait for a condition
                try:
                    now = read(pool)
                except WorkpoolError as exc:  # Redis away: say so, keep the last view, go on
                    live.update(Group(render(before), Text(f"cannot read: {exc}", "red")),
                                refresh=True)
                    continue
                live.update(render(now, before), refresh=True)
                before = now
    except KeyboardInterrupt:
        pass


@click.command()
@click.argument("specs", metavar="POOL...", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (any but loopback needs --token).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free one).")
@click.option("--read-only", is_flag=True, help="Show everything, offer and take no action.")
@click.option("--token", envvar="WORKPOOL_DASHBOARD_TOKEN", default=None,
              help="Every request must carry it (a sign-in page sets it as a cookie; "
                   "default $WORKPOOL_DASHBOARD_TOKEN).")
@click.pass_context
def dashboard(ctx: click.Context, specs: tuple[str, ...], *, host: str, port: int,
              read_only: bool, token: str | None) -> None:
    """Serve the web dashboard of the pools (each POOL a name, or MODULE:POOL) until
    SIGTERM/SIGINT: pools, jobs, a job's detail, live, with actions unless --read-only;
    /metrics too."""
    from workpool.operate.dashboard.server import Dashboard, serve  # noqa: PLC0415

    pools = _pools(ctx, specs)
    names = [pool.name for pool in pools]
    with _listening(host, port):
        server = serve(Dashboard(pools, read_only=read_only, token=token or None), host, port)
    url = f"http://{host}:{server.server_port}/"
    click.echo(f"dashboard of {', '.join(names)} at {url}" + (" (read-only)" if read_only
                                                                else ""))
    logger().info("serving the dashboard", url=url, pools=names, read_only=read_only,
                  token=bool(token))
    _until_signaled(server)


def _pools(ctx: click.Context, specs: tuple[str, ...]) -> list[Workpool]:
    """The pools a serving command names (logging set up first); each name once."""
    cast("Settings", ctx.obj).setup_logging()
    pools = [pool_for(ctx, spec) for spec in specs]
    names = [pool.name for pool in pools]
    if len(set(names)) < len(names):
        raise click.BadParameter(f"a pool is named twice: {', '.join(names)}",
                                 param_hint="POOL...")
    return pools


@contextmanager
def _listening(host: str, port: int) -> Iterator[None]:
    """Where a server starts to listen: a port it cannot have is a one-line error."""
    try:
        yield
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc


def _until_signaled(server: Stoppable) -> None:
    """Serve (the server answers in a thread of its own) until SIGTERM/SIGINT, then stop."""

    async def until_stopped(stop: asyncio.Event) -> None:
        await stop.wait()

    try:
        asyncio.run(until_signaled(until_stopped))
    finally:
        server.shutdown()
        server.server_close()


class Stoppable(Protocol):
    """A server answering in a thread of its own."""

    def shutdown(self) -> None: ...

    def server_close(self) -> None: ...
