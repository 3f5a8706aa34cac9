"""The review loop: /reviewed marks a homework, the note stays the therapist's, and the digest counts it."""

from __future__ import annotations

import json

from sqlmodel import select

from bot.wiring import Companion
from storage import AuditEntry, Homework
from tests.support import Chat, add_therapist, join

TASK = "\ntitle: {title}\nwhat: walk\nwhen: 10:00\nwhere: park\nwith whom: alone\nrecord: mood\nrationale: mood"


def setup(companion: Companion) -> tuple[Chat, Chat]:
    add_therapist(companion, "Dana", "Europe/London")
    dana = Chat(companion, "therapist", "Dana")
    sam = join(companion, dana, "Sam", "sam")
    return dana, sam


def homework(dana: Chat, sam: Chat, title: str) -> None:
    dana.send("/homework Sam" + TASK.format(title=title))
    sam.open()
    for answer in ("it helps", "8", "8"):
        sam.send(answer)


def test_reviewed_marks_the_newest_unmarked_homework_and_the_digest_counts(companion: Companion) -> None:
    dana, sam = setup(companion)
    assert "has no homework to review" in dana.send("/reviewed Sam")
    homework(dana, sam, "Walk")
    assert "Marked homework #1 “Walk” reviewed for Sam" in dana.send("/reviewed Sam went well, keep the time")
    assert "already marked reviewed" in dana.send("/reviewed Sam 1 and build up to 30 minutes")
    dana.send("/close Sam 1")
    homework(dana, sam, "Walk further")
    dana.send("/close Sam 2")  # closed without a review mark
    digest = dana.send("/digest Sam")
    assert "Reviewed in session: 1 of the last 2 homework(s)" in digest
    assert "Not reviewed: #2 “Walk further” closed" in digest
    assert "“Walk further” closed without a review" in digest  # on the agenda
    overview = dana.send("/digest")
    assert "reviewed 1 of 2" in overview and "homework closed without review" in overview
    assert "no safety plan" in overview
    assert "Sam has no homework #9" in dana.send("/reviewed Sam 9")
    with companion.db.unit_of_work() as session:
        first = session.get(Homework, 1)
        assert first is not None and first.review_note == "and build up to 30 minutes" and first.reviewed_by == 1
        actions = [e.action for e in session.exec(select(AuditEntry))]
        assert actions.count("homework.review") == 2


def test_the_review_note_is_the_therapists_own(companion: Companion) -> None:
    dana, sam = setup(companion)
    homework(dana, sam, "Walk")
    dana.send("/reviewed Sam 1 avoidance came up again: revisit the formulation")
    reply = sam.send("/mydata")
    document = json.loads(reply[reply.index("{") :])
    assert "review_note" not in document["homework"][0] and "avoidance came up" not in reply
    assert document["homework"][0]["importance"] == 8
    add_therapist(companion, "Eli")
    assert "No client called “Sam 1”" in Chat(companion, "therapist", "Eli").send("/reviewed Sam 1")
