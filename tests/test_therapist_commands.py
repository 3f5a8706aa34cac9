"""Therapist commands and joining: codes, ownership, the homework draft, sessions."""

from __future__ import annotations

import re
from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st
from sqlmodel import select

from bot.wiring import Companion
from dialogs.clock import FrozenClock
from dialogs.onboarding import CODE_ALPHABET, join_code, new_code
from storage import Client, Homework, Identity
from tests.support import Chat, add_therapist, invite_code, join

FULL_HOMEWORK = (
    "title: Paced breathing\n"
    "type: custom\n"
    "what: 10 minutes of paced breathing\n"
    "when: every evening at 21:00\n"
    "where: bedroom\n"
    "with whom: alone\n"
    "record: tension 0-10 before and after\n"
    "rationale: practising when calm makes it usable when anxious"
)


def test_invite_code_is_a_standalone_unambiguous_token(sqlite_companion: Companion) -> None:
    add_therapist(sqlite_companion)
    reply = Chat(sqlite_companion, "therapist", "Dana").send("/invite Alex Smith")
    code = invite_code(reply)
    assert re.fullmatch(r"[A-HJKMNP-Z2-9]{8}", code)
    assert not set(code) & set("0O1IL")


@given(st.integers(min_value=0, max_value=10_000))
def test_generated_codes_use_only_the_alphabet(_: int) -> None:
    code = new_code()
    assert 6 <= len(code) <= 12 and set(code) <= set(CODE_ALPHABET)


@given(
    st.text(alphabet=CODE_ALPHABET + CODE_ALPHABET.lower(), min_size=8, max_size=8),
    st.sampled_from(["/start", "join", "/join", "JOIN"]),
)
def test_join_code_parses_any_case(code: str, verb: str) -> None:
    assert join_code(f"{verb} {code}") == code.upper()
    assert join_code(f"  {verb}   {code[:4]}-{code[4:]} ") == code.upper()


@given(st.text(max_size=200))
def test_join_code_never_raises(text: str) -> None:
    result = join_code(text)
    assert result is None or result.isalnum()


def test_a_code_works_once_and_expires(sqlite_companion: Companion, clock: FrozenClock) -> None:
    add_therapist(sqlite_companion)
    dana = Chat(sqlite_companion, "therapist", "Dana")
    code = invite_code(dana.send("/invite Sam"))
    first = Chat(sqlite_companion, "client", "first")
    first.send(f"/start {code}")
    first.send("yes")
    # The same code from another chat no longer works once consent spent it.
    other = Chat(sqlite_companion, "client", "other")
    assert "didn't work" in other.send(f"/start {code}")

    late = invite_code(dana.send("/invite Kim"))
    clock.advance(days=7, seconds=1)
    assert "didn't work" in Chat(sqlite_companion, "client", "late").send(f"join {late}")


def test_five_wrong_codes_lock_the_chat_for_an_hour(sqlite_companion: Companion, clock: FrozenClock) -> None:
    add_therapist(sqlite_companion)
    code = invite_code(Chat(sqlite_companion, "therapist", "Dana").send("/invite Sam"))
    guesser = Chat(sqlite_companion, "client", "guesser")
    for _ in range(5):
        assert "didn't work" in guesser.send("/start ABCDEFGH")
    # Even the right code is refused while locked...
    assert "wait an hour" in guesser.send(f"/start {code}")
    # ...and accepted after the hour.
    clock.advance(hours=1, seconds=1)
    assert "Welcome, Sam" in guesser.send(f"/start {code}")


def test_declining_consent_stores_nothing(sqlite_companion: Companion) -> None:
    add_therapist(sqlite_companion)
    code = invite_code(Chat(sqlite_companion, "therapist", "Dana").send("/invite Sam"))
    sam = Chat(sqlite_companion, "client", "sam")
    sam.send(f"/start {code}")
    assert "Nothing has been stored" in sam.send("no")
    with sqlite_companion.db.unit_of_work() as session:
        assert session.exec(select(Identity).where(Identity.address == "client:sam")).first() is None
    # The code is still good for when they change their mind.
    assert "Welcome, Sam" in sam.send(f"/start {code}")


def test_a_therapist_only_reaches_their_own_clients(sqlite_companion: Companion) -> None:
    add_therapist(sqlite_companion, "Dana")
    add_therapist(sqlite_companion, "Eli")
    dana = Chat(sqlite_companion, "therapist", "Dana")
    eli = Chat(sqlite_companion, "therapist", "Eli")
    join(sqlite_companion, dana, "Sam", "sam")
    for command in ("/homework Sam", "/homeworks Sam", "/close Sam 1", "/session Sam tue 10am", "/digest Sam"):
        reply = eli.send(command)
        assert "No client called “Sam" in reply, command
    assert "no clients yet" in eli.send("/clients")
    assert "Sam" not in eli.send("/digest")


def test_one_message_homework_names_what_is_missing(sqlite_companion: Companion) -> None:
    add_therapist(sqlite_companion)
    dana = Chat(sqlite_companion, "therapist", "Dana")
    join(sqlite_companion, dana, "Sam", "sam")
    reply = dana.send("/homework Sam\ntitle: Relax\nwhat: relax more")
    assert "Missing before it's specific: when, where, with whom, what to record and how, a rationale." in reply
    assert "save" in reply
    asked = dana.send("edit where")
    assert "Where?" in asked
    reply = dana.send("living room")
    missing_line = next(line for line in reply.splitlines() if line.startswith("Missing"))
    assert "Where: living room" in reply and "where" not in missing_line
    assert "I've sent it to them" in dana.send("save anyway")


