"""What every channel adapter shares: plain-text rendering and the outbox contract."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from dialogs.messages import Outbound

T = TypeVar("T")


class OutputChannel(Protocol):
    """Delivers one rendered message to a chat; raises if the platform did not accept it.

    The sender marks an outbox row sent only after :meth:`send` returns, so a
    crash or a platform error leaves the row to be retried (at-least-once).
    """

    name: str

    def send(self, address: str, message: Outbound) -> None: ...


def split_text(text: str, limit: int) -> list[str]:
    """Split at paragraph, then line, then word boundaries so every part fits ``limit``."""
    if len(text) <= limit:
        return [text]
    for separator in ("\n\n", "\n", " "):
        cut = text.rfind(separator, 0, limit + 1)
        if cut > 0:
            return [text[:cut].rstrip(), *split_text(text[cut + len(separator) :].lstrip(), limit)]
    return [text[:limit], *split_text(text[limit:], limit)]


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


class DeliveryError(Exception):
    """A platform did not accept a message; the subclass says what the sender should do."""


class RetryLater(DeliveryError):
    """Rate-limited: try again after ``seconds`` (Telegram's 429 retry_after)."""

    def __init__(self, seconds: float, detail: str = "") -> None:
        super().__init__(detail or f"retry after {seconds} s")
        self.seconds = seconds


class Unreachable(DeliveryError):
    """The person blocked the companion or the chat is gone: stop sending to it."""


class Rejected(DeliveryError):
    """The platform will never accept this message (a bad request): do not retry."""


class Transient(DeliveryError):
    """A network error or a 5xx: retry with backoff."""


class Undeliverable(DeliveryError):
    """This message may not be sent now (e.g. outside WhatsApp's 24-hour window with no template).

    Recorded with its reason (``str(exc)``) for the therapist; never retried.
    """


class Progress:
    """How far a multi-part message got: parts the platform accepted before are never sent again.

    ``done`` is the number of leading parts accepted in an earlier attempt;
    a channel skips them and awaits :meth:`advance` after each further part
    that is not the last (the sender records it in a short transaction of
    its own, so a crash between two parts re-sends neither). This default
    records nothing: for callers that send once, outside the outbox.
    """

    def __init__(self, done: int = 0) -> None:
        self.done = done

    async def advance(self, done: int) -> None:
        self.done = done


async def send_parts(
    parts: Sequence[T], send_one: Callable[[T], Awaitable[str | None]], progress: Progress | None
) -> str | None:
    """Send ``parts`` in order, skipping those ``progress`` says were accepted; the last part's platform id."""
    progress = progress or Progress()
    platform_id = None
    for index, part in enumerate(parts):
        if index < progress.done:
            continue
        platform_id = await send_one(part)
        if index < len(parts) - 1:
            await progress.advance(index + 1)
    return platform_id


class AsyncOutputChannel(Protocol):
    """A push platform's outbound side, driven by :class:`channels.sender.OutboxSender`.

    :meth:`send` returns only when the platform accepted the whole message (with
    the platform's id for it, where there is one: status callbacks find the
    row by it, and an ``edit`` message names it) and raises a
    :class:`DeliveryError` subclass otherwise. A message the platform splits
    into parts reports each accepted part to ``progress`` and skips the parts
    it says were accepted before. A channel that cannot edit messages raises
    :class:`Rejected` for an ``edit``.
    """

    @property
    def name(self) -> str: ...

    async def send(self, address: str, message: Outbound, progress: Progress | None = None) -> str | None: ...
