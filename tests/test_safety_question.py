"""The direct safety question in the screen's grey zone: yes, no, no answer, a crisis typed instead, re-asking."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from bot.wiring import Companion
from dialogs.clock import FrozenClock
from dialogs.safety import assess
from scheduler.sweep import sweep
from storage import Client, ConversationState, Debrief, FlagLevel, SafetyFlag
from tests.fake_telegram import FakeBotAPI
from tests.support import Chat, add_therapist, join
from tests.test_safety_response import HOMEWORK
from tests.test_telegram import SAM, Harness, joined, telegram_companion

# Messages the real screen puts in its grey zone (the tests check that first), with different signals.
GREY = "honestly some days I wish I just wouldn't wake up"
OTHER_GREY = "kms lol"  # (not "I want to die lol jk": the learned layer is confident of that one: crisis)
QUESTION = "are you thinking about ending your life, or are you in danger right now?"


@pytest.fixture
def dana(sqlite_companion: Companion) -> Chat:
    add_therapist(sqlite_companion)
    return Chat(sqlite_companion, "therapist", "Dana")


@pytest.fixture
def sam(sqlite_companion: Companion, dana: Chat) -> Chat:
    client = join(sqlite_companion, dana, "Sam", "sam", tz="London")
    dana.send(HOMEWORK)
    client.open()
    client.send("it gets me moving")
    client.send("8")
    client.send("8")  # importance
    return client


@pytest.fixture
def bot_api() -> Iterator[FakeBotAPI]:
    api = FakeBotAPI().start()
    yield api
    api.stop()


def _flags(companion: Companion) -> list[SafetyFlag]:
    with companion.db.unit_of_work() as session:
        return list(session.exec(select(SafetyFlag).order_by(SafetyFlag.id)))  # type: ignore[arg-type]


def test_the_grey_zone_messages_are_grey() -> None:
    for text in (GREY, OTHER_GREY):
        verdict = assess(text)
        assert verdict.ask and verdict.level == "concern", text
    assert {s.reason for s in assess(GREY).signals} != {s.reason for s in assess(OTHER_GREY).signals}


def test_no_records_a_concern_and_the_dialog_resumes_where_it_was(
    sqlite_companion: Companion, dana: Chat, sam: Chat
) -> None:
    sam.send("done")  # the debrief asks what happened
    reply = sam.send(GREY)
    assert QUESTION in reply and "(Yes · No)" in reply
    assert "What surprised you" not in reply  # the message waits for the answer
    (flag,) = _flags(sqlite_companion)
    assert flag.level == FlagLevel.CONCERN and flag.question_status == "asked"
    assert flag.signals and all("text" not in row for row in flag.signals)
    assert {row["layer"] for row in flag.signals} <= {"lexicon", "learned"}

    reply = sam.send("no")
    assert "Thank you for answering" in reply and "Samaritans" not in reply
    assert "What surprised you" in reply  # the original message was taken as the answer
    (flag,) = _flags(sqlite_companion)
    assert flag.question_status == "no" and flag.question_due_at is None and flag.level == FlagLevel.CONCERN
    with sqlite_companion.db.unit_of_work() as session:
        assert session.exec(select(Debrief)).one().what_happened == GREY
    assert dana.open() == ""  # a "no" is for the digest, not an urgent alert


def test_yes_takes_the_crisis_path_at_once(sqlite_companion: Companion, dana: Chat, sam: Chat) -> None:
    sam.send(GREY)
    reply = sam.send("yes")
    assert "Samaritans: call 116 123" in reply and "I've let Dana know" in reply
    alert = dana.open()
    assert "URGENT: possible crisis for Sam" in alert
    assert "answered yes to the direct safety question" in alert and GREY in alert
    assert "/ack 1" in alert and "Layers:" in alert
    (flag,) = _flags(sqlite_companion)
    assert flag.level == FlagLevel.CRISIS and flag.question_status == "yes" and flag.escalate_at is not None
    with sqlite_companion.db.unit_of_work() as session:
        assert session.exec(select(Client)).one().crisis_since is not None


@pytest.mark.parametrize("answer", ["maybe", "kind of", "Yes, I am"])
def test_a_hesitant_answer_counts_as_yes(sqlite_companion: Companion, sam: Chat, answer: str) -> None:
    sam.send(GREY)
    assert "Samaritans" in sam.send(answer)


def test_a_crisis_typed_instead_of_answering_takes_the_crisis_path(
    sqlite_companion: Companion, dana: Chat, sam: Chat
) -> None:
    sam.send(GREY)
    assert "Samaritans" in sam.send("I'm going to kill myself tonight")
    question, crisis = _flags(sqlite_companion)
    assert question.question_status == "crisis" and question.question_due_at is None
    assert crisis.level == FlagLevel.CRISIS
    assert "URGENT: possible crisis for Sam" in dana.open()


def test_no_answer_alerts_the_therapist_who_must_acknowledge_it(
    sqlite_companion: Companion, dana: Chat, sam: Chat, clock: FrozenClock
) -> None:
    sam.send(GREY)
    clock.advance(minutes=9)
    sweep(db=sqlite_companion.db, engine=sqlite_companion.engine)
    assert dana.open() == ""
    clock.advance(minutes=2)
    sweep(db=sqlite_companion.db, engine=sqlite_companion.engine)
    alert = dana.open()
    assert "was asked directly" in alert and "has not answered in 10 minutes" in alert
    assert GREY in alert and "/ack 1" in alert
    sweep(db=sqlite_companion.db, engine=sqlite_companion.engine)
    assert dana.open() == ""  # once
    (flag,) = _flags(sqlite_companion)
    assert flag.question_status == "unanswered" and flag.question_due_at is None

    # Unacknowledged, it is sent again like a crisis alert; acknowledged, it is settled.
    clock.advance(minutes=16)
    sweep(db=sqlite_companion.db, engine=sqlite_companion.engine)
    assert "REMINDER, not yet acknowledged" in dana.open()
    assert "acknowledged" in dana.send("/ack 1 called her, she is safe")
    assert _flags(sqlite_companion)[0].acknowledged_at is not None


def test_an_answer_after_the_alert_still_counts(
    sqlite_companion: Companion, dana: Chat, sam: Chat, clock: FrozenClock
) -> None:
    sam.send(GREY)
    clock.advance(minutes=11)
    sweep(db=sqlite_companion.db, engine=sqlite_companion.engine)
    dana.open()
    assert "Samaritans" in sam.send("yes")
    (flag,) = _flags(sqlite_companion)
    assert flag.level == FlagLevel.CRISIS and flag.question_status == "yes"


def test_the_same_signals_are_not_asked_about_again_within_a_day(
    sqlite_companion: Companion, sam: Chat, clock: FrozenClock
) -> None:
    sam.send(GREY)
    sam.send("no")
    clock.advance(hours=3)
    reply = sam.send(GREY)
    assert QUESTION not in reply and "Thank you for sharing that" in reply  # a concern, without asking
    assert QUESTION in sam.send(OTHER_GREY)  # a new grey signal asks again
    sam.send("no")
    clock.advance(hours=22)
    assert QUESTION in sam.send(GREY)  # a day later, the same signals ask again
    assert [f.question_status for f in _flags(sqlite_companion)] == ["no", None, "no", "asked"]


def test_an_unclear_answer_is_asked_again_once_then_the_dialog_goes_on(
    sqlite_companion: Companion, sam: Chat, clock: FrozenClock, dana: Chat
) -> None:
    sam.send("done")
    sam.send(GREY)
    assert "I'm sorry to ask again" in sam.send("what do you mean")
    assert "What surprised you" in sam.send("I walked to the park for 20 minutes")
    with sqlite_companion.db.unit_of_work() as session:
        state = session.exec(select(ConversationState).where(ConversationState.address == "client:sam")).one()
        assert "_safety_question" not in state.data
    # Still unanswered: the therapist hears of it when its time is up.
    clock.advance(minutes=11)
    sweep(db=sqlite_companion.db, engine=sqlite_companion.engine)
    assert "has not answered" in dana.open()


def test_the_question_over_telegram_has_buttons_and_a_tap_answers_it(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, bot_api: FakeBotAPI
) -> None:
    fake = bot_api
    companion = telegram_companion(sqlite_url, clock, tmp_path, fake, webhook=True)

    async def scenario(h: Harness) -> None:
        await joined(companion)(h)
        reply = await h.say(SAM, GREY)
        assert QUESTION in reply
        question = fake.sent(SAM)[-1]
        buttons = [b for row in question["reply_markup"]["inline_keyboard"] for b in row]
        assert [b["text"] for b in buttons] == ["Yes", "No"]
        (yes,) = [b["callback_data"] for b in buttons if b["text"] == "Yes"]
        assert "116 123" in await h.tap(SAM, yes)

    try:
        asyncio.run(_run(companion, fake, scenario))
    finally:
        companion.db.dispose()
    (flag,) = _flags(companion)
    assert flag.level == FlagLevel.CRISIS and flag.question_status == "yes"


def test_a_typed_no_over_telegram_resumes(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, bot_api: FakeBotAPI
) -> None:
    fake = bot_api
    companion = telegram_companion(sqlite_url, clock, tmp_path, fake, webhook=False)

    async def scenario(h: Harness) -> None:
        await joined(companion)(h)
        assert QUESTION in await h.say(SAM, GREY)
        reply = await h.say(SAM, "no, I'm ok, just tired")
        assert "Thank you for answering" in reply and "keep it as a note" in reply

    try:
        asyncio.run(_run(companion, fake, scenario))
    finally:
        companion.db.dispose()
    assert _flags(companion)[0].question_status == "no"


async def _run(companion: Companion, api: FakeBotAPI, scenario: Callable[[Harness], Awaitable[None]]) -> None:
    async with Harness(companion, api, webhook=companion.settings.telegram.webhook_url is not None) as harness:
        await scenario(harness)
