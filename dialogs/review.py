"""The review loop (Callan et al. 2019): the therapist marks each homework reviewed; the digest counts it.

A homework is *reviewed* when the therapist marked it (``/reviewed NAME [ID]
[note]``, the Slack digest's button, the dashboard's button); the note is the
therapist's own and is never shown to the client. The closing signal is
``Homework.status``/``closed_at``, whoever closed it (``/close``, or the
automatic close after the due date or when the next homework starts): a
homework closed without a review mark counts as "not reviewed". "Reviewed 6
of 8" counts the client's last :data:`LAST_N` homeworks that are closed or
already marked, newest first: each stands for the session that followed it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from dialogs.clinical import require_client
from dialogs.timeparse import format_local
from dialogs.turn import Turn
from storage import Homework, HomeworkStatus

LAST_N: Final = 8


@dataclass(frozen=True)
class NotReviewed:
    id: int
    title: str
    closed_at: datetime


@dataclass(frozen=True)
class ReviewCount:
    """How many of the last homeworks (each standing for the session after it) were reviewed, and which were not."""

    reviewed: int
    total: int
    not_reviewed: tuple[NotReviewed, ...]


def mark(session: Session, *, homework: Homework, therapist_id: int, note: str | None, now: datetime) -> bool:
    """Mark ``homework`` reviewed now (a second mark updates the note); True if it was not marked before."""
    first = homework.reviewed_at is None
    if first:
        homework.reviewed_at, homework.reviewed_by = now, therapist_id
    if note:
        homework.review_note = note
    session.add(homework)
    return first


def count(
    session: Session,
    *,
    client_id: int,
    last: int = LAST_N,
    homeworks: Iterable[Homework] | None = None,
    titles_since: datetime | None = None,
) -> ReviewCount:
    """The review count of one client's last ``last`` settled homeworks (closed, or marked while still open).

    ``homeworks``: the client's homework rows when the caller has them already (the digest loads their
    plain columns), saving a query; only the titles of those not reviewed are then read (decrypted), and
    with ``titles_since`` only of those closed since then (the digest names only those; the rest are counted).
    """
    if homeworks is not None:
        settled = sorted(
            (
                h
                for h in homeworks
                if h.delivered_at is not None and (h.status == HomeworkStatus.CLOSED or h.reviewed_at is not None)
            ),
            key=lambda h: -(h.id or 0),
        )[:last]
        rows: Sequence[Any] = [(h.id, h.status, h.closed_at, h.reviewed_at, h.created_at) for h in settled]
    else:
        rows = _settled(session, client_id, last)
    missing_ids = [r[0] for r in rows if r[3] is None and (titles_since is None or (r[2] or r[4]) >= titles_since)]
    titles: dict[int, str] = (
        {
            hid: title
            for hid, title in session.execute(
                sa_select(col(Homework.id), col(Homework.title)).where(col(Homework.id).in_(missing_ids))
            )
        }
        if missing_ids
        else {}
    )
    not_reviewed = tuple(NotReviewed(r[0] or 0, titles.get(r[0], ""), r[2] or r[4]) for r in rows if r[3] is None)
    return ReviewCount(reviewed=sum(1 for r in rows if r[3] is not None), total=len(rows), not_reviewed=not_reviewed)


def _settled(session: Session, client_id: int, last: int) -> Sequence[Any]:
    # Plain columns only: the (encrypted) titles are read for the few not reviewed.
    return session.execute(
        sa_select(
            col(Homework.id),
            col(Homework.status),
            col(Homework.closed_at),
            col(Homework.reviewed_at),
            col(Homework.created_at),
        )
        .where(
            col(Homework.client_id) == client_id,
            col(Homework.delivered_at).is_not(None),
            (col(Homework.status) == HomeworkStatus.CLOSED) | col(Homework.reviewed_at).is_not(None),
        )
        .order_by(col(Homework.id).desc())
        .limit(last)
    ).all()


def _default(session: Session, client_id: int) -> Homework | None:
    """The homework a bare ``/reviewed NAME`` means: the newest delivered one not yet marked."""
    return session.exec(
        select(Homework)
        .where(
            Homework.client_id == client_id,
            col(Homework.delivered_at).is_not(None),
            col(Homework.reviewed_at).is_(None),
        )
        .order_by(col(Homework.id).desc())
    ).first()


def cmd_reviewed(turn: Turn, rest: str) -> None:
    """``/reviewed NAME [ID] [note]``: mark a homework reviewed in session (the newest unmarked one without an ID)."""
    found = require_client(turn, rest, turn.t("review.usage"))
    if found is None:
        return
    client, remainder = found
    match = re.match(r"#?(\d{1,9})(?:\s+|$)", remainder)
    note = remainder[match.end() :].strip() if match else remainder.strip()
    homework = turn.session.get(Homework, int(match.group(1))) if match else _default(turn.session, client.id or 0)
    if homework is None or homework.client_id != client.id:
        if match:
            turn.say("review.not_found", client=client.name, id=match.group(1))
        else:
            turn.say("review.nothing", client=client.name)
        return
    assert turn.therapist is not None
    reviewed_before = homework.reviewed_at
    first = mark(turn.session, homework=homework, therapist_id=turn.therapist.id or 0, note=note or None, now=turn.now)
    turn.audit("homework.review", client, homework_id=homework.id, note=bool(note))
    if first or reviewed_before is None:
        turn.say("review.done", id=homework.id, title=homework.title, client=client.name)
    else:
        zone = turn.therapist.timezone
        turn.say("review.already", id=homework.id, when=format_local(reviewed_before, zone) or "—")
