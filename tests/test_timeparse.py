"""Tests for dialogs.timeparse: examples for every form, DST edges, bad input, properties."""

from __future__ import annotations

import time as _time
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dialogs import timeparse
from dialogs.timeparse import (
    format_local,
    local_to_utc,
    parse_clock_time,
    parse_when,
    resolve_timezone,
    utc_to_local,
)

LONDON = "Europe/London"
NEW_YORK = "America/New_York"
# Tuesday 24 Nov 2026, 12:00 UTC = 12:00 GMT = 07:00 EST.
TUE_NOON = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

ZONES = [
    "Europe/London",
    "America/New_York",
    "Australia/Lord_Howe",  # 30-minute DST shift
    "Asia/Kathmandu",  # +05:45
    "America/St_Johns",  # -03:30 with DST
    "Pacific/Chatham",  # +12:45 with DST
    "Pacific/Apia",  # skipped 30 Dec 2011 entirely
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "UTC",
]
ALL_ZONES = sorted(zoneinfo.available_timezones())
# Zones whose names are abbreviations people also use for a region (EST, CET, GMT): they resolve to the region.
NAMED_ZONES = [z for z in ALL_ZONES if z.lower() not in timeparse._ABBREVIATIONS]



@pytest.fixture(scope="module", autouse=True)
def _town_index() -> None:
    """The GeoNames town index, built once as the service does at start, so no example pays for it."""
    from dialogs import places

    places.warm().join()


utc_nows = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 12, 31, 23, 59),
    timezones=st.just(UTC),
)
zones = st.sampled_from(ZONES)


def when(text: str, now: datetime = TUE_NOON, tz: str = LONDON) -> datetime | None:
    return parse_when(text, now=now, tz=tz)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def to_local(dt: datetime | None, tz: str) -> datetime:
    """utc_to_local that must succeed."""
    assert dt is not None
    local = utc_to_local(dt, tz)
    assert local is not None
    return local


def to_utc(day: date, at: time, tz: str) -> datetime:
    """local_to_utc that must succeed."""
    result = local_to_utc(day, at, tz)
    assert result is not None
    return result


def in_gap(day: date, at: time, tz: str) -> bool:
    """Independent check: the wall time does not survive a round trip through UTC."""
    zone = zoneinfo.ZoneInfo(tz)
    local = datetime.combine(day, at).replace(tzinfo=zone)
    back = local.astimezone(UTC).astimezone(zone)
    return back.replace(tzinfo=None) != local.replace(tzinfo=None)


# --------------------------------------------------------------------------- resolve_timezone


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("europe/london", "Europe/London"),
        ("EUROPE/LONDON", "Europe/London"),
        ("America/New York", "America/New_York"),
        ("  Europe/Berlin.  ", "Europe/Berlin"),
        ("London", "Europe/London"),
        ("london!", "Europe/London"),
        ("new york", "America/New_York"),
        ("New_York", "America/New_York"),
        ("Sao Paulo", "America/Sao_Paulo"),
        ("São Paulo", "America/Sao_Paulo"),
        ("los angeles", "America/Los_Angeles"),
        ("Zürich", "Europe/Zurich"),
        ("st john's", "America/St_Johns"),
        ("Kathmandu", "Asia/Kathmandu"),
        ("lord howe", "Australia/Lord_Howe"),
        ("Buenos Aires", "America/Argentina/Buenos_Aires"),
        ("Istanbul", "Europe/Istanbul"),
        ("San Francisco", "America/Los_Angeles"),
        ("seattle", "America/Los_Angeles"),
        ("(Boston)", "America/New_York"),
        ("Washington", "America/New_York"),
        ("Miami", "America/New_York"),
        ("Manchester", "Europe/London"),
        ("edinburgh", "Europe/London"),
        ("Glasgow", "Europe/London"),
        ("Cardiff", "Europe/London"),
        ("Belfast", "Europe/London"),
        ("Munich", "Europe/Berlin"),
        ("hamburg", "Europe/Berlin"),
        ("Frankfurt", "Europe/Berlin"),
        ("Düsseldorf", "Europe/Berlin"),
        ("Mumbai", "Asia/Kolkata"),
        ("delhi", "Asia/Kolkata"),
        ("New Delhi", "Asia/Kolkata"),
        ("Bangalore", "Asia/Kolkata"),
        ("Beijing", "Asia/Shanghai"),
        ("Montréal", "America/Toronto"),
        ("utc", "UTC"),
        ("UTC", "UTC"),
        ("Europe/London", "Europe/London"),
        ("PST", "America/Los_Angeles"),  # an abbreviation: the region's real zone, with DST (tests/test_time_zones.py)
        ("cet", "Europe/Paris"),
    ],
)
def test_resolve_timezone_examples(text: str, expected: str) -> None:
    assert resolve_timezone(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "!!!",
        "x" * 10_000,
        "London" * 2000,
        "🙂",
        "London 🙂",
        "Lon\x00don",
        "\x07",
        "Europe/Atlantis",
        "Mars",
        "gmt",  # UK time or GMT all year: ambiguous, so the client is asked
        "Europe/",
        "Europe//London",
        "(Europe)",
        "123",
        "ロンドン",
    ],
)
def test_resolve_timezone_rejects(text: str) -> None:
    assert resolve_timezone(text) is None


