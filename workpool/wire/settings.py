"""Admission settings (max_parallelism, pause, rate limits, per-key limits) in their wire form:
what a main loop declares from code, and what `configure()` sends as a live override."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from workpool.core import validate
from workpool.core.registry import check_name
from workpool.errors import ConfigurationError
from workpool.types import RateLimit, rate_limit_of
from workpool.wire import limits

if TYPE_CHECKING:
    from workpool.core.registry import Registry


class _Unset:
    """Marks an option that `configure()` leaves as it is."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


def declared_settings(rate_limit: RateLimit | None, max_per_key: int | None,
                      registry: Registry) -> dict[str, str]:
    """The settings the code declares (written as the pool's defaults by each new leader)."""
    out: dict[str, str] = {}
    if rate_limit is not None:
        out["rate"] = rate_limit.spec
    if max_per_key is not None:
        out["max_per_key"] = str(check_max_per_key(max_per_key))
    for name, spec in registry.jobs.items():
        if spec.rate_limit is not None:
            out[f"rate:{name}"] = spec.rate_limit.spec
        if spec.max_per_key is not None:
            out[f"max_per_key:{name}"] = str(check_max_per_key(spec.max_per_key))
    return out


def check_max_per_key(value: Any, name: str = "max_per_key") -> int:
    """max_per_key is a count of running jobs per key; 0 means no limit."""
    return validate.integer(name, value, 0, limits.MAX_SETTING)


def _rate(name: str, value: Any) -> str:
    limit = rate_limit_of(name, value)
    return "none" if limit is None else limit.spec


def _named(name: str, table: Any) -> list[tuple[str, Any]]:
    """The items of a per-job-name mapping, each name checked."""
    if not isinstance(table, Mapping):
        validate.fail(name, "a mapping of job name to value", table)
    return [(check_name(job, f"{name} key"), value) for job, value in table.items()]


def config_fields(
    *,
    max_parallelism: int | _Unset = UNSET,
    paused: bool | _Unset = UNSET,
    rate_limit: RateLimit | str | _Unset | None = UNSET,
    rate_limits: Mapping[str, RateLimit | str | None] | None = None,
    max_per_key: int | _Unset = UNSET,
    max_per_key_for: Mapping[str, int] | None = None,
    reset: bool = False,
) -> dict[str, str]:
    """Fields of one `op=config` entry; raises before anything is written if one is unusable.

    `None` as a rate limit means "no limit" (overriding the code's); a rate may be given as
    text (`"50/1s"`); `reset` drops every live override first, so the values declared in code
    apply again.
    """
    out: dict[str, str] = {"op": "config"}
    if validate.flag("reset", reset):
        out["reset"] = "1"
    if not isinstance(max_parallelism, _Unset):
        out["max_parallelism"] = str(validate.integer("max_parallelism", max_parallelism, 0,
                                                      limits.MAX_SETTING))
    if not isinstance(paused, _Unset):
        out["paused"] = "1" if validate.flag("paused", paused) else "0"
    if not isinstance(rate_limit, _Unset):
        out["rate"] = _rate("rate_limit", rate_limit)
    for name, limit in _named("rate_limits", rate_limits or {}):
        out[f"rate:{name}"] = _rate(f"rate_limits[{name!r}]", limit)
    if not isinstance(max_per_key, _Unset):
        out["max_per_key"] = str(check_max_per_key(max_per_key))
    for name, value in _named("max_per_key_for", max_per_key_for or {}):
        out[f"max_per_key:{name}"] = str(check_max_per_key(value,
                                                           f"max_per_key_for[{name!r}]"))
    if len(out) == 1:
        msg = "configure() needs at least one setting to change (or reset=True)"
        raise ConfigurationError(msg)
    return out
