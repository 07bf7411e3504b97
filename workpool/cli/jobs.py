"""Commands about one job: enqueue, status, wait, cancel."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import click

from workpool.cli.context import (
    aligned,
    pool_for,
    pool_option,
    shown,
)
from workpool.types import Canceled, JobStatus
from workpool.wire.limits import MAX_PRIORITY, MIN_PRIORITY


def parse_args(raw: Sequence[str], strict: bool) -> list[Any]:
    """Command-line arguments as values: JSON, else (unless `strict`) the plain string."""
    values = []
    for arg in raw:
        try:
            values.append(json.loads(arg))
        except ValueError as exc:
            if strict:
                raise click.BadParameter(f"{arg!r} is not JSON ({exc})", param_hint="ARGS") from exc
            values.append(arg)
    return values


@click.command()
@click.argument("spec", metavar="POOL")
@click.argument("name")
@click.argument("args", nargs=-1)
@click.option("--key", default=None, help="Idempotency key: same key, same job.")
@click.option("--run-after", type=click.FloatRange(min=0), default=None,
              help="Do not start before this many seconds from now.")
@click.option("--priority", type=click.IntRange(MIN_PRIORITY, MAX_PRIORITY), default=0,
              show_default=True, help="Among due jobs, a higher priority starts first.")
@click.option("--concurrency-key", default=None,
              help="Jobs of one key run at most max_per_key at once (see `workpool config`).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds an attempt may run (default: the job's own, if any).")
@click.option("--json-args", is_flag=True,
              help="Every ARG must be JSON (no fallback to a plain string).")
@click.pass_context
def enqueue(ctx: click.Context, *, spec: str, name: str, args: tuple[str, ...], key: str | None,
            run_after: float | None, priority: int, concurrency_key: str | None,
            timeout: float | None, json_args: bool) -> None:
    """Enqueue job NAME on POOL (MODULE:POOL or a pool name); prints the job id.

    Each ARG is parsed as JSON, falling back to a plain string: `workpool enqueue emails
    send '"a@b.c"' 3 '{"x": 1}'`.
    """
    pool = pool_for(ctx, spec)
    if pool.registry.jobs:
        pool.registry.job(name)  # the pool's code is at hand: catch a misspelt name now
    click.echo(pool.enqueue(name, *parse_args(args, json_args), key=key, run_after=run_after,
                            priority=priority, concurrency_key=concurrency_key,
                            timeout=timeout))


def when(seconds: float | None) -> str:
    """A time (seconds since the epoch) as ISO 8601 in UTC, or `-`."""
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def status_lines(st: JobStatus) -> list[str]:
    """A job's status as aligned `label  value` lines."""
    rows = [("id", st.id), ("state", st.state.value), ("outcome", st.outcome or "-"),
            ("name", st.name or "-"), ("attempts", f"{st.attempts} of {st.max_attempts}"),
            ("result", shown(st.result) if st.outcome == "succeeded" else "-"),
            ("error", f"{st.error_type}: {st.error}" if st.error else "-")]
    if st.cancel_requested:
        rows.append(("cancel", "requested"))
    if st.callback:
        rows.append(("on_complete", st.callback))
    rows += [("enqueued_at", when(st.enqueued_at)), ("finished_at", when(st.finished_at))]
    return aligned(rows)



@click.command()
@click.argument("job_id", metavar="ID")
@pool_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for machines.")
@click.pass_context
def status(ctx: click.Context, job_id: str, spec: str, as_json: bool) -> None:
    """Print a job's state, attempts, outcome, result and error."""
    _print_status(pool_for(ctx, spec).status(job_id), as_json)


def _print_status(st: JobStatus, as_json: bool) -> None:
    if as_json:
        click.echo(shown({**dataclasses.asdict(st), "state": st.state.value}))
    else:
        click.echo("\n".join(status_lines(st)))


@click.command()
@click.argument("job_id", metavar="ID")
@pool_option
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Give up after this many seconds (status 1); default: wait for ever.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for machines.")
@click.pass_context
def wait(ctx: click.Context, job_id: str, spec: str, timeout: float | None,
         as_json: bool) -> None:
    """Wait until a job is finished (done or canceled), then print its status."""
    _print_status(pool_for(ctx, spec).wait(job_id, timeout=timeout), as_json)


@click.command()
@click.argument("job_id", metavar="ID")
@pool_option
@click.pass_context
def cancel(ctx: click.Context, job_id: str, spec: str) -> None:
    """Cancel a job: pending/retrying ones end canceled; a running one is never retried."""
    cancel_by_id(ctx, job_id, spec)


def cancel_by_id(ctx: click.Context, some_id: str, spec: str) -> None:
    """Cancel a job or a workflow and say what the main loop did (exit 1: no such id)."""
    result = pool_for(ctx, spec).cancel(some_id)
    if result == Canceled.UNKNOWN:
        raise click.ClickException(f"{some_id}: {result.description}")
    click.echo(f"{some_id}: {result.description}")


