"""The platform-free message types that channels and the engine exchange."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from sqlmodel import Session

from storage import queries as q
from storage.models import REPLY, URGENT

MessageKind = Literal["text", "choice", "scale", "alert", "file", "edit"]
InboundKind = Literal["text", "edited", "unsupported"]


@dataclass(frozen=True)
class Inbound:
    """One message from a person, as every channel adapter hands it to the engine.

    ``address`` is the platform's id for the chat (a Telegram chat id, a
    WhatsApp number, a console handle); ``message_id`` is the platform's id
    for this message and is what duplicates are recognised by. ``kind`` is
    ``edited`` for an edit of an earlier message (screened for risk, never
    taken as an answer) and ``unsupported`` for content the companion cannot
    read (a voice note, a sticker).
    """

    channel: str
    address: str
    text: str
    message_id: str
    kind: InboundKind = "text"


@dataclass(frozen=True)
class Option:
    """A quick reply: ``value`` is what the engine understands if typed, ``label`` what is shown."""

    value: str
    label: str


@dataclass(frozen=True)
class Outbound:
    """What the engine wants said; each adapter renders it natively.

    ``choice`` offers options (buttons on Telegram, numbered replies on
    WhatsApp); ``scale`` is a numeric rating whose options are its points.
    ``edit`` replaces the text of a message already delivered (and removes
    its buttons): ``ref["edit_of"]`` is that message's outbox id; the sender
    adds ``ref["platform_id"]``, the platform's id for it, before the channel
    renders the edit.
    """

    text: str
    kind: MessageKind = "text"
    options: tuple[Option, ...] = field(default=())
    # What the message is about, for adapters that can render it natively (a
    # digest as Block Kit with its chart); others just show ``text``.
    ref: dict[str, Any] | None = None
    # Which template produced the text ("llm.reflection" @ "1"), recorded on its outbox row; not
    # part of the payload, so adapters and the scripted dialog see no difference.
    prompt_key: str | None = None
    prompt_version: str | None = None

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "text": self.text,
            "kind": self.kind,
            "options": [{"value": o.value, "label": o.label} for o in self.options],
        }
        if self.ref is not None:
            payload["ref"] = self.ref
        return payload

    def about(self) -> int | None:
        """The client this message is about, if any: an erasure removes it with their data."""
        ref = self.ref or {}
        value = ref.get("about_client", ref.get("client_id"))
        return value if isinstance(value, int) else None

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Outbound:
        return cls(
            text=str(payload["text"]),
            kind=payload.get("kind", "text"),
            options=tuple(Option(str(o["value"]), str(o["label"])) for o in payload.get("options", ())),
            ref=payload.get("ref"),
        )


def about_client(client_id: int | None) -> dict[str, Any] | None:
    """The ``ref`` of a message about a client (a notice, an alert, a weekly digest) that is not itself a digest."""
    return {"about_client": client_id} if client_id is not None else None


# What goes first when a backlog builds: the crisis path, then anyone's reply, then bulk (nudges, digests).
URGENT_PROMPTS: Final = frozenset({"safety.crisis", "safety.crisis_no_therapist", "safety.alert"})


def priority_of(message: Outbound) -> int:
    """The outbox priority of a message said in a turn: urgent for the crisis path, otherwise a reply.

    Bulk senders (the nudge and digest sweeps) pass :data:`storage.models.BULK` themselves.
    """
    if message.kind == "alert" or message.prompt_key in URGENT_PROMPTS:
        return URGENT
    return REPLY


def subject_of(message: Outbound) -> str | None:
    """What a row is about where a later step must find it again: ``alert:ID`` for a crisis alert."""
    alert = (message.ref or {}).get("alert")
    return f"alert:{alert}" if isinstance(alert, int) and message.kind == "alert" else None


def outbox_row(
    channel: str, address: str, message: Outbound, now: datetime, *, priority: int | None = None
) -> dict[str, Any]:
    """The columns of ``message``'s outbox row (for a multi-row INSERT)."""
    return {
        "channel": channel,
        "address": address,
        "payload": message.to_payload(),
        "created_at": now,
        "attempts": 0,
        "prompt_key": message.prompt_key,
        "prompt_version": message.prompt_version,
        "priority": priority_of(message) if priority is None else priority,
        "parts_sent": 0,
        "subject": subject_of(message),
    }


def enqueue(
    session: Session, *, channel: str, address: str, message: Outbound, now: datetime, priority: int | None = None
) -> None:
    """Queue ``message`` with the record of the template that produced it (OutboxMessage.prompt_key).

    ``priority`` defaults to :func:`priority_of` the message.
    """
    row = q.enqueue(
        session,
        channel=channel,
        address=address,
        payload=message.to_payload(),
        now=now,
        prompt_key=message.prompt_key,
        prompt_version=message.prompt_version,
    )
    row.priority = priority_of(message) if priority is None else priority
    row.subject = subject_of(message)
