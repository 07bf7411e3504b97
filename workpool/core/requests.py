"""What both client faces send, built once: an enqueue's entries (its job and handler named
by function or by name, its options checked), a workflow's start entry and a configure
request's fields."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from workpool.core import validate
from workpool.core.config import PoolConfig
from workpool.core.registry import check_name
from workpool.errors import PayloadTooLarge, UnknownJobName
from workpool.wire import limits
from workpool.wire.options import EnqueueOptions, JobRef, check_names
from workpool.wire.protocol import Fields, check_job_id, check_kwargs, encode, key_job_id


def name_of(config: PoolConfig, ref: Any, argument: str) -> str:
    """The registered name a job or handler reference stands for; UnknownJobName if a
    function is not registered on this pool."""
    if isinstance(ref, str):
        return check_name(ref, argument)
    if not callable(ref):
        validate.fail(argument, "a registered function or its name", ref)
    name = config.registry.name_of(ref)
    if name is None:
        decorator = "job" if argument == "job" else "on_complete"
        msg = f"{argument} {getattr(ref, '__name__', ref)!r} is not registered on pool " \
              f"{config.name!r}: decorate it with @pool.{decorator}()"
        raise UnknownJobName(msg)
    return name


def enqueue_entries(config: PoolConfig, job: JobRef, args_list: Iterable[Sequence[Any]],
                    options: Mapping[str, Any], *, allowed: frozenset[str],
                    call: str) -> list[Fields]:
    """Check and encode the entries of an enqueue call (`call` names it in errors; `allowed`
    are the options it takes); raises before anything is written."""
    check_names(options, allowed, call)
    opts: EnqueueOptions = dict(options)  # type: ignore[assignment]  # names checked above
    handler = opts.get("on_complete")
    return config.entries(name_of(config, job, "job"), args_list, opts,
                          None if handler is None else name_of(config, handler, "on_complete"))


def workflow_name(config: PoolConfig, ref: Any) -> str:
    """The registered name a workflow reference stands for (a name is taken as it is: another
    process may have registered it)."""
    if isinstance(ref, str):
        return check_name(ref, "workflow")
    machine = getattr(ref, "workflow_name", None)  # a pool.machine(...)
    if isinstance(machine, str):
        return machine
    for name, spec in config.registry.workflows.items():
        if spec.fn is ref:
            return name
    msg = f"workflow {getattr(ref, '__name__', ref)!r} is not registered on pool " \
          f"{config.name!r}: decorate it with @pool.workflow()"
    raise UnknownJobName(msg)


def workflow_entry(config: PoolConfig, workflow: Any, args: Sequence[Any], *,
                   kwargs: Mapping[str, Any] | None, key: str | None, on_complete: Any,
                   context: Any) -> Fields:
    """The start entry of a workflow (op=workflow); raises before anything is written."""
    name = workflow_name(config, workflow)
    spec = config.registry.workflows.get(name)
    fields: Fields = {"op": "workflow", "name": name, "enc": config.encoding,
                      "max_steps": str(spec.max_steps if spec else 10_000)}
    # a key shorter than a job's: room for its steps' and children's `:<n>`
    workflow_id = key_job_id(key, limits.MAX_WORKFLOW_KEY_BYTES)
    if workflow_id is not None:
        fields["id"] = workflow_id
    if spec is not None and spec.timeout is not None:
        fields["timeout_ms"] = str(validate.seconds_ms("timeout", spec.timeout,
                                                       limits.MAX_TIMEOUT_MS, positive=True))
    if on_complete is not None:
        fields["on_complete"] = name_of(config, on_complete, "on_complete")
        fields["context"] = encode(context, config.encoding)
    fields["args"] = encode(list(args), config.encoding)
    named = check_kwargs(kwargs)
    if named:
        fields["kwargs"] = encode(named, config.encoding)
    size = sum(len(fields.get(f, b"")) for f in ("args", "kwargs", "context"))
    if size > config.max_payload_bytes:
        msg = f"workflow {name!r}: {size} bytes of arguments and context exceed the pool's " \
              f"max_payload_bytes={config.max_payload_bytes}"
        raise PayloadTooLarge(msg)
    return fields


def event_entry(config: PoolConfig, workflow_id: str, name: str, payload: Any,
                key: str | None = None) -> Fields:
    """The entry of an event for a workflow (op=event, with its idempotency key if given);
    raises before anything is written."""
    fields: Fields = {"op": "event", "id": check_job_id(workflow_id),
                      "name": check_name(name, "name"), "enc": config.encoding}
    if key is not None:
        fields["key"] = validate.string("key", key, limits.MAX_KEY_BYTES)
    data = encode(payload, config.encoding)
    if len(data) > config.max_payload_bytes:
        msg = f"event {name!r}: a payload of {len(data)} bytes exceeds the pool's " \
              f"max_payload_bytes={config.max_payload_bytes}"
        raise PayloadTooLarge(msg)
    fields["payload"] = data
    return fields
