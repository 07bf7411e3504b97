"""What every command shares: the global options, loading the pool a command names, and
running until a signal."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import click

from workpool.client.pool import Workpool
from workpool.client.sharded import shard_count
from workpool.core.locate import load_object
from workpool.core.logs import LogFormat, configure_logging, logger
from workpool.errors import ConfigurationError, WorkpoolError
from workpool.server.connection import check_url, unavailable_as_typed

ENV_POOL = "WORKPOOL_POOL"


@dataclasses.dataclass(frozen=True)
class Settings:
    """The group's global options, handed to every command."""

    redis_url: str | None
    log_format: LogFormat
    log_level: str

    def setup_logging(self) -> None:
        """Only long-running commands log, so only they configure structlog."""
        configure_logging(self.log_format, self.log_level)


class CommandGroup(click.Group):
    """Turns workpool's typed errors into a one-line message: a usage error (status 2) for an
    option workpool cannot use, status 1 for anything else."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:
            raise click.UsageError(str(exc), ctx) from exc
        except WorkpoolError as exc:
            raise click.ClickException(str(exc)) from exc


def check_url_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--redis-url: empty means unset; anything else must be a Redis URL."""
    if not value:
        return None
    try:
        return check_url(f"--{param.name.replace('_', '-')}" if param.name else "url", value)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


def pool_for(ctx: click.Context, spec: str, *, code: bool = False) -> Workpool:
    """MODULE:POOL imports the pool; a plain name gives a bare pool (enqueue by name), unless
    the command runs the pool's code (`code`)."""
    url = cast("Settings", ctx.obj).redis_url
    if code and ":" not in spec:
        msg = f"expected MODULE:POOL naming the pool object and its registered jobs (e.g. " \
              f"myapp.tasks:pool), got {spec!r}"
        raise click.BadParameter(msg, ctx, param_hint="MODULE:POOL")
    if ":" in spec:
        try:
            found = load_object(spec)
        except ImportError as exc:
            raise click.ClickException(f"cannot import the pool {spec!r}: {exc}") from exc
        if not isinstance(found, Workpool):
            msg = f"{spec!r} is not a workpool.Workpool (found {type(found).__name__})"
            raise ConfigurationError(msg)
        pool = found
        if url:
            pool.use_url(url)
    else:
        pool = Workpool(spec, url)
        with unavailable_as_typed(pool.url):  # a sharded pool's loops told its coordinator
            shards = shard_count(pool.redis, spec)
        if shards > 1:
            pool.close()
            pool = Workpool(spec, url, shards=shards)
    ctx.call_on_close(pool.close)
    return pool


async def until_signaled(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run until SIGTERM/SIGINT sets the stop event; a second signal acts at once."""
    stop, loop = asyncio.Event(), asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        logger().info("stopping gracefully", signal=sig.name)
        stop.set()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(s)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await run(stop)



pool_option = click.option("--pool", "spec", envvar=ENV_POOL, required=True, metavar="POOL",
                           help=f"MODULE:POOL or a pool name (default ${ENV_POOL}).")


def shown(value: Any) -> str:
    """A value as one line of JSON (repr for what JSON cannot say)."""
    return json.dumps(value, ensure_ascii=False, default=repr)


def aligned(rows: Sequence[tuple[str, str]]) -> list[str]:
    """Label/value rows with the values in one column (a value's further lines too)."""
    width = max(len(label) for label, _ in rows)
    lines = []
    for label, value in rows:
        first, *rest = value.splitlines() or [""]
        lines.append(f"{label:<{width}}  {first}")
        lines.extend(" " * (width + 2) + line for line in rest)
    return lines