def test_resolve_timezone_non_str() -> None:
    assert resolve_timezone(None) is None  # type: ignore[arg-type]
    assert resolve_timezone(42) is None  # type: ignore[arg-type]


def test_resolve_timezone_huge_input_is_fast() -> None:
    start = _time.perf_counter()
    for text in ("x" * 10_000, "🙂" * 10_000, "\x00" * 10_000, " " * 10_000):
        assert resolve_timezone(text) is None
        assert parse_clock_time(text) is None
        assert when(text) is None
    assert _time.perf_counter() - start < 0.5


def test_resolve_timezone_only_returns_available_zones() -> None:
    available = set(ALL_ZONES) | {"UTC"}
    words = ["London", "Seattle", "Belfast", "Mumbai", "utc", "z", "Sao Paulo", "Delhi"]
    for w in words:
        assert resolve_timezone(w) in available


def test_every_zone_resolves_to_itself_in_any_case() -> None:
    """Except the abbreviations (EST, MST, HST, CET, GMT...), which mean their region's real zone."""
    for zone in NAMED_ZONES:
        for variant in (zone, zone.lower(), zone.upper(), zone.swapcase()):
            assert resolve_timezone(variant) == zone, variant


@given(zone=st.sampled_from(NAMED_ZONES), data=st.data())
def test_property_zone_in_random_case(zone: str, data: st.DataObject) -> None:
    mask = data.draw(st.lists(st.booleans(), min_size=len(zone), max_size=len(zone)))
    variant = "".join(c.upper() if up else c.lower() for c, up in zip(zone, mask, strict=True))
    assert resolve_timezone(variant) == zone


@given(st.text(max_size=60))
def test_property_resolve_timezone_total(text: str) -> None:
    result = resolve_timezone(text)
    assert result is None or result in set(ALL_ZONES) | {"UTC"}


# --------------------------------------------------------------------------- parse_clock_time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("18:00", time(18, 0)),
        ("6pm", time(18, 0)),
        ("6 pm", time(18, 0)),
        ("6PM", time(18, 0)),
        ("6.30pm", time(18, 30)),
        ("6:30 p.m.", time(18, 30)),
        ("06:30", time(6, 30)),
        ("18h", time(18, 0)),
        ("18h30", time(18, 30)),
        ("noon", time(12, 0)),
        ("Midday", time(12, 0)),
        ("12 noon", time(12, 0)),
        ("midnight", time(0, 0)),
        ("7am", time(7, 0)),
        ("7 a.m.", time(7, 0)),
        ("19.15", time(19, 15)),
        ("12am", time(0, 0)),
        ("12pm", time(12, 0)),
        ("12:30am", time(0, 30)),
        ("0:00", time(0, 0)),
        ("23:59", time(23, 59)),
        ("10:00:30", time(10, 0, 30)),
        ("  9:05  ", time(9, 5)),
    ],
)
def test_parse_clock_time_examples(text: str, expected: time) -> None:
    assert parse_clock_time(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "25:00",
        "24:00",
        "25:99",
        "12:60",
        "13pm",
        "0am",
        "00:30am",
        "6",
        "18",
        "6:5",
        "6:",
        "18hpm",
        "6 pm pm",
        "noonish",
        "١٢:٠٠",  # non-ASCII digits
        "🙂",
        "x" * 10_000,
        "10:00z",
        "10:00+01:00",
    ],
)
def test_parse_clock_time_rejects(text: str) -> None:
    assert parse_clock_time(text) is None


