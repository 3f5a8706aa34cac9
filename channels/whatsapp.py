"""WhatsApp through Twilio: signed webhooks, numbered replies, the 24-hour window, delivery status."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import phonenumbers
from sqlmodel import col, select
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client as TwilioClient

from channels.base import (
    Progress,
    Rejected,
    RetryLater,
    Transient,
    Undeliverable,
    Unreachable,
    send_parts,
    split_text,
)
from dialogs.engine import Engine
from dialogs.messages import Inbound, InboundKind, Outbound
from prompts import fold
from storage import ConversationState, Database, OutboxMessage

log = logging.getLogger("companion.whatsapp")

NAME: Final = "whatsapp"
WINDOW: Final = timedelta(hours=24)
MAX_BODY: Final = 1600  # Twilio's limit for one WhatsApp body
OUTSIDE_WINDOW: Final = "outside_window"
# WhatsApp has no carrier-level opt-out, so the usual words are honoured here,
# even mid-debrief. ("yes" is not START: it answers questions.)
OPT_OUT: Final = frozenset({"stop", "stopall", "unsubscribe", "cancel", "end", "quit"})
OPT_IN: Final = frozenset({"start", "unstop"})
HELP: Final = frozenset({"help", "info"})
RETRYABLE_CODES: Final = frozenset({"30001", "63018", "20429"})  # queue overflow, rate limit: try again later
WINDOW_CLOSED_CODE: Final = "63016"  # free-form message outside the 24-hour window: never loop on it


class RedirectingHttpClient(TwilioHttpClient):
    """Rewrites https://api.twilio.com (and any *.twilio.com host) to base_url; everything else unchanged.

    The twilio ``Client`` has no base-URL argument; its ``http_client`` is the supported seam. Only the
    scheme, host and port change (``base_url``'s path, if any, is prefixed); query and body go as they are.
    """

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        """``kwargs`` go to ``TwilioHttpClient`` (``timeout``, ``max_retries``, ``pool_connections``, ...)."""
        super().__init__(**kwargs)
        base = urlsplit(base_url)
        if base.scheme not in ("http", "https") or not base.netloc:
            raise ValueError(f"base_url must be an absolute http(s) URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._base = base
        if self.session is not None and base.scheme == "http":
            # TwilioHttpClient mounts its adapter (carrying max_retries) on https:// only; keep it for http://.
            self.session.mount("http://", self.session.get_adapter("https://"))

    def rewrite(self, url: str) -> str:
        """The URL the request really goes to: a twilio.com host swapped for ``base_url``."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if host != "twilio.com" and not host.endswith(".twilio.com"):
            return url
        path = self._base.path.rstrip("/") + parts.path
        return urlunsplit((self._base.scheme, self._base.netloc, path, parts.query, parts.fragment))

    def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        """``TwilioHttpClient.request`` with the URL rewritten."""
        return super().request(
            method,
            self.rewrite(url),
            params=params,
            data=data,
            headers=headers,
            auth=auth,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )


@dataclass(frozen=True)
class Template:
    """An approved WhatsApp content template: ``variables`` maps its placeholders to fields of the message's ref."""

    content_sid: str
    variables: dict[str, str] = field(default_factory=dict)


def e164(raw: str) -> str | None:
    """``whatsapp:+44 7700 900123`` → ``+447700900123``; None if it is not a valid number."""
    number = raw.removeprefix("whatsapp:").strip()
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def numbered(message: Outbound) -> str:
    """Choices become numbered replies (WhatsApp free-form messages have no buttons); scales show their range."""
    if not message.options:
        return message.text
    if message.kind == "scale":
        return f"{message.text}\n({message.options[0].value}–{message.options[-1].value})"
    choices = " · ".join(f"{n} {o.label}" for n, o in enumerate(message.options, start=1))
    return f"{message.text}\n({choices})"


class WhatsAppChannel:
    """The WhatsApp adapter.

    Inbound requests are verified against the public URL Twilio called (not
    the internal one) before anything else; :meth:`inbound` records the
    message (dedupe by MessageSid, the dialog turn, the outbox rows) in one
    transaction before the webhook answers. Outbound, a free-form message
    goes only inside the 24-hour window since the chat last wrote; outside
    it, nudges and follow-ups use their configured content template, and
    anything else is recorded as undeliverable for the therapist.
    """

    name: Final = NAME

    def __init__(
        self,
        *,
        client: TwilioClient,
        auth_token: str,
        from_number: str,
        status_callback_url: str | None,
        templates: dict[str, Template],
        db: Database,
        engine: Engine,
    ) -> None:
        self.client, self.db, self.engine = client, db, engine
        self.validator = RequestValidator(auth_token)
        self.from_number, self.status_callback_url, self.templates = from_number, status_callback_url, templates

    # --- inbound ------------------------------------------------------------------------

    def verify(self, url: str, params: dict[str, str], signature: str | None) -> bool:
        return bool(signature) and self.validator.validate(url, params, signature or "")

    async def inbound(self, params: dict[str, str]) -> None:
        address = e164(params.get("From", ""))
        if address is None or not params.get("MessageSid"):
            log.warning("whatsapp inbound without a valid sender or MessageSid; ignored")
            return
        body = (params.get("Body") or "").strip()
        count = params.get("NumMedia") or "0"
        media = int(count) if count.isascii() and count.isdigit() and len(count) <= 3 else 0  # Twilio: 0–10
        await asyncio.to_thread(self._record, address, body, media, params["MessageSid"])

    def _record(self, address: str, body: str, media: int, sid: str) -> None:
        with self.db.unit_of_work() as session:
            word = fold(body)
            if word in OPT_OUT:
                text = "/stop"
            elif word in OPT_IN:
                text = "/resume"
            elif word in HELP:
                text = "/help"
            elif word.isdigit():
                text = self._numbered_reply(session, address, int(word)) or body
            else:
                text = body
            kind: InboundKind = "unsupported" if not body and media else "text"
            self.engine.handle(session, Inbound(channel=NAME, address=address, text=text, message_id=sid, kind=kind))

    def _numbered_reply(self, session: Any, address: str, number: int) -> str | None:
        """ "2" after "(1 Yes · 2 No)" means the second option of the last choice we sent this chat."""
        last = session.exec(
            select(OutboxMessage)
            .where(
                OutboxMessage.channel == NAME, OutboxMessage.address == address, col(OutboxMessage.sent_at).is_not(None)
            )
            .order_by(col(OutboxMessage.id).desc())
            .limit(1)
        ).first()
        if last is None:
            return None
        message = Outbound.from_payload(last.payload)
        if message.kind != "choice" or not 1 <= number <= len(message.options):
            return None  # scales are numbers already
        return message.options[number - 1].value

    async def status(self, params: dict[str, str]) -> None:
        await asyncio.to_thread(self._status, params)

    def _status(self, params: dict[str, str]) -> None:
        """Record a delivery status; retry what retrying can help, surface the rest."""
        status, code = params.get("MessageStatus", ""), params.get("ErrorCode") or None
        now = self.engine.clock.now()
        with self.db.unit_of_work() as session:
            row = session.exec(
                select(OutboxMessage).where(OutboxMessage.platform_id == params.get("MessageSid")).with_for_update()
            ).first()
            if row is None:
                return
            row.delivery_status, row.error_code = status, code
            if status in ("failed", "undelivered"):
                if code in RETRYABLE_CODES:
                    # The sid is the last part's; parts_sent still counts the parts before it, so only
                    # the failed last part goes again.
                    row.sent_at, row.platform_id, row.next_attempt_at = None, None, now + timedelta(minutes=1)
                elif code == WINDOW_CLOSED_CODE:
                    row.failed_at, row.last_error = now, OUTSIDE_WINDOW
                else:
                    row.failed_at, row.last_error = now, f"twilio {code or status}"
            session.add(row)

    # --- outbound -------------------------------------------------------------------------

    def _window_open(self, address: str) -> bool:
        with self.db.unit_of_work() as session:
            chat = session.exec(
                select(ConversationState).where(ConversationState.channel == NAME, ConversationState.address == address)
            ).first()
            last = chat.last_inbound_at if chat else None
            return last is not None and self.engine.clock.now() - last < WINDOW

    async def send(self, address: str, message: Outbound, progress: Progress | None = None) -> str | None:
        """Deliver one outbox message: text in parts inside the 24-hour window (each reported to
        ``progress``), a template outside it; the platform id is the last part's MessageSid.
        WhatsApp messages cannot be edited (an ``edit`` is rejected)."""
        if message.kind == "edit":
            raise Rejected("whatsapp messages cannot be edited")
        if await asyncio.to_thread(self._window_open, address):

            async def one(part: str) -> str | None:
                return await self._create(address, body=part)

            return await send_parts(split_text(numbered(message), MAX_BODY), one, progress)
        kind = (message.ref or {}).get("type")
        template = self.templates.get(kind) if isinstance(kind, str) else None
        if template is None:
            raise Undeliverable(OUTSIDE_WINDOW)
        ref = message.ref or {}
        variables = {key: str(ref.get(field_name, "")) for key, field_name in template.variables.items()}
        return await self._create(address, content_sid=template.content_sid, content_variables=json.dumps(variables))

    async def _create(self, address: str, **fields: str) -> str:
        extra = {"status_callback": self.status_callback_url} if self.status_callback_url else {}
        try:
            sent = await asyncio.to_thread(
                self.client.messages.create,
                from_=f"whatsapp:{self.from_number}",
                to=f"whatsapp:{address}",
                **fields,
                **extra,
            )
        except TwilioRestException as exc:
            raise _delivery_error(exc) from exc
        except (TwilioException, OSError) as exc:
            raise Transient(exc.__class__.__name__) from exc
        return str(sent.sid)


def _delivery_error(exc: TwilioRestException) -> Exception:
    code = str(exc.code or "")
    if exc.status == 429 or code in RETRYABLE_CODES:
        return RetryLater(5)
    if code == WINDOW_CLOSED_CODE:
        return Undeliverable(OUTSIDE_WINDOW)
    if code in ("21211", "21614", "63003"):  # invalid, not a mobile number, not on WhatsApp
        return Unreachable(code)
    if exc.status >= 500:
        return Transient(f"HTTP {exc.status}")
    return Rejected(code or f"HTTP {exc.status}")
