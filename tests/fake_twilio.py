"""A local fake of Twilio's Messages REST API (WhatsApp) that the real twilio Python client can talk to."""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from twilio.request_validator import RequestValidator

from channels.whatsapp import RedirectingHttpClient
from tests.fake_http import ServedFake

__all__ = ["RedirectingHttpClient"]  # re-exported for tests that point a client here

__all__ = [
    "DEFAULT_ACCOUNT_SID",
    "DEFAULT_AUTH_TOKEN",
    "Call",
    "FakeTwilioAPI",
    "RedirectingHttpClient",
    "inbound_message",
    "signed_headers",
    "status_callback",
]

DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
DEFAULT_AUTH_TOKEN = "test-auth-token"
CLIENT_NUMBER = "whatsapp:+447700900123"  # an Ofcom drama number: never a real person
SANDBOX_NUMBER = "whatsapp:+14155238886"  # Twilio's WhatsApp sandbox sender
API_VERSION = "2010-04-01"
MAX_BODY = 1600

_ACCOUNT_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)\.json$")
_NUMBERS_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/IncomingPhoneNumbers\.json$")
_MESSAGES_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages\.json$")
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_CHANNEL = "whatsapp:"


# The production seam, re-exported so tests point the real client here the same way.
@dataclass
class Call:
    """One request the fake received: HTTP method, path (no query), form params, arrival time.

    ``params`` holds the query and form fields (a repeated field such as ``MediaUrl`` keeps its last value).
    A snapshot: the fake never mutates it after recording.
    """

    method: str
    path: str
    params: dict[str, str]
    at: float  # time.monotonic() when received


@dataclass
class _Fault:
    status: int
    code: int
    message: str
    times: int


@dataclass
class _Hang:
    seconds: float
    times: int


@dataclass
class _Reply:
    status: int
    body: dict[str, Any]
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def _error(status: int, code: int, message: str, **extra: Any) -> _Reply:
    """Twilio's (legacy, non RFC-9457) error body, which the client turns into ``TwilioRestException``."""
    body: dict[str, Any] = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
        **extra,
    }
    return _Reply(status, body)


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _rfc2822(moment: datetime) -> str:
    return format_datetime(moment)  # "Mon, 23 Nov 2026 09:00:00 +0000", as Twilio's 2010 API writes dates


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: FakeTwilioAPI) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so stop() never has idle keep-alive connections to chase.
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        received = time.monotonic()
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        try:
            pairs = parse_qsl(split.query, keep_blank_values=True)
            if raw:
                pairs += parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (ValueError, UnicodeDecodeError):
            reply = _error(400, 20001, "Could not parse the request body")
        else:
            reply = fake._dispatch(self.command, split.path, pairs, self.headers.get("Authorization"), received)
        if reply.delay > 0:
            fake._stopped.wait(reply.delay)
        payload = json.dumps(reply.body).encode("utf-8")
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Twilio-Request-Id", _sid("RQ"))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:  # the client gave up (e.g. its read timeout fired during a hang)
            self.close_connection = True


