"""Folds: a worker that keeps a workflow live and runs its step decides the workflow's next
move as soon as the step succeeds, and sends that decision with the step's outcome, so the
engine applies both in one script instead of handing a replay out and back (statemachine.md,
"Folds")."""

from __future__ import annotations

import time

from workpool.wire.protocol import text
from workpool.worker.outcome import Outcome
from workpool.workflow import journal
from workpool.workflow.replay import Replayer


def fold(replayer: Replayer, f: dict[str, bytes], out: Outcome, *, dispatched_at: float,
         received: float, worker_id: str) -> None:
    """A succeeded step (run entry fields `f`) of a workflow kept in `replayer` whose code
    waits for it alone: its next decision joins `out`, timed as the step's end: its dispatch
    (Redis's clock) plus the time it took here."""
    wid = text(f.get("wf"))
    if not wid or not replayer.keeps(wid):
        return
    at = int(dispatched_at * 1000) + int((time.monotonic() - received) * 1000)
    entry = journal.Entry(kind="step", name=text(f.get("name")), state="done",
                          outcome="succeeded", result=out.result or b"",
                          attempts=int(out.number), finished_at=at)
    token = f"{out.job_id}/{out.number}"
    folded = replayer.fold(wid, int(text(f.get("wf_n")) or 0), entry, token)
    if folded is not None:
        basis, cmds = folded
        out.fold = {"wf_cmds": cmds, "wf_basis": basis, "wf_at": str(at), "wf_token": token}
        out.worker = worker_id
