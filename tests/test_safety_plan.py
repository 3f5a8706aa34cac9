"""The safety plan: set by the therapist (step by step or in one message), read by the client, first in a crisis."""

from __future__ import annotations

import os
from pathlib import Path

from sqlmodel import select

from bot.wiring import Companion
from storage import AuditEntry, SafetyFlag, SafetyPlan
from tests.support import Chat, add_therapist, join

GOLDEN = Path(__file__).parent / "golden"
PLAN = (
    "/plan Sam\n"
    "warning signs: staying in bed all day; not answering texts\n"
    "coping: cold water on my face; the breathing app; walk round the block\n"
    "distractions: the café on Mill Road\n"
    "people: Alex (sister): 07700 900123; Jo: 07700 900456\n"
    "professionals: Dana's practice, Mon–Fri 9–5: 020 7946 0000; GP out of hours: 111\n"
    "environment: the tablets stay with Alex"
)


def golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text + "\n", encoding="utf-8")
    assert text + "\n" == path.read_text(encoding="utf-8"), f"reply differs from {path} (UPDATE_GOLDEN=1 to accept)"


def setup(companion: Companion) -> tuple[Chat, Chat]:
    add_therapist(companion, "Dana", "Europe/London")
    dana = Chat(companion, "therapist", "Dana")
    sam = join(companion, dana, "Sam", "sam")
    return dana, sam


def test_the_crisis_reply_without_a_plan_is_unchanged(companion: Companion) -> None:
    _, sam = setup(companion)
    assert "safety plan" in sam.send("/plan")
    golden("crisis_without_plan", sam.send("I want to kill myself tonight"))


def test_a_plan_in_one_message_is_read_by_the_client_and_comes_first_in_a_crisis(companion: Companion) -> None:
    dana, sam = setup(companion)
    saved = dana.send(PLAN)
    assert "Saved Sam's safety plan" in saved and "• Alex (sister): 07700 900123" in saved
    assert "saved the safety plan you made together" in sam.open()

    mine = sam.send("/plan")
    assert mine.startswith("Your safety plan, made with Dana:")
    for expected in ("1. Warning signs:", "• cold water on my face", "• Jo: 07700 900456", "6. Making my surroundings"):
        assert expected in mine, expected

    reply = sam.send("I want to kill myself tonight")
    golden("crisis_with_plan", reply)
    # Their own steps and people come before the resources and the emergency number.
    assert reply.index("cold water on my face") < reply.index("Alex (sister)") < reply.index("Samaritans")
    assert reply.index("Samaritans") < reply.index("emergency number")
    assert "URGENT" in dana.open()
    with companion.db.unit_of_work() as session:
        assert session.exec(select(SafetyFlag)).one().level == "crisis"
        actions = [e.action for e in session.exec(select(AuditEntry))]
        assert "plan.set" in actions and "plan.read" in actions


def test_a_client_who_stopped_messages_can_still_read_their_plan(companion: Companion) -> None:
    dana, sam = setup(companion)
    dana.send(PLAN)
    sam.open()
    sam.send("/stop")
    assert "• cold water on my face" in sam.send("/plan")
    assert "You've stopped messages" in sam.send("/homework")


def test_the_step_by_step_form_keeps_skipped_steps(companion: Companion) -> None:
    dana, sam = setup(companion)
    dana.send(PLAN)
    first = dana.send("/plan Sam")
    assert "Safety plan for Sam, last reviewed" in first and "Step 1 of 6" in first
    assert "Now: staying in bed all day; not answering texts" in first
    assert "Step 2 of 6" in dana.send("skip")
    assert "Step 3 of 6" in dana.send("Listen to the playlist Jo made\nCall Alex")
    for _ in range(3):
        dana.send("skip")
    saved = dana.send("skip")
    assert "Saved Sam's safety plan" in saved
    with companion.db.unit_of_work() as session:
        plan = session.exec(select(SafetyPlan)).one()
        assert plan.warning_signs == "staying in bed all day; not answering texts"
        assert plan.coping == "Listen to the playlist Jo made\nCall Alex"
        assert plan.environment == "the tablets stay with Alex"
    assert "• Listen to the playlist Jo made" in sam.send("/plan")


def test_a_plan_without_coping_steps_or_people_leaves_the_crisis_reply_as_it_was(companion: Companion) -> None:
    dana, sam = setup(companion)
    dana.send("/plan Sam\nenvironment: the tablets stay with Alex")
    reply = sam.send("I want to kill myself tonight")
    assert "You made a safety plan" not in reply and "Samaritans" in reply


def test_a_bad_step_name_saves_nothing_and_another_therapists_client_is_unknown(companion: Companion) -> None:
    dana, _ = setup(companion)
    assert "I don't know the plan step “mood”" in dana.send("/plan Sam\nmood: low")
    add_therapist(companion, "Eli")
    eli = Chat(companion, "therapist", "Eli")
    assert "No client called “Sam”" in eli.send("/plan Sam\ncoping: walk")
    assert "/plan NAME" in dana.send("/plan")
    with companion.db.unit_of_work() as session:
        assert session.exec(select(SafetyPlan)).first() is None
