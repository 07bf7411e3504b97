"""The numeric limits of the wire format, written once for both languages.

The Python client checks every option against them before it writes anything, and the Lua
scripts check every entry against the same numbers (`lua_prelude()` renders this table into
each script as `L`), so whatever the client accepts the engine applies, and a foreign client's
entry outside them is set aside, never half-applied. Times are milliseconds.
"""

from __future__ import annotations

DAY_MS = 24 * 3600 * 1000

MAX_ID_BYTES = 512  #: a job id
MAX_NAME_BYTES = 200  #: a pool, job or handler name
MAX_TRACE_BYTES = 512  #: a traceparent or tracestate an entry carries (a longer one is dropped)
KEY_PREFIX = "key:"  #: an idempotency key `k` names the job `key:k`
MAX_KEY_BYTES = MAX_ID_BYTES - len(KEY_PREFIX)  #: an idempotency key
#: a workflow's key: its steps and children are `<id>:<n>`, nested, and must fit MAX_ID_BYTES
MAX_WORKFLOW_KEY_BYTES = MAX_KEY_BYTES - 64
CRON_PREFIX = "cron:"  #: ids `cron:<name>:<tick_ms>` are the cron ticks' own (no key reaches them)
MAX_CONCURRENCY_KEY_BYTES = 512
MAX_ATTEMPTS = 1_000_000  #: attempts of one job, the first included
MAX_BACKOFF_BASE = 1000  #: growth factor of the retry delay per attempt
MAX_RETRY_DELAY_MS = 7 * DAY_MS  #: the longest any retry waits (initial_backoff, max_backoff)
DEFAULT_MAX_BACKOFF_MS = 3600 * 1000  #: Retry.max_backoff unless given
MAX_TIMEOUT_MS = 10**12  #: per-attempt timeout (about 31 years)
MAX_RUN_AT_MS = 10**13  #: earliest start, ms since the epoch (the year 2286)
MAX_RUN_AFTER_MS = 10**13  #: earliest start, ms after the enqueue
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000
MAX_SETTING = 10**9  #: max_parallelism, max_per_key
MAX_SHARDS = 256  #: shards of one pool (each its own slot, main loop and scripts)
MAX_RATE_LIMIT = 10**9  #: starts per period of a rate limit
MAX_RATE_PER_MS = 365 * DAY_MS  #: the period of a rate limit
MAX_WORKFLOW_STEPS = 100_000  #: journal entries of one workflow (its max_steps at most)
MAX_ENTRY_FIELDS = 64  #: fields of a step's or child's entry in a replay's decision
MAX_KEPT_EVENTS = 1000  #: events of one name kept for a workflow that does not wait yet
MAX_OUTCOMES_PER_ENTRY = 64  #: outcomes in one `kind=batch` entry of pendingCompletion
MAX_ERROR_BYTES = 16 * 1024  #: an attempt's error text (message and traceback) as stored
ATTEMPT_ERROR_BYTES = 4 * 1024  #: an attempt record's error (a job's `error` keeps the last whole)
ATTEMPTS_KEPT = 20  #: attempts a job keeps a record of (the latest ones)
REJECTED_KEPT = 1000  #: rejected entries kept (the newest; about)
REJECTED_ENTRY_BYTES = 4096  #: bytes of raw fields kept of one rejected entry
PAGE = 64  #: stream entries a script reads at a time
KEY_STEPS = 16  #: jobs of one concurrency key's queue one step moves to `ready` at most
#: acknowledged dispatch entries the stream may keep behind an attempt pending for long before
#: the main loop deletes them one by one again (it trims in bulk up to the oldest pending one)
DISPATCH_SLACK = 10_000
CALL_BYTES = 8 * 1024 * 1024  #: bytes of entries one script call reads at most (and one entry)
#: bytes of ended journal entries a replay's dispatch entry carries at most (it names the rest,
#: and the worker reads them)
REPLAY_CARRY_BYTES = 1024 * 1024
#: ms a replay may wait unread in the inbox of the worker that keeps its workflow (its slots
#: all busy, its event loop held) before the reaper hands it to any worker
INBOX_WAIT_MS = 5000
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024  #: the most max_payload_bytes / max_result_bytes may be
MAX_RETENTION_MS = 3650 * DAY_MS  #: how long finished jobs may be kept
MAX_TTL_MS = 3600 * 1000  #: lease_ttl, heartbeat_ttl
MAX_GRACE_MS = 365 * DAY_MS  #: a cron job's grace


def lua_prelude() -> str:
    """Render the table as a Lua `local L = {...}` line for the script loader."""
    names = sorted(n for n, v in globals().items() if n.isupper() and isinstance(v, int | str))
    body = ", ".join(f"{n}={_lua(globals()[n])}" for n in names)
    return f"local L = {{{body}}}\n"


def _lua(value: int | str) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)