def test_parse_clock_time_all_valid_round_trip_exhaustive() -> None:
    for h in range(24):
        for m in range(60):
            assert parse_clock_time(f"{h}:{m:02d}") == time(h, m)
            assert parse_clock_time(f"{h:02d}:{m:02d}") == time(h, m)


@given(h=st.integers(0, 23), m=st.integers(0, 59))
def test_property_clock_round_trip(h: int, m: int) -> None:
    assert parse_clock_time(f"{h}:{m:02d}") == time(h, m)
    assert parse_clock_time(f"{h}.{m:02d}") == time(h, m)
    twelve = h % 12 or 12
    suffix = "am" if h < 12 else "pm"
    assert parse_clock_time(f"{twelve}:{m:02d}{suffix}") == time(h, m)


@given(st.text(max_size=40))
def test_property_clock_never_raises(text: str) -> None:
    result = parse_clock_time(text)
    assert result is None or isinstance(result, time)


# --------------------------------------------------------------------------- parse_when: forms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # ISO-ish and named-month dates (London is on GMT in December: local == UTC)
        ("2026-12-01 10:00", utc(2026, 12, 1, 10, 0)),
        ("2026-12-01T10:00", utc(2026, 12, 1, 10, 0)),
        ("2026-12-01 at 10am", utc(2026, 12, 1, 10, 0)),
        ("1 dec 10am", utc(2026, 12, 1, 10, 0)),
        ("1 Dec. 10 am", utc(2026, 12, 1, 10, 0)),
        ("1st of December 10 a.m.", utc(2026, 12, 1, 10, 0)),
        ("dec 1 10:30", utc(2026, 12, 1, 10, 30)),
        ("Dec 1, 2026 @ 10:30", utc(2026, 12, 1, 10, 30)),
        ("1 december 2026 14:00", utc(2026, 12, 1, 14, 0)),
        ("  1   DECEMBER   2026   14:00  ", utc(2026, 12, 1, 14, 0)),
        ("Tue 1 Dec 10:00", utc(2026, 12, 1, 10, 0)),  # format_local output
        ("10am on 1 dec", utc(2026, 12, 1, 10, 0)),
        # date without a year: next occurrence still ahead
        ("24 nov 1pm", utc(2026, 11, 24, 13, 0)),
        ("24 nov 11am", utc(2027, 11, 24, 11, 0)),
        ("1 jan 9am", utc(2027, 1, 1, 9, 0)),
        ("29 feb 10am", utc(2028, 2, 29, 10, 0)),
        # weekdays (now is Tuesday 12:00)
        ("wed 9am", utc(2026, 11, 25, 9, 0)),
        ("wednesday 9am", utc(2026, 11, 25, 9, 0)),
        ("mon 9am", utc(2026, 11, 30, 9, 0)),
        ("Thurs 17:00", utc(2026, 11, 26, 17, 0)),
        ("on fri at 6.30pm", utc(2026, 11, 27, 18, 30)),
        ("sun noon", utc(2026, 11, 29, 12, 0)),
        # relative days
        ("today 3pm", utc(2026, 11, 24, 15, 0)),
        ("tonight 9pm", utc(2026, 11, 24, 21, 0)),
        ("tomorrow 9:30", utc(2026, 11, 25, 9, 30)),
        ("tomorrow at 9:30", utc(2026, 11, 25, 9, 30)),
        ("Tomorrow  At  9:30", utc(2026, 11, 25, 9, 30)),
        ("6 pm tomorrow", utc(2026, 11, 25, 18, 0)),
        ("tomorrow midnight", utc(2026, 11, 25, 0, 0)),
        ("in 3 days 10am", utc(2026, 11, 27, 10, 0)),
        ("in 3 days at 10am", utc(2026, 11, 27, 10, 0)),
        ("in a day 10am", utc(2026, 11, 25, 10, 0)),
        ("in 2 weeks 10am", utc(2026, 12, 8, 10, 0)),
        # elapsed time
        ("in 2 hours", utc(2026, 11, 24, 14, 0)),
        ("in an hour", utc(2026, 11, 24, 13, 0)),
        ("in 90 minutes", utc(2026, 11, 24, 13, 30)),
        ("in 1 hour 30 minutes", utc(2026, 11, 24, 13, 30)),
        # time alone
        ("1pm", utc(2026, 11, 24, 13, 0)),
        ("10am", utc(2026, 11, 25, 10, 0)),
        ("12:00", utc(2026, 11, 25, 12, 0)),  # exactly now is not in the future
    ],
)
def test_parse_when_examples(text: str, expected: datetime) -> None:
    assert when(text) == expected


