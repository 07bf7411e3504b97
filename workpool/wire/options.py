"""The options of an enqueue, written once: the sync client, the asyncio client and the cron
ticks of the main loop all pass the same `EnqueueOptions` value, and `entry_fields` turns it
into the fields an enqueue entry carries (see docs/protocol.md), checking each option against
the engine's limits before anything is written."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypedDict

from workpool.core import validate
from workpool.errors import ConfigurationError
from workpool.types import Retry
from workpool.wire import limits
from workpool.wire.protocol import Encoding, Fields, encode, key_job_id

JobRef = Callable[..., Any] | str  #: a registered function, or the name it is registered under


class ManyOptions(TypedDict, total=False):
    """Options shared by every job of one `enqueue_many` call."""

    on_complete: JobRef | None  #: handler called once the job is terminal
    context: Any  #: passed to that handler as is
    run_after: float | None  #: seconds to wait before the first attempt
    run_at: float | datetime | None  #: the first attempt's time (seconds since the epoch)
    retry: Retry | None  #: overrides the job's and the pool's policy
    timeout: float | None  #: seconds one attempt may run
    priority: int  #: higher starts first among due jobs (-100..100)
    concurrency_key: str | None  #: the key that max_per_key limits count by


class EnqueueOptions(ManyOptions, total=False):
    """Options of one `enqueue` call: those of `enqueue_many`, plus its keyword arguments and
    idempotency key."""

    kwargs: Mapping[str, Any] | None  #: the job's keyword arguments
    key: str | None  #: idempotency key: the same key gives the same job within the retention


class StepOptions(TypedDict, total=False):
    """Options of one workflow step (`ctx.step`): how its job runs."""

    kwargs: Mapping[str, Any] | None  #: the job's keyword arguments
    retry: Retry | None  #: overrides the job's and the pool's policy
    timeout: float | None  #: seconds one attempt may run
    priority: int  #: higher starts first among due jobs
    concurrency_key: str | None  #: the key that max_per_key limits count by


MANY_OPTIONS = frozenset(ManyOptions.__optional_keys__)
STEP_OPTIONS = frozenset(StepOptions.__optional_keys__)
ENQUEUE_OPTIONS = frozenset(EnqueueOptions.__optional_keys__)


def check_names(options: Mapping[str, Any], allowed: frozenset[str], call: str) -> None:
    """A misspelt option must not be dropped silently: ConfigurationError names it."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        msg = f"{call}() got unknown option(s) {', '.join(unknown)}; it takes " \
              f"{', '.join(sorted(allowed))}"
        raise ConfigurationError(msg)


def entry_fields(options: EnqueueOptions, *, name: str, enc: Encoding,
                 retry: Mapping[str, str], timeout: float | None, handler: str | None) -> Fields:
    """The fields every entry of one enqueue call shares (all but args and kwargs). `retry`
    (the policy's wire fields, Retry.wire), `timeout` and `handler` are the options as resolved
    against the job's registration."""
    fields: Fields = {"op": "enqueue", "name": name, "enc": enc}
    job_id = key_job_id(options.get("key"))
    if job_id is not None:  # none: the entry's id is the job's
        fields["id"] = job_id
    if handler is not None:
        fields["on_complete"] = handler
        fields["context"] = encode(options.get("context"), enc)
    fields.update(retry)
    if timeout is not None:
        fields["timeout_ms"] = str(validate.seconds_ms("timeout", timeout, limits.MAX_TIMEOUT_MS,
                                                       positive=True))
    run_at = options.get("run_at")
    if run_at is not None:
        seconds = run_at.timestamp() if isinstance(run_at, datetime) else run_at
        fields["run_at_ms"] = str(validate.seconds_ms("run_at", seconds, limits.MAX_RUN_AT_MS))
    run_after = options.get("run_after")
    if run_after is not None:
        fields["run_after_ms"] = str(validate.seconds_ms("run_after", run_after,
                                                         limits.MAX_RUN_AFTER_MS))
    priority = options.get("priority", 0)
    if validate.integer("priority", priority, limits.MIN_PRIORITY, limits.MAX_PRIORITY):
        fields["priority"] = str(priority)
    ckey = options.get("concurrency_key")
    if ckey is not None:
        fields["concurrency_key"] = validate.string("concurrency_key", ckey,
                                                    limits.MAX_CONCURRENCY_KEY_BYTES)
    return fields
