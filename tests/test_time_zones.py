"""Choosing a time zone and a reminder time: abbreviations keep DST, towns from GeoNames, ambiguity asks."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlmodel import select
from typer.testing import CliRunner

from bot.cli import app as cli
from bot.wiring import Companion
from dialogs import places
from dialogs.nudges import in_quiet, nearest_allowed
from dialogs.timeparse import resolve_timezone, timezone_choices
from storage import Client, Occasion
from tests.support import Chat, add_therapist, invite_code

JANUARY, JULY = datetime(2026, 1, 15, 12, tzinfo=UTC), datetime(2026, 7, 15, 12, tzinfo=UTC)


@pytest.fixture(scope="module", autouse=True)
def _town_index() -> None:
    """As the service does at start (bot.wiring): the index is built once, before the first lookup."""
    places.warm().join()


def _joining(companion: Companion, therapist_zone: str = "Europe/London") -> tuple[Chat, Chat]:
    add_therapist(companion, "Dana", timezone=therapist_zone)
    dana = Chat(companion, "therapist", "Dana")
    sam = Chat(companion, "client", "sam")
    sam.send(f"/start {invite_code(dana.send('/invite Sam'))}")
    sam.send("yes")
    return dana, sam


def _zone(companion: Companion) -> str | None:
    with companion.db.unit_of_work() as session:
        return session.exec(select(Client)).one().timezone


@pytest.mark.parametrize(
    ("typed", "zone"),
    [
        ("EST", "America/New_York"),
        ("edt", "America/New_York"),
        ("Eastern", "America/New_York"),
        ("PST", "America/Los_Angeles"),
        ("MST", "America/Denver"),
        ("HST", "Pacific/Honolulu"),
        ("CET", "Europe/Paris"),
        ("BST", "Europe/London"),
        ("AEST", "Australia/Sydney"),
    ],
)
def test_an_abbreviation_means_the_regions_real_zone_with_its_summer_time(typed: str, zone: str) -> None:
    """"EST" used to resolve to IANA's fixed -05:00: a New Yorker's reminders came an hour late all summer."""
    assert resolve_timezone(typed) == zone
    if zone not in ("Pacific/Honolulu",):  # Hawaii keeps one offset all year, as its real zone does
        tz = ZoneInfo(zone)
        assert JANUARY.astimezone(tz).utcoffset() != JULY.astimezone(tz).utcoffset()


def test_est_at_onboarding_gives_new_york_and_says_the_time_there(sqlite_companion: Companion) -> None:
    _, sam = _joining(sqlite_companion)
    reply = sam.send("EST")
    assert _zone(sqlite_companion) == "America/New_York"
    # Confirmed back with the local time now (Monday 09:00 UTC is 04:00 in New York), to catch a wrong guess.
    assert "America/New_York, where it's Mon 23 Nov 04:00 (America/New_York) now" in reply


@pytest.mark.parametrize(("typed", "zone"), [("Nottingham", "Europe/London"), ("München", "Europe/Berlin")])
def test_towns_missing_from_the_hand_table_come_from_geonames(
    sqlite_companion: Companion, typed: str, zone: str
) -> None:
    _, sam = _joining(sqlite_companion)
    assert "I couldn't find" not in sam.send(typed)
    assert _zone(sqlite_companion) == zone


def test_an_ambiguous_town_asks_which_and_a_number_or_a_tap_answers(sqlite_companion: Companion) -> None:
    _, sam = _joining(sqlite_companion)
    asked = sam.send("Portland")
    assert "There is more than one Portland" in asked
    assert "Portland, Oregon, United States" in asked and "Portland, Maine, United States" in asked
    assert _zone(sqlite_companion) is None  # nothing guessed
    assert "America/New_York" in sam.send("2")  # Maine, the second offered
    assert _zone(sqlite_companion) == "America/New_York"


def test_a_town_with_its_region_needs_no_question() -> None:
    assert resolve_timezone("Portland, Maine") == "America/New_York"
    assert resolve_timezone("Portland, OR") == "America/Los_Angeles"
    assert [c.zone for c in timezone_choices("York")] == ["Europe/London", "America/New_York"]


def test_the_therapists_country_settles_an_ambiguous_town() -> None:
    assert resolve_timezone("York", country="GB") == "Europe/London"
    assert resolve_timezone("York", country="US") == "America/New_York"
    assert resolve_timezone("Portland", country="US") is None  # both are in the US: still ask


def test_timezone_later_asks_too_and_the_offered_choice_is_a_command(sqlite_companion: Companion) -> None:
    _, sam = _joining(sqlite_companion)
    sam.send("London")
    sam.send("18:00")
    asked = sam.send("/timezone Portland")
    assert "There is more than one Portland" in asked
    with sqlite_companion.db.unit_of_work() as session:
        from dialogs.messages import Outbound
        from storage import OutboxMessage

        last = session.exec(select(OutboxMessage).order_by(OutboxMessage.id.desc())).first()  # type: ignore[union-attr]
        assert last is not None
        values = [o.value for o in Outbound.from_payload(last.payload).options]
    assert values == ["/timezone America/Los_Angeles", "/timezone America/New_York"]
    assert "where it's Mon 23 Nov 01:00 (America/Los_Angeles) now" in sam.send(values[0])
    assert _zone(sqlite_companion) == "America/Los_Angeles"


def test_the_cli_names_the_readings_of_an_ambiguous_zone(tmp_path: object) -> None:
    result = CliRunner().invoke(cli, ["therapist", "add", "Dana", "--timezone", "Portland"])
    assert result.exit_code == 2
    assert "America/Los_Angeles (Portland, Oregon, United States)" in result.output


# --------------------------------------------------------------------------- quiet hours (item 11)


def test_a_reminder_time_in_quiet_hours_is_said_at_once_with_the_nearest_allowed_time(
    sqlite_companion: Companion,
) -> None:
    """23:00 used to be accepted silently ("I'll remind you around 23:00"), then heard at 08:00 the next day."""
    _, sam = _joining(sqlite_companion)
    sam.send("London")
    reply = sam.send("23:00")
    assert "23:00 is inside your quiet hours (21:30–08:00)" in reply and "wait until 08:00" in reply
    assert "Would 21:00 suit you instead?" in reply
    with sqlite_companion.db.unit_of_work() as session:
        assert session.exec(select(Client)).one().nudge_time is None  # not taken yet
    done = sam.send("21:00")
    assert "I'll remind you around 21:00" in done


def test_keeping_a_quiet_time_says_when_reminders_really_come(sqlite_companion: Companion) -> None:
    dana, sam = _joining(sqlite_companion)
    sam.send("London")
    sam.send("11pm")
    done = sam.send("23:00")  # the same time again: kept, and said honestly
    assert "around 23:00, which is in your quiet hours, so at 08:00" in done
    dana.send("/homework Sam\ntitle: Walk\nwhat: walk 10 minutes\nrationale: activity lifts mood")
    dana.send("save")
    with sqlite_companion.db.unit_of_work() as session:
        due = [o.due_at for o in session.exec(select(Occasion)).all()]
    assert due and all(d.astimezone(ZoneInfo("Europe/London")).time() == time(8, 0) for d in due)


@pytest.mark.parametrize(
    ("at", "start", "end", "nearest"),
    [
        (time(23, 0), time(21, 30), time(8, 0), time(21, 0)),
        (time(6, 0), time(21, 30), time(8, 0), time(8, 0)),
        (time(13, 10), time(13, 0), time(14, 0), time(12, 30)),
        (time(13, 50), time(13, 0), time(14, 0), time(14, 0)),
    ],
)
def test_nearest_allowed_examples(at: time, start: time, end: time, nearest: time) -> None:
    assert nearest_allowed(at, start, end) == nearest


_times = st.builds(time, st.integers(0, 23), st.integers(0, 59))


@given(at=_times, start=_times, end=_times)
def test_property_the_nearest_allowed_time_is_allowed(at: time, start: time, end: time) -> None:
    if start == end or not in_quiet(at, start, end):
        return
    found = nearest_allowed(at, start, end)
    assert not in_quiet(found, start, end)
    assert found.minute in (0, 30) or found == end


@given(st.text(max_size=60))
def test_property_timezone_choices_are_real_zones_without_repeats(text: str) -> None:
    choices = timezone_choices(text)
    zones = [c.zone for c in choices]
    assert len(zones) == len(set(zones)) <= places.MAX_CHOICES
    assert all(resolve_timezone(z) == z or z in ("GMT",) for z in zones)
    assert (resolve_timezone(text) is not None) == (len(choices) == 1)


@given(city=st.sampled_from(["Nottingham", "Munich", "Portland", "York", "Leeds", "Lyon", "Osaka"]), data=st.data())
def test_property_a_towns_case_and_accents_do_not_matter(city: str, data: st.DataObject) -> None:
    mask = data.draw(st.lists(st.booleans(), min_size=len(city), max_size=len(city)))
    variant = "".join(c.upper() if up else c.lower() for c, up in zip(city, mask, strict=True))
    assert timezone_choices(variant) == timezone_choices(city) != ()


def test_every_choice_observes_the_zones_rules_on_a_dst_date() -> None:
    """The zone given is an IANA zone with its rules: 18:00 local in July is summer time for New York."""
    from dialogs.timeparse import local_to_utc

    zone = resolve_timezone("EST")
    assert zone is not None
    assert local_to_utc(date(2026, 7, 15), time(18, 0), zone) == datetime(2026, 7, 15, 22, 0, tzinfo=UTC)
    assert local_to_utc(date(2026, 1, 15), time(18, 0), zone) == datetime(2026, 1, 15, 23, 0, tzinfo=UTC)