def test_parse_when_returns_aware_utc() -> None:
    result = when("tomorrow 9:30", tz=NEW_YORK)
    assert result is not None
    assert result.utcoffset() == timedelta(0)
    assert result == utc(2026, 11, 25, 14, 30)  # 09:30 EST


def test_parse_when_uses_local_date_not_utc_date() -> None:
    now = utc(2026, 11, 24, 23, 30)  # already Wed 25 Nov 05:00 in Kolkata
    assert when("today 10am", now=now, tz="Asia/Kolkata") == utc(2026, 11, 25, 4, 30)
    assert when("tomorrow 10am", now=now, tz="Asia/Kolkata") == utc(2026, 11, 26, 4, 30)
    # ... and still Tue 24 Nov 18:30 in New York
    assert when("today 8pm", now=now, tz=NEW_YORK) == utc(2026, 11, 25, 1, 0)


def test_parse_when_accepts_non_utc_aware_now() -> None:
    now_ny = TUE_NOON.astimezone(zoneinfo.ZoneInfo(NEW_YORK))
    assert when("tomorrow 9:30", now=now_ny) == utc(2026, 11, 25, 9, 30)


def test_in_hours_truncates_to_minute() -> None:
    now = utc(2026, 11, 24, 12, 0, 45)
    assert when("in 2 hours", now=now) == utc(2026, 11, 24, 14, 0)
    assert when("in 1 minute", now=now) == utc(2026, 11, 24, 12, 1)


# --------------------------------------------------------------------------- weekday rule


def test_weekday_today_time_still_ahead_is_today() -> None:
    assert when("tue 1pm") == utc(2026, 11, 24, 13, 0)
    assert when("tuesday 12:01") == utc(2026, 11, 24, 12, 1)


def test_weekday_today_time_passed_is_next_week() -> None:
    assert when("tue 11am") == utc(2026, 12, 1, 11, 0)
    assert when("tues 12:00") == utc(2026, 12, 1, 12, 0)  # equal to now: not future


def test_next_weekday() -> None:
    # today is Tuesday: "next tue" is always +7 days, even if the time is still ahead
    assert when("next tue 1pm") == utc(2026, 12, 1, 13, 0)
    assert when("next tue 11am") == utc(2026, 12, 1, 11, 0)
    # another weekday: "next wed" is the same as "wed" (the first Wednesday after today)
    assert when("next wed 9am") == when("wed 9am") == utc(2026, 11, 25, 9, 0)
    assert when("next mon 9am") == utc(2026, 11, 30, 9, 0)
    assert when("this tue 11am") == when("tue 11am")


# --------------------------------------------------------------------------- DST


def test_london_spring_forward_gap() -> None:
    # 29 Mar 2026: 01:00 GMT -> 02:00 BST; 01:30 does not exist and moves forward by 1h
    now = utc(2026, 3, 28, 12, 0)
    got = when("2026-03-29 01:30", now=now)
    assert got == utc(2026, 3, 29, 1, 30)
    assert to_local(got, LONDON).time() == time(2, 30)
    assert to_utc(date(2026, 3, 29), time(1, 30), LONDON) == got
    # a normal time on the same day is BST
    assert when("tomorrow 10:00", now=now) == utc(2026, 3, 29, 9, 0)
    assert when("sun 10:00", now=now) == utc(2026, 3, 29, 9, 0)


