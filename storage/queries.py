"""The few queries the rest of the companion needs; none of them commits.

Every function takes the caller's session (its unit of work) and keyword
arguments. Lookups that serve a therapist are scoped by ``therapist_id`` here,
so no handler can reach another therapist's client by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from functools import cache
from typing import Any, Final

from sqlalchemy import bindparam, case, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from storage import crypto
from storage.models import (
    Client,
    ConversationState,
    Debrief,
    DebriefStatus,
    DebriefWeek,
    FlagLevel,
    Homework,
    HomeworkStatus,
    Identity,
    InstanceValue,
    Invite,
    JoinFailure,
    LogEntry,
    Occasion,
    OutboxMessage,
    ProcessedInbound,
    SafetyFlag,
    Therapist,
)

CONSOLE = "console"


def name_key(name: str) -> str:
    return " ".join(name.split()).casefold()


# --- inbound bookkeeping -----------------------------------------------------


def claim_inbound(session: Session, *, channel: str, message_id: str, now: datetime) -> bool:
    """Record ``message_id`` as handled; False if it was handled before (a redelivery).

    One ``INSERT … ON CONFLICT DO NOTHING`` on SQLite and PostgreSQL (one
    round trip on every inbound message): a concurrent duplicate waits for the
    first transaction and is then dropped, or, if that one rolled back, is
    handled. Elsewhere the unique constraint makes a concurrent duplicate fail
    at commit, so the platform retries and then sees it here. Either way it is
    handled once.
    """
    dialect = session.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        params = {"channel": channel, "message_id": message_id, "received_at": now}
        return session.execute(_claim_statement(dialect), params).first() is not None
    seen = session.exec(
        select(ProcessedInbound.id).where(
            ProcessedInbound.channel == channel, ProcessedInbound.message_id == message_id
        )
    ).first()
    if seen is not None:
        return False
    session.add(ProcessedInbound(channel=channel, message_id=message_id, received_at=now))
    return True


@cache
def _claim_statement(dialect: str) -> Any:
    """Built once per dialect: on the inbound hot path, building the statement cost more than running it."""
    upsert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        upsert(ProcessedInbound)
        .values(channel=bindparam("channel"), message_id=bindparam("message_id"), received_at=bindparam("received_at"))
        .on_conflict_do_nothing(index_elements=["channel", "message_id"])
        .returning(col(ProcessedInbound.id))
    )


def conversation(session: Session, *, channel: str, address: str, now: datetime) -> ConversationState:
    """The chat's dialog state, locked for this transaction (created idle if new).

    ``FOR UPDATE`` serialises turns of one chat across processes on PostgreSQL;
    SQLite serialises all writers anyway.
    """
    statement = (
        select(ConversationState)
        .where(ConversationState.channel == channel, ConversationState.address == address)
        .with_for_update()
    )
    state = session.exec(statement).first()
    if state is None:
        state = ConversationState(channel=channel, address=address, updated_at=now)
        session.add(state)
        session.flush()
    return state


# --- people ------------------------------------------------------------------


def identity(session: Session, *, channel: str, address: str) -> Identity | None:
    return session.exec(select(Identity).where(Identity.channel == channel, Identity.address == address)).first()


_CHAT_CONTEXT: Final = (  # built once: see _claim_statement
    select(ConversationState, Identity, Client, Therapist)
    .outerjoin(
        Identity,
        (col(Identity.channel) == col(ConversationState.channel))
        & (col(Identity.address) == col(ConversationState.address)),
    )
    .outerjoin(Client, col(Client.id) == col(Identity.client_id))
    .outerjoin(Therapist, col(Therapist.id) == func.coalesce(col(Identity.therapist_id), col(Client.therapist_id)))
    .where(
        col(ConversationState.channel) == bindparam("channel"), col(ConversationState.address) == bindparam("address")
    )
    .with_for_update(of=ConversationState)
)


def chat_context(
    session: Session, *, channel: str, address: str, now: datetime
) -> tuple[ConversationState, Identity | None, Therapist | None, Client | None]:
    """A turn's starting point in one query: the chat's state (locked, as :func:`conversation`) and who writes.

    The state row is locked ``FOR UPDATE`` alone (the joined rows are only
    read). A chat seen for the first time has no state yet: it is created
    and the participant looked up separately.
    """
    row = session.exec(_CHAT_CONTEXT, params={"channel": channel, "address": address}).first()
    if row is None:
        state = conversation(session, channel=channel, address=address, now=now)
        return (state, *participant(session, channel=channel, address=address))
    state, who, client, therapist = row
    if who is None:
        return state, None, None, None
    return state, who, therapist, client if who.client_id else None


def participant(
    session: Session, *, channel: str, address: str
) -> tuple[Identity | None, Therapist | None, Client | None]:
    """Who writes from this chat, in one query: its identity, its client if any, and the therapist.

    The therapist is the one the chat is linked to, or the client's own
    therapist (the safety screen and most replies need their name).
    """
    row = session.exec(
        select(Identity, Client, Therapist)
        .outerjoin(Client, col(Client.id) == col(Identity.client_id))
        .outerjoin(Therapist, col(Therapist.id) == func.coalesce(col(Identity.therapist_id), col(Client.therapist_id)))
        .where(Identity.channel == channel, Identity.address == address)
    ).first()
    if row is None:
        return None, None, None
    who, client, therapist = row
    return who, therapist, client if who.client_id else None


def latest_identity(
    session: Session, *, client_id: int | None = None, therapist_id: int | None = None
) -> Identity | None:
    """Where to reach a person: the account they linked most recently."""
    statement = select(Identity)
    if client_id is not None:
        statement = statement.where(Identity.client_id == client_id)
    elif therapist_id is not None:
        statement = statement.where(Identity.therapist_id == therapist_id)
    else:
        raise ValueError("client_id or therapist_id is required")
    return session.exec(statement.order_by(col(Identity.id).desc())).first()


def link_identity(
    session: Session,
    *,
    channel: str,
    address: str,
    now: datetime,
    client_id: int | None = None,
    therapist_id: int | None = None,
) -> Identity:
    found = identity(session, channel=channel, address=address)
    if found is None:
        found = Identity(channel=channel, address=address, created_at=now)
    found.client_id, found.therapist_id = client_id, therapist_id
    session.add(found)
    session.flush()
    return found


def has_chat(session: Session, *, client_id: int | None) -> bool:
    """Whether any chat is linked to this client (none once an idle link expired)."""
    return session.exec(select(Identity.id).where(Identity.client_id == client_id)).first() is not None


def therapist_by_name(session: Session, *, name: str) -> Therapist | None:
    return session.exec(select(Therapist).where(func.lower(Therapist.name) == name_key(name))).first()


def therapists(session: Session) -> Sequence[Therapist]:
    return session.exec(select(Therapist).order_by(col(Therapist.name))).all()


def add_therapist(session: Session, *, name: str, timezone: str, now: datetime) -> Therapist:
    """Create a therapist and the console identity the CLI chats as."""
    therapist = Therapist(name=" ".join(name.split()), timezone=timezone, created_at=now)
    session.add(therapist)
    session.flush()
    link_identity(session, channel=CONSOLE, address=f"therapist:{therapist.name}", now=now, therapist_id=therapist.id)
    return therapist


def client_by_name(session: Session, *, therapist_id: int, name: str) -> Client | None:
    return session.exec(
        select(Client).where(Client.therapist_id == therapist_id, Client.name_key == name_key(name))
    ).first()


def clients_of(session: Session, *, therapist_id: int) -> Sequence[Client]:
    return session.exec(select(Client).where(Client.therapist_id == therapist_id).order_by(Client.name_key)).all()


def create_client(session: Session, *, therapist_id: int, name: str, now: datetime) -> Client:
    clean = " ".join(name.split())
    client = Client(therapist_id=therapist_id, name=clean, name_key=name_key(clean), created_at=now)
    session.add(client)
    session.flush()
    return client


# --- this installation --------------------------------------------------------


def instance_value(session: Session, *, name: str) -> str | None:
    """A value this installation recorded (storage.models.InstanceValue), or None."""
    row = session.exec(select(InstanceValue).where(InstanceValue.name == name)).first()
    return row.value if row is not None else None


def set_instance_value(session: Session, *, name: str, value: str, now: datetime) -> None:
    row = session.exec(select(InstanceValue).where(InstanceValue.name == name)).first()
    if row is None:
        row = InstanceValue(name=name, value=value, created_at=now)
    row.value = value
    session.add(row)


# --- invites -----------------------------------------------------------------


def create_invite(session: Session, *, client_id: int, code: str, now: datetime, ttl: timedelta) -> Invite:
    invite = Invite(code_hash=crypto.code_hash(code), client_id=client_id, created_at=now, expires_at=now + ttl)
    session.add(invite)
    session.flush()
    return invite


def usable_invite(session: Session, *, code: str, now: datetime) -> Invite | None:
    """The unused, unexpired invite with this code, found by its keyed hash (the code itself is not stored)."""
    hashes = crypto.code_hashes(code)
    return session.exec(
        select(Invite).where(col(Invite.code_hash).in_(hashes), col(Invite.used_at).is_(None), Invite.expires_at > now)
    ).first()


def create_link_code(session: Session, *, therapist_id: int, code: str, now: datetime, ttl: timedelta) -> Invite:
    """A therapist's one-time code that links a chat account to them (stored as its keyed hash)."""
    invite = Invite(code_hash=crypto.code_hash(code), therapist_id=therapist_id, created_at=now, expires_at=now + ttl)
    session.add(invite)
    session.flush()
    return invite


