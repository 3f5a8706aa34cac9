"""Persistence: SQLModel tables, the unit of work, and the queries the rest needs."""

from storage.db import Database, normalise_url
from storage.models import (
    Client,
    ClientStatus,
    ConversationState,
    Debrief,
    DebriefKind,
    DebriefStatus,
    Homework,
    HomeworkStatus,
    Identity,
    Invite,
    JoinFailure,
    LogEntry,
    Occasion,
    OutboxMessage,
    ProcessedInbound,
    Therapist,
)

__all__ = [
    "Client",
    "ClientStatus",
    "ConversationState",
    "Database",
    "Debrief",
    "DebriefKind",
    "DebriefStatus",
    "Homework",
    "HomeworkStatus",
    "Identity",
    "Invite",
    "JoinFailure",
    "LogEntry",
    "Occasion",
    "OutboxMessage",
    "ProcessedInbound",
    "Therapist",
    "normalise_url",
]