def test_london_fall_back_fold_takes_first_occurrence() -> None:
    # 25 Oct 2026: 02:00 BST -> 01:00 GMT; 01:30 happens twice, take the BST one
    now = utc(2026, 10, 24, 12, 0)
    got = when("2026-10-25 01:30", now=now)
    assert got == utc(2026, 10, 25, 0, 30)
    assert to_utc(date(2026, 10, 25), time(1, 30), LONDON) == got
    assert when("tomorrow 10:00", now=now) == utc(2026, 10, 25, 10, 0)  # GMT again
    # second occurrence seen from UTC has fold=1
    second = to_local(utc(2026, 10, 25, 1, 30), LONDON)
    assert second is not None and second.time() == time(1, 30) and second.fold == 1


def test_london_fold_first_occurrence_passed_rolls_to_next_day() -> None:
    # between the two 01:30s: the first has passed, so "1:30" means tomorrow (fold=0 rule)
    now = utc(2026, 10, 25, 1, 0)  # 01:00 GMT, after 01:30 BST (= 00:30 UTC)
    assert when("1:30", now=now) == utc(2026, 10, 26, 1, 30)


def test_new_york_spring_forward_gap() -> None:
    # 8 Mar 2026: 02:00 EST -> 03:00 EDT; 02:30 moves forward to 03:30 EDT
    now = utc(2026, 3, 7, 17, 0)
    got = when("2026-03-08 02:30", now=now, tz=NEW_YORK)
    assert got == utc(2026, 3, 8, 7, 30)
    assert to_local(got, NEW_YORK).time() == time(3, 30)
    assert when("tomorrow 2:30am", now=now, tz=NEW_YORK) == got
    assert when("tomorrow 9am", now=now, tz=NEW_YORK) == utc(2026, 3, 8, 13, 0)


def test_new_york_fall_back_fold_takes_first_occurrence() -> None:
    # 1 Nov 2026: 02:00 EDT -> 01:00 EST; 01:30 EDT (05:30 UTC) comes first
    now = utc(2026, 10, 31, 17, 0)
    got = when("2026-11-01 01:30", now=now, tz=NEW_YORK)
    assert got == utc(2026, 11, 1, 5, 30)
    assert when("sun 1:30am", now=now, tz=NEW_YORK) == got
    assert when("tomorrow 9am", now=now, tz=NEW_YORK) == utc(2026, 11, 1, 14, 0)  # EST


def test_lord_howe_half_hour_gap() -> None:
    # 4 Oct 2026: 02:00 +10:30 -> 02:30 +11; 02:15 moves forward by 30 minutes
    got = to_utc(date(2026, 10, 4), time(2, 15), "Australia/Lord_Howe")
    assert got is not None
    assert to_local(got, "Australia/Lord_Howe").time() == time(2, 45)


def test_apia_skipped_day_moves_forward_a_whole_day() -> None:
    # Samoa skipped Fri 30 Dec 2011; 10:00 that day resolves to 10:00 on 31 Dec
    got = to_utc(date(2011, 12, 30), time(10), "Pacific/Apia")
    local = to_local(got, "Pacific/Apia")
    assert (local.date(), local.time()) == (date(2011, 12, 31), time(10))


# --------------------------------------------------------------------------- helpers


def test_local_to_utc_and_back() -> None:
    assert to_utc(date(2026, 12, 1), time(10), LONDON) == utc(2026, 12, 1, 10)
    assert to_utc(date(2026, 7, 1), time(10), LONDON) == utc(2026, 7, 1, 9)
    assert to_utc(date(2026, 7, 1), time(10), "Asia/Kathmandu") == utc(2026, 7, 1, 4, 15)
    # tzinfo and fold on the time are ignored
    tricky = time(1, 30, tzinfo=timezone(timedelta(hours=5)), fold=1)
    assert to_utc(date(2026, 10, 25), tricky, LONDON) == utc(2026, 10, 25, 0, 30)
    local = to_local(utc(2026, 7, 1, 9), LONDON)
    assert local is not None
    assert local.replace(tzinfo=None) == datetime(2026, 7, 1, 10)
    assert local.utcoffset() == timedelta(hours=1)


