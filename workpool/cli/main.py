"""The `workpool` command: run workers and main loops, enqueue, inspect and cancel jobs, demo."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from multiprocessing.process import BaseProcess
from typing import Any, cast

import click

from workpool.client.pool import Workpool
from workpool.client.stats import PoolStats
from workpool.core.locate import load_pool
from workpool.core.logs import LogFormat, configure_logging, logger
from workpool.errors import ConfigurationError, WorkerFailed, WorkerStuck, WorkpoolError
from workpool.server.connection import ENV_URL, check_url, resolve_url
from workpool.server.embedded import (
    ensure_local_server,
    local_data_dir,
    local_server,
    stop_local_server,
)
from workpool.types import Canceled, JobStatus, RateLimit
from workpool.wire.counters import ANOMALIES, Counter
from workpool.wire.limits import MAX_PRIORITY, MAX_SETTING, MIN_PRIORITY
from workpool.worker.threads import THREAD_PREFIX

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


class _Group(click.Group):
    """Turns workpool's typed errors into a one-line message: a usage error (status 2) for an
    option workpool cannot use, status 1 for anything else."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:
            raise click.UsageError(str(exc), ctx) from exc
        except WorkpoolError as exc:
            raise click.ClickException(str(exc)) from exc


def _url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--redis-url: empty means unset; anything else must be a Redis URL."""
    if not value:
        return None
    try:
        return check_url(f"--{param.name.replace('_', '-')}" if param.name else "url", value)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


def _pool(ctx: click.Context, spec: str, *, code: bool = False) -> Workpool:
    """MODULE:POOL imports the pool; a plain name gives a bare pool (enqueue by name), unless
    the command runs the pool's code (`code`)."""
    url = cast("Settings", ctx.obj).redis_url
    if code and ":" not in spec:
        msg = f"expected MODULE:POOL naming the pool object and its registered jobs (e.g. " \
              f"myapp.tasks:pool), got {spec!r}"
        raise click.BadParameter(msg, ctx, param_hint="MODULE:POOL")
    if ":" in spec:
        try:
            pool = load_pool(spec)
        except ImportError as exc:
            raise click.ClickException(f"cannot import the pool {spec!r}: {exc}") from exc
        if url:
            pool.use_url(url)
    else:
        pool = Workpool(spec, url)
    ctx.call_on_close(pool.close)
    return pool


