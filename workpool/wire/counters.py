"""The pool's counters (fields of `{wp:P}:stats`), written once for both languages: the scripts
bump them by these names (`lua_prelude()` renders the table into each script as `N`), and
`stats`, the command line, the demo and the chaos runner read them by the same names."""

from __future__ import annotations

from typing import Final


class Counter:
    """The counters of a pool, by their field names in the stats hash."""

    ENQUEUED: Final = "enqueued"  #: enqueues applied (a job created)
    DUPLICATE_ENQUEUES: Final = "duplicate_enqueues"  #: enqueues of an id that already exists
    REJECTED: Final = "rejected"  #: malformed stream entries set aside
    STARTED: Final = "started"  #: attempts started
    RETRIED: Final = "retried"  #: failed attempts scheduled for a retry
    RETRYING: Final = "retrying"  #: jobs in `retrying` now (a gauge)
    SUCCEEDED: Final = "succeeded"  #: jobs done with outcome succeeded
    FAILED: Final = "failed"  #: jobs done with outcome failed
    CANCELED: Final = "canceled"  #: jobs canceled
    CANCEL_MARKED: Final = "cancel_marked"  #: cancels that found the job running
    CANCEL_NOOP: Final = "cancel_noop"  #: cancels of a job finished or unknown
    HELD_BY_RATE: Final = "held_by_rate"  #: due jobs held back by a rate limit now (a gauge)
    HELD_BY_KEY: Final = "held_by_key"  #: due jobs held back by a key's limit now (a gauge)
    ORPHAN_DUE_ENTRIES: Final = "orphan_due_entries"  #: due entries of jobs that no longer wait
    STALE_COMPLETIONS: Final = "stale_completions"  #: outcomes of attempts no longer current
    STALE_CALLBACKS: Final = "stale_callbacks"  #: handler outcomes of deliveries no longer current
    CALLBACK_FAILURES: Final = "callback_failures"  #: handler runs that failed (tried again)
    CALLBACKS_DELIVERED: Final = "callbacks_delivered"  #: deliveries closed by a handler's success
    CALLBACKS_ABANDONED: Final = "callbacks_abandoned"  #: deliveries given up
    #: deliveries a dead worker held, handed out again
    CALLBACKS_REDELIVERED: Final = "callbacks_redelivered"
    WORKFLOWS_STARTED: Final = "workflows_started"  #: workflows begun
    REPLAYS: Final = "replays"  #: workflow replays handed to workers
    #: replays handed to the inbox of the worker that keeps their workflow live
    REPLAYS_ROUTED: Final = "replays_routed"
    #: replays taken back from an inbox (its worker silent, or not reading it in time)
    REPLAYS_REROUTED: Final = "replays_rerouted"
    STALE_REPLAYS: Final = "stale_replays"  #: replay decisions no longer current, dropped
    REPLAY_FAILURES: Final = "replay_failures"  #: replays that could not decide (tried again)
    EVENTS_DELIVERED: Final = "events_delivered"  #: events that ended a workflow's wait
    EVENTS_KEPT: Final = "events_kept"  #: events kept for a workflow not waiting for them yet
    EVENTS_DROPPED: Final = "events_dropped"  #: events for workflows not running
    EVENTS_DUPLICATE: Final = "events_duplicate"  #: events whose key was taken before
    WAITS_TIMED_OUT: Final = "waits_timed_out"  #: event waits ended by their timeout
    TIMEOUTS: Final = "timeouts"  #: attempts failed by the reaper as Timeout
    WORKERS_LOST_ATTEMPTS: Final = "workers_lost_attempts"  #: attempts failed as WorkerLost
    WORKERS_REMOVED: Final = "workers_removed"  #: dead consumers removed from the dispatch group


#: the counters `workpool stats` shows as anomalies (each one a sign of trouble somewhere)
ANOMALIES = (Counter.STALE_COMPLETIONS, Counter.STALE_CALLBACKS, Counter.REJECTED,
             Counter.DUPLICATE_ENQUEUES, Counter.TIMEOUTS, Counter.WORKERS_LOST_ATTEMPTS,
             Counter.CALLBACK_FAILURES, Counter.ORPHAN_DUE_ENTRIES)


NAMES: Final = {name: value for name, value in vars(Counter).items() if name.isupper()}


def lua_prelude() -> str:
    """Render the table as a Lua `local N = {...}` line for the script loader."""
    body = ", ".join(f"{name}='{value}'" for name, value in NAMES.items())
    return f"local N = {{{body}}}\n"
