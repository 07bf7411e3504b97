"""Admission settings (max_parallelism, pause, rate limits, per-key limits) in their wire form:
what a main loop declares from code, and what `configure()` sends as a live override."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict

from workpool.core import validate
from workpool.core.registry import check_name
from workpool.errors import ConfigurationError
from workpool.types import RateLimit, rate_limit_of
from workpool.wire import limits
from workpool.wire.options import check_names

if TYPE_CHECKING:
    from workpool.core.registry import Registry


class LiveSettings(TypedDict, total=False):
    """What `configure()` may change on a running pool (each name left out stays as it is)."""

    max_parallelism: int  #: attempts running at once across the pool
    paused: bool  #: start nothing new (running attempts finish)
    rate_limit: RateLimit | str | None  #: the pool's start rate; None lifts it
    rate_limits: Mapping[str, RateLimit | str | None]  #: per job name; None lifts one
    max_per_key: int  #: running jobs per concurrency key (0: no limit)
    max_per_key_for: Mapping[str, int]  #: the same, per job name
    reset: bool  #: drop every live override first, so the code's values apply again


LIVE_SETTINGS = frozenset(LiveSettings.__optional_keys__)


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


def config_fields(settings: Mapping[str, Any]) -> dict[str, str]:
    """Fields of one `op=config` entry; raises before anything is written if one is unusable
    (or unknown: a misspelt setting must not be dropped silently).

    `None` as a rate limit means "no limit" (overriding the code's); a rate may be given as
    text (`"50/1s"`); `reset` drops every live override first, so the values declared in code
    apply again.
    """
    check_names(settings, LIVE_SETTINGS, "configure")
    out: dict[str, str] = {"op": "config"}
    if validate.flag("reset", settings.get("reset", False)):
        out["reset"] = "1"
    if "max_parallelism" in settings:
        out["max_parallelism"] = str(validate.integer(
            "max_parallelism", settings["max_parallelism"], 0, limits.MAX_SETTING))
    if "paused" in settings:
        out["paused"] = "1" if validate.flag("paused", settings["paused"]) else "0"
    if "rate_limit" in settings:
        out["rate"] = _rate("rate_limit", settings["rate_limit"])
    for name, limit in _named("rate_limits", settings.get("rate_limits") or {}):
        out[f"rate:{name}"] = _rate(f"rate_limits[{name!r}]", limit)
    if "max_per_key" in settings:
        out["max_per_key"] = str(check_max_per_key(settings["max_per_key"]))
    for name, value in _named("max_per_key_for", settings.get("max_per_key_for") or {}):
        out[f"max_per_key:{name}"] = str(check_max_per_key(value,
                                                           f"max_per_key_for[{name!r}]"))
    if len(out) == 1:
        msg = "configure() needs at least one setting to change (or reset=True)"
        raise ConfigurationError(msg)
    return out
