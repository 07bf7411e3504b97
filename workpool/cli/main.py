"""The `workpool` command: run workers and main loops, enqueue, inspect and cancel jobs, demo."""

from __future__ import annotations

import click

from workpool.cli import jobs, operate, pools, processes, workflows
from workpool.cli.context import (
    CommandGroup,
    Settings,
    check_url_option,
)
from workpool.core.logs import LogFormat
from workpool.server.connection import ENV_URL


@click.group(cls=CommandGroup)
@click.option("--redis-url", envvar=ENV_URL, default=None, callback=check_url_option,
              help=f"Redis to use (default ${ENV_URL}, else the pool's own, else the embedded "
                   "per-user server). Overrides the URL of a pool loaded from MODULE:POOL.")
@click.option("--log-format", type=click.Choice(["console", "json"]), default="console",
              show_default=True)
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, log_format: LogFormat, log_level: str) -> None:
    """workpool: a job queue on Redis with an explicit, Lua-enforced job state machine."""
    ctx.obj = Settings(redis_url, log_format, log_level.upper())



for command in (processes.worker, processes.loop, processes.demo, processes.server, jobs.enqueue,
                jobs.status, jobs.wait, jobs.cancel, pools.stats, pools.config,
                workflows.workflow, operate.metrics, operate.top, operate.dashboard):
    cli.add_command(command)


def main() -> None:
    """Console entry point."""
    cli(prog_name="workpool")


