"""`pool.run_again(job_id)`: a finished job run again as a new job, with the same name,
arguments and options, linked to the old one (`rerun_of`); the old job stays as it ended, so
each job still has exactly one terminal state."""

from __future__ import annotations

from workpool.client.ops import Ops, Step
from workpool.errors import JobNotFound, WorkpoolError
from workpool.wire.keys import Keys
from workpool.wire.protocol import RERUN_FIELD, Fields, check_job_id, job_fields, text

#: entry field <- the spec's field it copies (the delay options are not: it runs now)
_COPIED = {"name": "name", "enc": "enc", "args": "args", "kwargs": "kwargs",
           "on_complete": "on_complete", "context": "context", "max_attempts": "max_attempts",
           "initial_backoff_ms": "backoff_ms", "base": "base", "max_backoff_ms": "max_backoff_ms",
           "timeout_ms": "timeout_ms", "priority": "priority", "concurrency_key": "ckey"}


def again_entry(keys: Keys, job_id: str) -> Ops[Fields]:
    """The enqueue entry that runs finished job `job_id` again; JobNotFound if the pool has no
    such job (or it is past its retention), WorkpoolError if it is not finished or is a
    workflow."""
    check_job_id(job_id)
    (raw,) = yield Step([("HGETALL", keys.job(job_id))])
    h = job_fields(raw, None)
    if not h:
        msg = f"no finished job {job_id!r} in this pool (unknown, not started, or past its " \
              "retention)"
        raise JobNotFound(msg)
    if text(h.get("kind")) == "workflow":
        msg = f"{job_id!r} is a workflow: start it again with start_workflow"
        raise WorkpoolError(msg)
    if text(h.get("state")) not in ("done", "canceled"):
        msg = f"job {job_id!r} is {text(h.get('state'))}: only a finished job runs again"
        raise WorkpoolError(msg)
    entry: Fields = {"op": "enqueue", RERUN_FIELD: job_id}
    entry.update({field: h[spec] for field, spec in _COPIED.items() if h.get(spec)})
    return entry
