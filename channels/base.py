"""What every channel adapter shares: plain-text rendering and the outbox contract."""

from __future__ import annotations

from typing import Protocol

from dialogs.messages import Outbound


class OutputChannel(Protocol):
    """Delivers one rendered message to a chat; raises if the platform did not accept it.

    The sender marks an outbox row sent only after :meth:`send` returns, so a
    crash or a platform error leaves the row to be retried (at-least-once).
    """

    name: str

    def send(self, address: str, message: Outbound) -> None: ...


def render_plain(message: Outbound) -> str:
    """The text-only rendering: options become a "reply with" line.

    Platforms with buttons override this; ones without (the console,
    WhatsApp) use it as is. A scale shows its points compactly.
    """
    if not message.options:
        return message.text
    if message.kind == "scale" and all(o.label == o.value for o in message.options):
        values = [o.value for o in message.options]
        return f"{message.text}\n({values[0]}–{values[-1]})"
    labels = " · ".join(o.label for o in message.options)
    return f"{message.text}\n({labels})"