def join_failures_since(
    session: Session, *, since: datetime, channel: str | None = None, address: str | None = None
) -> int:
    """Wrong codes since ``since``: from one chat, or (without channel and address) from everyone."""
    query = select(func.count()).select_from(JoinFailure).where(JoinFailure.at >= since)
    if channel is not None:
        query = query.where(JoinFailure.channel == channel, JoinFailure.address == address)
    return session.exec(query).one()


def record_join_failure(session: Session, *, channel: str, address: str, now: datetime) -> None:
    session.add(JoinFailure(channel=channel, address=address, at=now))


# --- homework and what the client recorded ------------------------------------


# Every query a turn makes is bounded by current state, never by a client's history: LIMIT 1 on
# the ``ix_homework_current`` index. (Without the LIMIT the ORM builds, and decrypts, every row the
# query matches before ``first()`` returns one: with 400 open homework that was most of a turn.)
_CURRENT_HOMEWORK: Final = (  # built once: see _claim_statement
    select(Homework)
    .where(
        col(Homework.client_id) == bindparam("client_id"),
        col(Homework.status) == HomeworkStatus.OPEN,
        col(Homework.delivered_at).is_not(None),
    )
    .order_by(col(Homework.delivered_at).desc(), col(Homework.id).desc())
    .limit(1)
)
_UNDELIVERED_HOMEWORK: Final = (
    select(Homework)
    .where(
        col(Homework.client_id) == bindparam("client_id"),
        col(Homework.status) == HomeworkStatus.OPEN,
        col(Homework.delivered_at).is_(None),
    )
    .order_by(col(Homework.id))
    .limit(1)
)