class FakeTwilioAPI(ServedFake):
    """Twilio's ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` on 127.0.0.1, for tests.

    Point the real client at it with ``Client(sid, token, http_client=RedirectingHttpClient(fake.base_url))``.
    Every request is recorded in ``calls``; only successful creates appear in ``messages()``. Faults and
    hangs apply to authenticated requests to the Messages endpoint. A hung request takes effect at once
    (the message is recorded, as Twilio may queue it) and only its response is late; ``stop()`` cuts a
    hang short. Thread-safe: state sits behind one lock and accessors return copies.
    """

    def __init__(self, account_sid: str = DEFAULT_ACCOUNT_SID, auth_token: str = DEFAULT_AUTH_TOKEN) -> None:
        """A stopped fake that accepts HTTP Basic auth ``account_sid:auth_token``."""
        self.account_sid = account_sid
        self.auth_token = auth_token
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._calls: list[Call] = []
        self._messages: list[tuple[str, dict[str, str]]] = []  # (sid, params) of each successful create
        self.account_status = "active"  # what GET Accounts/{sid}.json reports ("suspended", "closed")
        self.numbers: list[str] = []  # the account's own phone numbers (E.164), for IncomingPhoneNumbers
        self._faults: list[_Fault] = []
        self._hangs: list[_Hang] = []

    # -- lifecycle -------------------------------------------------------------------------------

    _thread_name = "fake-twilio"

    def _new_server(self) -> _Server:
        return _Server(self)

    def _shut(self, server: Any, thread: threading.Thread | None) -> None:
        """HTTP/1.0, one request per connection: no idle connections to end (hung responses answer at once)."""
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=2)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``; only valid once started."""
        return self.root_url

    # -- what happened ---------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """Every request received, in arrival order (failed and unauthenticated ones too)."""
        with self._lock:
            return list(self._calls)

    def messages(self, to: str | None = None) -> list[dict[str, str]]:
        """Params of each successful Messages.create, in order; ``to`` as sent (``whatsapp:+447700900123``)."""
        with self._lock:
            return [dict(params) for _, params in self._messages if to is None or params.get("To") == to]

    def message_sids(self, to: str | None = None) -> list[str]:
        """The ``SM…`` sid the fake returned for each successful create, in the order of ``messages()``."""
        with self._lock:
            return [sid for sid, params in self._messages if to is None or params.get("To") == to]

    def bodies(self, to: str) -> list[str]:
        """The Body of each message to ``to``; a template message gives ``"[template HX…]"``."""
        return [
            params["Body"] if "Body" in params else f"[template {params.get('ContentSid', '')}]"
            for params in self.messages(to)
        ]

    # -- what happens next -----------------------------------------------------------------------

    def fail_next(
        self, *, status: int = 429, code: int = 20429, message: str = "Too Many Requests", times: int = 1
    ) -> None:
        """Answer the next ``times`` authenticated creates with Twilio's error JSON; nothing is recorded as sent."""
        if times < 1:
            raise ValueError("times must be at least 1")
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status")
        with self._lock:
            self._faults.append(_Fault(status, code, message, times))

    def hang_next(self, seconds: float, times: int = 1) -> None:
        """Delay the response to the next ``times`` authenticated creates by ``seconds`` (``stop()`` cuts it short)."""
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._hangs.append(_Hang(seconds, times))

    # -- request dispatch (server threads) -------------------------------------------------------

    def _authenticated(self, authorization: str | None, account: str) -> bool:
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        username, _, password = decoded.partition(":")
        return (
            secrets.compare_digest(username.encode(), self.account_sid.encode())
            and secrets.compare_digest(password.encode(), self.auth_token.encode())
            and account == self.account_sid
        )

    def _dispatch(
        self, method: str, path: str, pairs: list[tuple[str, str]], authorization: str | None, received: float
    ) -> _Reply:
        params = dict(pairs)
        with self._lock:
            self._calls.append(Call(method, path, dict(params), received))
        read = _ACCOUNT_PATH.match(path) or _NUMBERS_PATH.match(path)
        if read is not None and method == "GET":
            return self._read(read, params, authorization)
        match = _MESSAGES_PATH.match(path)
        if match is None:
            return _error(404, 20404, f"The requested resource {path} was not found")
        if not self._authenticated(authorization, match["account"]):
            reply = _error(401, 20003, "Authenticate", detail="Your AccountSid or AuthToken was incorrect.")
            reply.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
            return reply
        if method != "POST":
            return _error(405, 20004, "Method not allowed")
        with self._lock:
            delay = self._take_hang()
            fault = self._take_fault()
            if fault is not None:
                reply = _error(fault.status, fault.code, fault.message)
            else:
                media = [value for name, value in pairs if name == "MediaUrl"]
                reply = self._validate(params, media) or self._create(params, media)
        reply.delay = delay
        return reply

    def _read(self, match: re.Match[str], params: dict[str, str], authorization: str | None) -> _Reply:
        """The account resource, or its IncomingPhoneNumbers list (filtered by PhoneNumber as Twilio does)."""
        if not self._authenticated(authorization, match["account"]):
            return _error(401, 20003, "Authenticate", detail="Your AccountSid or AuthToken was incorrect.")
        base = f"/{API_VERSION}/Accounts/{self.account_sid}"
        if match.re is _ACCOUNT_PATH:
            return _Reply(
                200,
                {
                    "sid": self.account_sid,
                    "friendly_name": "Companion test account",
                    "status": self.account_status,
                    "type": "Full",
                    "uri": f"{base}.json",
                },
            )
        wanted = params.get("PhoneNumber")
        numbers = [n for n in self.numbers if wanted is None or n == wanted]
        rows = [
            {"sid": _sid("PN"), "account_sid": self.account_sid, "phone_number": n, "friendly_name": n} for n in numbers
        ]
        uri = f"{base}/IncomingPhoneNumbers.json"
        return _Reply(
            200,
            {
                "incoming_phone_numbers": rows,
                "page": 0,
                "page_size": 50,
                "start": 0,
                "end": max(0, len(rows) - 1),
                "uri": uri,
                "first_page_uri": uri,
                "next_page_uri": None,
                "previous_page_uri": None,
            },
        )

    def _take_fault(self) -> _Fault | None:
        if not self._faults:
            return None
        fault = self._faults[0]
        fault.times -= 1
        if fault.times == 0:
            self._faults.pop(0)
        return fault

    def _take_hang(self) -> float:
        if not self._hangs:
            return 0.0
        hang = self._hangs[0]
        hang.times -= 1
        if hang.times == 0:
            self._hangs.pop(0)
        return hang.seconds

    @staticmethod
    def _validate(params: dict[str, str], media: list[str]) -> _Reply | None:
        to, from_ = params.get("To", ""), params.get("From", "")
        if not to:
            return _error(400, 21604, "A 'To' phone number is required.")
        if not from_ and not params.get("MessagingServiceSid"):
            return _error(400, 21603, "A 'From' phone number is required.")
        if not _E164.match(to.removeprefix(_CHANNEL)):
            return _error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if from_ and from_.startswith(_CHANNEL) != to.startswith(_CHANNEL):
            return _error(400, 21910, "Invalid From and To pair. From and To should be of the same channel")
        if not params.get("Body") and not params.get("ContentSid") and not media:
            return _error(400, 21619, "A text message body or media urls must be specified.")
        if len(params.get("Body", "")) > MAX_BODY:
            return _error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        if "ContentVariables" in params:
            try:
                variables = json.loads(params["ContentVariables"])
            except ValueError:
                variables = None
            if not isinstance(variables, dict):
                return _error(400, 21656, "The ContentVariables Parameter is invalid.")
        callback = params.get("StatusCallback")
        if callback is not None:
            parts = urlsplit(callback)
            if parts.scheme not in ("http", "https") or not parts.hostname or "_" in parts.hostname:
                return _error(400, 21609, f"Invalid StatusCallback url: {callback}")
        return None

    def _create(self, params: dict[str, str], media: list[str]) -> _Reply:
        sid = _sid("MM" if media else "SM")
        self._messages.append((sid, dict(params)))
        now = _rfc2822(datetime.now(UTC))
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}"
        service = params.get("MessagingServiceSid")
        return _Reply(
            201,
            {
                "account_sid": self.account_sid,
                "api_version": API_VERSION,
                "body": params.get("Body", ""),
                "date_created": now,
                "date_sent": None,
                "date_updated": now,
                "direction": "outbound-api",
                "error_code": None,
                "error_message": None,
                "from": params.get("From"),
                "messaging_service_sid": service,
                "num_media": str(len(media)),
                "num_segments": "1",
                "price": None,
                "price_unit": "USD",
                "sid": sid,
                "status": "accepted" if service and not params.get("From") else "queued",
                "subresource_uris": {"media": f"{uri}/Media.json"},
                "to": params["To"],
                "uri": f"{uri}.json",
            },
        )


