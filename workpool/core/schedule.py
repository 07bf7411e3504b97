"""Schedules for periodic jobs (5-field UTC cron, fixed intervals) as pure tick math.

Every process computes the same ticks, so a tick time can key the one job enqueued for it.
"""

from __future__ import annotations

import bisect
import calendar
import datetime as dt
import math
from dataclasses import dataclass
from typing import Protocol

from workpool.errors import ConfigurationError

_EPOCH = dt.datetime(1970, 1, 1)  # naive, read as UTC
_MINUTE = dt.timedelta(minutes=1)
_MS = dt.timedelta(milliseconds=1)
# The Gregorian calendar repeats every 400 years: no tick within that span means none ever.
_HORIZON_YEARS = 400
_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
)
_NAMES = {
    3: {m.lower(): i for i, m in enumerate(calendar.month_abbr) if m},
    4: {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))},
}
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MAX_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class Schedule(Protocol):
    """When a periodic job is due: ticks in epoch milliseconds, UTC."""

    def next_after(self, t_ms: int) -> int:
        """The first tick strictly after `t_ms`."""

    def previous_at_or_before(self, t_ms: int) -> int | None:
        """The last tick at or before `t_ms` (None if none within a bounded search)."""

    @property
    def description(self) -> str:
        """A human-readable form of the schedule, for logs and status output."""


def _field_error(index: int, text: str, problem: str) -> ConfigurationError:
    name, lo, hi = _FIELDS[index]
    hint = {3: ", names JAN-DEC", 4: " (0 and 7 are Sunday), names SUN-SAT"}.get(index, "")
    return ConfigurationError(
        f"cron {name} field {text!r}: {problem}; allowed: numbers {lo}-{hi}{hint}, '*', "
        "ranges a-b, steps */n a-b/n a/n, lists a,b,c"
    )


def _parse_field(text: str, index: int) -> frozenset[int]:
    """The set of values one cron field selects (day-of-week 7 folded onto 0 = Sunday)."""
    _, lo, hi = _FIELDS[index]

    def value(token: str) -> int:
        if token.isdigit():
            return int(token)
        if token.lower() in _NAMES.get(index, {}):
            return _NAMES[index][token.lower()]
        raise _field_error(index, text, f"{token!r} is not a number")

    values: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        if slash and (not step_text.isdigit() or int(step_text) == 0):
            raise _field_error(index, text, f"step {step_text!r} must be a whole number >= 1")
        step = int(step_text) if slash else 1
        if base == "*":
            start, end = lo, hi
        else:
            first, dash, last = base.partition("-")
            start = value(first)
            end = value(last) if dash else (hi if slash else start)
            if start > end:
                raise _field_error(index, text, f"range {base!r} runs backwards")
            if start < lo or end > hi:
                raise _field_error(index, text, f"{base!r} is outside {lo}-{hi}")
        values.update(range(start, end + 1, step))
    return frozenset(v % 7 for v in values) if index == 4 else frozenset(values)


