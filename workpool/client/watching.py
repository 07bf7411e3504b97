"""Watching a workflow (`pool.watch`): every change of its state and journal, in order, none
missed, each read costing what can still change rather than the whole journal."""

from __future__ import annotations

import time
from collections.abc import Generator, Mapping
from typing import Any

from workpool.client.ops import WAIT_RECHECK, Ops, Step
from workpool.core import validate
from workpool.errors import JobNotFound, WaitTimeout
from workpool.types import State
from workpool.wire.keys import Keys
from workpool.wire.protocol import check_job_id, is_stream_id, job_fields, text
from workpool.workflow import journal
from workpool.workflow.status import WorkflowChange, changes_since

#: What a read after the first takes of the workflow's own fields (changes_since reads these).
_WATCHED = ("kind", "state", "started_at", "finished_at", "outcome", "wf_steps")
_AHEAD = 64  # entries asked for since the last read, read with it; more take another trip
_PAGE = 1000


def watch(keys: Keys, workflow_id: str, timeout: float | None) -> Ops[None]:
    """Every change of a workflow, in order, until it ended (emitted as WorkflowChange): its
    hash read whole once the driver listens on its channel (so nothing between is missed),
    then, on each notification (those queued meanwhile wake it once) and every few seconds
    should one be lost, only what can still change: its state, its entries not ended and the
    entries asked for since. A read so costs what changed, however long the journal (reading
    it whole each time made a long workflow's watch quadratic). WaitTimeout after `timeout` s
    (None: no limit)."""
    check_job_id(workflow_id)
    deadline = None if timeout is None else \
        time.monotonic() + validate.number("timeout", timeout, 0, 10**9)
    seen: dict[str, bytes] = {}
    unended: set[int] = set()
    emit: list[WorkflowChange] = []
    pause, channel = 0.0, keys.wf_channel(workflow_id)
    while True:
        if seen:
            now = yield from _changed(keys.job(workflow_id), seen, unended,
                                      pause=pause, listen=channel, emit=emit)
            waiting: list[Any] = []
        else:
            commands: list[Any] = [("HGETALL", keys.job(workflow_id)),
                                   ("SISMEMBER", keys.incoming, workflow_id)]
            if is_stream_id(workflow_id):
                commands.append(("XRANGE", keys.pending_start, workflow_id, workflow_id))
            raw, *waiting = yield Step(commands, pause=pause, listen=channel, emit=emit)
            now = job_fields(raw, None)
        if (now and now.get("kind") != b"workflow") or (not now and not any(waiting)):
            msg = f"no workflow {workflow_id!r} in this pool to watch"
            raise JobNotFound(msg)
        emit = changes_since({k: seen[k] for k in now if k in seen}, now) if now else []
        seen.update(now)
        for n, entry in journal.entries(now).items():
            (unended.add if entry.state == "pending" else unended.discard)(n)
        if now and text(now.get("state")) != State.RUNNING.value:
            yield Step([], emit=emit)
            return
        remaining = WAIT_RECHECK if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            yield Step([], emit=emit)
            msg = f"workflow {workflow_id} still runs after {timeout} s"
            raise WaitTimeout(msg)
        pause = min(remaining, WAIT_RECHECK)


def _changed(key: str, seen: Mapping[str, bytes], unended: set[int], *, pause: float,
             listen: str, emit: list[WorkflowChange]
             ) -> Generator[Step, list[Any], dict[str, bytes]]:
    """The workflow's fields that may have changed since `seen`: its own, the entries not
    ended then (`unended`) and those asked for since (read after `pause`, as watch's step)."""
    read_to = int(seen.get("wf_steps") or 0) + _AHEAD
    names = [*_WATCHED, *(f"{journal.PREFIX}{n}" for n in sorted(unended)),
             *(f"{journal.PREFIX}{n}" for n in range(read_to - _AHEAD + 1, read_to + 1))]
    (values,) = yield Step([("HMGET", key, *names)], pause=pause, listen=listen, emit=emit)
    now = {name: v for name, v in zip(names, values, strict=True) if v is not None}
    while int(now.get("wf_steps") or 0) > read_to:  # more asked for since: the rest
        names = [f"{journal.PREFIX}{n}"
                 for n in range(read_to + 1, min(int(now["wf_steps"]), read_to + _PAGE) + 1)]
        (values,) = yield Step([("HMGET", key, *names)])
        now.update((name, v) for name, v in zip(names, values, strict=True) if v is not None)
        read_to += _PAGE
    return now
