"""What both client faces send, built once: an enqueue's entries (its job and handler named
by function or by name, its options checked) and a configure request's fields."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from workpool.core import validate
from workpool.core.config import PoolConfig
from workpool.core.registry import check_name
from workpool.errors import UnknownJobName
from workpool.wire.options import EnqueueOptions, JobRef, check_names
from workpool.wire.protocol import Fields


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
