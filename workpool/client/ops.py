"""Client operations written once as sans-IO generators, driven by a sync or an async client.

Each generator yields a `Step` (commands to send in one round trip, and whether as MULTI/EXEC)
and receives their replies, so `Workpool` and `AsyncWorkpool` share every line of logic.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from workpool.core import validate
from workpool.errors import ConfigurationError, JobNotFound, WaitTimeout
from workpool.types import Canceled, Configured, JobStatus, State, status_from_hash
from workpool.wire.keys import Keys
from workpool.wire.protocol import Fields, check_job_id, is_stream_id, job_fields, text
from workpool.workflow import journal
from workpool.workflow.status import WorkflowStatus
from workpool.workflow.status import workflow_status as status_of_workflow

Command = tuple[Any, ...]


T = TypeVar("T")


@dataclass
class Step:
    """Commands for one round trip; `atomic` sends them as one MULTI/EXEC transaction; `pause`
    is how long the driver waits before sending them (polling for an effect); `listen` names a
    channel the driver subscribes to (once, before these commands) and whose next message
    cuts the pause short; `emit` are values a streaming operation (watch) hands out before
    the pause."""

    commands: list[Command]
    atomic: bool = False
    pause: float = 0.0
    listen: str | None = None
    emit: list[Any] = field(default_factory=list)  #: values handed to a streaming caller first

    @property
    def writes(self) -> bool:
        """Whether the round trip appends anything (what `replicas=` confirms)."""
        return any(command[0] in _WRITES for command in self.commands)


_WRITES = ("XADD", "SADD")  #: the only writes a client sends (to its own stream and set)


Ops = Generator[Step, list[Any], T]  #: an operation whose result is a T

_PAGE = 1000
WAIT_RECHECK = 5.0  # seconds: a safety re-read while waiting, should a notification be missed


def enqueue_commands(keys: Keys, entries: Sequence[Fields]) -> list[Command]:
    """XADD each enqueue entry (the first len(entries) replies are the entry ids), and mark the
    ids that entries name themselves as accepted, so status() answers at once; an entry without
    one is found by its entry id."""
    commands: list[Command] = []
    for fields in entries:
        flat = [x for pair in fields.items() for x in pair]
        commands.append(("XADD", keys.pending_start, "*", *flat))
    named = [f["id"] for f in entries if "id" in f]
    if named:
        commands.append(("SADD", keys.incoming, *named))
    return commands


def enqueue(keys: Keys, entries: Sequence[Fields]) -> Ops[list[str]]:
    """Append enqueue entries, all of them or none (MULTI/EXEC when more than one command);
    returns the job ids: an entry's own `id`, else its entry id."""
    commands = enqueue_commands(keys, entries)
    replies = yield Step(commands, atomic=len(commands) > 1)
    return [text(f.get("id") or reply) for f, reply in zip(entries, replies, strict=False)]


def send_event(keys: Keys, fields: Fields) -> Ops[str]:
    """Append an event for a workflow (requests.event_entry); returns its entry id."""
    (entry_id,) = yield Step([("XADD", keys.pending_start, "*",
                               *[x for kv in fields.items() for x in kv])])
    return text(entry_id)


def status(keys: Keys, job_id: str, *, pause: float = 0.0,
           listen: str | None = None) -> Ops[JobStatus]:
    """The job's status; pending while its enqueue entry waits to be applied. `pause` and
    `listen` as in Step (wait() reads it again after a notification)."""
    commands: list[Command] = [("HGETALL", keys.job(job_id)), ("HGET", keys.unstarted, job_id),
                               ("SISMEMBER", keys.incoming, job_id)]
    if is_stream_id(job_id):
        commands.append(("XRANGE", keys.pending_start, job_id, job_id))
    replies = yield Step(commands, pause=pause, listen=listen)
    h = job_fields(replies[0], replies[1])
    if h:
        return status_from_hash(job_id, h)
    if replies[2] or (len(replies) > 3 and replies[3]):
        return JobStatus(id=job_id, state=State.PENDING)
    msg = f"no job {job_id!r} in this pool: it was never enqueued here, its entry was rejected " \
          "as malformed (see `workpool stats`), or it finished longer ago than the retention"
    raise JobNotFound(msg)