class CronSchedule:
    """A standard 5-field cron expression in UTC, with Vixie's day-of-month OR day-of-week rule."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        text = expr.strip()
        if text.startswith("@"):
            if text.lower() not in _MACROS:
                raise ConfigurationError(
                    f"cron macro {text!r} is unknown; allowed: {', '.join(_MACROS)}"
                )
            text = _MACROS[text.lower()]
        fields = text.split()
        if len(fields) != 5:
            raise ConfigurationError(
                f"cron spec {expr!r} has {len(fields)} fields; expected 5: "
                "minute hour day-of-month month day-of-week (or a macro like @hourly)"
            )
        sets = [_parse_field(f, i) for i, f in enumerate(fields)]
        self._minutes, self._hours = sorted(sets[0]), sorted(sets[1])
        self._dom, self._months, self._dow = sets[2], sorted(sets[3]), sets[4]
        # Vixie: a field starting with '*' is unrestricted; if both are restricted, either matches.
        self._either_day = not fields[2].startswith("*") and not fields[4].startswith("*")
        if not self._either_day and not any(
            d <= _MAX_DAYS[m] for m in self._months for d in self._dom
        ):
            raise ConfigurationError(
                f"cron spec {expr!r} never matches: day-of-month {fields[2]!r} "
                f"does not occur in month {fields[3]!r}"
            )

    @property
    def description(self) -> str:
        return f"cron {self.expr!r} (UTC)"

    def __repr__(self) -> str:
        return f"CronSchedule({self.expr!r})"

    def _day_ok(self, day: dt.datetime) -> bool:
        dom_ok = day.day in self._dom
        dow_ok = (day.weekday() + 1) % 7 in self._dow
        return (dom_ok or dow_ok) if self._either_day else (dom_ok and dow_ok)

    def next_after(self, t_ms: int) -> int:
        try:
            cur = _EPOCH + dt.timedelta(minutes=t_ms // 60_000 + 1)
            limit = cur.year + _HORIZON_YEARS
            while cur.year <= limit:
                mi = bisect.bisect_left(self._months, cur.month)
                if mi == len(self._months):
                    cur = dt.datetime(cur.year + 1, self._months[0], 1)
                elif self._months[mi] != cur.month:
                    cur = dt.datetime(cur.year, self._months[mi], 1)
                if not self._day_ok(cur):
                    cur = cur.replace(hour=0, minute=0) + dt.timedelta(days=1)
                    continue
                hi = bisect.bisect_left(self._hours, cur.hour)
                if hi == len(self._hours):
                    cur = cur.replace(hour=0, minute=0) + dt.timedelta(days=1)
                    continue
                if self._hours[hi] != cur.hour:
                    cur = cur.replace(hour=self._hours[hi], minute=0)
                ni = bisect.bisect_left(self._minutes, cur.minute)
                if ni < len(self._minutes):
                    return (cur.replace(minute=self._minutes[ni]) - _EPOCH) // _MS
                cur = cur.replace(minute=0) + dt.timedelta(hours=1)
        except (OverflowError, ValueError):
            pass  # ran off the end of datetime's range
        raise ConfigurationError(f"{self.description} has no tick after {t_ms} ms")

    def previous_at_or_before(self, t_ms: int) -> int | None:
        try:
            cur = _EPOCH + dt.timedelta(minutes=t_ms // 60_000)
            limit = cur.year - _HORIZON_YEARS
            while cur.year >= limit:
                mi = bisect.bisect_right(self._months, cur.month) - 1
                if mi < 0:
                    cur = dt.datetime(cur.year - 1, 12, 31, 23, 59)
                    continue
                if self._months[mi] != cur.month:
                    last = calendar.monthrange(cur.year, self._months[mi])[1]
                    cur = dt.datetime(cur.year, self._months[mi], last, 23, 59)
                hi = bisect.bisect_right(self._hours, cur.hour) - 1
                if not self._day_ok(cur) or hi < 0:
                    cur = cur.replace(hour=0, minute=0) - _MINUTE
                    continue
                if self._hours[hi] != cur.hour:
                    cur = cur.replace(hour=self._hours[hi], minute=59)
                ni = bisect.bisect_right(self._minutes, cur.minute) - 1
                if ni >= 0:
                    return (cur.replace(minute=self._minutes[ni]) - _EPOCH) // _MS
                cur = cur.replace(minute=0) - _MINUTE
        except (OverflowError, ValueError):
            pass  # ran off the start of datetime's range
        return None


class IntervalSchedule:
    """Every N seconds, at whole multiples of the interval since the epoch."""

    def __init__(self, every: float | dt.timedelta) -> None:
        seconds = every.total_seconds() if isinstance(every, dt.timedelta) else every
        number = isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
        if not number or not math.isfinite(seconds) or seconds <= 0:
            raise ConfigurationError(
                f"schedule interval {every!r} is invalid; allowed: seconds > 0 or a timedelta"
            )
        self.interval_ms = round(seconds * 1000)
        if self.interval_ms < 1:
            raise ConfigurationError(f"schedule interval {every!r} is under 1 ms")

    @property
    def description(self) -> str:
        return f"every {self.interval_ms / 1000:g}s"

    def __repr__(self) -> str:
        return f"IntervalSchedule({self.interval_ms / 1000!r})"

    def next_after(self, t_ms: int) -> int:
        return (t_ms // self.interval_ms + 1) * self.interval_ms

    def previous_at_or_before(self, t_ms: int) -> int | None:
        return (t_ms // self.interval_ms) * self.interval_ms


def parse_schedule(spec: str | float | dt.timedelta) -> Schedule:
    """A cron schedule from a string, or an interval schedule from seconds or a timedelta."""
    if isinstance(spec, str):
        return CronSchedule(spec)
    return IntervalSchedule(spec)


@dataclass(frozen=True)
class CronJob:
    """A registered periodic job: its job name, schedule and missed-tick policy."""

    name: str
    schedule: Schedule
    catch_up: bool  #: run the latest missed tick once (True) or skip it (False)
    grace: float  #: seconds after its time a tick still counts as on time