def test_complete_one_message_homework_is_saved_at_once(sqlite_companion: Companion) -> None:
    add_therapist(sqlite_companion)
    dana = Chat(sqlite_companion, "therapist", "Dana")
    sam = join(sqlite_companion, dana, "Sam", "sam")
    assert "Saved homework #1" in dana.send("/homework sam\n" + FULL_HOMEWORK)
    received = sam.open()
    assert "New homework from Dana: Paced breathing" in received
    assert "Where: bedroom" in received and "Why it matters: practising when calm" in received


def test_conversational_homework_asks_each_field_and_allows_skips(sqlite_companion: Companion) -> None:
    add_therapist(sqlite_companion)
    dana = Chat(sqlite_companion, "therapist", "Dana")
    join(sqlite_companion, dana, "Sam Lee", "sam")
    assert "short title" in dana.send("/homework sam lee")
    assert "short title" in dana.send("skip")  # a title cannot be skipped
    assert "Which type" in dana.send("Thought record when anxious")
    assert "didn't recognise" in dana.send("astrology")
    assert "What exactly" in dana.send("1")
    assert "When?" in dana.send("fill in columns 1-3")
    assert "Where?" in dana.send("when anxiety is above 50")
    assert "With whom" in dana.send("skip")
    assert "record" in dana.send("alone")
    assert "Why this task" in dana.send("situation, emotion %, automatic thought")
    assert "Due by when" in dana.send("skip")
    assert "couldn't read" in dana.send("the twelfth of never")
    assert "Reminder times" in dana.send("in 7 days")
    assert "couldn't read those times" in dana.send("whenever")
    review = dana.send("8am, 6pm")
    assert "Missing before it's specific: where, a rationale." in review
    assert "Reminders: 08:00,18:00" in review
    assert "Saved homework" in dana.send("save")
    with sqlite_companion.db.unit_of_work() as session:
        homework = session.exec(select(Homework)).one()
        assert homework.type == "thought_record" and homework.where is None and homework.nudges == "08:00,18:00"
        assert homework.due is not None


def test_cancel_discards_the_draft(sqlite_companion: Companion) -> None:
    add_therapist(sqlite_companion)
    dana = Chat(sqlite_companion, "therapist", "Dana")
    join(sqlite_companion, dana, "Sam", "sam")
    dana.send("/homework Sam")
    dana.send("Breathing")
    assert "Nothing was saved" in dana.send("/cancel")
    with sqlite_companion.db.unit_of_work() as session:
        assert session.exec(select(Homework)).first() is None


def test_close_and_list_homework(sqlite_companion: Companion) -> None:
    add_therapist(sqlite_companion)
    dana = Chat(sqlite_companion, "therapist", "Dana")
    join(sqlite_companion, dana, "Sam", "sam")
    dana.send("/homework Sam\n" + FULL_HOMEWORK)
    assert "#1 Paced breathing (Custom), open" in dana.send("/homeworks sam")
    assert "Closed homework #1" in dana.send("/close Sam #1")
    assert "already closed" in dana.send("/close Sam 1")
    assert "has no homework #7" in dana.send("/close Sam 7")
    assert "closed" in dana.send("/homeworks Sam")


def test_session_time_is_read_in_the_therapists_zone(sqlite_companion: Companion, clock: FrozenClock) -> None:
    add_therapist(sqlite_companion, "Dana", "America/New_York")
    dana = Chat(sqlite_companion, "therapist", "Dana")
    join(sqlite_companion, dana, "Sam", "sam")
    # Monday 23 Nov 2026, 04:00 in New York: "tue 10am" is the next day, 15:00 UTC.
    assert "Tue 24 Nov 10:00 (America/New_York)" in dana.send("/session Sam tue 10am")
    with sqlite_companion.db.unit_of_work() as session:
        client = session.exec(select(Client)).one()
        assert client.next_session_at == clock.now().replace(hour=15) + timedelta(days=1)
    assert "couldn't read" in dana.send("/session Sam yesterday-ish")


def test_clients_lists_status_and_current_homework(sqlite_companion: Companion) -> None:
    add_therapist(sqlite_companion)
    dana = Chat(sqlite_companion, "therapist", "Dana")
    join(sqlite_companion, dana, "Sam", "sam")
    dana.send("/invite Kim")
    dana.send("/homework Sam\n" + FULL_HOMEWORK)
    listing = dana.send("/clients")
    assert "• Kim: invited; homework: none open" in listing
    assert "• Sam: active; homework: #1 Paced breathing" in listing


def test_inviting_an_active_client_again_is_refused(sqlite_companion: Companion) -> None:
    add_therapist(sqlite_companion)
    dana = Chat(sqlite_companion, "therapist", "Dana")
    join(sqlite_companion, dana, "Sam", "sam")
    assert "already joined" in dana.send("/invite sam")


def test_unknown_and_malformed_commands_get_clear_replies(sqlite_companion: Companion) -> None:
    add_therapist(sqlite_companion)
    dana = Chat(sqlite_companion, "therapist", "Dana")
    assert "don't know the command “/frobnicate”" in dana.send("/frobnicate")
    assert "Usage: /invite NAME" in dana.send("/invite")
    assert "Usage" in dana.send("/session")
    assert "Therapist commands" in dana.send("hello there")
    assert "Invite for Jo" in dana.send("invite Jo")  # bare words work like commands
