"""The scheduler: nudges at agreed local times, quiet hours, snooze, follow-ups, caps, catch-up, digests."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func
from sqlmodel import select

from bot.wiring import Companion
from dialogs.clock import FrozenClock
from dialogs.nudges import out_of_quiet, parse_plan, send_due_nudges
from scheduler.sweep import sweep
from storage import Client, Homework, Occasion, OutboxMessage, Therapist
from storage import queries as q
from storage.models import OccasionStatus
from tests.conftest import TEST_DATA_KEY, make_companion
from tests.support import Chat, add_therapist, join

TASK = "title: Evening walk\nwhat: a 20 minute walk\nwhen: evenings\nwhere: the park\nwith whom: alone\n"
TASK += "record: mood 0-10 before and after\nrationale: activity lifts mood"


def setup(companion: Companion, *, tz: str = "London", nudges: str = "", due: str = "") -> tuple[Chat, Chat]:
    add_therapist(companion)
    dana = Chat(companion, "therapist", "Dana")
    sam = join(companion, dana, "Sam", "sam", tz=tz, at="18:00")
    extra = (f"\nnudges: {nudges}" if nudges else "") + (f"\ndue: {due}" if due else "")
    assert "Saved" in dana.send("/homework Sam\n" + TASK + extra)
    sam.open()
    sam.send("it helps my mood")
    sam.send("8")
    sam.send("9")  # importance
    return dana, sam


def tick(companion: Companion) -> None:
    sweep(db=companion.db, engine=companion.engine)


def occasions(companion: Companion) -> list[Occasion]:
    with companion.db.unit_of_work() as session:
        return list(session.exec(select(Occasion).order_by(Occasion.due_at, Occasion.id)))  # type: ignore[arg-type]


def local(dt: datetime, zone: str) -> datetime:
    return dt.astimezone(ZoneInfo(zone))


# --- parsing and arithmetic (properties) -------------------------------------------


@given(st.times(), st.times(), st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 12, 30)))
def test_out_of_quiet_never_lands_in_quiet_hours_and_never_moves_earlier(at: time, start: time, day: date) -> None:
    end = time((start.hour + 10) % 24, start.minute)  # a 10-hour quiet window, spanning midnight or not
    start, at = start.replace(second=0, microsecond=0), at.replace(second=0, microsecond=0)
    new_day, new_at = out_of_quiet(day, at, start, end)
    assert datetime.combine(new_day, new_at) >= datetime.combine(day, at)
    inside = (start <= new_at or new_at < end) if start > end else (start <= new_at < end)
    assert not inside


@given(
    st.lists(st.tuples(st.integers(0, 23), st.integers(0, 59)), min_size=1, max_size=4),
    st.sampled_from(["", "mon ", "weekdays ", "sat, sun ", "daily "]),
)
def test_parse_plan_reads_days_and_times(times: list[tuple[int, int]], days: str) -> None:
    text = days + ", ".join(f"{h}:{m:02d}" for h, m in times)
    parsed = parse_plan(text)
    assert parsed is not None
    day_part, time_part = parsed
    assert time_part == ",".join(sorted({f"{h:02d}:{m:02d}" for h, m in times}))
    assert (
        day_part
        == {"": None, "mon ": "mon", "weekdays ": "mon,tue,wed,thu,fri", "sat, sun ": "sat,sun", "daily ": None}[days]
    )


@given(st.text(max_size=60))
def test_parse_plan_never_raises(text: str) -> None:
    parse_plan(text)


# --- local time --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "city", "start", "utc_hours"),
    [
        # Europe/London springs forward on 28 Mar 2027 and falls back on 31 Oct 2027.
        ("Europe/London", "London", datetime(2027, 3, 26, 9, tzinfo=UTC), [18, 18, 17, 17]),
        ("Europe/London", "London", datetime(2027, 10, 29, 9, tzinfo=UTC), [17, 17, 18, 18]),
        # America/New_York: 14 Mar 2027 and 7 Nov 2027.
        ("America/New_York", "New York", datetime(2027, 3, 12, 15, tzinfo=UTC), [23, 23, 22, 22]),
        ("America/New_York", "New York", datetime(2027, 11, 5, 15, tzinfo=UTC), [22, 22, 23, 23]),
    ],
)
def test_an_18_00_nudge_stays_at_18_00_local_across_dst(
    sqlite_url: str, tmp_path: Path, zone: str, city: str, start: datetime, utc_hours: list[int]
) -> None:
    clock = FrozenClock(start)
    companion = make_companion(sqlite_url, clock, tmp_path)
    setup(companion, tz=city)
    for occasion in occasions(companion)[:4]:
        clock.set(occasion.due_at)  # the sweep runs as each nudge falls due
        tick(companion)
    sent = [o.sent_at for o in occasions(companion) if o.sent_at is not None]
    assert [t.hour for t in sent] == utc_hours
    assert {local(t, zone).strftime("%H:%M") for t in sent} == {"18:00"}
    companion.db.dispose()


def test_a_time_zone_change_keeps_local_times(sqlite_companion: Companion) -> None:
    _, sam = setup(sqlite_companion, tz="London")
    assert "America/New_York" in sam.send("/timezone New York")
    planned = [o for o in occasions(sqlite_companion) if o.status == OccasionStatus.PLANNED]
    assert planned and {local(o.due_at, "America/New_York").strftime("%H:%M") for o in planned} == {"18:00"}


def test_a_nudge_in_quiet_hours_moves_to_their_end(sqlite_companion: Companion, clock: FrozenClock) -> None:
    setup(sqlite_companion, nudges="22:30")
    first = occasions(sqlite_companion)[0]
    assert local(first.due_at, "Europe/London").strftime("%a %H:%M") == "Tue 08:00"
    assert first.local_time == "22:30"  # what was agreed is kept


def test_clients_can_set_their_own_quiet_hours(sqlite_companion: Companion) -> None:
    _, sam = setup(sqlite_companion, nudges="7am")
    assert "between 23:00 and 06:30" in sam.send("/quiet 23:00-06:30")
    assert local(occasions(sqlite_companion)[0].due_at, "Europe/London").strftime("%H:%M") == "07:00"


# --- what the client sees ------------------------------------------------------------


def test_the_nudge_arrives_with_done_didnt_and_later(sqlite_companion: Companion, clock: FrozenClock) -> None:
    _, sam = setup(sqlite_companion)
    clock.set(datetime(2026, 11, 23, 18, 0, tzinfo=UTC))
    tick(sqlite_companion)
    nudge = sam.open()
    assert "A reminder for “Evening walk”: a 20 minute walk." in nudge
    assert "(Done · Didn't do it · Later)" in nudge
    assert "What happened" in sam.send("done")
    answered = [o for o in occasions(sqlite_companion) if o.status == OccasionStatus.ANSWERED]
    assert len(answered) == 1


def test_a_queued_reminder_holds_no_client_text_and_shows_the_homework_as_it_is_when_sent(
    sqlite_companion: Companion, clock: FrozenClock
) -> None:
    """Reminders are queued by reference (the sweep's hot path encrypts no client text) and rendered on delivery."""
    setup(sqlite_companion)
    clock.set(datetime(2026, 11, 23, 18, 0, tzinfo=UTC))
    tick(sqlite_companion)
    with sqlite_companion.db.unit_of_work() as session:
        row = session.exec(select(OutboxMessage).order_by(OutboxMessage.id.desc())).first()  # type: ignore[union-attr]
        assert row is not None and row.payload["ref"]["type"] == "nudge"
        assert "Evening walk" not in str(row.payload) and "20 minute" not in str(row.payload)
        homework = session.exec(select(Homework)).one()
        homework.title = "Morning walk"  # corrected before the reminder went out
        session.add(homework)
    assert "A reminder for “Morning walk”" in Chat(sqlite_companion, "client", "sam").open()


def test_snooze_later_then_three_hours(sqlite_companion: Companion, clock: FrozenClock) -> None:
    _, sam = setup(sqlite_companion, nudges="12:00")
    clock.set(datetime(2026, 11, 23, 12, 0, tzinfo=UTC))
    tick(sqlite_companion)
    sam.open()
    assert "When shall I remind you?" in sam.send("later")
    assert "I'll remind you at Mon 23 Nov 15:00 (Europe/London)" in sam.send("3h")
    clock.advance(hours=2, minutes=59)
    tick(sqlite_companion)
    assert sam.open() == ""
    clock.advance(minutes=1)
    tick(sqlite_companion)
    assert "A reminder for “Evening walk”" in sam.open()


def test_snooze_tonight_respects_quiet_hours(sqlite_companion: Companion, clock: FrozenClock) -> None:
    _, sam = setup(sqlite_companion, nudges="21:00")  # 21:00 is before quiet hours (21:30)
    clock.set(datetime(2026, 11, 23, 21, 0, tzinfo=UTC))
    tick(sqlite_companion)
    sam.open()
    sam.send("later")
    # "tonight" (20:00) has passed, so an hour from now, which falls in quiet hours: 08:00 tomorrow.
    assert "Tue 24 Nov 08:00" in sam.send("tonight")


def test_unanswered_gets_one_follow_up_then_not_reviewed(sqlite_companion: Companion, clock: FrozenClock) -> None:
    setup(sqlite_companion, nudges="12:00", due="in 1 days")
    _, sam = Chat(sqlite_companion, "therapist", "Dana"), Chat(sqlite_companion, "client", "sam")
    clock.set(datetime(2026, 11, 23, 12, 0, tzinfo=UTC))
    tick(sqlite_companion)
    assert "A reminder" in sam.open()
    clock.set(datetime(2026, 11, 24, 11, 0, tzinfo=UTC))
    tick(sqlite_companion)  # the 24 Nov 12:00 nudge is not due yet, and 23 h is too early to follow up
    assert sam.open() == ""
    clock.set(datetime(2026, 11, 24, 12, 0, tzinfo=UTC))
    tick(sqlite_companion)
    seen = sam.open()
    assert "How did “Evening walk” go?" in seen and "A reminder" in seen
    clock.set(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    tick(sqlite_companion)
    statuses = sorted(o.status for o in occasions(sqlite_companion))
    assert statuses.count(OccasionStatus.NOT_REVIEWED) == 1
    assert "not reviewed: 1" in Chat(sqlite_companion, "therapist", "Dana").send("/digest Sam")


def test_at_most_three_scheduler_messages_a_day(sqlite_companion: Companion, clock: FrozenClock) -> None:
    _, sam = setup(sqlite_companion, nudges="9am, 11am, 1pm, 3pm", due="in 1 days")
    for hour in (9, 11, 13, 15):
        clock.set(datetime(2026, 11, 24, hour, 0, tzinfo=UTC))
        tick(sqlite_companion)
    assert sam.open().count("A reminder") == 3
    skipped = [o for o in occasions(sqlite_companion) if o.status == OccasionStatus.SKIPPED]
    assert [o.local_time for o in skipped] == ["15:00"]


@pytest.mark.parametrize("how", ["/pause", "/stop", "crisis"])
def test_paused_stopped_and_crisis_held_clients_get_no_nudges(
    sqlite_companion: Companion, clock: FrozenClock, how: str
) -> None:
    _, sam = setup(sqlite_companion)
    sam.send("I'm going to kill myself tonight" if how == "crisis" else how)
    sam.open()
    clock.set(datetime(2026, 11, 23, 18, 0, tzinfo=UTC))
    tick(sqlite_companion)
    assert sam.open() == ""
    assert occasions(sqlite_companion)[0].status == OccasionStatus.SKIPPED


def test_answering_before_the_nudge_means_no_nudge_that_day(sqlite_companion: Companion, clock: FrozenClock) -> None:
    _, sam = setup(sqlite_companion)
    clock.set(datetime(2026, 11, 23, 17, 0, tzinfo=UTC))
    sam.send("I didn't do it")
    clock.set(datetime(2026, 11, 23, 18, 0, tzinfo=UTC))
    tick(sqlite_companion)
    assert "A reminder" not in sam.open()


def test_a_client_mid_conversation_is_nudged_after_it(sqlite_companion: Companion, clock: FrozenClock) -> None:
    _, sam = setup(sqlite_companion)
    clock.set(datetime(2026, 11, 23, 17, 59, tzinfo=UTC))
    sam.send("/log")
    clock.set(datetime(2026, 11, 23, 18, 0, tzinfo=UTC))
    tick(sqlite_companion)
    assert sam.open() == ""
    sam.send("slept well")
    assert "Noted" in sam.send("no")  # the note is saved: the conversation is over
    clock.advance(minutes=30)
    tick(sqlite_companion)
    assert "A reminder" in sam.open()


# --- downtime and failures -----------------------------------------------------------------


@pytest.mark.parametrize(("outage", "expected_sent"), [(timedelta(hours=3), 0), (timedelta(hours=1), 1)])
def test_catch_up_after_an_outage_sends_only_what_is_recent(
    sqlite_companion: Companion, clock: FrozenClock, outage: timedelta, expected_sent: int
) -> None:
    _, sam = setup(sqlite_companion)
    clock.set(datetime(2026, 11, 23, 18, 0, tzinfo=UTC) + outage)
    tick(sqlite_companion)
    assert sam.open().count("A reminder") == expected_sent
    assert occasions(sqlite_companion)[0].status == (OccasionStatus.SENT if expected_sent else OccasionStatus.MISSED)


def test_a_three_day_outage_records_missed_nudges_and_sends_no_burst(
    sqlite_companion: Companion, clock: FrozenClock
) -> None:
    _, sam = setup(sqlite_companion)
    clock.set(datetime(2026, 11, 26, 19, 0, tzinfo=UTC))  # back an hour after Thursday's nudge
    tick(sqlite_companion)
    assert sam.open().count("A reminder") == 1
    statuses = [o.status for o in occasions(sqlite_companion)][:4]
    assert statuses == [OccasionStatus.MISSED] * 3 + [OccasionStatus.SENT]


def test_a_process_killed_between_claim_and_send_sends_once_after_restart(
    companion: Companion, clock: FrozenClock
) -> None:
    _, sam = setup(companion)
    clock.set(datetime(2026, 11, 23, 18, 0, tzinfo=UTC))
    engine = companion.engine
    with pytest.raises(RuntimeError), companion.db.unit_of_work() as session:
        from dialogs.nudges import SweepCounts

        assert send_due_nudges(
            session, prompts=engine.prompts, settings=engine.settings, now=clock.now(), counts=SweepCounts()
        )
        raise RuntimeError("the process dies before its claim commits")
    tick(companion)  # the restarted process
    tick(companion)
    assert sam.open().count("A reminder") == 1


@pytest.mark.postgres
def test_two_scheduler_processes_on_postgresql_send_every_nudge_exactly_once(tmp_path: Path) -> None:
    """Two real `companion tick` processes race over the same due rows on PostgreSQL."""
    from tests.conftest import _postgres_schema_url

    urls = _postgres_schema_url()
    url = next(urls)
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        companion = make_companion(url, FrozenClock(now), tmp_path)
        with companion.db.unit_of_work() as session:
            therapist = q.add_therapist(session, name="Dana", timezone="UTC", now=now)
            for n in range(300):
                client = q.create_client(session, therapist_id=therapist.id or 0, name=f"c{n}", now=now)
                client.status, client.timezone = "active", "UTC"
                q.link_identity(session, channel="console", address=f"client:c{n}", now=now, client_id=client.id)
                homework = Homework(
                    client_id=client.id or 0,
                    therapist_id=therapist.id or 0,
                    title="Walk",
                    created_at=now,
                    delivered_at=now,
                )
                session.add(homework)
                session.flush()
                for minutes in (1, 2):
                    session.add(
                        Occasion(
                            homework_id=homework.id or 0,
                            client_id=client.id or 0,
                            local_date=now.date(),
                            local_time="00:00",
                            due_at=now - timedelta(minutes=minutes),
                        )
                    )
        config = tmp_path / "config.yaml"
        config.write_text("nudges:\n  daily_cap: 5\n", encoding="utf-8")
        env = {**os.environ, "DATABASE_URL": url, "COMPANION_LOG_LEVEL": "WARNING", "COMPANION_DATA_KEY": TEST_DATA_KEY}
        command = [sys.executable, "-m", "bot.cli", "tick", "--config", str(config)]
        processes = [
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)
        ]
        outputs = [p.communicate(timeout=120) for p in processes]
        assert all(p.returncode == 0 for p in processes), outputs
        with companion.db.unit_of_work() as session:
            sent = session.exec(select(func.count()).select_from(OutboxMessage)).one()
            per_address = session.exec(
                select(OutboxMessage.address, func.count()).group_by(OutboxMessage.address)  # type: ignore[arg-type]
            ).all()
            assert sent == 600
            assert {count for _, count in per_address} == {2}
            due = session.exec(select(Occasion).where(Occasion.due_at <= now)).all()
            assert len(due) == 600 and {o.status for o in due} == {OccasionStatus.SENT}
        companion.db.dispose()
    finally:
        next(urls, None)


# --- digests -------------------------------------------------------------------------------


def test_the_digest_arrives_two_hours_before_the_session_once(sqlite_companion: Companion, clock: FrozenClock) -> None:
    dana, _ = setup(sqlite_companion)
    dana.send("/session Sam tomorrow 10:00")
    clock.set(datetime(2026, 11, 24, 7, 59, tzinfo=UTC))
    tick(sqlite_companion)
    assert "Digest for Sam" not in dana.open()
    clock.set(datetime(2026, 11, 24, 8, 0, tzinfo=UTC))
    tick(sqlite_companion)
    assert "Digest for Sam" in dana.open()
    clock.advance(minutes=30)
    tick(sqlite_companion)
    assert dana.open() == ""


def test_a_weekly_digest_at_the_therapists_local_time(sqlite_companion: Companion, clock: FrozenClock) -> None:
    dana, _ = setup(sqlite_companion)
    assert "Next one: Mon 30 Nov 08:00 (Europe/London)" in dana.send("/weekly mon 8am")
    clock.set(datetime(2026, 11, 30, 8, 0, tzinfo=UTC))
    tick(sqlite_companion)
    assert "Digest for Sam" in dana.open()
    with sqlite_companion.db.unit_of_work() as session:
        therapist = session.exec(select(Therapist)).one()
        assert therapist.weekly_digest_due == datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
    assert "turned off" in dana.send("/weekly off")


def test_closing_homework_cancels_its_nudges(sqlite_companion: Companion, clock: FrozenClock) -> None:
    dana, sam = setup(sqlite_companion)
    dana.send("/close Sam 1")
    clock.set(datetime(2026, 11, 23, 18, 0, tzinfo=UTC))
    tick(sqlite_companion)
    assert sam.open() == ""
    assert {o.status for o in occasions(sqlite_companion)} == {OccasionStatus.CANCELLED}


def test_weekday_plans(sqlite_companion: Companion) -> None:
    setup(sqlite_companion, nudges="mon, wed 6pm", due="in 8 days")
    days = [local(o.due_at, "Europe/London").strftime("%a %H:%M") for o in occasions(sqlite_companion)]
    assert days == ["Mon 18:00", "Wed 18:00", "Mon 18:00"]
    with sqlite_companion.db.unit_of_work() as session:
        assert session.exec(select(Client)).one().nudge_time == "18:00"


def test_open_homework_without_a_due_date_keeps_being_nudged(sqlite_companion: Companion, clock: FrozenClock) -> None:
    _, sam = setup(sqlite_companion)  # no due date: planned 7 days ahead at delivery
    for day in range(23, 23 + 21):  # three weeks of daily sweeps at 18:00
        clock.set(datetime(2026, 11, 1, 18, 0, tzinfo=UTC) + timedelta(days=day - 1))
        tick(sqlite_companion)
    assert sam.open().count("A reminder") >= 3 * 3  # the cap allows 3 a day; at least one a day went out
    sent_days = {o.local_date for o in occasions(sqlite_companion) if o.sent_at is not None}
    assert len(sent_days) == 21