def workflow_status(keys: Keys, workflow_id: str) -> Ops[WorkflowStatus]:
    """The workflow's status with its steps (its hash, then its steps' jobs, each one round
    trip): pending while its start entry waits to be applied; JobNotFound for an id that is
    no workflow of this pool."""
    commands: list[Command] = [("HGETALL", keys.job(workflow_id)),
                               ("SISMEMBER", keys.incoming, workflow_id)]
    if is_stream_id(workflow_id):
        commands.append(("XRANGE", keys.pending_start, workflow_id, workflow_id))
    raw, *waiting = yield Step(commands)
    h = job_fields(raw, None)
    if not h and any(waiting):
        return WorkflowStatus(id=workflow_id, state=State.PENDING)
    if h.get("kind") != b"workflow":
        msg = f"no workflow {workflow_id!r} in this pool: " + (
            "that id is a job's" if h else "it was never started here, is not applied yet, "
            "or finished longer ago than the retention")
        raise JobNotFound(msg)
    numbers = sorted(journal.entries(h))
    jobs = yield Step([("HGETALL", keys.job(f"{workflow_id}:{n}")) for n in numbers])
    return status_of_workflow(workflow_id, h, {n: job_fields(j, None)
                                               for n, j in zip(numbers, jobs, strict=True)})


def running_workflows(keys: Keys, limit: int) -> Ops[list[WorkflowStatus]]:
    """Up to `limit` of the workflows running now (their steps from their journals)."""
    validate.integer("limit", limit, 1, 100_000)
    ids: list[str] = []
    cursor: Any = 0
    while len(ids) < limit:
        ((cursor, members),) = yield Step([("SSCAN", keys.workflows, cursor, "COUNT", _PAGE)])
        ids += sorted(text(m) for m in members)
        if int(cursor) == 0:
            break
    ids = ids[:limit]
    hashes = yield Step([("HGETALL", keys.job(i)) for i in ids])
    found = [(i, job_fields(h, None)) for i, h in zip(ids, hashes, strict=True)]
    return [status_of_workflow(i, h, {}) for i, h in found if h.get("kind") == b"workflow"]


def wait(keys: Keys, job_id: str, timeout: float | None) -> Ops[JobStatus]:
    """The job's status once it is terminal: read again whenever its notification comes (the
    driver listens on its channel from before the first read, so none is missed), and every
    few seconds should one be lost; WaitTimeout after `timeout` s (None: no limit)."""
    check_job_id(job_id)
    deadline = None if timeout is None else \
        time.monotonic() + validate.number("timeout", timeout, 0, 10**9)
    pause, channel = 0.0, keys.done_channel(job_id)
    while True:
        st = yield from status(keys, job_id, pause=pause, listen=channel)
        if st.terminal:
            return st
        remaining = WAIT_RECHECK if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            msg = f"job {job_id} is still {st.state.value} after {timeout} s"
            raise WaitTimeout(msg)
        pause = min(remaining, WAIT_RECHECK)


def wait_seconds(wait: Any) -> float:
    """How long a call waits for the main loop to apply its request (checked)."""
    return validate.number("wait", wait, 0, 3600)


def applied(keys: Keys, entry_id: Any, wait: float,
            reads: list[Command]) -> Ops[list[Any] | None]:
    """Poll (2 ms doubling to 50 ms) until the main loop applied request `entry_id` (it left
    pendingStart) or `wait` seconds passed; returns the replies of `reads` made at the poll
    that saw it applied, or None if it was not in time."""
    deadline, pause = time.monotonic() + wait, 0.0
    while True:
        found, *replies = yield Step([("XRANGE", keys.pending_start, entry_id, entry_id),
                                      *reads], pause=pause)
        if not found:
            return replies
        if time.monotonic() + pause >= deadline:
            return None
        pause = min(max(pause * 2, 0.002), 0.05)


