"""The one table of result codes shared by the Lua scripts and Python.

Every script returns these small integers; `lua_prelude()` renders the same table into the Lua
source at load time, so the two sides cannot drift apart.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """What one script call (or one stream entry inside a batch call) did."""

    OK = 0  #: the call did its work
    NOT_LEADER = 1  #: fencing: the caller's lease token is not the live one; nothing written
    ENQUEUED = 2  #: a new job is now pending
    DUPLICATE_ENQUEUE = 3  #: a job with that id (idempotency key) exists; nothing written
    REJECTED = 4  #: malformed entry set aside in the rejected-entries record
    CANCELED = 5  #: pending or retrying job is now canceled
    CANCEL_MARKED = 6  #: running job marked: its current attempt stands, it is never retried
    CANCEL_NOOP = 7  #: finished, unknown or already-marked job: nothing to do
    STARTED = 8  #: pending or retrying job is now running (attempt incremented)
    SUCCEEDED = 9  #: running job is now done/succeeded
    RETRY_SCHEDULED = 10  #: failed attempt, job is now retrying
    FAILED = 11  #: running job is now done/failed
    STALE_COMPLETION = 12  #: completion of a superseded attempt or of a job not running: dropped
    CALLBACK_DELIVERED = 13  #: on_complete handler succeeded; delivery closed
    CALLBACK_RETRY = 14  #: on_complete handler failed; delivery scheduled again
    STALE_CALLBACK = 15  #: outcome of a delivery that is already closed or superseded: dropped
    CONFIGURED = 16  #: pool configuration changed
    REDELIVERED = 17  #: callback delivery of a dead worker handed out again
    HELD_BY_RATE = 18  #: due job held: its job name's rate limit has no token (stays pending)
    HELD_BY_KEY = 19  #: due job held: its concurrency key is at its limit (stays pending)
    CALLBACK_ABANDONED = 20  #: on_complete failed for good (no such handler, or past retention)
    WORKFLOW_STARTED = 21  #: a new workflow is running; its first replay is handed out
    REPLAY_APPLIED = 22  #: a replay's decision recorded (its steps asked for): the workflow runs on
    STALE_REPLAY = 23  #: decision of a replay no longer current (or of a workflow ended): dropped
    REPLAY_RETRY = 24  #: a replay could not decide (code or journal mismatch): tried again later
    EVENT_DELIVERED = 25  #: an event ended the workflow's wait for it
    EVENT_KEPT = 26  #: an event no wait took yet: kept until the workflow waits for it
    EVENT_DROPPED = 27  #: an event for a workflow that is not running (ended, or unknown)
    WAIT_ENDED = 28  #: a workflow's sleep is over, or its wait for an event timed out
    EVENT_DUPLICATE = 29  #: an event whose key the workflow took before: dropped


def lua_prelude() -> str:
    """Render the code table as a Lua `local C = {...}` line for the script loader."""
    body = ", ".join(f"{c.name}={c.value}" for c in Code)
    return f"local C = {{{body}}}\n"
