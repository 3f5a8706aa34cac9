"""A client's data as one document (export, ``/mydata``), and its erasure (``/delete``, ``companion forget``).

Export and erasure walk the same list of tables (:data:`CLIENT_TABLES`), so
nothing the export shows can be left behind by an erasure. A test holds the
list against the schema: a new table with a ``client_id`` must be added here.

What an erasure removes: the client's row, their chats (identities), invites,
homework and its planned nudges, debriefs and their weekly sums, log entries, safety flags, the
safety plan, questionnaire answers and schedules,
therapist notes, LLM usage rows, LLM mode's pending model jobs (their scripted
replies unsent), the dialog state and wrong-code records of
their chats, every outbox message to their chats (sent or pending), and every
outbox message to anyone else that names them (alerts, notices, digests, and
lists such as ``/clients`` replies and caseloads; see
:meth:`dialogs.messages.Outbound.mentions`). Two rows outlive the erasure
briefly, because they must still be delivered: the goodbye to the client's
chat and the notice to the therapist, which retention deletes as soon as
they are sent, and the dialog state of the chat that asked (idle and empty,
kept for WhatsApp's 24-hour window), which retention deletes after a day
(dialogs.retention). What stays: the audit log, which names the client only
by number, and the ids of handled platform messages (numbers used to drop
redeliveries, with no content). Vectors in the memory store are the caller's
to delete, after the commit (the engine does it for ``/delete``, the CLI for
``forget``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import delete, tuple_
from sqlmodel import Session, SQLModel, col, select

from dialogs.messages import Outbound
from dialogs.nudges import outbound
from prompts import Prompts
from storage import (
    Client,
    ConversationState,
    Debrief,
    DebriefWeek,
    Homework,
    Identity,
    Invite,
    JoinFailure,
    LlmJob,
    LlmUsage,
    LogEntry,
    MeasureResponse,
    MeasureSchedule,
    Occasion,
    OutboxMessage,
    SafetyFlag,
    SafetyPlan,
    TherapistNote,
)

FORMAT: Final = "homework-companion/client-export@1"

CLIENT_TABLES: Final[tuple[type[SQLModel], ...]] = (
    SafetyPlan,
    MeasureResponse,
    MeasureSchedule,
    Debrief,
    DebriefWeek,
    LogEntry,
    Occasion,
    Homework,
    SafetyFlag,
    TherapistNote,
    LlmUsage,
    LlmJob,
    Invite,
    Identity,
)
"""Tables whose rows belong to one client through ``client_id``, in deletion order (children first)."""

# Fields that are bookkeeping, not the client's data: left out of what the client is given.
_INTERNAL: Final = frozenset(
    {"client_id", "therapist_id", "scheduled_day", "scheduled_count", "digest_sent_for", "name_key", "claimed_until"}
)
# The therapist's own words about the client (the private review note): in the operator's export, not in /mydata.
_THERAPISTS_OWN: Final = frozenset({"review_note"})
_BATCH: Final = 500


def _name(table: type[SQLModel]) -> str:
    return str(table.__tablename__)


def _rows(session: Session, table: type[SQLModel], client_id: int) -> Sequence[Any]:
    return session.exec(
        select(table).where(table.client_id == client_id).order_by(table.id)  # type: ignore[attr-defined]
    ).all()


def _dump(row: SQLModel, *, internal: bool) -> dict[str, Any]:
    data = row.model_dump(mode="json")
    return data if internal else {k: v for k, v in data.items() if k not in _INTERNAL | _THERAPISTS_OWN}


def _chats(session: Session, client_id: int) -> list[tuple[str, str]]:
    return [(i.channel, i.address) for i in _rows(session, Identity, client_id)]


def _outbox_to(session: Session, chats: list[tuple[str, str]]) -> Sequence[OutboxMessage]:
    if not chats:
        return []
    pairs = tuple_(col(OutboxMessage.channel), col(OutboxMessage.address)).in_(chats)
    return session.exec(select(OutboxMessage).where(pairs).order_by(col(OutboxMessage.id))).all()


def _outbox_about(session: Session, client_id: int, skip: set[int]) -> Iterator[OutboxMessage]:
    """Messages to others (the therapist) about this client or naming them in a list (``/clients``, caseloads).

    Decrypted in batches, since payloads are encrypted.
    """
    last = 0
    while True:
        batch = session.exec(
            select(OutboxMessage).where(col(OutboxMessage.id) > last).order_by(col(OutboxMessage.id)).limit(_BATCH)
        ).all()
        if not batch:
            return
        for row in batch:
            if row.id not in skip and client_id in Outbound.from_payload(row.payload).mentions():
                yield row
        last = batch[-1].id or last


def export(session: Session, *, prompts: Prompts, client: Client, now: datetime, for_client: bool) -> dict[str, Any]:
    """Everything stored about ``client``, decrypted, as JSON-ready data.

    ``for_client`` (``/mydata``) gives the client what they wrote and were
    sent, and what was set for them, without internal bookkeeping and
    without the therapist's own formulation notes, which are the therapist's
    clinical records (the operator's export has them; a client asks their
    therapist for them). The operator's export (``companion export``) has
    every row and column.
    """
    assert client.id is not None
    internal = not for_client
    document: dict[str, Any] = {
        "format": FORMAT,
        "exported_at": now.isoformat(),
        "client": _dump(client, internal=internal),
    }
    for table in CLIENT_TABLES:
        if for_client and table in (TherapistNote, LlmUsage, LlmJob, Invite):
            continue
        document[_name(table)] = [_dump(row, internal=internal) for row in _rows(session, table, client.id)]
    chats = _chats(session, client.id)
    document["messages_sent_to_client"] = [
        {
            "at": row.created_at.isoformat(),
            "sent_at": row.sent_at.isoformat() if row.sent_at else None,
            "channel": row.channel,
            "text": outbound(session, prompts, row.payload).text,
        }
        for row in _outbox_to(session, chats)
    ]
    if not for_client:
        document["conversation_state"] = (
            [
                _dump(state, internal=True)
                for state in session.exec(
                    select(ConversationState).where(
                        tuple_(col(ConversationState.channel), col(ConversationState.address)).in_(chats)
                    )
                ).all()
            ]
            if chats
            else []
        )
    return document


def erase(session: Session, *, client: Client, keep_state_of: tuple[str, str] | None = None) -> dict[str, int]:
    """Delete everything about ``client`` in the caller's unit of work; returns rows deleted per table.

    ``keep_state_of`` is the chat the erasure was asked from: its dialog
    state is reset rather than deleted, because the engine still holds it
    for this turn (it is a stranger's chat from now on).
    """
    assert client.id is not None
    counts: dict[str, int] = {}
    chats = _chats(session, client.id)
    to_client = list(_outbox_to(session, chats))
    skip = {row.id for row in to_client if row.id is not None}
    about = list(_outbox_about(session, client.id, skip))
    for row in (*to_client, *about):
        session.delete(row)
    counts["outboxmessage"] = len(to_client) + len(about)
    if chats:
        states = session.exec(
            select(ConversationState).where(
                tuple_(col(ConversationState.channel), col(ConversationState.address)).in_(chats)
            )
        ).all()
        for state in states:
            if keep_state_of == (state.channel, state.address):
                state.flow, state.step, state.data = "idle", "", {}
                session.add(state)
            else:
                session.delete(state)
        counts["conversationstate"] = len(states)
        failures = delete(JoinFailure).where(tuple_(col(JoinFailure.channel), col(JoinFailure.address)).in_(chats))
        counts["joinfailure"] = session.connection().execute(failures).rowcount
    session.flush()
    # Invites point at identities (used_by_identity_id): null that before identities go.
    for invite in _rows(session, Invite, client.id):
        invite.used_by_identity_id = None
        session.add(invite)
    session.flush()
    for table in CLIENT_TABLES:
        statement = delete(table).where(table.client_id == client.id)  # type: ignore[attr-defined]
        counts[_name(table)] = session.connection().execute(statement).rowcount
    session.delete(client)
    session.flush()
    counts["client"] = 1
    return counts
