"""Whether a client can be reached: platforms report blocks, the companion holds nudges and tells the therapist."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from dialogs.messages import Outbound, about_client, enqueue
from prompts import Prompts
from storage import Client
from storage import queries as q


def set_reachable(
    session: Session, *, prompts: Prompts, channel: str, address: str, reachable: bool, now: datetime
) -> bool:
    """Record that a chat refused delivery (the bot was blocked) or accepts it again.

    Only a client's chat matters: an unreachable client gets no nudges (the
    scheduler skips them) and the therapist is told once, on the change.
    Returns whether anything changed. Runs in the caller's unit of work.
    """
    identity = q.identity(session, channel=channel, address=address)
    if identity is None or identity.client_id is None:
        return False
    client = session.get(Client, identity.client_id)
    if client is None or (client.unreachable_at is None) == reachable:
        return False
    client.unreachable_at = None if reachable else now
    session.add(client)
    chat = q.latest_identity(session, therapist_id=client.therapist_id)
    if chat is not None:
        key = "notify.client_reachable" if reachable else "notify.client_unreachable"
        message = Outbound(
            prompts.text(key, client=client.name, channel=channel),
            ref=about_client(client.id),
            prompt_key=key,
            prompt_version=prompts.version,
        )
        enqueue(session, channel=chat.channel, address=chat.address, message=message, now=now)
    return True
