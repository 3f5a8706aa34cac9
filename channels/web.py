"""The web channel: a pull channel for the browser chat; posts go through the engine, the page fetches replies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from sqlmodel import col, select

from dialogs.engine import Engine
from dialogs.messages import Inbound, Outbound
from dialogs.nudges import outbound
from storage import Database, OutboxMessage
from storage import queries as q

NAME: Final = "web"
MAX_MESSAGE_ID: Final = 64


@dataclass(frozen=True)
class WebMessage:
    """One outbox message as the page shows it: options become buttons whose value is sent back as text."""

    id: int
    text: str
    kind: str
    options: tuple[tuple[str, str], ...]  # (value, label)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "kind": self.kind,
            "options": [{"value": v, "label": label} for v, label in self.options],
        }


def render(row_id: int, message: Outbound) -> WebMessage:
    """The browser renders every part natively: text, and each option as a button (as Telegram's inline keyboard)."""
    return WebMessage(row_id, message.text, message.kind, tuple((o.value, o.label) for o in message.options))


class WebChannel:
    """The browser's chats: same inbound/outbound contract as every other channel, but pulled, not pushed.

    :meth:`receive` records one message through the engine in one unit of
    work, deduplicated by the page's message id (a UUID it makes per message,
    so a retried POST is handled once). Replies stay in the outbox; the page
    asks for everything after the last id it has (:meth:`fetch`), and rows are
    marked sent when they were handed to it. A reloaded page asks from 0 and
    gets the history again; nothing is lost if the page is closed meanwhile.
    A tapped button posts the option's value as the message text, exactly as
    a Telegram callback does.
    """

    name: Final = NAME

    def __init__(self, *, db: Database, engine: Engine) -> None:
        self.db, self.engine = db, engine

    def receive(self, address: str, text: str, message_id: str) -> None:
        """Record one message from ``address``; raises if it could not be recorded (the page retries)."""
        if not message_id or len(message_id) > MAX_MESSAGE_ID:
            raise ValueError("a message id of 1–64 characters is required")
        inbound = Inbound(channel=NAME, address=address, text=text, message_id=f"{address}:{message_id}")
        with self.db.unit_of_work() as session:
            self.engine.handle(session, inbound)

    def fetch(self, address: str, *, after: int = 0, limit: int = 200) -> list[WebMessage]:
        """Messages for ``address`` with an id above ``after``, oldest first; the unsent ones are marked sent."""
        now = self.engine.clock.now()
        with self.db.unit_of_work() as session:
            rows = session.exec(
                select(OutboxMessage)
                .where(OutboxMessage.channel == NAME, OutboxMessage.address == address, col(OutboxMessage.id) > after)
                .order_by(col(OutboxMessage.id))
                .limit(limit)
            ).all()
            shown = []
            for row in rows:
                if row.sent_at is None:
                    q.mark_sent(session, message=row, now=now)
                shown.append(render(row.id or 0, outbound(session, self.engine.prompts, row.payload)))
        return shown
