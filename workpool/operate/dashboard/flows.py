"""The dashboard's workflow pages: the workflows running and lately ended, and one workflow
with its steps on a timeline (each step's job linked)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workpool.operate.dashboard import reads
from workpool.operate.dashboard.html import Actions, e, form, link, segment, table
from workpool.operate.dashboard.pages import when
from workpool.workflow.status import WorkflowStatus

if TYPE_CHECKING:
    from workpool.client.pool import Workpool


def workflows_part(pool: Workpool) -> str:
    """The workflows running now (up to a page) and the latest that ended."""
    p = segment(pool.name)
    running = pool.running_workflows(limit=reads.PAGE)
    rows = [[link(f"/workflow/{p}/{segment(w.id)}", w.id), e(w.name), e(_state(w)),
             e(len(w.steps)), when(w.started_at), e(w.blocked or "")] for w in running]
    ended, _ = reads.list_jobs(pool, reads.JobFilter("done", kind="workflow"))
    done = [[link(f"/workflow/{p}/{segment(j.id)}", j.id), e(j.name),
             e(f"{j.state.value}/{j.outcome}" if j.outcome else j.state.value),
             when(j.finished_at), e(j.error_type or "")] for j in ended]
    return (f"<h2>workflows of {e(pool.name)}</h2><h3>running</h3>"
            + table(["workflow", "name", "state", "steps", "started", "blocked"], rows,
                    cls="workflows")
            + "<h3>ended lately</h3>"
            + table(["workflow", "name", "state", "ended", "error"], done, cls="ended"))


def workflow_part(pool: Workpool, workflow_id: str, csrf: Actions) -> str:
    """One workflow: its state and result, then each step on a timeline."""
    w = pool.workflow_status(workflow_id)
    p = segment(pool.name)
    start = w.started_at or 0.0
    end = max([w.finished_at or 0.0, *(s.finished_at or s.started_at or 0.0 for s in w.steps),
               start])
    span = max(end - start, 0.001)
    rows = []
    for s in w.steps:
        began, ended = s.started_at or start, s.finished_at or end
        left, width = (began - start) / span * 100, max((ended - began) / span * 100, 0.5)
        bar = (f'<svg class="track" viewBox="0 0 100 4" preserveAspectRatio="none"><rect '
               f'class="bar {e(s.outcome or s.state)}" x="{left:.2f}" y="0" '
               f'width="{width:.2f}" height="4"/></svg>')
        job = link(f"/job/{p}/{segment(s.job_id)}", s.job_id) if s.kind == "step" else \
            link(f"/workflow/{p}/{segment(s.job_id)}", s.job_id) if s.kind == "workflow" else ""
        rows.append([e(s.number), e(s.kind), e(s.name), job,
                     e(f"{s.state}/{s.outcome}" if s.outcome else s.state), e(s.attempts),
                     when(s.started_at), when(s.finished_at), bar])
    facts = table(["", ""], [["state", e(_state(w))], ["name", e(w.name)],
                             ["started", when(w.started_at)], ["ended", when(w.finished_at)],
                             ["result", e(repr(w.result)) if w.outcome == "succeeded" else ""],
                             ["error", f"<pre>{e(w.error_type)}: {e(w.error)}</pre>"
                              if w.error else ""], ["blocked", e(w.blocked or "")]], cls="job")
    cancel = "" if w.terminal else form(f"/action/{p}/cancel", csrf, "cancel",
                                        fields={"id": workflow_id}, danger=True)
    return (f"<h2>workflow {e(workflow_id)}</h2>{facts}{cancel}<h3>steps</h3>"
            + table(["#", "kind", "name", "job", "state", "attempts", "started", "ended",
                     "timeline"], rows, cls="steps"))


def _state(w: WorkflowStatus) -> str:
    return f"{w.state.value}/{w.outcome}" if w.outcome else w.state.value

