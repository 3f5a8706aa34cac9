"""The safety response end to end through the console: crisis, alerts, re-alerts, holds, concern, scope."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from bot.cli import app
from bot.wiring import Companion
from dialogs.clock import FrozenClock
from scheduler.sweep import sweep
from storage import Client, ConversationState, Debrief, DebriefStatus, FlagLevel, OutboxMessage, SafetyFlag
from storage import queries as q
from tests.conftest import make_companion
from tests.support import Chat, add_therapist, join

CRISIS = "I can't do this anymore, I'm going to kill myself tonight"
HOMEWORK = (
    "/homework Sam\ntitle: Activity plan\ntype: activity scheduling\nwhat: a 20 minute walk\nwhen: 8am daily\n"
    "where: the park\nwith whom: alone\nrecord: mastery and pleasure 0-10\nrationale: activity lifts mood"
)


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


def _flags(companion: Companion) -> list[SafetyFlag]:
    with companion.db.unit_of_work() as session:
        return list(session.exec(select(SafetyFlag).order_by(SafetyFlag.id)))  # type: ignore[arg-type]


def test_a_crisis_mid_debrief_gets_resources_stops_the_step_holds_nudges_and_alerts(
    sqlite_companion: Companion, dana: Chat, sam: Chat, clock: FrozenClock
) -> None:
    sam.send("done")
    reply = sam.send(CRISIS)
    assert "Samaritans: call 116 123" in reply  # the client's country (Europe/London → GB)
    assert "988" not in reply
    assert "not monitored in real time" in reply and "local emergency number" in reply
    assert "What surprised you" not in reply  # the debrief step stopped

    alert = dana.open()  # queued in the same transaction as the client's reply
    assert "URGENT: possible crisis for Sam" in alert
    assert CRISIS in alert and "the debrief of “Activity plan”" in alert
    assert "/ack 1" in alert

    with sqlite_companion.db.unit_of_work() as session:
        client = session.exec(select(Client)).one()
        assert client.crisis_since == clock.now()
        assert session.exec(select(Debrief)).one().status == DebriefStatus.ABANDONED
        state = session.exec(select(ConversationState).where(ConversationState.address == "client:sam")).one()
        assert state.flow == "idle"
        flag = session.exec(select(SafetyFlag)).one()
        assert flag.level == FlagLevel.CRISIS and flag.reasons and flag.acknowledged_at is None
        to_dana = session.exec(select(OutboxMessage).where(OutboxMessage.address == "therapist:Dana")).all()
        alert_row = next(m for m in to_dana if m.payload["kind"] == "alert")
        # Reaches the therapist's outbox at the instant of the client's message (well within 5 s).
        assert alert_row.created_at == clock.now()
        assert alert_row.payload["options"] == [{"value": "/ack 1", "label": "Acknowledge"}]


def test_the_client_can_keep_writing_and_every_message_is_screened(
    sqlite_companion: Companion, dana: Chat, sam: Chat
) -> None:
    sam.send(CRISIS)
    assert "You're welcome" in sam.send("ok")
    assert "Samaritans" in sam.send("i want to die")
    dana.open()
    assert [f.level for f in _flags(sqlite_companion)] == ["crisis", "crisis"]


def test_an_unacknowledged_alert_is_sent_again_once(
    sqlite_companion: Companion, dana: Chat, sam: Chat, clock: FrozenClock
) -> None:
    sam.send(CRISIS)
    dana.open()
    clock.advance(minutes=14)
    assert sweep(db=sqlite_companion.db, engine=sqlite_companion.engine).alerts_escalated == 0
    clock.advance(minutes=1)
    assert sweep(db=sqlite_companion.db, engine=sqlite_companion.engine).alerts_escalated == 1
    again = dana.open()
    assert "REMINDER, not yet acknowledged" in again and "/ack 1" in again
    clock.advance(minutes=30)
    assert sweep(db=sqlite_companion.db, engine=sqlite_companion.engine).alerts_escalated == 0


def test_acknowledging_records_who_and_when_and_stops_the_re_alert(
    sqlite_companion: Companion, dana: Chat, sam: Chat, clock: FrozenClock
) -> None:
    sam.send(CRISIS)
    clock.advance(minutes=3)
    assert "Alert #1 for Sam acknowledged" in dana.send("/ack 1 called Sam, safe with partner")
    assert "already acknowledged" in dana.send("/ack 1")
    assert "no open alert #99" in dana.send("/ack 99")
    clock.advance(minutes=30)
    assert sweep(db=sqlite_companion.db, engine=sqlite_companion.engine).alerts_escalated == 0
    (flag,) = _flags(sqlite_companion)
    assert flag.acknowledged_at == clock.now() - timedelta(minutes=30)
    assert flag.ack_note == "called Sam, safe with partner" and flag.acknowledged_by == 1


def test_another_therapist_cannot_acknowledge(sqlite_companion: Companion, sam: Chat) -> None:
    sam.send(CRISIS)
    add_therapist(sqlite_companion, "Eli")
    assert "no open alert #1" in Chat(sqlite_companion, "therapist", "Eli").send("/ack 1")


def test_the_re_alert_goes_to_every_chat_and_the_fallback_contact(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path
) -> None:
    companion = make_companion(
        sqlite_url,
        clock,
        tmp_path,
        safety={"crisis_resources": {"US": ["988"]}, "fallback_contact": "console:therapist:Practice Lead"},
    )
    add_therapist(companion)
    dana = Chat(companion, "therapist", "Dana")
    sam = join(companion, dana, "Sam", "sam", tz="New York")
    with companion.db.unit_of_work() as session:  # Dana also linked a second chat, most recently
        q.link_identity(session, channel="console", address="therapist:Dana-phone", now=clock.now(), therapist_id=1)
    phone = Chat(companion, "therapist", "Dana-phone")
    lead = Chat(companion, "therapist", "Practice Lead")
    assert "988" in sam.send("I took all my pills an hour ago")
    assert "URGENT" in phone.open() and dana.open() == ""
    assert "sent again and to the practice contact" in phone.out.getvalue()
    clock.advance(minutes=15)
    sweep(db=companion.db, engine=companion.engine)
    # Only console chats: every one of them, the first alert's included (issue 16: re-alerts that reach).
    assert "REMINDER" in dana.open() and "REMINDER" in phone.open()
    assert "REMINDER" in lead.open()
    companion.db.dispose()


def test_nudges_stay_held_until_the_therapist_resumes(sqlite_companion: Companion, dana: Chat, sam: Chat) -> None:
    sam.send(CRISIS)
    sam.send("/resume")  # the client cannot lift the hold themselves
    with sqlite_companion.db.unit_of_work() as session:
        assert session.exec(select(Client)).one().crisis_since is not None
    assert "Reminders for Sam are on again" in dana.send("/resume Sam")
    assert "were not on hold" in dana.send("/resume Sam")
    with sqlite_companion.db.unit_of_work() as session:
        assert session.exec(select(Client)).one().crisis_since is None


def test_a_concern_gets_a_gentle_check_in_and_the_dialog_continues(
    sqlite_companion: Companion, dana: Chat, sam: Chat
) -> None:
    sam.send("done")
    reply = sam.send("Walked a bit but honestly I feel like such a burden to everyone")
    assert "Dana will see it" in reply
    assert "What surprised you" in reply  # the answer was taken and the debrief goes on
    assert "URGENT" not in dana.open()
    (flag,) = _flags(sqlite_companion)
    assert flag.level == FlagLevel.CONCERN
    with sqlite_companion.db.unit_of_work() as session:
        assert session.exec(select(Client)).one().crisis_since is None
    digest = dana.send("/digest Sam")
    assert "Risk and scope flags:" in digest and "concern" in digest and "burden" in digest


@pytest.mark.parametrize(
    "question",
    [
        "Should I stop taking my sertraline?",
        "do you think I have bipolar disorder",
        "Am I depressed?",
        "what dose of propranolol should i take before the bus",
        "can I drink wine on my antidepressants",
        "Could you be my therapist instead?",
    ],
)
def test_out_of_scope_questions_point_to_the_therapist_and_are_noted(
    sqlite_companion: Companion, sam: Chat, question: str
) -> None:
    sam.send("done")
    reply = sam.send(question)
    if any(word in question for word in ("sertraline", "propranolol", "antidepressants")):
        # Medication: never change it without the prescriber, and the question is kept for the therapist.
        assert "speak to the doctor or nurse who prescribes it before you change anything" in reply
        assert "noted the question for Dana" in reply
    else:
        assert "one for Dana" in reply and "can't advise on diagnoses, medication or treatment" in reply
    assert "What happened" not in reply
    assert FlagLevel.SCOPE in [f.level for f in _flags(sqlite_companion)]
    # The question was not taken as the answer: the debrief question is still open.
    assert "What surprised you" in sam.send("I walked for 20 minutes")


def test_homework_questions_are_in_scope(sqlite_companion: Companion, sam: Chat) -> None:
    sam.send("/log should I do the walk again tomorrow even if it rains?")
    assert _flags(sqlite_companion) == []


def test_a_stranger_in_crisis_gets_resources_and_no_one_is_named(sqlite_companion: Companion, dana: Chat) -> None:
    reply = Chat(sqlite_companion, "client", "stranger").send("i want to end my life")
    assert "local emergency number" in reply and "Dana" not in reply
    assert dana.open() == ""


def test_a_crisis_buried_in_a_too_long_message_is_still_answered(sam: Chat) -> None:
    long_report = "Walked to the park and back. " * 150 + CRISIS + " Anyway. " * 50
    assert "Samaritans" in sam.send(long_report)


def test_the_digest_shows_alerts_with_their_acknowledgement(sqlite_companion: Companion, dana: Chat, sam: Chat) -> None:
    sam.send(CRISIS)
    digest = dana.send("/digest Sam")
    assert "CRISIS (#1)" in digest and "[NOT acknowledged]" in digest
    assert "Check in on the crisis flag(s) first (1)." in digest
    dana.send("/ack 1")
    assert "[acknowledged" in dana.send("/digest Sam")


def test_the_bot_is_an_assistant_when_asked_even_in_crisis_hold(sam: Chat) -> None:
    sam.send(CRISIS)
    assert "automated assistant, not a person" in sam.send("are you a real person")


@pytest.fixture
def cli_config(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "config.yaml"
    path.write_text("database:\n  path: c.db\nsafety:\n  alert_ack_minutes: 1\n", encoding="utf-8")
    yield path


def test_companion_tick_runs_the_sweep(cli_config: Path) -> None:
    result = CliRunner().invoke(app, ["tick", "--config", str(cli_config)])
    assert result.exit_code == 0 and "0 nudge(s) sent" in result.output and "0 alert(s) re-sent" in result.output


def test_an_open_therapist_console_shows_the_alert_within_5_seconds(sqlite_companion: Companion, sam: Chat) -> None:
    """The issue's latency requirement, through the real watcher thread of an interactive chat.

    The alert is committed with the client's reply; the watcher polls the
    outbox (here every 50 ms). The wait is on the condition, bounded by the
    requirement itself, not a sleep.
    """
    import threading
    import time

    watcher = Chat(sqlite_companion, "therapist", "Dana")
    watcher.open()
    stop = threading.Event()
    watcher.channel.watch(stop, interval=0.05)
    try:
        sent = time.monotonic()
        sam.send(CRISIS)
        deadline = sent + 5.0
        while "URGENT" not in watcher.out.getvalue() and time.monotonic() < deadline:
            stop.wait(0.01)
        assert "URGENT: possible crisis for Sam" in watcher.out.getvalue()
    finally:
        stop.set()
