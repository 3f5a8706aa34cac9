"""Client flows and bad input: restarts, obstacles, notes, pause/stop, strangers, odd text."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from bot.wiring import Companion
from dialogs.clock import FrozenClock
from storage import Client, ClientStatus, ConversationState, Debrief, DebriefKind, DebriefStatus, Homework, LogEntry
from tests.conftest import make_companion
from tests.support import Chat, add_therapist, join

HOMEWORK = (
    "/homework Sam\ntitle: Exposure ladder step 2\ntype: exposure\nwhat: stand in a queue for 5 minutes\n"
    "when: Wednesday lunchtime\nwhere: the supermarket\nwith whom: alone\nrecord: distress 0-100 before and after\n"
    "rationale: staying until distress falls teaches that it falls by itself"
)


@pytest.fixture
def dana(sqlite_companion: Companion) -> Chat:
    add_therapist(sqlite_companion)
    return Chat(sqlite_companion, "therapist", "Dana")


@pytest.fixture
def sam(sqlite_companion: Companion, dana: Chat) -> Chat:
    client = join(sqlite_companion, dana, "Sam", "sam")
    dana.send(HOMEWORK)
    client.open()
    client.send("so I learn the anxiety passes")
    client.send("9")
    client.send("9")  # importance
    return client


def test_a_restart_mid_debrief_resumes_where_it_was(
    sqlite_companion: Companion, sam: Chat, clock: FrozenClock, sqlite_url: str, tmp_path: object
) -> None:
    sam.send("done")
    sam.send("Queued for 5 minutes")
    # A new process: new engine, new connections, same database.
    sqlite_companion.db.dispose()
    restarted = make_companion(sqlite_url, clock, tmp_path)  # type: ignore[arg-type]
    again = Chat(restarted, "client", "sam")
    assert "hard" in again.send("How quickly it passed")
    again.send("My legs shook")
    assert "distress did you feel at the start" in again.send("It passes")
    assert "at the end" in again.send("70")
    assert "How much" in again.send("20%")
    again.send("4")
    with restarted.db.unit_of_work() as session:
        debrief = session.exec(select(Debrief)).one()
        assert debrief.what_happened == "Queued for 5 minutes" and debrief.surprised == "How quickly it passed"
        assert debrief.ratings == {"distress_before": 70, "distress_after": 20}
        assert debrief.status == DebriefStatus.COMPLETE
    restarted.db.dispose()


def test_not_doing_it_starts_problem_solving_not_scolding(sqlite_companion: Companion, sam: Chat) -> None:
    opening = sam.send("I didn't do it")
    assert "not a failure" in opening and "What got in the way" in opening
    assert "more doable" in sam.send("I was too tired after work")
    closing = sam.send("Do it on Saturday morning instead")
    assert "adjust the task" in closing
    for reply in (opening, closing):
        assert not any(word in reply.lower() for word in ("disappoint", "should have", "failed to"))
    with sqlite_companion.db.unit_of_work() as session:
        debrief = session.exec(select(Debrief)).one()
        assert debrief.kind == DebriefKind.OBSTACLE and debrief.quantity == 0
        assert debrief.obstacle == "I was too tired after work"


def test_didnt_do_it_after_a_new_homework_is_about_the_new_one(
    sqlite_companion: Companion, dana: Chat, sam: Chat
) -> None:
    """A delivered homework closes the earlier one into history (dialogs.history), so there is one to ask about."""
    dana.send("/homework Sam\ntitle: Thought record\nwhat: one record a day\nrationale: catching the thought")
    dana.send("save")
    sam.open()
    sam.send("it helps me notice")
    sam.send("8")
    sam.send("8")  # importance
    assert "What got in the way" in sam.send("didn't do it")
    sam.send("I was ill")
    sam.send("a shorter queue")
    with sqlite_companion.db.unit_of_work() as session:
        (obstacle,) = session.exec(select(Debrief).where(Debrief.kind == DebriefKind.OBSTACLE)).all()
        homework = session.get(Homework, obstacle.homework_id)
        assert homework is not None and homework.title == "Thought record"
        (older,) = [h for h in session.exec(select(Homework)) if h.title == "Exposure ladder step 2"]
        assert older.closed_at is not None  # titles are encrypted: found in Python, not in SQL


def test_low_confidence_offers_a_smaller_version_and_tells_the_therapist(
    sqlite_companion: Companion, dana: Chat
) -> None:
    sam = join(sqlite_companion, dana, "Sam", "sam")
    dana.send(HOMEWORK)
    sam.open()
    sam.send("it helps me")
    assert "0 to 10" in sam.send("eleven")
    assert "how important" in sam.send("4").casefold()
    assert "smaller step" in sam.send("9")
    assert "Noted" in sam.send("yes")
    assert "confidence 4/10, importance 9/10 (low: confidence) and would like a smaller" in dana.open()
    with sqlite_companion.db.unit_of_work() as session:
        homework = session.exec(select(Homework)).one()
        assert homework.confidence == 4 and homework.importance == 9 and homework.smaller_version_wanted


def test_homework_set_mid_debrief_arrives_when_the_debrief_ends(
    sqlite_companion: Companion, dana: Chat, sam: Chat
) -> None:
    sam.send("done")
    dana.send("/homework Sam\ntitle: Second step\nwhat: queue for 10 minutes")
    assert "finish what they're doing" in dana.send("save")
    sam.send("Queued")  # the debrief continues undisturbed
    for answer in ("nothing", "waiting", "it passes", "60", "20"):
        sam.send(answer)
    assert "New homework from Dana: Second step" in sam.send("3")


def test_log_without_homework_and_with_a_prompt(sqlite_companion: Companion, dana: Chat) -> None:
    kim = join(sqlite_companion, dana, "Kim", "kim")
    assert "What would you like to note" in kim.send("/log")
    assert "Noted" in kim.send("Slept badly, woke at 4")
    with sqlite_companion.db.unit_of_work() as session:
        entry = session.exec(select(LogEntry)).one()
        assert entry.text == "Slept badly, woke at 4" and entry.homework_id is None


def test_pause_resume_and_stop(sqlite_companion: Companion, dana: Chat, sam: Chat) -> None:
    assert "paused" in sam.send("/pause")
    assert "Sam paused" in dana.open()
    assert "on again" in sam.send("/resume")
    stopped = sam.send("/stop")
    assert "won't send you any more messages" in stopped and "send /resume" in stopped
    assert "Sam asked to stop" in dana.open()
    # While stopped: no homework goes out, and every message gets the same short reply.
    dana.send("/homework Sam\ntitle: Third step\nwhat: queue")
    assert "They are stopped" in dana.send("save")
    assert "stopped messages" in sam.send("done")
    assert sam.open() == ""
    assert "on again" in sam.send("/resume")
    with sqlite_companion.db.unit_of_work() as session:
        assert session.exec(select(Client)).one().status == ClientStatus.ACTIVE


def test_the_bot_says_it_is_not_a_person_without_losing_the_step(sam: Chat) -> None:
    sam.send("done")
    reply = sam.send("Are you a real person?")
    assert "automated assistant, not a person" in reply
    assert "surprised" in sam.send("Queued for five minutes")


def test_a_client_command_mid_flow_leaves_the_flow(sqlite_companion: Companion, sam: Chat) -> None:
    sam.send("done")
    sam.send("Queued")
    assert "current homework" in sam.send("/homework")
    assert "didn't catch that" in sam.send("hmm")
    with sqlite_companion.db.unit_of_work() as session:
        assert (
            session.exec(select(ConversationState).where(ConversationState.address == "client:sam")).one().flow
            == "idle"
        )


def test_an_unknown_sender_learns_nothing(sqlite_companion: Companion, dana: Chat, sam: Chat) -> None:
    stranger = Chat(sqlite_companion, "client", "stranger")
    replies = {stranger.send(text) for text in ("hi", "/clients", "/digest Sam", "/homework", "done", "Sam")}
    assert len(replies) == 1
    (only,) = replies
    assert "/start CODE" in only and "Sam" not in only and "Dana" not in only


def test_a_client_cannot_use_therapist_commands(sam: Chat) -> None:
    for command in ("/invite Eve", "/clients", "/digest"):
        assert "That command is for therapists" in sam.send(command)


def test_a_linked_client_sending_start_again(sam: Chat) -> None:
    assert "already connected" in sam.send("/start ABCDEFGH")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty message"),
        ("   \n\t ", "empty message"),
        ("\x00\x07\x1b", "empty message"),
        ("x" * 10_000, "4000 characters at most"),
        ("🙂🙂🙂", "didn't catch that"),
        ("שלום, מה שלומך", "keep it as a note"),
        ("\u202eenod", "didn't catch that"),
        ("/", "don't know the command"),
        ("/nonsense", "don't know the command"),
    ],
)
def test_bad_input_gets_a_clear_reply(sam: Chat, text: str, expected: str) -> None:
    assert expected in sam.send(text)


def test_a_long_message_mid_debrief_is_refused_not_truncated(sqlite_companion: Companion, sam: Chat) -> None:
    sam.send("done")
    assert "shorter version" in sam.send("a" * 5000)
    assert "surprised" in sam.send("Queued")
    with sqlite_companion.db.unit_of_work() as session:
        assert session.exec(select(Debrief)).one().what_happened == "Queued"


def test_a_redelivered_message_is_handled_once(sqlite_companion: Companion, sam: Chat) -> None:
    from dialogs.messages import Inbound

    inbound = Inbound(channel="console", address="client:sam", text="/log same note", message_id="m-1")
    with sqlite_companion.db.unit_of_work() as session:
        first = sqlite_companion.engine.handle(session, inbound)
    with sqlite_companion.db.unit_of_work() as session:
        second = sqlite_companion.engine.handle(session, inbound)
    assert first > 0 and second == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
def test_any_text_in_any_state_gets_a_reply_and_never_crashes(sam: Chat, text: str) -> None:
    assert sam.send(text).strip()


def test_free_text_outside_a_flow_is_offered_as_a_note(sqlite_companion: Companion, sam: Chat) -> None:
    reply = sam.send("had an awful day at work, my boss shouted at me again")
    assert "keep it as a note for Dana" in reply and "/help" in reply and "(Yes · No)" in reply
    assert "Noted" in sam.send("yes")
    assert "keep it as a note" in sam.send("the bus was late again this morning")
    assert "haven't kept it" in sam.send("no")
    # An offer left unanswered holds nothing back: the next message is read as usual.
    sam.send("I keep thinking about what he said")
    assert "What happened" in sam.send("done")
    with sqlite_companion.db.unit_of_work() as session:
        notes = [e.text for e in session.exec(select(LogEntry))]
        assert notes == ["had an awful day at work, my boss shouted at me again"]
        state = session.exec(select(ConversationState).where(ConversationState.address == "client:sam")).one()
        assert state.flow == "debrief"
