"""What `workflow_status` reports: the workflow as its hash has it, and each step from its
journal entry and, while the step's job is kept, from that job."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workpool.types import JobStatus, State, status_from_hash
from workpool.wire.protocol import decode, text
from workpool.workflow import journal


@dataclass(frozen=True)
class StepStatus:
    """One step of a workflow: its number, job name and how it stands."""

    number: int
    kind: str  #: step, workflow (a child), sleep, event or patch
    name: str  #: the job's, the child workflow's, the event's or the patch's name
    job_id: str  #: the step's job (or child workflow) id
    state: str  #: pending (asked for, or running), done or canceled
    outcome: str | None = None  #: succeeded, failed or canceled once it ended
    attempts: int = 0
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    started_at: float | None = None  #: its latest attempt's start, seconds since the epoch
    finished_at: float | None = None


@dataclass(frozen=True)
class WorkflowStatus:
    """A snapshot of one workflow."""

    id: str
    state: State  #: running, done or canceled
    name: str = ""
    outcome: str | None = None  #: succeeded or failed once done
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    steps: tuple[StepStatus, ...] = ()
    #: why its latest replay could not decide (the code no longer matches its journal, say);
    #: it is replayed again until one does
    blocked: str | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def terminal(self) -> bool:
        """True once the workflow is done or canceled."""
        return self.state.terminal


def _ms(raw: bytes | None) -> float | None:
    return int(raw) / 1000 if raw else None


def workflow_status(workflow_id: str, h: Mapping[str, bytes],
                    step_jobs: Mapping[int, Mapping[str, bytes]]) -> WorkflowStatus:
    """The status of the workflow whose hash is `h` (text field names, spec read as fields);
    `step_jobs`: the hashes of its steps' jobs still kept, by step number."""
    job: JobStatus = status_from_hash(workflow_id, dict(h))
    steps = []
    for n, e in sorted(journal.entries(h).items()):
        live = step_jobs.get(n) or {}
        ended = e.state != "pending"
        steps.append(StepStatus(
            number=n, kind=e.kind, name=e.name, job_id=f"{workflow_id}:{n}", state=e.state,
            outcome=e.outcome or None,
            attempts=e.attempts if ended else int(live.get("attempts") or 0),
            result=decode(e.result, text(h.get("enc")) or "msgpack") if ended else None,
            error=e.error or None, error_type=e.error_type or None,
            started_at=_ms(live.get("started_at")),
            finished_at=e.finished_at / 1000 if e.finished_at else None))
    return WorkflowStatus(
        id=workflow_id, state=job.state, name=job.name, outcome=job.outcome, result=job.result,
        error=job.error, error_type=job.error_type, steps=tuple(steps),
        blocked=text(h.get("wf_blocked")) or None, started_at=_ms(h.get("started_at")),
        finished_at=job.finished_at)


@dataclass(frozen=True)
class WorkflowChange:
    """One change of a workflow, as `watch` reports it: the workflow's state changed
    (`kind` state), a journal entry was asked for (asked), or one ended (ended)."""

    kind: str  #: state, asked or ended
    at: float | None  #: when, seconds since the epoch (Redis clock)
    state: str  #: the workflow's new state (state), or the entry's (asked, ended)
    outcome: str | None = None  #: succeeded, failed or canceled, once ended
    number: int = 0  #: the journal entry's number (0 for a state change)
    entry_kind: str = ""  #: step, workflow, sleep, event or patch
    name: str = ""


def changes_since(before: Mapping[str, bytes], now: Mapping[str, bytes]) -> list[WorkflowChange]:
    """What changed from snapshot `before` to `now` (two reads of the workflow's hash; {} for
    none yet), in the order it happened."""
    out: list[tuple[float, int, WorkflowChange]] = []
    if text(before.get("state")) != text(now.get("state")):
        if not before:
            out.append((_at(now.get("started_at")), 0, WorkflowChange(
                "state", _ms(now.get("started_at")), "running")))
        if text(now.get("state")) != "running":
            out.append((_at(now.get("finished_at")), 2, WorkflowChange(
                "state", _ms(now.get("finished_at")), text(now.get("state")),
                text(now.get("outcome")) or None)))
    old = journal.entries(before)
    for n, e in sorted(journal.entries(now).items()):
        was = old.get(n)
        if was is None:
            out.append((e.scheduled_at / 1000, 1, WorkflowChange(
                "asked", e.scheduled_at / 1000 or None, "pending", None, n, e.kind, e.name)))
        if e.state != "pending" and (was is None or was.state == "pending"):
            out.append((e.finished_at / 1000, 1, WorkflowChange(
                "ended", e.finished_at / 1000 or None, e.state, e.outcome or None, n, e.kind,
                e.name)))
    return [c for _, _, c in sorted(out, key=lambda x: (x[0], x[1]))]


def _at(raw: bytes | None) -> float:
    return _ms(raw) or 0.0
