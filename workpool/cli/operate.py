"""Commands for operators: the pools' metrics for Prometheus."""

from __future__ import annotations

import asyncio
from typing import cast

import click

from workpool.cli.context import Settings, pool_for, until_signaled
from workpool.core.logs import logger

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

    settings = cast("Settings", ctx.obj)
    settings.setup_logging()
    pools = [pool_for(ctx, spec) for spec in specs]
    names = [pool.name for pool in pools]
    if len(set(names)) < len(names):
        raise click.BadParameter(f"a pool is named twice: {', '.join(names)}",
                                 param_hint="POOL...")
    try:
        server = serve(pools, host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc
    url = f"http://{host}:{server.server_port}/metrics"
    click.echo(f"serving the metrics of {', '.join(names)} at {url}")
    logger().info("serving metrics", url=url, pools=names)

    async def until_stopped(stop: asyncio.Event) -> None:
        await stop.wait()

    try:
        asyncio.run(until_signaled(until_stopped))
    finally:
        server.shutdown()
        server.server_close()