# -- what Twilio sends to the app ----------------------------------------------------------------


def _wa_id(address: str) -> str:
    return address.removeprefix(_CHANNEL).removeprefix("+")


def inbound_message(
    *,
    message_sid: str,
    from_: str = CLIENT_NUMBER,
    to: str = SANDBOX_NUMBER,
    body: str = "",
    num_media: int = 0,
    account_sid: str = DEFAULT_ACCOUNT_SID,
    profile_name: str = "Sam",
) -> dict[str, str]:
    """The form fields Twilio POSTs to the app's webhook for an incoming WhatsApp message.

    ``num_media`` adds ``MediaUrl{i}`` / ``MediaContentType{i}`` pairs (JPEG images on Twilio's media host).
    """
    fields = {
        "SmsMessageSid": message_sid,
        "NumMedia": str(num_media),
        "ProfileName": profile_name,
        "MessageType": "image" if num_media else "text",
        "SmsSid": message_sid,
        "WaId": _wa_id(from_),
        "SmsStatus": "received",
        "Body": body,
        "To": to,
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": message_sid,
        "AccountSid": account_sid,
        "From": from_,
        "ApiVersion": API_VERSION,
    }
    for index in range(num_media):
        fields[f"MediaContentType{index}"] = "image/jpeg"
        fields[f"MediaUrl{index}"] = (
            f"https://api.twilio.com/{API_VERSION}/Accounts/{account_sid}/Messages/{message_sid}/Media/{_sid('ME')}"
        )
    return fields


def status_callback(
    *,
    message_sid: str,
    status: str,
    error_code: int | None = None,
    to: str = CLIENT_NUMBER,
    from_: str = SANDBOX_NUMBER,
    account_sid: str = DEFAULT_ACCOUNT_SID,
) -> dict[str, str]:
    """The form fields Twilio POSTs to a message's StatusCallback (``queued``/``sent``/``delivered``/``read``/...).

    ``to``/``from_`` are those of the outbound message; ``ErrorCode`` (a string, e.g. ``"63016"``) is only
    present when ``error_code`` is given, as with Twilio's ``failed``/``undelivered`` callbacks.
    """
    fields = {
        "ChannelPrefix": "whatsapp",
        "ApiVersion": API_VERSION,
        "MessageStatus": status,
        "SmsSid": message_sid,
        "SmsStatus": status,
        "ChannelInstallSid": "XE" + "0" * 32,
        "To": to,
        "From": from_,
        "MessageSid": message_sid,
        "StructuredMessage": "false",
        "AccountSid": account_sid,
        "ChannelToAddress": "+" + _wa_id(to),
    }
    if error_code is not None:
        fields["ErrorCode"] = str(error_code)
    return fields


def signed_headers(url: str, params: dict[str, str], auth_token: str) -> dict[str, str]:
    """Headers of a webhook POST of ``params`` to ``url``, signed as Twilio signs (HMAC-SHA1 of url + params)."""
    return {
        "X-Twilio-Signature": RequestValidator(auth_token).compute_signature(url, params),
        "Content-Type": "application/x-www-form-urlencoded",
    }