def current_homework(session: Session, *, client_id: int) -> Homework | None:
    """The most recently delivered open homework: what "done" refers to (dialogs.history keeps it the only one)."""
    return session.exec(_CURRENT_HOMEWORK, params={"client_id": client_id}).first()


def open_delivered_homework(session: Session, *, client_id: int) -> Sequence[Homework]:
    """Every delivered open homework, newest first: what "done" may refer to when there is more than one."""
    return session.exec(
        select(Homework)
        .where(
            Homework.client_id == client_id,
            Homework.status == HomeworkStatus.OPEN,
            col(Homework.delivered_at).is_not(None),
        )
        .order_by(col(Homework.delivered_at).desc(), col(Homework.id).desc())
    ).all()


def undelivered_homework(session: Session, *, client_id: int) -> Homework | None:
    """The oldest open homework not yet delivered: the next to deliver."""
    return session.exec(_UNDELIVERED_HOMEWORK, params={"client_id": client_id}).first()


def homework_since(session: Session, *, client_id: int, since: datetime, ids: Sequence[int] = ()) -> Sequence[Homework]:
    """The homework a digest period shows, oldest first: set since ``since``, among ``ids``, or still current.

    Current means the one "done" refers to (:func:`current_homework`) and any
    not yet delivered; an older homework still open (kept open from before
    dialogs.history closed them) is only counted, by the caller.
    """
    current = current_homework(session, client_id=client_id)
    shown = (col(Homework.created_at) >= since) | (
        (col(Homework.status) == HomeworkStatus.OPEN) & col(Homework.delivered_at).is_(None)
    )
    wanted = [*ids, *([current.id] if current is not None and current.id is not None else [])]
    if wanted:
        shown = shown | col(Homework.id).in_(wanted)
    return session.exec(
        select(Homework).where(Homework.client_id == client_id, shown).order_by(col(Homework.id)).limit(_SHOWN_LIMIT)
    ).all()


