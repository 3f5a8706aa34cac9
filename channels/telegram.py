"""Telegram: verify and parse updates (webhook or long polling), dedupe by update_id, render with inline keyboards."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import warnings
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.warnings import PTBDeprecationWarning

from channels.base import Progress, Rejected, Transient, Unreachable, render_plain, send_parts, split_text
from channels.base import RetryLater as RetryLaterError
from dialogs.engine import Engine
from dialogs.messages import Inbound, InboundKind, Option, Outbound, enqueue
from dialogs.presence import set_reachable
from storage import Database
from storage import queries as q

log = logging.getLogger("companion.telegram")

NAME: Final = "telegram"
MAX_TEXT: Final = 4096  # Telegram's limit for one message
MAX_CALLBACK_BYTES: Final = 64  # Telegram's limit for callback_data
ALLOWED_UPDATES: Final = ("message", "edited_message", "callback_query", "my_chat_member")
_BUTTONS_PER_ROW: Final = 6


def _seconds(exc: RetryAfter) -> float:
    """retry_after as seconds, whether PTB gives an int (v22) or a timedelta (its future default)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        delay = exc.retry_after
    return delay.total_seconds() if isinstance(delay, timedelta) else float(delay)


def secret_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison of the webhook secret header (absent never matches)."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


# --- outbound rendering ------------------------------------------------------------


def render(message: Outbound) -> list[tuple[str, InlineKeyboardMarkup | None]]:
    """Text parts and, on the last, an inline keyboard of the options that fit Telegram's callback limit.

    Options whose value is longer than 64 bytes cannot be buttons; they are
    listed in the text instead, where typing them still works.
    """
    buttons = [o for o in message.options if len(o.value.encode()) <= MAX_CALLBACK_BYTES]
    leftover = [o for o in message.options if o not in buttons]
    text = render_plain(Outbound(message.text, message.kind, tuple(leftover))) if leftover else message.text
    parts = split_text(text, MAX_TEXT)
    markup = _keyboard(buttons, scale=message.kind == "scale") if buttons else None
    return [(part, markup if i == len(parts) - 1 else None) for i, part in enumerate(parts)]


def _keyboard(options: list[Option], *, scale: bool) -> InlineKeyboardMarkup:
    per_row = _BUTTONS_PER_ROW if scale else (3 if all(len(o.label) <= 12 for o in options) else 1)
    rows = [options[i : i + per_row] for i in range(0, len(options), per_row)]
    return InlineKeyboardMarkup([[InlineKeyboardButton(o.label, callback_data=o.value) for o in row] for row in rows])


# --- inbound translation -------------------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    """What one update means for the companion; the adapter's only decision is which of these it is."""

    inbound: Inbound | None = None  # a private message for the engine
    callback_id: str | None = None  # a button tap to answer
    group_chat: int | None = None  # a group the bot must leave (after saying why)
    blocked: bool | None = None  # the person blocked (True) or unblocked (False) the bot...
    private_chat: int | None = None  # ...in this chat


def parse(update: Update) -> Parsed:
    """Translate a PTB ``Update`` into the platform-free form. Pure; no I/O."""
    message_id = str(update.update_id)
    if update.callback_query is not None:
        query = update.callback_query
        chat = query.message.chat if query.message is not None else None
        if chat is None or chat.type != "private" or query.data is None:
            return Parsed(callback_id=query.id)
        inbound = Inbound(channel=NAME, address=str(chat.id), text=query.data, message_id=message_id)
        return Parsed(inbound=inbound, callback_id=query.id)
    if update.my_chat_member is not None:
        member = update.my_chat_member
        status = member.new_chat_member.status
        if member.chat.type == "private":
            return Parsed(blocked=status in ("kicked", "left"), private_chat=member.chat.id)
        if status in ("member", "administrator"):
            return Parsed(group_chat=member.chat.id)
        return Parsed()
    message = update.message or update.edited_message
    if message is None:
        return Parsed()
    if message.chat.type != "private":
        return Parsed(group_chat=message.chat.id)
    text = message.text or message.caption or ""
    kind: InboundKind = "edited" if update.edited_message is not None else ("text" if text else "unsupported")
    return Parsed(
        inbound=Inbound(channel=NAME, address=str(message.chat.id), text=text, message_id=message_id, kind=kind)
    )


class MalformedUpdate(ValueError):
    """The JSON is not an update Telegram would send (wrong types, missing parts); nothing was recorded."""


def decode(data: dict[str, Any], bot: Bot) -> tuple[Update, Parsed]:
    """``data`` as a PTB ``Update`` and what it means; :class:`MalformedUpdate` if it is not a real update.

    PTB builds objects from whatever types it is given, so the ids and the
    text the companion relies on are checked here, before any I/O.
    """
    try:
        update = Update.de_json(data, bot)
        parsed = parse(update)
    except Exception as exc:  # pure parsing of untrusted JSON: any failure means the input is malformed
        raise MalformedUpdate(exc.__class__.__name__) from exc
    inbound = parsed.inbound
    chats = [c for c in (parsed.group_chat, parsed.private_chat) if c is not None]
    if (
        not isinstance(update.update_id, int)
        or (inbound is not None and not (isinstance(inbound.text, str) and inbound.address.lstrip("-").isdigit()))
        or any(isinstance(c, bool) or not isinstance(c, int) for c in chats)
        or not isinstance(parsed.callback_id, str | None)
    ):
        raise MalformedUpdate("wrong field types")
    return update, parsed