async def _until_signaled(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
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


@click.group(cls=_Group)
@click.option("--redis-url", envvar=ENV_URL, default=None, callback=_url,
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


@cli.command()
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
    from workpool.worker.supervisor import ExecutorKind, Worker  # noqa: PLC0415 - keeps other commands light

    settings = cast("Settings", ctx.obj)
    settings.setup_logging()
    pool = _pool(ctx, spec, code=True)
    if settings.redis_url:
        os.environ[ENV_URL] = settings.redis_url  # child processes of the process executor
    runner = Worker(pool, concurrency=concurrency, executor=cast("ExecutorKind", executor),
                    run_loop=not no_loop, worker_id=worker_id, grace=grace, pool_spec=spec)
    try:
        asyncio.run(_until_signaled(runner.run))
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


@cli.command()
@click.argument("spec", metavar="MODULE:POOL")
@click.pass_context
def loop(ctx: click.Context, spec: str) -> None:
    """Run only a main loop for the pool (a standby one until it wins the lease)."""
    from workpool.mainloop.loop import MainLoop  # noqa: PLC0415

    cast("Settings", ctx.obj).setup_logging()
    asyncio.run(_until_signaled(MainLoop(_pool(ctx, spec, code=True)).run))


def _parse_args(raw: Sequence[str], strict: bool) -> list[Any]:
    values = []
    for arg in raw:
        try:
            values.append(json.loads(arg))
        except ValueError as exc:
            if strict:
                raise click.BadParameter(f"{arg!r} is not JSON ({exc})", param_hint="ARGS") from exc
            values.append(arg)
    return values


@cli.command()
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
    pool = _pool(ctx, spec)
    if pool.registry.jobs:
        pool.registry.job(name)  # the pool's code is at hand: catch a misspelt name now
    click.echo(pool.enqueue(name, *_parse_args(args, json_args), key=key, run_after=run_after,
                            priority=priority, concurrency_key=concurrency_key,
                            timeout=timeout))


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr)


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def _aligned(rows: Sequence[tuple[str, str]]) -> list[str]:
    width = max(len(label) for label, _ in rows)
    lines = []
    for label, value in rows:
        first, *rest = value.splitlines() or [""]
        lines.append(f"{label:<{width}}  {first}")
        lines.extend(" " * (width + 2) + line for line in rest)
    return lines


def status_lines(st: JobStatus) -> list[str]:
    """A job's status as aligned `label  value` lines."""
    rows = [("id", st.id), ("state", st.state.value), ("outcome", st.outcome or "-"),
            ("name", st.name or "-"), ("attempts", f"{st.attempts} of {st.max_attempts}"),
            ("result", _show(st.result) if st.outcome == "succeeded" else "-"),
            ("error", f"{st.error_type}: {st.error}" if st.error else "-")]
    if st.cancel_requested:
        rows.append(("cancel", "requested"))
    if st.callback:
        rows.append(("on_complete", st.callback))
    rows += [("enqueued_at", _when(st.enqueued_at)), ("finished_at", _when(st.finished_at))]
    return _aligned(rows)


pool_option = click.option("--pool", "spec", envvar=ENV_POOL, required=True, metavar="POOL",
                           help=f"MODULE:POOL or a pool name (default ${ENV_POOL}).")


@cli.command()
@click.argument("job_id", metavar="ID")
@pool_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for machines.")
@click.pass_context
def status(ctx: click.Context, job_id: str, spec: str, as_json: bool) -> None:
    """Print a job's state, attempts, outcome, result and error."""
    _print_status(_pool(ctx, spec).status(job_id), as_json)


def _print_status(st: JobStatus, as_json: bool) -> None:
    if as_json:
        click.echo(_show({**dataclasses.asdict(st), "state": st.state.value}))
    else:
        click.echo("\n".join(status_lines(st)))


@cli.command()
@click.argument("job_id", metavar="ID")
@pool_option
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Give up after this many seconds (status 1); default: wait for ever.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for machines.")
@click.pass_context
def wait(ctx: click.Context, job_id: str, spec: str, timeout: float | None,
         as_json: bool) -> None:
    """Wait until a job is finished (done or canceled), then print its status."""
    _print_status(_pool(ctx, spec).wait(job_id, timeout=timeout), as_json)


@cli.command()
@click.argument("job_id", metavar="ID")
@pool_option
@click.pass_context
def cancel(ctx: click.Context, job_id: str, spec: str) -> None:
    """Cancel a job: pending/retrying ones end canceled; a running one is never retried."""
    result = _pool(ctx, spec).cancel(job_id)
    if result == Canceled.UNKNOWN:
        raise click.ClickException(f"{job_id}: {result.description}")
    click.echo(f"{job_id}: {result.description}")


def stats_lines(s: PoolStats) -> list[str]:
    """Pool stats as aligned lines, then the most recent rejected entries with their reason."""
    c = s.counters
    ok, failed = c.get(Counter.SUCCEEDED, 0), c.get(Counter.FAILED, 0)
    limit = "unset (no main loop yet)" if s.max_parallelism is None else str(s.max_parallelism)
    rows = [
        ("pool", s.pool),
        ("pending", f"{s.pending} ({s.accepted_not_applied} accepted, not applied yet)"),
        ("running", f"{s.running} of max_parallelism {limit}" + (" (PAUSED)" if s.paused else "")),
        ("retrying", str(s.retrying)),
        ("ready", f"{s.ready} due, waiting for a slot or the pool's rate limit"
                  + "".join(f"; priority {p}: {n}" for p, n in
                            sorted(s.ready_by_priority.items(), reverse=True))),
        ("held", f"{s.held_by_rate} by job rate limits, {s.held_by_key} by concurrency-key limits"),
        ("limits", " ".join(f"{k}={v}" for k, v in sorted(s.settings.items())) or "none"),
        ("done", f"{ok + failed} (succeeded {ok}, failed {failed}; all time)"),
        ("canceled", f"{c.get(Counter.CANCELED, 0)} (all time)"),
        ("leader", s.leader or "none"),
        ("workers", f"{s.workers} live" + (f", {s.threads_stuck} job threads stuck in attempts "
                                           "that timed out" if s.threads_stuck else "")),
        ("throughput", f"{s.throughput:.2f} jobs/s (last minute)"),
        ("anomalies", "\n".join(f"{name} {c.get(name, 0)}" for name in ANOMALIES)),
    ]
    lines = _aligned(rows)
    if s.rejected:
        lines.append("recent rejected entries (newest first):")
    for entry in s.rejected:
        fields = " ".join(f"{k[2:]}={_clip(v)}" for k, v in entry.items() if k.startswith("f."))
        cut = f" (cut: {entry['cut']})" if "cut" in entry else ""
        lines.append(f"  {entry.get('entry', '?')}  {_clip(entry.get('reason', '?'))}  "
                     f"[{fields}]{cut}")
    return lines


def _clip(value: str, width: int = 60) -> str:
    """A value shown whole if short, else its start and its length."""
    return repr(value) if len(value) <= width else f"{value[:width]!r}... ({len(value)} chars)"


@cli.command()
@click.argument("spec", metavar="POOL")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for machines.")
@click.pass_context
def stats(ctx: click.Context, spec: str, as_json: bool) -> None:
    """Counts per state, running vs limit, leader, workers, throughput and anomalies."""
    pool = _pool(ctx, spec)
    s = pool.stats()
    if not s.exists:
        raise click.ClickException(f"no pool named {pool.name!r} at {pool.url}: nothing of it is "
                                   "in Redis (check the name, and --redis-url)")
    if as_json:
        click.echo(_show({**dataclasses.asdict(s), "throughput": s.throughput,
                          "max_parallelism": s.max_parallelism, "paused": s.paused}))
    else:
        click.echo("\n".join(stats_lines(s)))


@cli.command()
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
    if not demo_module.run(url, jobs, workers, timeout, click.echo):
        raise click.ClickException("the demo did not finish every job in time")


def main() -> None:
    """Console entry point."""
    cli(prog_name="workpool")


@cli.group()
def server() -> None:
    """The embedded per-user redis-server (used when no Redis URL is configured)."""


def _server_lines(known: dict[str, Any]) -> list[str]:
    return _aligned([("url", str(known["url"])), ("pid", str(known["pid"])),
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


def _named(pairs: tuple[str, ...], what: str, parse: Callable[[str, str], Any]) -> dict[str, Any]:
    """NAME=VALUE options as a dict, each value parsed by `parse(option, value)`."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            msg = f"{what} expects NAME=VALUE, got {pair!r}"
            raise click.BadParameter(msg)
        out[name] = parse(f"{what} {name}", value)
    return out


def _rate(option: str, text: str) -> RateLimit | None:
    return None if text == "none" else RateLimit.parse(text, option)


def _count(option: str, text: str) -> int:
    if not text.isdigit():
        msg = f"{option} expects a whole number >= 0, got {text!r}"
        raise click.BadParameter(msg)
    return int(text)


@cli.command("config")
@click.argument("spec", metavar="POOL")
@click.option("--max-parallelism", type=click.IntRange(0, MAX_SETTING),
              help="Running jobs across all workers.")
@click.option("--pause/--resume", "paused", default=None, help="Stop / resume starting jobs.")
@click.option("--rate-limit", help="Pool-wide starts, LIMIT/PERIOD (50/1s, 10/500ms) or none.")
@click.option("--job-rate-limit", multiple=True, metavar="NAME=RATE",
              help="Starts of one job name, e.g. send_email=50/1s (repeatable).")
@click.option("--max-per-key", type=click.IntRange(0, MAX_SETTING),
              help="Running jobs per concurrency key (1 = serial).")
@click.option("--job-max-per-key", multiple=True, metavar="NAME=N",
              help="Per-key limit of one job name (repeatable).")
@click.option("--reset", is_flag=True, help="Drop every live override first (code values apply).")
@click.pass_context
def config(ctx: click.Context, spec: str, *, max_parallelism: int | None, paused: bool | None,
           rate_limit: str | None, job_rate_limit: tuple[str, ...], max_per_key: int | None,
           job_max_per_key: tuple[str, ...], reset: bool) -> None:
    """Change a running pool at once (persisted in Redis; raising a limit wakes the loop)."""
    settings: dict[str, Any] = {"reset": reset}
    if max_parallelism is not None:
        settings["max_parallelism"] = max_parallelism
    if paused is not None:
        settings["paused"] = paused
    if rate_limit is not None:
        settings["rate_limit"] = _rate("--rate-limit", rate_limit)
    if job_rate_limit:
        settings["rate_limits"] = _named(job_rate_limit, "--job-rate-limit", _rate)
    if max_per_key is not None:
        settings["max_per_key"] = max_per_key
    if job_max_per_key:
        settings["max_per_key_for"] = _named(job_max_per_key, "--job-max-per-key", _count)
    if _pool(ctx, spec).configure(**settings) == "applied":
        click.echo(f"configuration applied to pool {spec}")
    else:
        click.echo(f"configuration sent to pool {spec}: no main loop has applied it yet (it "
                   "will, in order, when one runs)")