def test_helpers_bad_input_return_none() -> None:
    assert local_to_utc(date(2026, 1, 1), time(10), "Nowhere/Else") is None
    assert local_to_utc(date(2026, 1, 1), time(10), "europe/london") is None  # not exact
    assert local_to_utc("2026-01-01", time(10), LONDON) is None  # type: ignore[arg-type]
    assert local_to_utc(date.max, time(23, 59), NEW_YORK) is None  # past year 9999 in UTC
    assert local_to_utc(date.min, time(0, 0), "Asia/Tokyo") is None  # before year 1 in UTC
    assert utc_to_local(datetime(2026, 1, 1), LONDON) is None  # naive
    assert utc_to_local(utc(2026, 1, 1), "Nowhere/Else") is None
    assert utc_to_local("soon", LONDON) is None  # type: ignore[arg-type]
    assert format_local(datetime(2026, 1, 1), LONDON) is None
    assert format_local(utc(2026, 1, 1), "") is None


def test_format_local() -> None:
    assert format_local(utc(2026, 12, 1, 10), LONDON) == "Tue 1 Dec 10:00 (Europe/London)"
    assert format_local(utc(2026, 12, 1, 10), NEW_YORK) == "Tue 1 Dec 05:00 (America/New_York)"
    assert format_local(utc(2026, 7, 5, 8, 5), LONDON) == "Sun 5 Jul 09:05 (Europe/London)"
    assert format_local(utc(2026, 12, 1, 10), "UTC") == "Tue 1 Dec 10:00 (UTC)"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "x" * 10_000,
        "🙂",
        "tue 🙂 10am",
        "tue\x00 10am",
        "32 dec 10am",
        "dec 32 10am",
        "31 feb 10am",
        "2026-02-30 10:00",
        "2026-13-01 10:00",
        "25:99",
        "tomorrow 25:99",
        "tue 13pm",
        "tue 10",  # bare number is not a time
        # numeric day/month: d/m vs m/d is ambiguous, rejected
        "1/12 10am",
        "12/1 10am",
        "01-12 10am",
        "1.12.2026 10am",
        # a date without a time
        "1 dec",
        "1 december 2026",
        "2026-12-01",
        "tomorrow",
        "tue",
        "next tue",
        "in 3 days",
        # not in the grammar / contradictory
        "yesterday 10am",
        "next week 10am",
        "today tomorrow 10am",
        "10am 11am",
        "in 2 hours 10am",
        "in 30 minutes 10 minutes",
        "in -2 hours",
        "in 0 hours",
        "2026-12-01 10:00z",
        "2026-12-01 10:00 +01:00",
        "1 dec 26 10am",  # two-digit year
        "Mon 1 Dec 2026 10:00",  # 1 Dec 2026 is a Tuesday
        "Mon 1 Dec 10:00",
        "soon",
        "whenever suits",
    ],
)
def test_parse_when_rejects(text: str) -> None:
    assert when(text) is None


@pytest.mark.parametrize(
    "text",
    ["2020-01-01 10:00", "1 dec 2025 10:00", "today 11am", "today 12:00", "24 nov 2026 11am"],
)
def test_parse_when_past_is_none(text: str) -> None:
    assert when(text) is None


def test_parse_when_bad_arguments() -> None:
    assert parse_when("tomorrow 10am", now=datetime(2026, 11, 24, 12), tz=LONDON) is None
    assert parse_when("tomorrow 10am", now=TUE_NOON, tz="Europe/Atlantis") is None
    assert parse_when("tomorrow 10am", now=TUE_NOON, tz="london") is None
    assert parse_when(None, now=TUE_NOON, tz=LONDON) is None  # type: ignore[arg-type]
    assert parse_when("tomorrow 10am", now="now", tz=LONDON) is None  # type: ignore[arg-type]
    assert parse_when("tomorrow 10am", now=TUE_NOON, tz=None) is None  # type: ignore[arg-type]


