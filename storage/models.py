"""The tables: who is who, what homework was set, what the client recorded, and the outbox."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any, Final

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from storage._types import UTCDateTime

# Free text from clients is sensitive health data; the privacy issue encrypts
# these columns. Keeping them as Text (not bounded strings) leaves room for that.


class ClientStatus(StrEnum):
    INVITED = "invited"
    ACTIVE = "active"
    PAUSED = "paused"
    STOPPED = "stopped"


class HomeworkStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class DebriefStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    ABANDONED = "abandoned"


class DebriefKind(StrEnum):
    DEBRIEF = "debrief"  # the homework happened (at least partly)
    OBSTACLE = "obstacle"  # it did not: what got in the way


class OccasionStatus(StrEnum):
    PLANNED = "planned"
    SENT = "sent"
    DONE = "done"
    MISSED = "missed"
    NOT_REVIEWED = "not_reviewed"


HOMEWORK_FIELDS: Final = (
    "title",
    "type",
    "what",
    "when",
    "where",
    "with_whom",
    "record",
    "rationale",
    "due",
    "nudges",
)
"""The homework fields in the order the therapist is asked for them."""


def _ts(*, nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


class Therapist(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    timezone: str = "UTC"
    created_at: datetime = _ts(nullable=False)


class Client(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("therapist_id", "name_key"),)

    id: int | None = Field(default=None, primary_key=True)
    therapist_id: int = Field(foreign_key="therapist.id", index=True)
    name: str
    # Lower-cased name: a therapist's clients are unique by it, and commands
    # match names case-insensitively.
    name_key: str
    status: str = ClientStatus.INVITED
    timezone: str | None = None
    nudge_time: str | None = None  # "HH:MM" local, the client's preferred time
    consented_at: datetime | None = _ts()
    created_at: datetime = _ts(nullable=False)
    last_contact_at: datetime | None = _ts()
    next_session_at: datetime | None = _ts()
    last_session_at: datetime | None = _ts()


class Identity(SQLModel, table=True):
    """A platform account (channel + address) linked to exactly one therapist or client."""

    __table_args__ = (UniqueConstraint("channel", "address"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str
    address: str
    therapist_id: int | None = Field(default=None, foreign_key="therapist.id", index=True)
    client_id: int | None = Field(default=None, foreign_key="client.id", index=True)
    created_at: datetime = _ts(nullable=False)


class Invite(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(unique=True, index=True)
    client_id: int = Field(foreign_key="client.id", index=True)
    created_at: datetime = _ts(nullable=False)
    expires_at: datetime = _ts(nullable=False)
    used_at: datetime | None = _ts()
    used_by_identity_id: int | None = Field(default=None, foreign_key="identity.id")


class JoinFailure(SQLModel, table=True):
    """A wrong invite code, kept to rate-limit code guessing per sender."""

    __table_args__ = (Index("ix_joinfailure_sender_at", "channel", "address", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str
    address: str
    at: datetime = _ts(nullable=False)


class Homework(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    client_id: int = Field(foreign_key="client.id", index=True)
    therapist_id: int = Field(foreign_key="therapist.id", index=True)
    title: str
    type: str = "custom"
    what: str | None = Field(default=None, sa_type=Text)
    when: str | None = Field(default=None, sa_type=Text)
    where: str | None = Field(default=None, sa_type=Text)
    with_whom: str | None = Field(default=None, sa_type=Text)
    record: str | None = Field(default=None, sa_type=Text)
    rationale: str | None = Field(default=None, sa_type=Text)
    due: date | None = None
    nudges: str | None = None  # comma-separated local "HH:MM" times
    status: str = HomeworkStatus.OPEN
    created_at: datetime = _ts(nullable=False)
    delivered_at: datetime | None = _ts()
    closed_at: datetime | None = _ts()
    rationale_own_words: str | None = Field(default=None, sa_type=Text)
    confidence: int | None = None
    smaller_version_wanted: bool = False


class Occasion(SQLModel, table=True):
    """One planned moment of a homework's nudge plan (filled by the scheduler)."""

    __table_args__ = (Index("ix_occasion_status_due", "status", "due_at"),)

    id: int | None = Field(default=None, primary_key=True)
    homework_id: int = Field(foreign_key="homework.id", index=True)
    client_id: int = Field(foreign_key="client.id", index=True)
    kind: str = "nudge"
    due_at: datetime = _ts(nullable=False)
    status: str = OccasionStatus.PLANNED
    claimed_until: datetime | None = _ts()
    sent_at: datetime | None = _ts()


class Debrief(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    homework_id: int = Field(foreign_key="homework.id", index=True)
    client_id: int = Field(foreign_key="client.id", index=True)
    kind: str = DebriefKind.DEBRIEF
    status: str = DebriefStatus.IN_PROGRESS
    started_at: datetime = _ts(nullable=False)
    completed_at: datetime | None = _ts()
    quantity: int | None = None  # 0 none · 1 a little · 2 about half · 3 most · 4 all
    what_happened: str | None = Field(default=None, sa_type=Text)
    surprised: str | None = Field(default=None, sa_type=Text)
    hard: str | None = Field(default=None, sa_type=Text)
    learned: str | None = Field(default=None, sa_type=Text)
    obstacle: str | None = Field(default=None, sa_type=Text)
    would_help: str | None = Field(default=None, sa_type=Text)
    # Type-specific ratings, e.g. {"belief_before": 80, "belief_after": 40}.
    ratings: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class LogEntry(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    client_id: int = Field(foreign_key="client.id", index=True)
    homework_id: int | None = Field(default=None, foreign_key="homework.id")
    text: str = Field(sa_type=Text)
    created_at: datetime = _ts(nullable=False)


class ConversationState(SQLModel, table=True):
    """Where one chat (channel + address) is in its dialog; a restart resumes from here."""

    __table_args__ = (UniqueConstraint("channel", "address"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str
    address: str
    flow: str = "idle"
    step: str = ""
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = _ts(nullable=False)


class OutboxMessage(SQLModel, table=True):
    """A message waiting for its platform to accept it; sent_at is set only after it did."""

    __table_args__ = (Index("ix_outbox_pending", "channel", "sent_at", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str
    address: str
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts(nullable=False)
    sent_at: datetime | None = _ts()
    attempts: int = 0
    last_error: str | None = None


class ProcessedInbound(SQLModel, table=True):
    """Platform message ids already handled, so a redelivered update is dropped."""

    __table_args__ = (UniqueConstraint("channel", "message_id"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str
    message_id: str
    received_at: datetime = _ts(nullable=False, index=True)