def cancel_one(keys: Keys, job_id: str, wait: float) -> Ops[Canceled]:
    """Append a cancel request, then wait (up to `wait` s) for the main loop to apply it and
    say what it did."""
    (entry_id,) = yield Step([("XADD", keys.pending_start, "*", "op", "cancel", "id", job_id)])
    replies = yield from applied(keys, entry_id, wait,
                                 [("HMGET", keys.job(job_id), "state", "cancel")])
    if replies is None:
        return Canceled.SENT
    state, mark = replies[0]
    if state == b"canceled":
        return Canceled.CANCELED
    if mark == b"1":
        return Canceled.MARKED
    return Canceled.UNKNOWN if state is None else Canceled.FINISHED


def cancel(keys: Keys, job_ids: Iterable[str]) -> Ops[int]:
    """Append cancel requests; the main loop applies them in order after earlier enqueues."""
    ids = list(job_ids)
    for start in range(0, len(ids), _PAGE):
        page = ids[start:start + _PAGE]
        yield Step([("XADD", keys.pending_start, "*", "op", "cancel", "id", i) for i in page])
    return len(ids)


def cancel_all(keys: Keys) -> Ops[int]:
    """Cancel every job and workflow not finished now: pending, retrying, running and not yet
    applied ones.

    Pages through the enqueues and workflow starts not applied yet (pendingStart and the
    accepted ids), the running workflows (so their steps are canceled with them), the unstarted
    jobs, the retrying set and the running set (each page one round trip), appending one cancel
    request per job or workflow; returns how many were sent. The order follows jobs (not
    applied -> unstarted -> retrying -> running -> retrying again for attempts that failed
    meanwhile), so a job moving on during the scan is not missed. Each id is sent once.
    """
    sent = 0
    seen: set[str] = set()
    start = "-"
    while True:  # enqueues and starts not applied yet that name no id: the entry id is theirs
        (entries,) = yield Step([("XRANGE", keys.pending_start, start, "+", "COUNT", _PAGE)])
        unnamed = [text(e) for e, f in entries
                   if b"id" not in f and f.get(b"op", b"enqueue") in (b"enqueue", b"workflow")]
        if unnamed:
            sent += yield from cancel(keys, unnamed)
            seen |= set(unnamed)
        if len(entries) < _PAGE:
            break
        start = "(" + text(entries[-1][0])
    passes = (("SSCAN", keys.incoming), ("SSCAN", keys.workflows), ("HSCAN", keys.unstarted),
              ("SSCAN", keys.retrying), ("ZSCAN", keys.running), ("SSCAN", keys.retrying))
    for kind, key in passes:
        cursor: Any = 0
        while True:
            reply = yield Step([(kind, key, cursor, "COUNT", _PAGE)])
            cursor, items = reply[0]
            # ZSCAN pairs (member, score); HSCAN a dict of field -> value; SSCAN members
            members = {text(m) for m in ([m for m, _ in items] if kind == "ZSCAN" else items)}
            if members - seen:
                sent += yield from cancel(keys, sorted(members - seen))
                seen |= members
            if int(cursor) == 0:
                break
    return sent


def configure(keys: Keys, fields: Mapping[str, str], wait: float) -> Ops[Configured]:
    """Append a live-configuration request (it wakes the main loop, which applies it at once);
    "applied" once it did, "sent" if it did not within `wait` s; ConfigurationError with the
    engine's reason if it refused it."""
    (entry_id,) = yield Step([("XADD", keys.pending_start, "*",
                               *[x for kv in fields.items() for x in kv])])
    replies = yield from applied(keys, entry_id, wait,
                                 [("XREVRANGE", keys.rejected, "+", "-", "COUNT", 100)])
    if replies is None:
        return "sent"
    for _, record in replies[0]:
        if record.get(b"entry") == entry_id:
            msg = f"the main loop refused the configuration: {text(record.get(b'reason'))}"
            raise ConfigurationError(msg)
    return "applied"
