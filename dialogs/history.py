"""History: when a homework leaves the current state, and the weekly sums the digest's trend reads.

A homework closes itself into history by whichever of two rules comes first
(a therapist's ``/close`` still works at any time):

- **Superseded** (:func:`supersede`): when the client's next homework is
  *delivered*, every earlier open homework of that client closes. "done",
  "didn't do it", "later" and the nudges always refer to one homework, the
  most recently delivered (:func:`storage.queries.current_homework`); an
  earlier one can no longer receive a debrief, so keeping it open only kept
  its reminders going (reminders the client could not answer) and made every
  turn, sweep and digest carry the client's whole history. It closes at
  delivery, not when the next one is set: a homework set while the client is
  mid-debrief waits for that debrief to end, so the client always finishes
  the homework they are talking about.
- **Expired** (:func:`close_expired`, run by the sweep): a homework whose due
  date passed more than ``DialogSettings.homework_grace`` ago (2 days by
  default; ``nudges.homework_grace_days``) closes. The grace is there because
  clients often report the morning after the due date or on the way to the
  session; after it, a debrief would be about last week's task. The due date
  is a day; the cut-off is taken in UTC, so it falls within hours of the
  local end of that day. A homework without a due date closes only by the
  first rule or by the therapist; an undelivered one past its grace (a
  client paused all week) closes too, rather than arriving late.

Closing sets ``status`` closed, ``closed_at`` and ``closed_reason``
(:class:`storage.CloseReason`), cancels the nudges still planned, and marks a
nudge still waiting for an answer as not reviewed (no follow-up goes out for a
homework that is over). Review of a closed homework in session is recorded
elsewhere; a homework closed by either rule without a review mark is "not
reviewed", so ``closed_at`` is the moment it left the client's hands.

Everything runs in the caller's unit of work, as Core statements on the
indexes of current state (``ix_homework_current``, ``ix_homework_expiry``,
``ix_occasion_homework_status``): the cost is the number of homework closed,
never the length of a client's history. The sweep claims expired homework
with ``FOR UPDATE SKIP LOCKED``, so two schedulers never close the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Final

from sqlalchemy import select, update
from sqlmodel import Session, col

from dialogs.timeparse import local_to_utc, utc_to_local
from dialogs.turn import DialogSettings
from storage import CloseReason, Homework, HomeworkStatus, Occasion
from storage import queries as q
from storage.models import OccasionStatus

BATCH: Final = 500
# A nudge still waiting for an answer when its homework closes got none: not reviewed.
_AWAITING_SETTLED: Final = tuple(
    (s, OccasionStatus.NOT_REVIEWED) for s in (OccasionStatus.SENT, OccasionStatus.FOLLOWED_UP)
)


def close(session: Session, *, homework_ids: Sequence[int], reason: CloseReason, now: datetime) -> None:
    """Close these (open) homework into history, with their nudges: two UPDATEs for the lot."""
    if not homework_ids:
        return
    ids = list(homework_ids)
    session.execute(
        update(Homework)
        .where(col(Homework.id).in_(ids), col(Homework.status) == HomeworkStatus.OPEN)
        .values(status=HomeworkStatus.CLOSED, closed_at=now, closed_reason=reason)
        .execution_options(synchronize_session="fetch")
    )
    for before, after in ((OccasionStatus.PLANNED, OccasionStatus.CANCELLED), *_AWAITING_SETTLED):
        session.execute(
            update(Occasion)
            .where(col(Occasion.homework_id).in_(ids), col(Occasion.status) == before)
            .values(status=after, closed_at=now)
            .execution_options(synchronize_session="fetch")
        )


def supersede(session: Session, *, client_id: int, delivered: int, now: datetime) -> int:
    """The client's homework ``delivered`` is now current: every earlier delivered open one closes.

    Returns how many closed. Called by delivery (dialogs.homework.deliver_pending).
    """
    earlier = (
        session.execute(
            select(col(Homework.id)).where(
                col(Homework.client_id) == client_id,
                col(Homework.status) == HomeworkStatus.OPEN,
                col(Homework.delivered_at).is_not(None),
                col(Homework.id) != delivered,
            )
        )
        .scalars()
        .all()
    )
    close(session, homework_ids=earlier, reason=CloseReason.SUPERSEDED, now=now)
    return len(earlier)


def expiry_cutoff(settings: DialogSettings, now: datetime) -> date:
    """Homework due before this day is past its grace period."""
    return (now - settings.homework_grace).date()


def close_expired(session: Session, *, settings: DialogSettings, now: datetime, limit: int = BATCH) -> int:
    """One batch of homework past its due date and grace period, closed; returns how many (0: none left)."""
    expired = (
        session.execute(
            select(col(Homework.id))
            .where(
                col(Homework.status) == HomeworkStatus.OPEN,
                col(Homework.due).is_not(None),
                col(Homework.due) < expiry_cutoff(settings, now),
            )
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        .scalars()
        .all()
    )
    close(session, homework_ids=expired, reason=CloseReason.EXPIRED, now=now)
    return len(expired)


# --- the trend's weekly sums ----------------------------------------------------------------


def week_of(moment: datetime, timezone: str | None) -> date:
    """The Monday of the client's local week that ``moment`` falls in (UTC without a zone)."""
    local = utc_to_local(moment, timezone or "UTC")
    day = local.date() if local is not None else moment.date()
    return day - timedelta(days=day.weekday())


def week_start(week: date, timezone: str | None) -> datetime:
    """The UTC instant the client's local week ``week`` begins."""
    return local_to_utc(week, time(0, 0), timezone or "UTC") or datetime.combine(week, time(0, 0), tzinfo=UTC)


def count_debrief(
    session: Session,
    *,
    client_id: int,
    timezone: str | None,
    started_at: datetime,
    quantity: int | None,
    met: int | None,
) -> None:
    """Add one completed debrief to its week's sums (``met``: rubric criteria met, None if not judged)."""
    q.add_to_week(
        session,
        client_id=client_id,
        week=week_of(started_at, timezone),
        quantity=quantity,
        criteria_met=met,
    )
