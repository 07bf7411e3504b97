"""Checks at the API edge: each returns the value in the form the wire needs, or raises
ConfigurationError naming the argument and what it accepts, before anything is written."""

from __future__ import annotations

import math
from typing import Any, NoReturn

from workpool.errors import ConfigurationError


def fail(name: str, expected: str, value: Any) -> NoReturn:
    """Raise the one error shape every check uses."""
    msg = f"{name} must be {expected}, got {value!r}"
    raise ConfigurationError(msg)


def integer(name: str, value: Any, lo: int, hi: int) -> int:
    """A whole number in [lo, hi] (a bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        fail(name, f"an integer from {lo} to {hi}", value)
    return value


def number(name: str, value: Any, lo: float, hi: float, *, above: bool = False) -> float:
    """A finite int or float in [lo, hi] (or (lo, hi] with `above`)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (value > lo if above else value >= lo) or value > hi:
        fail(name, f"a number {'>' if above else '>='} {lo:g} and <= {hi:g}", value)
    return float(value)


def seconds_ms(name: str, value: Any, max_ms: int, *, positive: bool = False) -> int:
    """Seconds as whole milliseconds within [0 (or 1), max_ms]."""
    seconds = number(name, value, 0, max_ms / 1000, above=positive)
    ms = round(seconds * 1000)
    if positive and ms < 1:
        fail(name, "at least 0.001 seconds", value)
    return ms


def flag(name: str, value: Any) -> bool:
    """True or False, nothing merely truthy."""
    if not isinstance(value, bool):
        fail(name, "True or False", value)
    return value


def string(name: str, value: Any, max_bytes: int) -> str:
    """A non-empty str of at most `max_bytes` UTF-8 bytes."""
    if not isinstance(value, str) or not value or len(value.encode()) > max_bytes:
        fail(name, f"a non-empty string of at most {max_bytes} bytes", value)
    return value


def instance(name: str, value: Any, kind: type, what: str) -> Any:
    """`value` if it is a `kind` (an options object given where one is expected)."""
    if not isinstance(value, kind):
        fail(name, what, value)
    return value