def test_parse_when_overflow_is_none() -> None:
    end = datetime(9999, 12, 31, 12, tzinfo=UTC)
    assert parse_when("tomorrow 10am", now=end, tz=LONDON) is None
    assert parse_when("in 9999 weeks 10am", now=utc(9990, 1, 1), tz=LONDON) is None
    assert parse_when("31 dec 10am", now=end, tz=LONDON) is None
    assert parse_when("in 9999 hours", now=end, tz=LONDON) is None


# --------------------------------------------------------------------------- properties


@settings(max_examples=300)
@given(now=utc_nows, tz=zones)
def test_property_tomorrow_ten(now: datetime, tz: str) -> None:
    got = parse_when("tomorrow 10:00", now=now, tz=tz)
    assert got is not None
    assert got > now
    assert got.utcoffset() == timedelta(0)
    expected_day = to_local(now, tz).date() + timedelta(days=1)
    local = to_local(got, tz)
    if in_gap(expected_day, time(10), tz):
        assert local.replace(tzinfo=None) > datetime.combine(expected_day, time(10))
    else:
        assert local.date() == expected_day
        assert local.time() == time(10)


@settings(max_examples=300)
@given(now=utc_nows, tz=zones, h=st.integers(0, 23), m=st.integers(0, 59))
def test_property_time_alone_is_next_occurrence(now: datetime, tz: str, h: int, m: int) -> None:
    got = parse_when(f"{h}:{m:02d}", now=now, tz=tz)
    assert got is not None
    assert now < got <= now + timedelta(days=2)
    today = to_local(now, tz).date()
    assert got in (to_utc(today, time(h, m), tz), to_utc(today + timedelta(days=1), time(h, m), tz))


@settings(max_examples=300)
@given(now=utc_nows, tz=zones, wd=st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]))
def test_property_weekday_is_next_future_occurrence(now: datetime, tz: str, wd: str) -> None:
    got = parse_when(f"{wd} 9:15", now=now, tz=tz)
    assert got is not None
    assert now < got
    local = to_local(got, tz)
    today = to_local(now, tz).date()
    target = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"].index(wd)
    # the first date on that weekday whose 9:15 is still ahead
    day = today + timedelta(days=(target - today.weekday()) % 7)
    if to_utc(day, time(9, 15), tz) <= now:
        day += timedelta(days=7)
    assert got == to_utc(day, time(9, 15), tz)
    assert local.weekday() == target or in_gap(day, time(9, 15), tz)


@settings(max_examples=300)
@given(now=utc_nows, tz=zones, minutes=st.integers(1, 300 * 24 * 60))
def test_property_format_local_round_trips(now: datetime, tz: str, minutes: int) -> None:
    target = (now + timedelta(minutes=minutes)).replace(second=0, microsecond=0)
    assume(target > now)
    assume(to_local(target, tz).fold == 0)  # format_local drops fold; 2nd occurrence
    text = format_local(target, tz)
    assert text is not None and text.endswith(f"({tz})")
    assert parse_when(text.rsplit(" (", 1)[0], now=now, tz=tz) == target


@given(text=st.text(), now=utc_nows, tz=zones)
def test_property_parse_when_never_raises(text: str, now: datetime, tz: str) -> None:
    result = parse_when(text, now=now, tz=tz)
    assert result is None or result > now


VOCAB = [
    "in",
    "next",
    "this",
    "at",
    "on",
    "@",
    ",",
    "today",
    "tomorrow",
    "tonight",
    "tue",
    "sunday",
    "1",
    "29",
    "31",
    "32",
    "1st",
    "of",
    "dec",
    "feb",
    "2026",
    "2099",
    "10am",
    "6",
    "pm",
    "a.m.",
    "noon",
    "midnight",
    "18:00",
    "25:00",
    "19.15",
    "18h",
    "3",
    "a",
    "days",
    "weeks",
    "hours",
    "minutes",
    "and",
    "2026-03-29",
    "2026-11-01T01:30",
    "1/12",
    "-",
    "9999",
]


@settings(max_examples=500)
@given(words=st.lists(st.sampled_from(VOCAB), max_size=6), now=utc_nows, tz=zones)
def test_property_grammar_soup_never_raises_and_is_future(words: list[str], now: datetime, tz: str) -> None:
    result = parse_when(" ".join(words), now=now, tz=tz)
    assert result is None or (result > now and result.utcoffset() == timedelta(0))
