"""`workpool workflow ...`: start one, see one (or the running ones), send it an event, cancel
it."""

from __future__ import annotations

import dataclasses

import click

from workpool.cli.context import aligned, pool_for, pool_option, shown
from workpool.cli.jobs import cancel_by_id, parse_args, when
from workpool.workflow.status import WorkflowStatus


@click.group()
def workflow() -> None:
    """Durable workflows: start, status, event, cancel, list."""


@workflow.command()
@click.argument("spec", metavar="POOL")
@click.argument("name")
@click.argument("args", nargs=-1)
@click.option("--key", default=None, help="Idempotency key: same key, same workflow.")
@click.option("--json-args", is_flag=True,
              help="Every ARG must be JSON (no fallback to a plain string).")
@click.pass_context
def start(ctx: click.Context, *, spec: str, name: str, args: tuple[str, ...], key: str | None,
          json_args: bool) -> None:
    """Start workflow NAME on POOL; prints its id. ARGS as for `workpool enqueue`."""
    pool = pool_for(ctx, spec)
    if pool.registry.workflows:
        pool.registry.workflow(name)  # the pool's code is at hand: catch a misspelt name now
    click.echo(pool.start_workflow(name, *parse_args(args, json_args), key=key))


def status_lines(st: WorkflowStatus) -> list[str]:
    """A workflow's status, then one line per journal entry."""
    rows = [("id", st.id), ("state", st.state.value), ("outcome", st.outcome or "-"),
            ("name", st.name or "-"),
            ("result", shown(st.result) if st.outcome == "succeeded" else "-"),
            ("error", f"{st.error_type}: {st.error}" if st.error else "-"),
            ("started_at", when(st.started_at)), ("finished_at", when(st.finished_at))]
    if st.blocked:
        rows.append(("blocked", st.blocked))
    for s in st.steps:
        what = s.outcome or s.state
        detail = shown(s.result) if s.outcome == "succeeded" else (
            f"{s.error_type}: {s.error}" if s.error else "")
        rows.append((f"step {s.number}", f"{s.kind} {s.name} {what} {detail}".rstrip()))
    return aligned(rows)


@workflow.command()
@click.argument("workflow_id", metavar="ID")
@pool_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for machines.")
@click.pass_context
def status(ctx: click.Context, workflow_id: str, spec: str, as_json: bool) -> None:
    """Print a workflow's state, outcome and each of its steps."""
    st = pool_for(ctx, spec).workflow_status(workflow_id)
    if as_json:
        click.echo(shown({**dataclasses.asdict(st), "state": st.state.value}))
    else:
        click.echo("\n".join(status_lines(st)))


@workflow.command()
@click.argument("workflow_id", metavar="ID")
@click.argument("name")
@click.argument("payload", required=False, default=None)
@click.option("--key", default=None, help="idempotency key: a repeated send is taken once")
@pool_option
@click.pass_context
def event(ctx: click.Context, workflow_id: str, name: str, payload: str | None,  # noqa: PLR0917
          key: str | None, spec: str) -> None:
    """Send event NAME (PAYLOAD: JSON, else a plain string) to a workflow."""
    value = None if payload is None else parse_args([payload], strict=False)[0]
    pool_for(ctx, spec).send_event(workflow_id, name, value, key=key)
    click.echo(f"{workflow_id}: event {name} sent")


@workflow.command()
@click.argument("workflow_id", metavar="ID")
@pool_option
@click.pass_context
def cancel(ctx: click.Context, workflow_id: str, spec: str) -> None:
    """Cancel a workflow: no step starts after, its waiting steps and children are canceled."""
    cancel_by_id(ctx, workflow_id, spec)


@workflow.command(name="list")
@pool_option
@click.pass_context
def list_(ctx: click.Context, spec: str) -> None:
    """List the running workflows: id, name, steps so far."""
    for st in pool_for(ctx, spec).running_workflows():
        click.echo(f"{st.id}  {st.name}  {len(st.steps)} steps")
