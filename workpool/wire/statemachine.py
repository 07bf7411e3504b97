"""The job state machine as data: the one table that the Lua scripts implement, the model-based
tests interpret, and `statemachine.md` prints (`python -m workpool.wire.statemachine`); and the
workflow's (`WORKFLOW_TABLE`, `python -m workpool.wire.statemachine workflows`).

States are `absent` (no such job), `pending`, `running`, `retrying`, `done/succeeded`,
`done/failed` and `canceled`. A row applies when the event matches, the job is in one of its
source states and its guard holds; the first such row wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from workpool.wire.codes import Code

ABSENT, PENDING, RUNNING, RETRYING = "absent", "pending", "running", "retrying"
SUCCEEDED, FAILED, CANCELED = "done/succeeded", "done/failed", "canceled"
TERMINAL = (SUCCEEDED, FAILED, CANCELED)
ANY = (ABSENT, PENDING, RUNNING, RETRYING, *TERMINAL)


@dataclass(frozen=True)
class Row:
    """One transition: on `event`, from any of `sources`, if `guard` holds, go to `target`."""

    event: str
    sources: tuple[str, ...]
    guard: str  #: name of a fact that must be true ("" = always)
    target: str | None  #: None: the state is unchanged
    code: Code
    script: str
    note: str


TABLE: tuple[Row, ...] = (
    Row("enqueue", ANY, "malformed", None, Code.REJECTED, "ingestRequests",
        "set aside in the rejected record; checked before the id is looked up"),
    Row("enqueue", (ABSENT,), "", PENDING, Code.ENQUEUED, "ingestRequests",
        "due at max(run_at, enqueue time + run_after)"),
    Row("enqueue", ANY[1:], "", None, Code.DUPLICATE_ENQUEUE, "ingestRequests",
        "same id (idempotency key): one job"),
    Row("start", (PENDING, RETRYING), "key_at_limit", None, Code.HELD_BY_KEY, "startJobs",
        "waits in keyq:<key>, not looked at again until an attempt of its key ends"),
    Row("start", (PENDING, RETRYING), "rate_exhausted", None, Code.HELD_BY_RATE, "startJobs",
        "parked in nameq:<name> until the name's next token (the loop sleeps until then)"),
    Row("start", (PENDING, RETRYING), "due_and_slot_free", RUNNING, Code.STARTED, "startJobs",
        "best rank first (priority, then enqueue order); attempt += 1 fences this run"),
    Row("succeed", (RUNNING,), "current_attempt", SUCCEEDED, Code.SUCCEEDED, "applyOutcomes",
        "result stored; on_complete recorded"),
    Row("fail", (RUNNING,), "current_attempt_may_retry", RETRYING, Code.RETRY_SCHEDULED,
        "applyOutcomes", "attempts left, retryable, no cancel: due after backoff x jitter"),
    Row("fail", (RUNNING,), "current_attempt", FAILED, Code.FAILED, "applyOutcomes",
        "last attempt, NonRetryableError, or cancel requested; on_complete recorded"),
    Row("succeed", ANY, "", None, Code.STALE_COMPLETION, "applyOutcomes",
        "superseded attempt or job not running: counted, never applied"),
    Row("fail", ANY, "", None, Code.STALE_COMPLETION, "applyOutcomes",
        "superseded attempt or job not running: counted, never applied"),
    Row("lose", (RUNNING,), "current_attempt_may_retry", RETRYING, Code.RETRY_SCHEDULED,
        "reapLost", "worker stopped heart-beating (WorkerLost) or timeout passed (Timeout)"),
    Row("lose", (RUNNING,), "current_attempt", FAILED, Code.FAILED, "reapLost",
        "as fail, with error WorkerLost or Timeout"),
    Row("cancel", ANY, "malformed", None, Code.REJECTED, "ingestRequests",
        "a cancel without an id is set aside in the rejected record"),
    Row("cancel", (PENDING, RETRYING), "", CANCELED, Code.CANCELED, "ingestRequests",
        "cancel_attempt = attempts so far; on_complete recorded with outcome canceled"),
    Row("cancel", (RUNNING,), "not_cancel_requested", None, Code.CANCEL_MARKED,
        "ingestRequests",
        "cancel_attempt = the running attempt: its outcome stands; no later attempt starts"),
    Row("cancel", ANY, "", None, Code.CANCEL_NOOP, "ingestRequests",
        "finished, unknown or already marked: harmless"),
    Row("deliver_ok", TERMINAL, "delivery_current", None, Code.CALLBACK_DELIVERED,
        "applyOutcomes", "on_complete closed; retention starts"),
    Row("deliver_fail", TERMINAL, "delivery_given_up", None, Code.CALLBACK_ABANDONED,
        "applyOutcomes", "no worker can run it (retryable=0), or still failing a retention after "
        "the job finished: closed undelivered (cb=failed); retention starts"),
    Row("deliver_fail", TERMINAL, "delivery_current", None, Code.CALLBACK_RETRY,
        "applyOutcomes", "delivered again after 1 s doubling, capped at 60 s"),
    Row("deliver_ok", ANY, "", None, Code.STALE_CALLBACK, "applyOutcomes",
        "closed or superseded delivery: dropped"),
    Row("deliver_fail", ANY, "", None, Code.STALE_CALLBACK, "applyOutcomes",
        "closed or superseded delivery: dropped"),
)


WF_ANY = (ABSENT, RUNNING, *TERMINAL)  #: a workflow is never pending or retrying

WORKFLOW_TABLE: tuple[Row, ...] = (
    Row("start", ANY, "malformed", None, Code.REJECTED, "ingestRequests",
        "set aside in the rejected record"),
    Row("start", (ABSENT,), "", RUNNING, Code.WORKFLOW_STARTED, "ingestRequests, applyOutcomes",
        "replay 1 handed out; in the `workflows` set while it runs (a child: created by its "
        "parent's decision)"),
    Row("start", ANY[1:], "", None, Code.DUPLICATE_ENQUEUE, "ingestRequests",
        "same id (key): one workflow (or job)"),
    Row("decide", (RUNNING,), "current_replay_returned", SUCCEEDED, Code.SUCCEEDED,
        "applyOutcomes", "its activation and asks recorded first (the steps and children it "
        "asks for are not created: their entries say canceled); on_complete recorded"),
    Row("decide", (RUNNING,), "current_replay_failed", FAILED, Code.FAILED, "applyOutcomes",
        "the function raised, asked for more than max_steps (TooManySteps) or returned more "
        "than max_result_bytes (PayloadTooLarge); the steps and children it asks for are not "
        "created; on_complete recorded"),
    Row("decide", (RUNNING,), "current_replay_malformed", None, Code.REJECTED,
        "applyOutcomes", "a decision that cannot be applied is set aside whole (none of it "
        "written) and the workflow is replayed later, as when undecided"),
    Row("decide", (RUNNING,), "current_replay_undecided", None, Code.REPLAY_RETRY,
        "applyOutcomes", "the code no longer matches the journal, or the worker lacks the "
        "workflow: journal unchanged, wf_blocked says why, replayed after 1 s doubling (60 s)"),
    Row("decide", (RUNNING,), "current_replay", None, Code.REPLAY_APPLIED, "applyOutcomes",
        "activation and asks recorded (steps and children created in the same script, timers "
        "and waits set; a step an enqueue would refuse, or whose id is taken, fails at once "
        "with Rejected); replayed again at once if an entry ended meanwhile (wf_dirty)"),
    Row("decide", WF_ANY, "", None, Code.STALE_REPLAY, "applyOutcomes",
        "a replay no longer out (superseded, withdrawn, or the workflow ended): dropped"),
    Row("entry_ends", (RUNNING,), "", None, Code.WAIT_ENDED, "any that ends a step or wait",
        "a step's job or child ends (the script that ends it), a sleep or a wait's timeout "
        "(startJobs): journal entry written, replayed now or after the replay out (after a "
        "replay that could not decide, when the next is due: its backoff holds)"),
    Row("entry_ends", TERMINAL, "", None, Code.WAIT_ENDED, "any that ends a step or wait",
        "journal entry written, never acted on"),
    Row("event", (RUNNING,), "key_taken", None, Code.EVENT_DUPLICATE, "ingestRequests",
        "its key was taken by an earlier event of the workflow: dropped, nothing written"),
    Row("event", (RUNNING,), "a_wait_for_it", None, Code.EVENT_DELIVERED, "ingestRequests",
        "ends the oldest wait for that name; its payload is the result"),
    Row("event", (RUNNING,), "", None, Code.EVENT_KEPT, "ingestRequests",
        "kept (at most 1,000 per name) for the next wait, delivered once"),
    Row("event", WF_ANY, "", None, Code.EVENT_DROPPED, "ingestRequests",
        "the workflow is not running"),
    Row("lose", (RUNNING,), "current_replay", None, Code.REDELIVERED, "reapLost",
        "the replay a lost worker held is handed out again (a new generation); so is one an "
        "inbox held too long, or whose worker is silent (`replays_rerouted`)"),
    Row("timeout", (RUNNING,), "", FAILED, Code.FAILED, "startJobs, ingestRequests",
        "past its timeout (wfTimers entry 0) startJobs appends a cancel with timeout=1: ended "
        "with error_type Timeout, steps not ended canceled as by a cancel"),
    Row("cancel", (RUNNING,), "", CANCELED, Code.CANCELED, "ingestRequests",
        "its replay withdrawn; steps not ended canceled as jobs (a running one finishes, its "
        "end recorded, not acted on), children canceled; on_complete recorded"),
    Row("cancel", WF_ANY, "", None, Code.CANCEL_NOOP, "ingestRequests",
        "finished or unknown: harmless"),
)


def step(event: str, state: str, facts: Mapping[str, bool],
         table: tuple[Row, ...] = TABLE) -> Row:
    """The row of `table` (the job table unless told) that applies to `event` in `state`
    given the guard `facts`."""
    for row in table:
        if row.event == event and state in row.sources and (not row.guard or facts.get(row.guard)):
            return row
    msg = f"no transition for {event} in {state}"
    raise LookupError(msg)


def markdown_table(table: tuple[Row, ...] = TABLE) -> str:
    """A transition table as Markdown, as statemachine.md shows it."""
    lines = ["| event | from | guard | to | code | script | note |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        sources = "any" if r.sources in (ANY, WF_ANY) else ", ".join(r.sources)
        lines.append(f"| {r.event} | {sources} | {r.guard or '-'} | {r.target or '(unchanged)'} "
                     f"| {r.code.name} | {r.script} | {r.note} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(markdown_table(WORKFLOW_TABLE if sys.argv[1:] == ["workflows"] else TABLE))
