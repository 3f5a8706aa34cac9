"""History out of the hot path: homework closes itself, digests cover their period, the trend reads weekly sums."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from sqlmodel import select

from bot.wiring import Companion
from dialogs.clock import FrozenClock
from prompts import load
from scheduler.sweep import sweep
from storage import CloseReason, Debrief, DebriefWeek, Homework, Occasion
from storage.models import OccasionStatus
from tests.support import Chat, add_therapist, invite_code

P = load("en")
TASK = (
    "/homework Sam\ntitle: {title}\ntype: behavioural experiment\n"
    "what: ride the bus two stops\nwhen: mornings\nwhere: the 73\nwith whom: alone\n"
    "record: belief before and after\nrationale: this tests the prediction\nnudges: 10am{due}"
)


@pytest.fixture
def dana(sqlite_companion: Companion) -> Chat:
    add_therapist(sqlite_companion)
    return Chat(sqlite_companion, "therapist", "Dana")


@pytest.fixture
def dana_on(companion: Companion) -> Chat:
    """Dana on each database (SQLite and PostgreSQL): the close and the weekly upsert are SQL of their own."""
    add_therapist(companion)
    return Chat(companion, "therapist", "Dana")


def join_sam(companion: Companion, dana: Chat) -> Chat:
    code = invite_code(dana.send("/invite Sam"))
    sam = Chat(companion, "client", "sam")
    for message in (f"/start {code}", "yes", "London", "6pm"):
        sam.send(message)
    dana.open()
    return sam


def set_and_accept(dana: Chat, sam: Chat, title: str, due: str = "") -> str:
    dana.send(TASK.format(title=title, due=f"\ndue: {due}" if due else ""))
    delivered = sam.open()
    for answer in ("Because it tests the prediction", "8", "9"):  # own words, confidence, importance
        sam.send(answer)
    return delivered


def homework(companion: Companion) -> dict[str, Homework]:
    with companion.db.unit_of_work() as session:
        rows = session.exec(select(Homework)).all()
        for row in rows:
            session.expunge(row)
    return {row.title: row for row in rows}


def at(companion: Companion, clock: FrozenClock, when: datetime) -> None:
    clock.set(when)
    sweep(db=companion.db, engine=companion.engine)


def test_the_next_homework_delivered_closes_the_one_before_and_done_means_the_new_one(
    companion: Companion, clock: FrozenClock, dana_on: Chat
) -> None:
    sqlite_companion, dana = companion, dana_on
    sam = join_sam(sqlite_companion, dana)
    set_and_accept(dana, sam, "Bus experiment")
    at(sqlite_companion, clock, datetime(2026, 11, 24, 10, 5, tzinfo=UTC))  # Tuesday's nudge went out
    sam.open()
    assert "Train experiment" in set_and_accept(dana, sam, "Train experiment")
    rows = homework(sqlite_companion)
    old, new = rows["Bus experiment"], rows["Train experiment"]
    assert (old.status, old.closed_reason, old.closed_at) == ("closed", CloseReason.SUPERSEDED, clock.now())
    assert (new.status, new.closed_at) == ("open", None)
    with sqlite_companion.db.unit_of_work() as session:
        statuses = {o.status for o in session.exec(select(Occasion).where(Occasion.homework_id == old.id))}
    # Its waiting nudge got no answer (not reviewed); its later ones will not be sent (Monday's was
    # already due more than the catch-up grace before the first sweep: missed).
    assert statuses == {OccasionStatus.MISSED, OccasionStatus.NOT_REVIEWED, OccasionStatus.CANCELLED}
    assert "Train experiment" in sam.send("done")


def test_a_homework_set_mid_debrief_waits_and_the_current_one_stays_open_until_then(
    sqlite_companion: Companion, clock: FrozenClock, dana: Chat
) -> None:
    sam = join_sam(sqlite_companion, dana)
    set_and_accept(dana, sam, "Bus experiment")
    sam.send("done")  # the debrief of the bus experiment is under way
    dana.send(TASK.format(title="Train experiment", due=""))
    assert homework(sqlite_companion)["Bus experiment"].status == "open"
    for answer in ("Rode two stops", "Nothing bad", "The first minute", "It passes", "80", "30", "4"):
        sam.send(answer)
    rows = homework(sqlite_companion)  # the debrief ended: the next homework was delivered, the first closed
    assert rows["Bus experiment"].closed_reason == CloseReason.SUPERSEDED
    assert rows["Train experiment"].delivered_at is not None


def test_a_homework_closes_after_its_due_date_and_the_grace_period(
    sqlite_companion: Companion, clock: FrozenClock, dana: Chat
) -> None:
    sam = join_sam(sqlite_companion, dana)
    set_and_accept(dana, sam, "Bus experiment", due="wed 25 nov")
    at(sqlite_companion, clock, datetime(2026, 11, 27, 12, 0, tzinfo=UTC))  # two days after: still in its grace
    assert homework(sqlite_companion)["Bus experiment"].status == "open"
    assert "Rode" not in sam.send("done")  # a late debrief is still welcome
    for answer in ("Rode two stops", "Nothing bad", "The first minute", "It passes", "80", "30", "4"):
        sam.send(answer)
    at(sqlite_companion, clock, datetime(2026, 11, 28, 0, 5, tzinfo=UTC))
    closed = homework(sqlite_companion)["Bus experiment"]
    assert (closed.status, closed.closed_reason) == ("closed", CloseReason.EXPIRED)
    assert sam.send("done").strip() == P.text("debrief.no_homework")


def test_the_therapist_closing_it_is_recorded_as_theirs(
    sqlite_companion: Companion, clock: FrozenClock, dana: Chat
) -> None:
    sam = join_sam(sqlite_companion, dana)
    set_and_accept(dana, sam, "Bus experiment")
    assert "Closed homework #1" in dana.send("/close Sam 1")
    assert homework(sqlite_companion)["Bus experiment"].closed_reason == CloseReason.THERAPIST


def test_a_completed_debrief_adds_to_its_weeks_sums_and_the_trend_reads_them(
    companion: Companion, clock: FrozenClock, dana_on: Chat
) -> None:
    sqlite_companion, dana = companion, dana_on
    sam = join_sam(sqlite_companion, dana)
    set_and_accept(dana, sam, "Bus experiment")
    for day in (24, 26):
        at(sqlite_companion, clock, datetime(2026, 11, day, 10, 5, tzinfo=UTC))
        for answer in ("done", "Rode two stops on the 73 at 10am", "No", "The first minute", "It passes", "80"):
            sam.send(answer)
        sam.send("30")
        sam.send("3" if day == 24 else "4")
    with sqlite_companion.db.unit_of_work() as session:
        (week,) = session.exec(select(DebriefWeek)).all()
        criteria = [len(d.criteria or ()) for d in session.exec(select(Debrief))]
    assert (week.week, week.debriefs, week.quantity_sum, week.quantity_count) == (date(2026, 11, 23), 2, 7, 2)
    assert (week.criteria_met, week.criteria_judged) == (sum(criteria), 2)
    clock.set(datetime(2026, 12, 9, 9, 0, tzinfo=UTC))  # two weeks on: the debriefs are history, the sums remain
    text = dana.send("/digest Sam")
    assert "23 Nov: 3.5 · " in text and "7 Dec: — · — · 0" in text


def test_the_digest_counts_an_older_unacknowledged_alert_in_one_line(
    sqlite_companion: Companion, clock: FrozenClock, dana: Chat
) -> None:
    sam = join_sam(sqlite_companion, dana)
    set_and_accept(dana, sam, "Bus experiment")
    sam.send("I want to kill myself")
    dana.open()
    clock.set(datetime(2026, 12, 3, 9, 0, tzinfo=UTC))  # ten days later: before the period
    text = dana.send("/digest Sam")
    older = P.text("history.older_alerts", count=1)
    assert P.text("history.older_open", items=older) in text
    assert "I want to kill myself" not in text  # counted, not quoted: the period's flags are listed
