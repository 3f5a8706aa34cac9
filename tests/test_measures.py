"""PHQ-9 and GAD-7: scoring over every answer combination, and the chat flow's rules (console)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlmodel import select

from bot.wiring import Companion
from dialogs import measures
from dialogs.clock import FrozenClock
from scheduler.sweep import sweep
from storage import AuditEntry, MeasureResponse, MeasureSchedule, SafetyFlag
from tests.support import Chat, add_therapist, join

PHQ9, GAD7 = measures.instruments("en")["phq9"], measures.instruments("en")["gad7"]
# The published bands (CBT_HOMEWORK.md): PHQ-9 5/10/15/20, GAD-7 5/10/15.
PHQ9_BANDS = [
    (0, 4, "minimal"),
    (5, 9, "mild"),
    (10, 14, "moderate"),
    (15, 19, "moderately severe"),
    (20, 27, "severe"),
]
GAD7_BANDS = [(0, 4, "minimal"), (5, 9, "mild"), (10, 14, "moderate"), (15, 21, "severe")]


def expected_band(total: int, bands: list[tuple[int, int, str]]) -> str:
    return next(name for low, high, name in bands if low <= total <= high)


@given(st.lists(st.integers(0, 3), min_size=9, max_size=9), st.none() | st.integers(0, 3))
def test_phq9_scores_every_combination_with_the_published_bands(answers: list[int], difficulty: int | None) -> None:
    full = answers + ([difficulty] if difficulty is not None else [])
    total, band = measures.score(PHQ9, full)
    assert total == sum(answers) and 0 <= total <= 27  # the difficulty question is never scored
    assert band == expected_band(total, PHQ9_BANDS)


@given(st.lists(st.integers(0, 3), min_size=7, max_size=7))
def test_gad7_scores_every_combination_with_the_published_bands(answers: list[int]) -> None:
    total, band = measures.score(GAD7, answers)
    assert total == sum(answers) and band == expected_band(total, GAD7_BANDS)


def test_every_gad7_answer_combination_exhaustively() -> None:
    # 4^7 = 16,384 combinations: small enough to walk them all.
    for answers in itertools.product(range(4), repeat=7):
        assert measures.score(GAD7, list(answers)) == (sum(answers), expected_band(sum(answers), GAD7_BANDS))


@given(st.lists(st.integers(-3, 6), min_size=0, max_size=12))
def test_incomplete_or_out_of_range_answers_are_refused(answers: list[int]) -> None:
    if len(answers) in (9, 10) and all(0 <= a <= 3 for a in answers):
        return
    with pytest.raises(ValueError):
        measures.score(PHQ9, answers)


def test_the_items_carry_the_standard_wording_and_source() -> None:
    assert len(PHQ9.items) == 9 and len(GAD7.items) == 7 and PHQ9.length == 10
    assert PHQ9.items[8] == "Thoughts that you would be better off dead or of hurting yourself in some way"
    assert PHQ9.options == ("Not at all", "Several days", "More than half the days", "Nearly every day")
    assert "Over the last 2 weeks" in PHQ9.stem and "Kroenke" in PHQ9.source and "Spitzer" in GAD7.source


# --- the chat flow --------------------------------------------------------------------------


def at(clock: FrozenClock, day: int, hour: int, minute: int = 0) -> None:
    clock.set(datetime(2026, 11, day, hour, minute, tzinfo=UTC))


def setup(companion: Companion, what: str = "gad7 weekly") -> tuple[Chat, Chat]:
    add_therapist(companion, "Dana", "Europe/London")
    dana = Chat(companion, "therapist", "Dana")
    sam = join(companion, dana, "Sam", "sam", at="18:00")
    assert " for Sam" in dana.send(f"/measure Sam {what}")
    return dana, sam


def tick(companion: Companion) -> None:
    sweep(db=companion.db, engine=companion.engine)


def test_asked_at_the_reminder_time_one_item_at_a_time_and_scored(companion: Companion, clock: FrozenClock) -> None:
    dana, sam = setup(companion)
    at(clock, 23, 17, 59)
    tick(companion)
    assert sam.open() == ""
    at(clock, 23, 18, 0)
    tick(companion)
    asked = sam.open()
    assert "GAD-7 (7 questions" in asked and "1/7. Feeling nervous, anxious or on edge" in asked
    assert "(Not at all · Several days · More than half the days · Nearly every day)" in asked
    assert "Please answer with a number from 0 to 3" in sam.send("sometimes")
    assert "2/7" in sam.send("Several days")  # the option's words work as well as its number
    assert "Please answer with a number from 0 to 3" in sam.send("hmm")
    assert "3/7" in sam.send("2")
    for answer in ("3", "1", "0", "1"):
        sam.send(answer)
    assert "that's all" in sam.send("2")
    digest = dana.send("/digest Sam")
    assert "GAD-7: 10/21 (moderate)" in digest
    with companion.db.unit_of_work() as session:
        response = session.exec(select(MeasureResponse)).one()
        assert response.answers == [1, 2, 3, 1, 0, 1, 2] and response.band == "moderate"
        schedule = session.exec(select(MeasureSchedule)).one()
        assert schedule.due_at == datetime(2026, 11, 30, 18, 0, tzinfo=UTC)  # a week later, same local time
        assert session.exec(select(AuditEntry).where(AuditEntry.action == "measure.set")).first() is not None


def test_later_keeps_the_answers_and_resumes_the_next_day(companion: Companion, clock: FrozenClock) -> None:
    _, sam = setup(companion)
    at(clock, 23, 18, 0)
    tick(companion)
    sam.open()
    sam.send("1")
    sam.send("1")
    assert "ask again later" in sam.send("later")
    at(clock, 23, 19, 0)
    tick(companion)
    assert sam.open() == ""  # at most one questionnaire a day
    at(clock, 24, 18, 0)
    tick(companion)
    resumed = sam.open()
    assert "where we stopped (2 of 7 answered)" in resumed and "3/7. Worrying too much" in resumed
    with companion.db.unit_of_work() as session:
        assert len(session.exec(select(MeasureResponse)).all()) == 1


def test_twice_no_answer_postpones_rather_than_hold_the_chat(companion: Companion, clock: FrozenClock) -> None:
    _, sam = setup(companion)
    at(clock, 23, 18, 0)
    tick(companion)
    sam.open()
    sam.send("1")
    assert "Please answer" in sam.send("what is this")
    assert "ask again later" in sam.send("I'd rather talk about my walk")
    assert "didn't catch that" in sam.send("hmm")  # the chat is free again
    with companion.db.unit_of_work() as session:
        assert session.exec(select(MeasureResponse)).one().answers == [1]


def test_no_questionnaire_during_a_crisis_hold_quiet_hours_or_a_busy_chat(
    companion: Companion, clock: FrozenClock
) -> None:
    dana, sam = setup(companion)
    sam.send("/quiet 17:00-19:00")
    at(clock, 23, 18, 0)
    tick(companion)
    assert sam.open() == ""  # quiet hours: moved to their end
    at(clock, 23, 19, 0)
    sam.send("/log")  # mid-flow: the questionnaire waits rather than be read as an answer
    tick(companion)
    assert "GAD-7" not in sam.open()
    sam.send("slept badly")
    sam.send("I'm going to kill myself tonight")
    at(clock, 23, 20, 0)
    tick(companion)
    assert "GAD-7" not in sam.open()
    dana.send("/resume Sam")
    at(clock, 24, 19, 0)  # the next day, at the end of the client's quiet hours
    tick(companion)
    assert "GAD-7" in sam.open()


def test_phq9_item_9_asks_directly_at_once_and_yes_takes_the_crisis_path(
    companion: Companion, clock: FrozenClock
) -> None:
    dana, sam = setup(companion, "phq9 once")
    dana.send("/plan Sam\ncoping: cold water on my face\npeople: Alex: 07700 900123")
    at(clock, 23, 18, 0)
    tick(companion)
    sam.open()
    for answer in ("0",) * 8:
        sam.send(answer)
    routed = sam.send("2")
    assert "are you thinking about ending your life" in routed and "10/10" not in routed
    assert "URGENT" in dana.open()
    crisis = sam.send("yes")
    assert crisis.index("cold water on my face") < crisis.index("Samaritans")
    with companion.db.unit_of_work() as session:
        response = session.exec(select(MeasureResponse)).one()
        assert response.answers == [0] * 8 + [2] and response.status == "in_progress"  # kept, not lost
        flag = session.exec(select(SafetyFlag)).one()
        assert flag.level == "crisis" and flag.question_status == "yes"
    # After the therapist lifts the hold, /questionnaire resumes the remaining question.
    dana.send("/resume Sam")
    assert "10/10. If you checked off any problems" in sam.send("/questionnaire")
    assert "that's all" in sam.send("0")
    assert "PHQ-9: 2/27 (minimal)" in dana.send("/digest Sam")


def test_before_session_follows_the_next_session_and_off_stops_it(companion: Companion, clock: FrozenClock) -> None:
    dana, _ = setup(companion, "phq9 before-session")
    dana.send("/session Sam thu 10am")
    with companion.db.unit_of_work() as session:
        schedule = session.exec(select(MeasureSchedule)).one()
        assert schedule.due_at == datetime(2026, 11, 25, 18, 0, tzinfo=UTC)  # Wednesday 18:00, the day before
    assert "is off" in dana.send("/measure Sam phq9 off")
    assert "I know these questionnaires" in dana.send("/measure Sam beck")


def test_a_questionnaire_set_before_the_client_joins_waits_for_their_reminder_time(
    companion: Companion, clock: FrozenClock
) -> None:
    add_therapist(companion, "Dana", "Europe/London")
    dana = Chat(companion, "therapist", "Dana")
    dana.send("/invite Sam")
    assert "once they have joined" in dana.send("/measure Sam phq9")
    tick(companion)
    sam = join(companion, dana, "Sam", "sam", at="18:00")
    at(clock, 23, 12, 0)  # a day later it is looked at again: not their time yet
    tick(companion)
    at(clock, 24, 12, 0)
    tick(companion)
    assert sam.open() == ""
    at(clock, 24, 18, 0)
    tick(companion)
    assert "1/10. Little interest or pleasure" in sam.open()
