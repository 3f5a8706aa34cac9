"""Retention: what is deleted once it is old enough, run hourly by the scheduler.

Two settings (``retention`` in config.yaml):

- ``messages_days`` (default 30): the conversation itself — messages the
  companion sent (the outbox, once sent or given up on) and the ids of
  handled platform messages. Dialog state is not a message: it is one row
  per chat, overwritten as the chat moves on.
- ``records_days`` (default: keep): the clinical record the therapist reviews —
  debriefs (and their weekly sums), log entries, questionnaire answers, settled safety flags and
  reminders, and closed homework with nothing left attached (a safety plan is
  the client's current document, not a record of the past: it stays). Off by default because therapists
  usually must keep records for years; set it to what your practice's
  record-keeping rules say.

Housekeeping that needs no setting: wrong invite codes are forgotten after a
day (the rate limit looks back an hour) and expired dashboard tokens after a
day. So is the dialog state of a chat nobody is linked to (a stranger's, or
an erased client's) that has been idle a day: it holds only the chat's id and
when it last wrote, which WhatsApp's 24-hour window needs no longer than
that. The goodbye of an erasure and its notice to the therapist are deleted
as soon as they are sent: they name the erased client's chat and name.
Open crisis alerts are never purged. Each purge leaves one audit entry with
counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import and_, delete, exists, or_, select
from sqlmodel import Session, col

from dialogs import access
from storage import (
    ConversationState,
    Debrief,
    DebriefWeek,
    FlagLevel,
    Homework,
    HomeworkStatus,
    Identity,
    JoinFailure,
    LogEntry,
    MeasureResponse,
    Occasion,
    OutboxMessage,
    ProcessedInbound,
    SafetyFlag,
    WebToken,
)
from storage.models import OccasionStatus

HOUSEKEEPING: Final = timedelta(days=1)
# Sent outbox rows deleted at the next purge whatever their age: the last messages of an erasure.
ERASURE_NOTICES: Final = ("client.deleted", "notify.client_deleted")
_SETTLED: Final = tuple(
    s for s in OccasionStatus if s not in (OccasionStatus.PLANNED, OccasionStatus.SENT, OccasionStatus.FOLLOWED_UP)
)


@dataclass(frozen=True)
class RetentionPolicy:
    messages: timedelta | None = timedelta(days=30)
    records: timedelta | None = None


def purge(session: Session, *, policy: RetentionPolicy, now: datetime) -> dict[str, int]:
    """Delete what is past its retention in the caller's unit of work; returns rows deleted per kind."""
    counts: dict[str, int] = {}

    def run(name: str, statement: object) -> None:
        result = session.connection().execute(statement)  # type: ignore[call-overload]
        if result.rowcount:
            counts[name] = counts.get(name, 0) + result.rowcount

    run("joinfailure", delete(JoinFailure).where(col(JoinFailure.at) < now - HOUSEKEEPING))
    run("webtoken", delete(WebToken).where(col(WebToken.expires_at) < now - HOUSEKEEPING))
    sent = or_(col(OutboxMessage.sent_at).is_not(None), col(OutboxMessage.failed_at).is_not(None))
    run("outboxmessage", delete(OutboxMessage).where(col(OutboxMessage.prompt_key).in_(ERASURE_NOTICES), sent))
    linked = exists(
        select(col(Identity.id)).where(
            col(Identity.channel) == col(ConversationState.channel),
            col(Identity.address) == col(ConversationState.address),
        )
    )
    idle = and_(col(ConversationState.flow) == "idle", col(ConversationState.updated_at) < now - HOUSEKEEPING)
    run("conversationstate", delete(ConversationState).where(idle, ~linked))
    if policy.messages is not None:
        cutoff = now - policy.messages
        done = or_(col(OutboxMessage.sent_at).is_not(None), col(OutboxMessage.failed_at).is_not(None))
        run("outboxmessage", delete(OutboxMessage).where(col(OutboxMessage.created_at) < cutoff, done))
        run("processedinbound", delete(ProcessedInbound).where(col(ProcessedInbound.received_at) < cutoff))
    if policy.records is not None:
        cutoff = now - policy.records
        run("logentry", delete(LogEntry).where(col(LogEntry.created_at) < cutoff))
        run("debrief", delete(Debrief).where(col(Debrief.started_at) < cutoff))
        # The weekly sums go with the debriefs they summed (a week wholly before the cut-off).
        run("debriefweek", delete(DebriefWeek).where(col(DebriefWeek.week) < (cutoff - timedelta(days=7)).date()))
        run("measureresponse", delete(MeasureResponse).where(col(MeasureResponse.started_at) < cutoff))
        open_alert = and_(col(SafetyFlag.level) == FlagLevel.CRISIS, col(SafetyFlag.acknowledged_at).is_(None))
        run("safetyflag", delete(SafetyFlag).where(col(SafetyFlag.created_at) < cutoff, ~open_alert))
        settled = col(Occasion.status).in_(_SETTLED)  # answered, not reviewed, missed, skipped, cancelled
        unreferenced = ~exists(select(col(Debrief.id)).where(col(Debrief.occasion_id) == col(Occasion.id)))
        run("occasion", delete(Occasion).where(col(Occasion.due_at) < cutoff, settled, unreferenced))
        attached = or_(
            exists(select(col(Debrief.id)).where(col(Debrief.homework_id) == col(Homework.id))),
            exists(select(col(Occasion.id)).where(col(Occasion.homework_id) == col(Homework.id))),
            exists(select(col(LogEntry.id)).where(col(LogEntry.homework_id) == col(Homework.id))),
        )
        closed = and_(col(Homework.status) == HomeworkStatus.CLOSED, col(Homework.closed_at) < cutoff)
        run("homework", delete(Homework).where(closed, ~attached))
    if counts:
        access.audit(session, actor=access.SYSTEM, action="retention.purge", now=now, deleted=counts)
    return counts