_SHOWN_LIMIT: Final = 50  # a period with more homework than this shows the first 50 (and counts the rest)


def open_homework_count(session: Session, *, client_id: int) -> int:
    return session.exec(
        select(func.count())
        .select_from(Homework)
        .where(Homework.client_id == client_id, Homework.status == HomeworkStatus.OPEN)
    ).one()


def add_to_week(
    session: Session, *, client_id: int, week: date, quantity: int | None, criteria_met: int | None
) -> None:
    """Add one completed debrief to the client's weekly sums (``DebriefWeek``): one upsert."""
    values = {
        "client_id": client_id,
        "week": week,
        "debriefs": 1,
        "quantity_sum": quantity or 0,
        "quantity_count": int(quantity is not None),
        "criteria_met": criteria_met or 0,
        "criteria_judged": int(criteria_met is not None),
    }
    dialect = session.get_bind().dialect.name
    if dialect not in ("postgresql", "sqlite"):
        row = session.exec(
            select(DebriefWeek).where(DebriefWeek.client_id == client_id, DebriefWeek.week == week)
        ).first() or DebriefWeek(client_id=client_id, week=week)
        for key in _WEEK_SUMS:
            setattr(row, key, getattr(row, key) + values[key])
        session.add(row)
        return
    upsert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = upsert(DebriefWeek).values(**values)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["client_id", "week"],
            set_={key: getattr(DebriefWeek, key) + getattr(statement.excluded, key) for key in _WEEK_SUMS},
        )
    )


_WEEK_SUMS: Final = ("debriefs", "quantity_sum", "quantity_count", "criteria_met", "criteria_judged")


def weeks_of(session: Session, *, client_id: int, first: date, last: date) -> dict[date, DebriefWeek]:
    """The client's weekly sums from week ``first`` to week ``last`` (Mondays), by week."""
    params = {"client_id": client_id, "first": first, "last": last}
    return {row.week: row for row in session.exec(_WEEKS_OF, params=params)}


_WEEKS_OF: Final = select(DebriefWeek).where(
    col(DebriefWeek.client_id) == bindparam("client_id"),
    col(DebriefWeek.week) >= bindparam("first"),
    col(DebriefWeek.week) <= bindparam("last"),
)


def homeworks_of(session: Session, *, client_id: int) -> Sequence[Homework]:
    return session.exec(select(Homework).where(Homework.client_id == client_id).order_by(col(Homework.id))).all()


def debrief_counts(session: Session, *, homework_ids: Sequence[int]) -> dict[int, int]:
    if not homework_ids:
        return {}
    rows = session.exec(
        select(Debrief.homework_id, func.count())
        .where(col(Debrief.homework_id).in_(homework_ids), Debrief.status == DebriefStatus.COMPLETE)
        .group_by(col(Debrief.homework_id))
    ).all()
    return {homework_id: count for homework_id, count in rows}


def debrief_with_homework(session: Session, *, debrief_id: int) -> tuple[Debrief, Homework] | None:
    """A debrief and its homework in one query (while referenced, ``session.get`` finds them without SQL)."""
    row = session.exec(_DEBRIEF_WITH_HOMEWORK, params={"debrief_id": debrief_id}).first()
    return (row[0], row[1]) if row else None


_DEBRIEF_WITH_HOMEWORK: Final = (  # built once: see _claim_statement
    select(Debrief, Homework)
    .join(Homework, col(Homework.id) == col(Debrief.homework_id))
    .where(col(Debrief.id) == bindparam("debrief_id"))
)


# The digest runs these for every client of a caseload: built once, with bind parameters (see
# _claim_statement), because building a statement cost about as much as running it.
_DEBRIEFS_SINCE: Final = (
    select(Debrief)
    .where(col(Debrief.client_id) == bindparam("client_id"), col(Debrief.started_at) >= bindparam("since"))
    .order_by(col(Debrief.started_at))
)
_LOGS_SINCE: Final = (
    select(LogEntry)
    .where(col(LogEntry.client_id) == bindparam("client_id"), col(LogEntry.created_at) >= bindparam("since"))
    .order_by(col(LogEntry.created_at))
)
_FLAGS_SINCE: Final = (
    select(SafetyFlag)
    .where(col(SafetyFlag.client_id) == bindparam("client_id"), col(SafetyFlag.created_at) >= bindparam("since"))
    .order_by(col(SafetyFlag.created_at))
)


