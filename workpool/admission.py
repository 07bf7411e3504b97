"""Admission settings (max_parallelism, pause, rate limits, per-key limits) in their wire form:
what a main loop declares from code, and what `configure()` sends as a live override."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from workpool.errors import ConfigurationError
from workpool.types import RateLimit

if TYPE_CHECKING:
    from workpool.registry import Registry


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


def check_max_per_key(value: int) -> int:
    """max_per_key is a count of running jobs per key; 0 means no limit."""
    if not isinstance(value, int) or value < 0:
        msg = f"max_per_key must be an integer >= 0 (1 = serial per key, 0 = no limit), " \
              f"got {value!r}"
        raise ConfigurationError(msg)
    return value


def _rate(value: RateLimit | None) -> str:
    return "none" if value is None else value.spec


def config_fields(
    *,
    max_parallelism: int | _Unset = UNSET,
    paused: bool | _Unset = UNSET,
    rate_limit: RateLimit | _Unset | None = UNSET,
    rate_limits: Mapping[str, RateLimit | None] | None = None,
    max_per_key: int | _Unset = UNSET,
    max_per_key_for: Mapping[str, int] | None = None,
    reset: bool = False,
) -> dict[str, str]:
    """Fields of one `op=config` entry; raises before anything is written if one is unusable.

    `None` as a rate limit means "no limit" (overriding the code's); `reset` drops every live
    override first, so the values declared in code apply again.
    """
    out: dict[str, str] = {"op": "config"}
    if reset:
        out["reset"] = "1"
    if not isinstance(max_parallelism, _Unset):
        if not isinstance(max_parallelism, int) or max_parallelism < 0:
            msg = f"max_parallelism must be an integer >= 0, got {max_parallelism!r}"
            raise ConfigurationError(msg)
        out["max_parallelism"] = str(max_parallelism)
    if not isinstance(paused, _Unset):
        out["paused"] = "1" if paused else "0"
    if not isinstance(rate_limit, _Unset):
        out["rate"] = _rate(rate_limit)
    for name, limit in (rate_limits or {}).items():
        out[f"rate:{name}"] = _rate(limit)
    if not isinstance(max_per_key, _Unset):
        out["max_per_key"] = str(check_max_per_key(max_per_key))
    for name, value in (max_per_key_for or {}).items():
        out[f"max_per_key:{name}"] = str(check_max_per_key(value))
    if len(out) == 1:
        msg = "configure() needs at least one setting to change (or reset=True)"
        raise ConfigurationError(msg)
    return out
