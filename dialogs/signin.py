"""Dashboard sign-in without passwords: single-use links from chat, expiring sessions, per-session CSRF secrets.

A link token is issued by ``/dashboard`` in a therapist's chat (or ``companion
dashboard-link``) and exchanged once, before it expires, for a session token
kept in an HttpOnly cookie. Only SHA-256 hashes of tokens are stored
(:class:`storage.WebToken`), so a copy of the database signs nobody in.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import update
from sqlmodel import Session, col, select

from storage import Therapist
from storage.models import WebToken

LINK: Final = "link"
SESSION: Final = "session"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_link(session: Session, *, therapist_id: int, now: datetime, ttl: timedelta) -> str:
    """A new sign-in link token for this therapist (the caller builds the URL); valid once, for ``ttl``."""
    token = secrets.token_urlsafe(32)
    session.add(
        WebToken(
            token_hash=token_hash(token), kind=LINK, therapist_id=therapist_id, created_at=now, expires_at=now + ttl
        )
    )
    return token


def usable_link(session: Session, *, token: str, now: datetime) -> WebToken | None:
    """The unused, unexpired link for ``token`` (without using it), or None."""
    found = session.exec(
        select(WebToken).where(WebToken.token_hash == token_hash(token), WebToken.kind == LINK)
    ).first()
    if found is None or found.used_at is not None or found.expires_at <= now:
        return None
    return found


def redeem_link(session: Session, *, token: str, now: datetime, session_ttl: timedelta) -> tuple[str, WebToken] | None:
    """Use the link ``token`` once and start a session: (session token, its row), or None if refused.

    The link is marked used with one conditional UPDATE, so of two concurrent
    attempts exactly one starts a session.
    """
    link = usable_link(session, token=token, now=now)
    if link is None or not _active(session, link.therapist_id):
        return None
    used = session.execute(
        update(WebToken)
        .where(col(WebToken.id) == link.id, col(WebToken.used_at).is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if used.rowcount != 1:  # type: ignore[attr-defined]
        return None
    value = secrets.token_urlsafe(32)
    row = WebToken(
        token_hash=token_hash(value),
        kind=SESSION,
        therapist_id=link.therapist_id,
        created_at=now,
        expires_at=now + session_ttl,
        csrf_secret=secrets.token_urlsafe(32),
    )
    session.add(row)
    session.flush()
    return value, row


def current_session(session: Session, *, token: str | None, now: datetime) -> tuple[WebToken, Therapist] | None:
    """The live session for the cookie value ``token`` and its therapist; None if absent, ended or expired."""
    if not token:
        return None
    row = session.exec(
        select(WebToken).where(WebToken.token_hash == token_hash(token), WebToken.kind == SESSION)
    ).first()
    if row is None or row.used_at is not None or row.expires_at <= now:
        return None
    therapist = _active(session, row.therapist_id)
    return (row, therapist) if therapist is not None else None


def end_session(session: Session, *, row: WebToken, now: datetime) -> None:
    """Sign out: the session token never works again."""
    row.used_at = now
    session.add(row)


def _active(session: Session, therapist_id: int) -> Therapist | None:
    therapist = session.get(Therapist, therapist_id)
    return therapist if therapist is not None and therapist.disabled_at is None else None