class TelegramChannel:
    """The Telegram adapter: inbound updates to the engine, outbox rows to the Bot API.

    :meth:`process` records an update durably (dedupe row, dialog state and
    outbox rows in one transaction) before returning, so the webhook answers
    200, or polling advances its offset, only after nothing can be lost; a
    redelivered ``update_id`` is dropped by the engine's dedupe. Platform
    calls that are not messages (answering a button tap, leaving a group) are
    made after the commit and are best-effort.
    """

    name: Final = NAME

    def __init__(self, *, bot: Bot, db: Database, engine: Engine) -> None:
        self.bot, self.db, self.engine = bot, db, engine

    @property
    def username(self) -> str:
        return self.bot.username

    async def start(self) -> None:
        await self.bot.initialize()  # getMe: checks the token, learns the username

    async def stop(self) -> None:
        await self.bot.shutdown()

    # --- inbound ----------------------------------------------------------------------

    async def process(self, data: dict[str, Any]) -> None:
        """Handle one update's JSON (from the webhook or getUpdates); raises if it could not be recorded.

        :class:`MalformedUpdate` (a ``ValueError``) means the JSON is not an update; nothing was touched.
        """
        update, parsed = decode(data, self.bot)
        await asyncio.to_thread(self._record, update.update_id, parsed)
        if parsed.callback_id is not None:
            await self._quietly(self.bot.answer_callback_query(parsed.callback_id))
        if parsed.group_chat is not None:
            await self._quietly(self.bot.leave_chat(parsed.group_chat))

    def _record(self, update_id: int, parsed: Parsed) -> None:
        with self.db.unit_of_work() as session:
            if parsed.inbound is not None:
                self.engine.handle(session, parsed.inbound)
                return
            now = self.engine.clock.now()
            if not q.claim_inbound(session, channel=NAME, message_id=str(update_id), now=now):
                return
            if parsed.group_chat is not None:
                prompts = self.engine.prompts
                message = Outbound(
                    prompts.text("common.group_only"), prompt_key="common.group_only", prompt_version=prompts.version
                )
                enqueue(session, channel=NAME, address=str(parsed.group_chat), message=message, now=now)
            if parsed.blocked is not None and parsed.private_chat is not None:
                set_reachable(
                    session,
                    prompts=self.engine.prompts,
                    channel=NAME,
                    address=str(parsed.private_chat),
                    reachable=not parsed.blocked,
                    now=now,
                )

    async def _quietly(self, call: Any) -> None:
        try:
            await call
        except TelegramError as exc:
            log.info("best-effort Telegram call failed: %s", exc.__class__.__name__)

    async def poll_once(self, offset: int | None, *, timeout: int = 25) -> int | None:
        """One getUpdates round; returns the next offset.

        The offset moves past an update only after it was recorded, so an
        update whose processing failed is fetched again (Telegram keeps
        unconfirmed updates for 24 hours).
        """
        updates = await self.bot.get_updates(
            offset=offset, timeout=timeout, allowed_updates=list(ALLOWED_UPDATES), read_timeout=timeout + 10
        )
        for update in updates:
            await self.process(update.to_dict())
            offset = update.update_id + 1
        return offset

    async def poll(self, stop: asyncio.Event, *, timeout: int = 25) -> None:
        """Long polling until ``stop`` is set, backing off on errors."""
        offset: int | None = None
        failures = 0
        while not stop.is_set():
            try:
                offset = await self.poll_once(offset, timeout=timeout)
                failures = 0
            except TimedOut:
                continue
            except Exception as exc:  # keep polling; the unconfirmed update comes back
                failures += 1
                log.warning("polling failed (%s); retrying", exc.__class__.__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=min(2.0**failures, 60.0))

    # --- outbound -----------------------------------------------------------------------

    async def send(self, address: str, message: Outbound, progress: Progress | None = None) -> str | None:
        """Deliver one outbox message; the platform id is the Telegram message id of its last part.

        A text over 4,096 characters goes in parts, each reported to
        ``progress``; an ``edit`` replaces the text of the message it names
        (editMessageText, with no keyboard: its buttons are gone).
        """
        chat = int(address)
        if message.kind == "file":  # /mydata: one document rather than many messages
            filename = str((message.ref or {}).get("filename") or "data.json")
            sent = await self._call(self.bot.send_document(chat, document=message.text.encode(), filename=filename))
            return _message_id(sent)
        if message.kind == "edit":
            target = str((message.ref or {}).get("platform_id") or "")
            if not target.isdigit():
                raise Rejected("nothing to edit")
            text = split_text(message.text, MAX_TEXT)[0]
            try:
                await self._call(self.bot.edit_message_text(text, chat_id=chat, message_id=int(target)))
            except Rejected as exc:
                if "not modified" not in str(exc).lower():  # already shows this: the edit is done
                    raise
            return target

        async def one(part: tuple[str, InlineKeyboardMarkup | None]) -> str | None:
            text, markup = part
            return _message_id(await self._call(self.bot.send_message(chat_id=chat, text=text, reply_markup=markup)))

        return await send_parts(render(message), one, progress)

    @staticmethod
    async def _call(request: Awaitable[object]) -> object:
        """One Bot API call, its errors mapped to what the outbox sender does next."""
        try:
            return await request
        except RetryAfter as exc:
            raise RetryLaterError(_seconds(exc)) from exc
        except Forbidden as exc:
            raise Unreachable(exc.message) from exc
        except BadRequest as exc:
            if "chat not found" in exc.message.lower():
                raise Unreachable(exc.message) from exc
            raise Rejected(exc.message) from exc
        except (TimedOut, NetworkError) as exc:
            raise Transient(exc.__class__.__name__) from exc


def _message_id(sent: object) -> str | None:
    message_id = getattr(sent, "message_id", None)
    return str(message_id) if isinstance(message_id, int) else None
