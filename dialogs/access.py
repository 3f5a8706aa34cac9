"""Who may see what, checked in one place, and the audit log of every access and change.

A therapist reaches a client only through :func:`own_client` or
:func:`own_clients`: every command, the Slack modal, the dashboard and the
operator's export go through them, so ownership is decided here and nowhere
else. A client that exists but belongs to someone else is indistinguishable
from one that does not exist (no oracle for other therapists' client names).

:func:`audit` appends to the audit log in the caller's unit of work, so the
record of an access lands with the access itself. It records who, what,
which client and when, and never the content.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from storage import AuditEntry, Client, SafetyFlag, Therapist
from storage import queries as q

OPERATOR = "operator"
SYSTEM = "system"


def therapist_actor(therapist: Therapist | int) -> str:
    return f"therapist:{therapist if isinstance(therapist, int) else therapist.id}"


def client_actor(client: Client | int) -> str:
    return f"client:{client if isinstance(client, int) else client.id}"


def own_client(session: Session, *, therapist_id: int, client_id: int) -> Client | None:
    """The client with ``client_id`` if it is this therapist's; None otherwise (missing or not theirs)."""
    client = session.get(Client, client_id)
    if client is None or client.therapist_id != therapist_id:
        return None
    return client


def own_client_named(session: Session, *, therapist_id: int, name: str) -> Client | None:
    """This therapist's client called ``name`` (case-insensitively), or None."""
    return q.client_by_name(session, therapist_id=therapist_id, name=name)


def own_clients(session: Session, *, therapist_id: int) -> Sequence[Client]:
    """All of this therapist's clients, and nobody else's."""
    return q.clients_of(session, therapist_id=therapist_id)


def own_flag(session: Session, *, therapist_id: int, flag_id: int) -> SafetyFlag | None:
    """A safety flag about one of this therapist's clients, or None."""
    flag = session.get(SafetyFlag, flag_id)
    if flag is None or own_client(session, therapist_id=therapist_id, client_id=flag.client_id) is None:
        return None
    return flag


def audit(
    session: Session,
    *,
    actor: str,
    action: str,
    now: datetime,
    client: Client | None = None,
    therapist_id: int | None = None,
    **detail: Any,
) -> AuditEntry:
    """Append one entry: ``detail`` must hold ids, counts and names of things — never client text."""
    entry = AuditEntry(
        at=now,
        actor=actor,
        action=action,
        therapist_id=therapist_id if therapist_id is not None else (client.therapist_id if client else None),
        client_id=client.id if client is not None else None,
        detail=detail,
    )
    session.add(entry)
    return entry


def audit_entries(
    session: Session, *, client_id: int | None = None, limit: int = 200, before_id: int | None = None
) -> Sequence[AuditEntry]:
    """The newest entries first (optionally one client's), for ``companion audit``."""
    query = select(AuditEntry)
    if client_id is not None:
        query = query.where(AuditEntry.client_id == client_id)
    if before_id is not None:
        query = query.where(col(AuditEntry.id) < before_id)
    return session.exec(query.order_by(col(AuditEntry.id).desc()).limit(limit)).all()
