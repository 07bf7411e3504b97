"""Schedule math (core/schedule.py): hand-computed ticks, a brute-force reference, bad specs."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workpool.core.schedule import CronSchedule, IntervalSchedule, parse_schedule
from workpool.errors import ConfigurationError

EPOCH = dt.datetime(1970, 1, 1)


def ms(text: str) -> int:
    """Epoch milliseconds of an ISO timestamp read as UTC."""
    return (dt.datetime.fromisoformat(text) - EPOCH) // dt.timedelta(milliseconds=1)


def iso(t_ms: int | None) -> str | None:
    """The ISO form of epoch milliseconds, so failures read as dates."""
    if t_ms is None:
        return None
    return (EPOCH + dt.timedelta(milliseconds=t_ms)).isoformat()


def ticks(spec: str, start: str, count: int) -> list[str | None]:
    """The next `count` ticks of `spec` after `start`."""
    schedule = parse_schedule(spec)
    out: list[str | None] = []
    t = ms(start)
    for _ in range(count):
        t = schedule.next_after(t)
        out.append(iso(t))
    return out


def test_every_five_minutes_ticks_at_the_next_multiple_of_five_at_second_zero() -> None:
    assert ticks("*/5 * * * *", "2024-05-10T12:03:10", 2) == [
        "2024-05-10T12:05:00",
        "2024-05-10T12:10:00",
    ]


def test_next_after_is_strictly_after_a_tick_and_previous_includes_it() -> None:
    s = parse_schedule("*/5 * * * *")
    assert iso(s.next_after(ms("2024-05-10T12:05:00"))) == "2024-05-10T12:10:00"
    assert iso(s.previous_at_or_before(ms("2024-05-10T12:05:00"))) == "2024-05-10T12:05:00"
    assert iso(s.previous_at_or_before(ms("2024-05-10T12:04:59.999"))) == "2024-05-10T12:00:00"


def test_weekdays_at_nine_skip_from_friday_morning_to_monday() -> None:
    assert ticks("0 9 * * MON-FRI", "2024-05-10T10:00", 2) == [
        "2024-05-13T09:00:00",
        "2024-05-14T09:00:00",
    ]
    s = parse_schedule("0 9 * * mon-fri")
    assert iso(s.previous_at_or_before(ms("2024-05-13T08:59"))) == "2024-05-10T09:00:00"


def test_first_of_the_month_crosses_month_and_year_ends() -> None:
    assert ticks("0 0 1 * *", "2024-01-31T23:59:59", 1) == ["2024-02-01T00:00:00"]
    assert ticks("0 0 1 * *", "2024-02-01T00:00", 1) == ["2024-03-01T00:00:00"]
    assert ticks("0 0 1 * *", "2024-12-15T08:00", 2) == [
        "2025-01-01T00:00:00",
        "2025-02-01T00:00:00",
    ]
    s = parse_schedule("0 0 1 * *")
    assert iso(s.previous_at_or_before(ms("2025-01-01T00:00:00"))) == "2025-01-01T00:00:00"
    assert iso(s.previous_at_or_before(ms("2024-12-31T23:59"))) == "2024-12-01T00:00:00"


def test_the_thirty_first_skips_months_without_one() -> None:
    assert ticks("0 0 31 * *", "2024-01-31T00:00", 3) == [
        "2024-03-31T00:00:00",
        "2024-05-31T00:00:00",
        "2024-07-31T00:00:00",
    ]


def test_february_29_waits_for_the_next_leap_year_and_skips_2100() -> None:
    assert ticks("0 0 29 2 *", "2024-03-01T00:00", 2) == [
        "2028-02-29T00:00:00",
        "2032-02-29T00:00:00",
    ]
    assert ticks("0 0 29 2 *", "2096-03-01T00:00", 1) == ["2104-02-29T00:00:00"]
    s = parse_schedule("0 0 29 2 *")
    assert iso(s.previous_at_or_before(ms("2028-02-28T23:59"))) == "2024-02-29T00:00:00"


def test_a_rare_and_rule_is_found_decades_ahead_without_looping_forever() -> None:
    # dow '*/7' starts with '*', so Vixie ANDs it: Feb 29 that is a Sunday (2088, then 2128).
    assert ticks("0 0 29 2 */7", "2088-03-01T00:00", 1) == ["2128-02-29T00:00:00"]
    s = parse_schedule("0 0 29 2 */7")
    assert iso(s.previous_at_or_before(ms("2128-02-28T00:00"))) == "2088-02-29T00:00:00"


def test_restricted_day_of_month_and_day_of_week_match_when_either_matches() -> None:
    # October 2024: Fridays 4, 11, 18, 25 and the 13th (a Sunday); Nov 1 is a Friday.
    assert ticks("0 0 13 * FRI", "2024-10-01T00:00", 6) == [
        "2024-10-04T00:00:00",
        "2024-10-11T00:00:00",
        "2024-10-13T00:00:00",
        "2024-10-18T00:00:00",
        "2024-10-25T00:00:00",
        "2024-11-01T00:00:00",
    ]


def test_hourly_ticks_on_the_hour() -> None:
    assert ticks("@hourly", "2024-05-10T12:00:00", 2) == [
        "2024-05-10T13:00:00",
        "2024-05-10T14:00:00",
    ]
    assert ticks("@HOURLY", "2024-05-10T12:59:59.999", 1) == ["2024-05-10T13:00:00"]


def test_macros_expand_to_their_cron_lines() -> None:
    start = "2024-05-10T10:00"
    assert ticks("@daily", start, 1) == ticks("@midnight", start, 1) == ["2024-05-11T00:00:00"]
    assert ticks("@weekly", start, 1) == ["2024-05-12T00:00:00"]
    assert ticks("@monthly", start, 1) == ["2024-06-01T00:00:00"]
    assert ticks("@yearly", start, 1) == ticks("@annually", start, 1) == ["2025-01-01T00:00:00"]


def test_seven_zero_and_sun_all_mean_sunday() -> None:
    expected = ["2024-05-12T00:00:00", "2024-05-19T00:00:00"]
    for spec in ("0 0 * * 7", "0 0 * * 0", "0 0 * * SUN", "0 0 * * sun", "@weekly"):
        assert ticks(spec, "2024-05-10T10:00", 2) == expected, spec
    # A range may end at 7: Saturday 6 through Sunday 7.
    assert ticks("0 0 * * 6-7", "2024-05-10T10:00", 3) == [
        "2024-05-11T00:00:00",
        "2024-05-12T00:00:00",
        "2024-05-18T00:00:00",
    ]


def test_names_ranges_steps_and_lists_combine() -> None:
    # Minutes 10,40 of hours 8 and 10 (8-11/2), on the 1st and 15th of JAN and JUL.
    assert ticks("10,40 8-11/2 1,15 jan,Jul *", "2024-01-15T10:41", 3) == [
        "2024-07-01T08:10:00",
        "2024-07-01T08:40:00",
        "2024-07-01T10:10:00",
    ]
    assert ticks("50/5 * * * *", "2024-01-01T00:51", 2) == [
        "2024-01-01T00:55:00",
        "2024-01-01T01:50:00",
    ]


def test_an_interval_ticks_at_multiples_of_itself_since_the_epoch() -> None:
    s = parse_schedule(30)
    assert s.next_after(0) == 30_000
    assert s.next_after(29_999) == 30_000
    assert s.next_after(30_000) == 60_000
    assert s.previous_at_or_before(30_000) == 30_000
    assert s.previous_at_or_before(59_999) == 30_000
    assert s.next_after(-1) == 0
    m = parse_schedule(dt.timedelta(minutes=1))
    assert iso(m.next_after(ms("2024-05-10T12:03:10"))) == "2024-05-10T12:04:00"
    assert parse_schedule(0.25).next_after(1) == 250
    assert m.description == "every 60s"


def test_descriptions_name_the_spec() -> None:
    assert "*/5 * * * *" in parse_schedule("*/5 * * * *").description
    assert isinstance(parse_schedule("@daily"), CronSchedule)
    assert isinstance(parse_schedule(1.5), IntervalSchedule)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("61 * * * *", "minute field '61'.*outside 0-59"),
        ("* 24 * * *", "hour field '24'"),
        ("* * 0 * *", "day-of-month field '0'"),
        ("* * * 13 *", "month field '13'.*JAN-DEC"),
        ("* * * * 8", "day-of-week field '8'.*SUN-SAT"),
        ("* * *", "3 fields; expected 5"),
        ("* * * * * *", "6 fields; expected 5"),
        ("", "0 fields; expected 5"),
        ("   ", "0 fields; expected 5"),
        ("*/0 * * * *", "minute field '\\*/0'.*step '0'"),
        ("*/x * * * *", "step 'x'"),
        ("5-1 * * * *", "minute field '5-1'.*backwards"),
        ("* * * * MON-SUN", "day-of-week field 'MON-SUN'.*backwards"),
        ("1,,2 * * * *", "'' is not a number"),
        ("* * * FOO *", "'FOO' is not a number"),
        ("-5 * * * *", "'' is not a number"),
        ("0 0 30 2 *", "never matches"),
        ("0 0 31 4,6,9,11 *", "never matches"),
        ("@reboot", "macro '@reboot' is unknown"),
    ],
)
def test_a_bad_cron_spec_says_which_field_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_schedule(spec)


@pytest.mark.parametrize(
    "every", [0, -1, 0.0, -0.5, dt.timedelta(0), dt.timedelta(seconds=-3), math.nan, math.inf]
)
def test_an_interval_that_is_not_positive_and_finite_is_refused(
    every: float | dt.timedelta,
) -> None:
    with pytest.raises(ConfigurationError, match="interval"):
        parse_schedule(every)


def test_a_restricted_day_of_week_rescues_an_impossible_day_of_month() -> None:
    # Both restricted: the OR rule makes Feb 30 irrelevant, Mondays in February still match.
    assert ticks("0 0 30 2 MON", "2024-01-01T00:00", 1) == ["2024-02-05T00:00:00"]


# --- brute-force reference ---------------------------------------------------------------

FIELDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MAX_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
SEARCH_DAYS = 366 * 6


@st.composite
def token(draw: st.DrawFn, index: int, value: int) -> str:
    """A value as a number, or sometimes as a month or weekday name in random case."""
    names = {3: MONTHS, 4: DAYS}.get(index)
    if names is None or not draw(st.booleans()):
        return str(value)
    offset = 1 if index == 3 else 0
    if value - offset >= len(names):
        return str(value)
    name = names[value - offset]
    return draw(st.sampled_from([name, name.upper(), name.title()]))


@st.composite
def part(draw: st.DrawFn, index: int) -> tuple[str, set[int]]:
    """One comma-separated part of a field and the values it selects."""
    lo, hi = FIELDS[index]
    kind = draw(st.sampled_from(["*", "*/n", "a", "a-b", "a-b/n", "a/n"]))
    a = draw(st.integers(lo, hi))
    b = draw(st.integers(a, hi))
    n = draw(st.integers(1, hi - lo + 1))
    if kind == "*":
        return "*", set(range(lo, hi + 1))
    if kind == "*/n":
        return f"*/{n}", set(range(lo, hi + 1, n))
    if kind == "a":
        return draw(token(index, a)), {a}
    if kind == "a-b":
        return f"{draw(token(index, a))}-{draw(token(index, b))}", set(range(a, b + 1))
    if kind == "a-b/n":
        return f"{draw(token(index, a))}-{draw(token(index, b))}/{n}", set(range(a, b + 1, n))
    return f"{draw(token(index, a))}/{n}", set(range(a, hi + 1, n))


@st.composite
def cron_specs(draw: st.DrawFn) -> tuple[str, list[set[int]], bool]:
    """A random 5-field spec, the value sets it means, and whether days use the OR rule."""
    texts: list[str] = []
    sets: list[set[int]] = []
    for index in range(5):
        parts = draw(st.lists(part(index), min_size=1, max_size=3))
        texts.append(",".join(p[0] for p in parts))
        values = set().union(*(p[1] for p in parts))
        sets.append({v % 7 for v in values} if index == 4 else values)
    either = not texts[2].startswith("*") and not texts[4].startswith("*")
    return " ".join(texts), sets, either


def day_matches(day: dt.date, sets: list[set[int]], either: bool) -> bool:
    """Whether a calendar day can hold ticks, by the plain definition."""
    dom_ok = day.day in sets[2]
    dow_ok = day.isoweekday() % 7 in sets[4]
    day_ok = (dom_ok or dow_ok) if either else (dom_ok and dow_ok)
    return day.month in sets[3] and day_ok


def minute_ticks(day: dt.date, sets: list[set[int]]) -> list[dt.datetime]:
    """Every tick of a matching day, found minute by minute."""
    start = dt.datetime.combine(day, dt.time())
    minutes = (start + dt.timedelta(minutes=i) for i in range(1440))
    return [m for m in minutes if m.hour in sets[1] and m.minute in sets[0]]


def reference_next(sets: list[set[int]], either: bool, t_ms: int) -> int | None:
    """First tick after t_ms by walking days then minutes (None beyond SEARCH_DAYS)."""
    start = EPOCH + dt.timedelta(milliseconds=t_ms)
    for i in range(SEARCH_DAYS):
        day = start.date() + dt.timedelta(days=i)
        if day_matches(day, sets, either):
            later = [m for m in minute_ticks(day, sets) if m > start]
            if later:
                return (later[0] - EPOCH) // dt.timedelta(milliseconds=1)
    return None


def reference_previous(sets: list[set[int]], either: bool, t_ms: int) -> int | None:
    """Last tick at or before t_ms by walking days then minutes backwards."""
    start = EPOCH + dt.timedelta(milliseconds=t_ms)
    for i in range(SEARCH_DAYS):
        day = start.date() - dt.timedelta(days=i)
        if day_matches(day, sets, either):
            earlier = [m for m in minute_ticks(day, sets) if m <= start]
            if earlier:
                return (earlier[-1] - EPOCH) // dt.timedelta(milliseconds=1)
    return None


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=cron_specs(),
    t_ms=st.integers(ms("2018-01-01T00:00"), ms("2032-12-31T23:59:59.999")),
    on_minute=st.booleans(),
)
def test_next_and_previous_agree_with_a_brute_force_reference(
    spec: tuple[str, list[set[int]], bool], t_ms: int, on_minute: bool
) -> None:
    text, sets, either = spec
    if on_minute:
        t_ms -= t_ms % 60_000
    possible = either or any(d <= MAX_DAYS[m] for m in sets[3] for d in sets[2])
    if not possible:
        with pytest.raises(ConfigurationError, match="never matches"):
            parse_schedule(text)
        return
    schedule = parse_schedule(text)
    got_next, got_prev = schedule.next_after(t_ms), schedule.previous_at_or_before(t_ms)
    horizon = SEARCH_DAYS * 86_400_000 - 86_400_000
    want_next = reference_next(sets, either, t_ms)
    if want_next is None:
        assert got_next > t_ms + horizon, text
    else:
        assert iso(got_next) == iso(want_next), text
    want_prev = reference_previous(sets, either, t_ms)
    if want_prev is None:
        assert got_prev is None or got_prev < t_ms - horizon, text
    else:
        assert iso(got_prev) == iso(want_prev), text