def debriefs_since(session: Session, *, client_id: int, since: datetime) -> Sequence[Debrief]:
    return session.exec(_DEBRIEFS_SINCE, params={"client_id": client_id, "since": since}).all()


def logs_since(session: Session, *, client_id: int, since: datetime) -> Sequence[LogEntry]:
    return session.exec(_LOGS_SINCE, params={"client_id": client_id, "since": since}).all()


def flags_since(session: Session, *, client_id: int, since: datetime) -> Sequence[SafetyFlag]:
    return session.exec(_FLAGS_SINCE, params={"client_id": client_id, "since": since}).all()


def open_alerts_before(session: Session, *, client_id: int, before: datetime) -> int:
    """Crisis alerts raised before ``before`` and still not acknowledged."""
    return session.exec(
        select(func.count())
        .select_from(SafetyFlag)
        .where(
            SafetyFlag.client_id == client_id,
            SafetyFlag.level == FlagLevel.CRISIS,
            col(SafetyFlag.acknowledged_at).is_(None),
            SafetyFlag.created_at < before,
        )
    ).one()


def occasion_counts(session: Session, *, homework_id: int, since: datetime) -> dict[str, int]:
    """How the homework's nudges since ``since`` ended up, by status."""
    rows = session.exec(
        select(Occasion.status, func.count())
        .where(Occasion.homework_id == homework_id, Occasion.due_at >= since)
        .group_by(col(Occasion.status))
    ).all()
    return {status: count for status, count in rows}


REMINDER_PROMPTS: Final = ("nudge.reminder", "nudge.follow_up")
"""The prompt keys of reminders and follow-ups: the messages that may go as a WhatsApp template."""


def undeliverable_since(session: Session, *, client_id: int, since: datetime, reason: str) -> tuple[int, int]:
    """Messages to this client's chats that failed for ``reason`` (e.g. outside WhatsApp's window) since ``since``.

    Returns (all of them, how many were reminders or follow-ups), told apart by
    the prompt key each outbox row records.
    """
    # Failed rows first (ix_outbox_failed: they are few), then whether each went to this client's chat.
    theirs = (
        select(col(Identity.id))
        .where(
            col(Identity.client_id) == client_id,
            col(Identity.channel) == col(OutboxMessage.channel),
            col(Identity.address) == col(OutboxMessage.address),
        )
        .exists()
    )
    reminder = case((col(OutboxMessage.prompt_key).in_(REMINDER_PROMPTS), 1), else_=0)
    total, reminders = session.exec(
        select(func.count(), func.coalesce(func.sum(reminder), 0))
        .select_from(OutboxMessage)
        .where(col(OutboxMessage.failed_at) >= since, OutboxMessage.last_error == reason, theirs)
    ).one()
    return int(total), int(reminders)


# --- outbox ------------------------------------------------------------------


def enqueue(
    session: Session,
    *,
    channel: str,
    address: str,
    payload: dict[str, Any],
    now: datetime,
    prompt_key: str | None = None,
    prompt_version: str | None = None,
) -> OutboxMessage:
    """Queue a message; ``prompt_key``/``prompt_version`` record the template that produced its text."""
    message = OutboxMessage(
        channel=channel,
        address=address,
        payload=payload,
        created_at=now,
        prompt_key=prompt_key,
        prompt_version=prompt_version,
    )
    session.add(message)
    return message


def pending_outbox(
    session: Session, *, channel: str, address: str | None = None, limit: int = 100
) -> Sequence[OutboxMessage]:
    """Unsent messages for a channel (optionally one chat), oldest first, locked for sending."""
    statement = select(OutboxMessage).where(OutboxMessage.channel == channel, col(OutboxMessage.sent_at).is_(None))
    if address is not None:
        statement = statement.where(OutboxMessage.address == address)
    return session.exec(statement.order_by(col(OutboxMessage.id)).limit(limit).with_for_update()).all()


def mark_sent(session: Session, *, message: OutboxMessage, now: datetime) -> None:
    message.sent_at = now
    message.attempts += 1
    session.add(message)
