"""Commands about a whole pool: stats and live configuration."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click

from workpool.cli.context import (
    aligned,
    pool_for,
    shown,
)
from workpool.client.stats import PoolStats
from workpool.types import RateLimit
from workpool.wire.counters import ANOMALIES, Counter
from workpool.wire.limits import MAX_SETTING


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
    lines = aligned(rows)
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


@click.command()
@click.argument("spec", metavar="POOL")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for machines.")
@click.pass_context
def stats(ctx: click.Context, spec: str, as_json: bool) -> None:
    """Counts per state, running vs limit, leader, workers, throughput and anomalies."""
    pool = pool_for(ctx, spec)
    s = pool.stats()
    if not s.exists:
        raise click.ClickException(f"no pool named {pool.name!r} at {pool.url}: nothing of it is "
                                   "in Redis (check the name, and --redis-url)")
    if as_json:
        click.echo(shown({**dataclasses.asdict(s), "throughput": s.throughput,
                          "max_parallelism": s.max_parallelism, "paused": s.paused}))
    else:
        click.echo("\n".join(stats_lines(s)))



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


@click.command("config")
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
    if pool_for(ctx, spec).configure(**settings) == "applied":
        click.echo(f"configuration applied to pool {spec}")
    else:
        click.echo(f"configuration sent to pool {spec}: no main loop has applied it yet (it "
                   "will, in order, when one runs)")

