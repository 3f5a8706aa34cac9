"""A whole client week through the console channel, on SQLite and on PostgreSQL."""

from __future__ import annotations

from sqlmodel import select

from bot.wiring import Companion
from dialogs.clock import FrozenClock
from storage import Client, ClientStatus, Debrief, DebriefStatus, Homework, LogEntry, OutboxMessage
from tests.support import Chat, add_therapist, invite_code


def test_a_client_week(companion: Companion, clock: FrozenClock) -> None:
    # Monday, in session: the therapist is added, invites Sam and sets the next session.
    add_therapist(companion, "Dana", "Europe/London")
    dana = Chat(companion, "therapist", "Dana")
    invite = dana.send("/invite Sam")
    code = invite_code(invite)
    assert "/start " + code in invite

    # Homework set before Sam has joined waits for them.
    reply = dana.send(
        "/homework Sam\n"
        "title: Bus experiment\n"
        "type: behavioural experiment\n"
        "what: ride the bus two stops without holding the rail\n"
        "when: Saturday 10:00\n"
        "where: the 73 from the corner of my street\n"
        "with whom: alone\n"
        "record: belief I'll faint, 0-100, before and after\n"
        "rationale: you avoid the bus because you predict you'll faint; this tests that prediction\n"
        "due: in 6 days"
    )
    assert "Saved homework #" in reply and "haven't joined yet" in reply
    assert "next session" in dana.send("/session Sam mon 10am").lower()

    # Tuesday: Sam joins with the code typed in lower case.
    clock.advance(days=1)
    sam = Chat(companion, "client", "sam-phone")
    consent = sam.send(f"/start {code.lower()}")
    assert "automated assistant, not a person" in consent and "not for emergencies" in consent
    assert "time zone" in sam.send("yes")
    assert "18:00" in sam.send("Manchester")
    joined = sam.send("6pm")
    # Joining delivers the waiting homework with its rationale, and asks for Sam's own words.
    assert "All set" in joined
    assert "New homework from Dana: Bus experiment" in joined
    assert "this tests that prediction" in joined
    assert "In your own words" in joined
    assert "Sam has joined" in dana.open()

    assert "How confident" in sam.send("To learn whether I actually faint on the bus")
    assert "how important" in sam.send("8").casefold()
    assert "When you've done it" in sam.send("9")

    # Saturday: the debrief, with the experiment's before/after belief ratings.
    clock.advance(days=4)
    assert "What happened" in sam.send("done")
    assert "surprised" in sam.send("Rode two stops at 10am, held my bag instead of the rail")
    assert "hard" in sam.send("I didn't faint at all")
    assert "learn" in sam.send("The first minute, heart racing")
    assert "Before the experiment" in sam.send("Anxiety peaked and then came down by itself")
    assert "And now" in sam.send("85")
    assert "How much of it did you do?" in sam.send("30")
    assert "saved for Dana" in sam.send("4")

    # Sunday: a note, then the therapist reads the digest.
    clock.advance(days=1)
    assert "about your homework" in sam.send("/log I took the bus to work today as well")
    assert "Noted" in sam.send("yes")

    digest = dana.send("/digest Sam")
    for expected in (
        "Bus experiment",
        "“To learn whether I actually faint on the bus”",
        "Confidence: 8/10",
        "amounts (0–4): 4",
        "✓ all questions answered 1/1",
        "Ratings: belief before 85, belief after 30",
        "“Rode two stops at 10am, held my bag instead of the rail”",
        "“I didn't faint at all”",
        "“The first minute, heart racing”",
        "“Anxiety peaked and then came down by itself”",
        "“I took the bus to work today as well”",
        "Review agenda",
    ):
        assert expected in digest, expected

    with companion.db.unit_of_work() as session:
        client = session.exec(select(Client)).one()
        assert client.status == ClientStatus.ACTIVE
        assert client.timezone == "Europe/London" and client.nudge_time == "18:00"
        homework = session.exec(select(Homework)).one()
        assert homework.rationale_own_words == "To learn whether I actually faint on the bus"
        assert homework.confidence == 8 and homework.importance == 9 and not homework.smaller_version_wanted
        assert homework.type == "behavioural_experiment" and homework.where is not None
        debrief = session.exec(select(Debrief)).one()
        assert debrief.status == DebriefStatus.COMPLETE and debrief.quantity == 4
        assert debrief.ratings == {"belief_before": 85, "belief_after": 30}
        assert session.exec(select(LogEntry)).one().homework_id == homework.id
        # Everything that was said went through the outbox and was delivered.
        assert all(m.sent_at is not None for m in session.exec(select(OutboxMessage)))
