"""A local fake of the Telegram Bot API that the real python-telegram-bot client can talk to."""

from __future__ import annotations

import json
import re
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fake_http import KeepAliveHandler, KeepAliveServer, ServedFake, UploadedFile, parse_multipart

__all__ = [
    "Call",
    "FakeBotAPI",
    "UploadedFile",
    "callback_update",
    "edited_message_update",
    "group_message_update",
    "message_update",
    "my_chat_member_update",
    "photo_update",
    "sticker_update",
    "user",
    "voice_update",
]

DEFAULT_TOKEN = "123456:TEST-TOKEN"
DEFAULT_BOT_ID = 123456
DEFAULT_USERNAME = "companion_test_bot"

MAX_MESSAGE_LENGTH = 4096  # UTF-16 code units, as Telegram counts them
MAX_UPDATES_LIMIT = 100

# Parameters Telegram types as strings. PTB sends a ``str`` value raw (not JSON-quoted), so decoding
# these with json.loads would turn a user's text "42" into the int 42 and "null" into None.
STRING_PARAMS = frozenset(
    {
        "action",
        "business_connection_id",
        "callback_query_id",
        "caption",
        "description",
        "emoji",
        "first_name",
        "inline_message_id",
        "ip_address",
        "language_code",
        "last_name",
        "message_effect_id",
        "name",
        "parse_mode",
        "query_id",
        "secret_token",
        "short_description",
        "text",
        "title",
        "url",
    }
)

_WELL_FORMED_TOKEN = re.compile(r"^\d+:[A-Za-z0-9_-]+$")
_SECRET_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_COMMAND_NAME = re.compile(r"^[a-z0-9_]{1,32}$")

_DEFAULT_DESCRIPTIONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
    500: "Internal Server Error",
    502: "Bad Gateway",
}

_WEBHOOK_CONFLICT = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"
)
_NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly "
    "the same as a current content and reply markup of the message"
)


@dataclass
class Call:
    """One request the fake received: canonical method name, decoded params, arrival time.

    Thread-safety: a snapshot handed out by ``FakeBotAPI.calls``; the fake never mutates it after recording.
    """

    method: str
    params: dict[str, Any]
    at: float  # time.monotonic() when received


@dataclass
class _Fault:
    method: str  # lower-case method name
    status: int
    description: str
    retry_after: int | None
    migrate_to_chat_id: int | None
    chat_id: str | None
    times: int
    after: int = 0  # matching calls to let through first


@dataclass
class _Hang:
    method: str  # lower-case method name
    seconds: float
    times: int


@dataclass
class _Reply:
    status: int
    body: dict[str, Any]
    delay: float = 0.0


@dataclass
class _Rules:
    faults: list[_Fault] = field(default_factory=list)
    hangs: list[_Hang] = field(default_factory=list)


class _ApiError(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


def _ok(result: Any) -> _Reply:
    return _Reply(200, {"ok": True, "result": result})


def _error(
    status: int,
    description: str,
    *,
    retry_after: int | None = None,
    migrate_to_chat_id: int | None = None,
) -> _Reply:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    parameters: dict[str, int] = {}
    if retry_after is not None:
        parameters["retry_after"] = retry_after
    if migrate_to_chat_id is not None:
        parameters["migrate_to_chat_id"] = migrate_to_chat_id
    if parameters:
        body["parameters"] = parameters
    return _Reply(status, body)


def _decode_value(name: str, value: str) -> Any:
    """Decode one form value the way Telegram does: JSON when it parses, except for string-typed params."""
    if name in STRING_PARAMS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _decode_mapping(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _decode_value(k, v) if isinstance(v, str) else v for k, v in raw.items()}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _is_int_like(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and re.fullmatch(r"-?\d+", value) is not None


class _Server(KeepAliveServer):
    fake: FakeBotAPI


class _Handler(KeepAliveHandler):
    server: _Server

    def _serve(self) -> None:
        received = time.monotonic()
        fake = self.server.fake
        with self.server.connections_lock:
            self.server.idle.discard(self.connection)
        try:
            self._answer(fake, received)
        finally:
            self._mark_idle()

    def _answer(self, fake: FakeBotAPI, received: float) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            # The client died mid-request (a SIGKILLed sender): Telegram never sees a cut-off request.
            self.close_connection = True
            return
        split = urlsplit(self.path)
        try:
            params = _decode_mapping(dict(parse_qsl(split.query, keep_blank_values=True)))
            params.update(self._body_params(body))
        except (ValueError, UnicodeDecodeError):
            reply = _error(400, "Bad Request: can't parse request body")
        else:
            reply = fake._dispatch(split.path, params, received)
        if reply.delay > 0:
            fake._stopped.wait(reply.delay)
        payload = json.dumps(reply.body).encode("utf-8")
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:  # the client gave up (e.g. its read timeout fired during a hang)
            self.close_connection = True

    def _body_params(self, body: bytes) -> dict[str, Any]:
        if not body:
            return {}
        content_type = self.headers.get("Content-Type", "")
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type == "application/json":
            decoded = json.loads(body)
            if not isinstance(decoded, dict):
                raise ValueError("a JSON body must be an object")
            return _decode_mapping(decoded)
        if media_type == "multipart/form-data":
            return parse_multipart(content_type, body, _decode_value)
        return _decode_mapping(dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True)))


class FakeBotAPI(ServedFake):
    """A Telegram Bot API server on 127.0.0.1 for tests; point ``telegram.Bot(token, base_url=...)`` at it.

    Thread-safety: every public method and property may be called from any thread while the server
    handles requests on its own threads; all state sits behind one lock, and the accessors return copies.
    Requests are recorded in arrival order. A call that hits a ``hang_next`` rule takes effect at once
    and only its response is late, as with Telegram, where a timed-out sendMessage may still arrive.
    """

    def __init__(self, token: str = DEFAULT_TOKEN, username: str = DEFAULT_USERNAME) -> None:
        self.token = token
        self.username = username
        prefix = token.split(":", 1)[0]
        self.bot_id = int(prefix) if prefix.isdigit() else DEFAULT_BOT_ID
        self._cond = threading.Condition(threading.RLock())
        self._lock = self._cond  # ServedFake's lock: the same one guards all state
        self._changed = threading.Event()
        self._stopped = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._calls: list[Call] = []
        self._sent: list[dict[str, Any]] = []
        self._updates: list[dict[str, Any]] = []
        self._confirmed_below = 0  # update_ids below this were confirmed by an offset and are gone
        self._poll_generation = 0
        self._rules = _Rules()
        self._webhook: dict[str, Any] | None = None
        self._webhook_error: tuple[int, str] | None = None  # (unix time, message) of the last failed delivery
        self._chats: dict[str, dict[str, Any]] = {}
        self._next_message_id: dict[str, int] = {}
        self._messages: dict[tuple[str, int], dict[str, Any]] = {}
        self._handlers: dict[str, tuple[str, Callable[[dict[str, Any]], _Reply]]] = {
            name.lower(): (name, handler)
            for name, handler in {
                "getMe": self._get_me,
                "sendMessage": self._send_message,
                "sendDocument": self._send_document,
                "answerCallbackQuery": self._answer_callback_query,
                "setWebhook": self._set_webhook,
                "deleteWebhook": self._delete_webhook,
                "getWebhookInfo": self._get_webhook_info,
                "getUpdates": self._get_updates,
                "leaveChat": self._true,
                "sendChatAction": self._true,
                "editMessageReplyMarkup": self._edit_message_reply_markup,
                "editMessageText": self._edit_message_text,
                "setMyCommands": self._set_my_commands,
                "deleteMessage": self._delete_message,
            }.items()
        }

    # -- lifecycle -------------------------------------------------------------------------------

    _thread_name = "fake-telegram"

    def _new_server(self) -> _Server:
        return _Server(self, self._stopped, _Handler)

    def _on_stop(self) -> None:
        self._cond.notify_all()  # long-polls and hangs answer at once

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/bot``; PTB appends ``token + "/" + method``. Only valid once started."""
        return f"{self.root_url}/bot"

    # -- inspection ------------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """A snapshot of every request received, in order (including rejected and failed ones)."""
        with self._cond:
            return list(self._calls)

    def calls_to(self, method: str) -> list[Call]:
        """The recorded calls to one method (case-insensitive, as Telegram treats method names)."""
        wanted = method.lower()
        return [call for call in self.calls if call.method.lower() == wanted]

    def sent(self, chat_id: int | str | None = None) -> list[dict[str, Any]]:
        """Params of the sendMessage calls that succeeded (optionally for one chat), in order."""
        with self._cond:
            return [
                dict(params) for params in self._sent if chat_id is None or str(params.get("chat_id")) == str(chat_id)
            ]

    def texts(self, chat_id: int | str) -> list[str]:
        """The texts successfully sent to one chat, in order (documents are in :meth:`documents`)."""
        return [params["text"] for params in self.sent(chat_id) if "text" in params]

    def documents(self, chat_id: int | str) -> list[UploadedFile]:
        """The files successfully sent to one chat (sendDocument), in order."""
        return [params["document"] for params in self.sent(chat_id) if isinstance(params.get("document"), UploadedFile)]

    @property
    def webhook(self) -> dict[str, Any] | None:
        """The params of the last successful setWebhook, or None when none is set / after deleteWebhook."""
        with self._cond:
            return dict(self._webhook) if self._webhook is not None else None

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates queued and not yet confirmed with an offset."""
        with self._cond:
            return list(self._updates)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate`` until it is true or ``timeout`` passes; wakes on every request, else every 10 ms."""
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            if predicate():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.wait(min(remaining, 0.01))

    # -- scripting -------------------------------------------------------------------------------

    def queue_update(self, update: dict[str, Any]) -> None:
        """Make an Update available to getUpdates (and wake a waiting long-poll)."""
        update_id = update.get("update_id")
        if not isinstance(update_id, int) or isinstance(update_id, bool):
            raise ValueError("an update needs an integer update_id")
        with self._cond:
            if update_id < self._confirmed_below:
                raise ValueError(
                    f"update_id {update_id} is below the confirmed offset {self._confirmed_below}; "
                    "Telegram never delivers it again"
                )
            for key in ("message", "edited_message", "channel_post", "my_chat_member", "chat_member"):
                chat = (update.get(key) or {}).get("chat")
                if isinstance(chat, dict) and "id" in chat:
                    self._chats[str(chat["id"])] = dict(chat)
            self._updates.append(json.loads(json.dumps(update)))  # a private, JSON-clean copy
            self._cond.notify_all()
        self._changed.set()

    def fail_next(
        self,
        method: str,
        *,
        status: int,
        description: str | None = None,
        retry_after: int | None = None,
        times: int = 1,
        migrate_to_chat_id: int | None = None,
        chat_id: int | str | None = None,
        after: int = 0,
    ) -> None:
        """Answer the next ``times`` calls to ``method`` (optionally only those for ``chat_id``) with an error.

        ``after`` lets that many matching calls succeed first (the second part of a long message fails).

        ``description`` defaults to Telegram's usual text for ``status``; ``retry_after`` and
        ``migrate_to_chat_id`` go into the envelope's ``parameters``. A failed call has no effect.
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        if description is None:
            if status == 429:
                description = f"Too Many Requests: retry after {retry_after if retry_after is not None else 1}"
            else:
                description = _DEFAULT_DESCRIPTIONS.get(status) or _phrase(status)
        with self._cond:
            self._rules.faults.append(
                _Fault(
                    method.lower(),
                    status,
                    description,
                    retry_after,
                    migrate_to_chat_id,
                    None if chat_id is None else str(chat_id),
                    times,
                    after,
                )
            )

    def hang_next(self, method: str, seconds: float, times: int = 1) -> None:
        """Delay the response to the next ``times`` calls to ``method`` by ``seconds`` (stop() cuts it short)."""
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._cond:
            self._rules.hangs.append(_Hang(method.lower(), seconds, times))

    # -- request dispatch (server threads) -------------------------------------------------------

    def _dispatch(self, path: str, params: dict[str, Any], received: float) -> _Reply:
        if not path.startswith("/bot"):
            with self._cond:
                self._calls.append(Call(path, params, received))
            self._changed.set()
            return _error(404, "Not Found")
        token, _, raw_method = path[len("/bot") :].partition("/")
        canonical, handler = self._handlers.get(raw_method.lower(), (raw_method, None))
        with self._cond:
            self._calls.append(Call(canonical, params, received))
            fault = self._take_fault(canonical.lower(), params) if token == self.token else None
            delay = self._take_hang(canonical.lower()) if token == self.token else 0.0
        self._changed.set()
        try:
            if token != self.token:
                if _WELL_FORMED_TOKEN.match(token):
                    return _error(401, "Unauthorized")
                return _error(404, "Not Found")
            if fault is not None:
                reply = _error(
                    fault.status,
                    fault.description,
                    retry_after=fault.retry_after,
                    migrate_to_chat_id=fault.migrate_to_chat_id,
                )
            elif handler is None:
                reply = _error(404, "Not Found: method not found")
            else:
                try:
                    with self._cond:
                        reply = handler(params)
                except _ApiError as exc:
                    reply = _error(exc.status, exc.description)
            reply.delay = delay
            return reply
        finally:
            self._changed.set()

    def _take_fault(self, method: str, params: dict[str, Any]) -> _Fault | None:
        for fault in self._rules.faults:
            if fault.method == method and (fault.chat_id is None or fault.chat_id == str(params.get("chat_id"))):
                if fault.after > 0:
                    fault.after -= 1
                    return None
                fault.times -= 1
                if fault.times == 0:
                    self._rules.faults.remove(fault)
                return fault
        return None

    def _take_hang(self, method: str) -> float:
        for hang in self._rules.hangs:
            if hang.method == method:
                hang.times -= 1
                if hang.times == 0:
                    self._rules.hangs.remove(hang)
                return hang.seconds
        return 0.0

    # -- method implementations (called with the lock held) -----------------------------------------

    def _bot_user(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Homework Companion", "username": self.username}

    def _chat(self, chat_id: Any) -> tuple[str, dict[str, Any]]:
        if chat_id is None or chat_id == "":
            raise _ApiError(400, "Bad Request: chat_id is empty")
        if _is_int_like(chat_id):
            numeric = int(chat_id)
            known = self._chats.get(str(numeric))
            if known is not None:
                return str(numeric), dict(known)
            if numeric > 0:
                return str(numeric), {"id": numeric, "type": "private", "first_name": "Sam"}
            if str(numeric).startswith("-100"):
                return str(numeric), {"id": numeric, "type": "supergroup", "title": "Test supergroup"}
            return str(numeric), {"id": numeric, "type": "group", "title": "Test group"}
        if isinstance(chat_id, str) and chat_id.startswith("@"):
            numeric = -1001000000000 - zlib.crc32(chat_id.encode()) % 10**9
            return str(chat_id), {"id": numeric, "type": "channel", "title": chat_id[1:], "username": chat_id[1:]}
        raise _ApiError(400, "Bad Request: chat not found")

    @staticmethod
    def _check_text(text: Any) -> str:
        if not isinstance(text, str) or not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        if _utf16_len(text) > MAX_MESSAGE_LENGTH:
            raise _ApiError(400, "Bad Request: message is too long")
        return text

    @staticmethod
    def _inline_markup(params: dict[str, Any]) -> dict[str, Any] | None:
        markup = params.get("reply_markup")
        # Telegram only echoes inline keyboards in Message.reply_markup (reply keyboards are not echoed).
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            return markup
        return None

    @staticmethod
    def _true(params: dict[str, Any]) -> _Reply:
        return _ok(True)

    def _get_me(self, params: dict[str, Any]) -> _Reply:
        me = self._bot_user()
        me.update(
            can_join_groups=True,
            can_read_all_group_messages=False,
            supports_inline_queries=False,
            can_connect_to_business=False,
            has_main_web_app=False,
        )
        return _ok(me)

    def _send_message(self, params: dict[str, Any]) -> _Reply:
        key, chat = self._chat(params.get("chat_id"))
        content: dict[str, Any] = {"text": self._check_text(params.get("text"))}
        markup = self._inline_markup(params)
        if markup is not None:
            content["reply_markup"] = markup
        return self._record_sent(key, chat, params, content)

    def _record_sent(self, key: str, chat: dict[str, Any], params: dict[str, Any], content: dict[str, Any]) -> _Reply:
        """Store a message the bot sent (the next id in its chat) and answer with it, as Telegram does."""
        message_id = self._next_message_id.get(key, 0) + 1
        self._next_message_id[key] = message_id
        message = {"message_id": message_id, "date": int(time.time()), "chat": chat, "from": self._bot_user()}
        message.update(content)
        self._messages[(key, message_id)] = message
        self._sent.append(dict(params))
        return _ok(json.loads(json.dumps(message)))

    def _send_document(self, params: dict[str, Any]) -> _Reply:
        """A file upload (multipart): recorded with the file; the reply is a message with a document."""
        key, chat = self._chat(params.get("chat_id"))
        document = params.get("document")
        if not isinstance(document, UploadedFile):
            raise _ApiError(400, "Bad Request: there is no document in the request")
        file_id = f"doc-{key}-{len(self._sent)}"
        content = {
            "document": {
                "file_id": file_id,
                "file_unique_id": f"u-{file_id}",
                "file_name": document.filename,
                "file_size": len(document.data),
            }
        }
        return self._record_sent(key, chat, params, content)

    def _edited(self, params: dict[str, Any], *, text: str | None) -> _Reply:
        if params.get("inline_message_id"):
            return _ok(True)
        if params.get("message_id") is None:
            raise _ApiError(400, "Bad Request: message identifier is not specified")
        key, chat = self._chat(params.get("chat_id"))
        message_id = int(params["message_id"])
        markup = self._inline_markup(params)
        stored = self._messages.get((key, message_id))
        if stored is None:  # not sent through this fake: answer as Telegram would for a message it knows
            stored = {"message_id": message_id, "date": int(time.time()), "chat": chat, "from": self._bot_user()}
            if text is not None:
                stored["text"] = text
            if markup is not None:
                stored["reply_markup"] = markup
        else:
            new_text = stored.get("text") if text is None else text
            if new_text == stored.get("text") and markup == stored.get("reply_markup"):
                raise _ApiError(400, _NOT_MODIFIED)
            if new_text is not None:
                stored["text"] = new_text
            if markup is None:
                stored.pop("reply_markup", None)
            else:
                stored["reply_markup"] = markup
        stored["edit_date"] = int(time.time())
        self._messages[(key, message_id)] = stored
        return _ok(json.loads(json.dumps(stored)))

    def _edit_message_text(self, params: dict[str, Any]) -> _Reply:
        return self._edited(params, text=self._check_text(params.get("text")))

    def _edit_message_reply_markup(self, params: dict[str, Any]) -> _Reply:
        return self._edited(params, text=None)

    def _delete_message(self, params: dict[str, Any]) -> _Reply:
        key, _ = self._chat(params.get("chat_id"))
        if params.get("message_id") is None:
            raise _ApiError(400, "Bad Request: message identifier is not specified")
        self._messages.pop((key, int(params["message_id"])), None)
        return _ok(True)

    def _answer_callback_query(self, params: dict[str, Any]) -> _Reply:
        if not params.get("callback_query_id"):
            raise _ApiError(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        return _ok(True)

    def _set_my_commands(self, params: dict[str, Any]) -> _Reply:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise _ApiError(400, "Bad Request: can't parse commands JSON object")
        for command in commands:
            if not isinstance(command, dict) or not _COMMAND_NAME.match(str(command.get("command", ""))):
                raise _ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", ""))) <= 256:
                raise _ApiError(400, "Bad Request: BOT_COMMAND_DESCRIPTION_INVALID")
        return _ok(True)

    def _set_webhook(self, params: dict[str, Any]) -> _Reply:
        url = params.get("url") or ""
        if url == "":
            return self._delete_webhook(params)
        if not str(url).startswith("https://"):
            raise _ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not _SECRET_TOKEN.match(str(secret)):
            raise _ApiError(400, "Bad Request: secret token contains unallowed characters")
        if params.get("drop_pending_updates") is True:
            self._drop_all_updates()
        self._webhook = dict(params)
        return _ok(True)

    def webhook_failed(self, message: str, at: int) -> None:
        """Make getWebhookInfo report a failed delivery (``last_error_date``, ``last_error_message``)."""
        with self._cond:
            self._webhook_error = (at, message)

    def _delete_webhook(self, params: dict[str, Any]) -> _Reply:
        if params.get("drop_pending_updates") is True:
            self._drop_all_updates()
        self._webhook = None
        return _ok(True)

    def _drop_all_updates(self) -> None:
        if self._updates:
            self._confirmed_below = max(self._confirmed_below, self._updates[-1]["update_id"] + 1)
        self._updates.clear()

    def _get_webhook_info(self, params: dict[str, Any]) -> _Reply:
        info: dict[str, Any] = {
            "url": self._webhook["url"] if self._webhook else "",
            "has_custom_certificate": bool(
                self._webhook and isinstance(self._webhook.get("certificate"), UploadedFile)
            ),
            "pending_update_count": len(self._updates),
        }
        if self._webhook:
            for name in ("max_connections", "allowed_updates", "ip_address"):
                if name in self._webhook:
                    info[name] = self._webhook[name]
            if self._webhook_error is not None:
                info["last_error_date"], info["last_error_message"] = self._webhook_error
        return _ok(info)

    def _confirm(self, offset: int) -> None:
        if offset > 0:
            self._confirmed_below = max(self._confirmed_below, offset)
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        elif offset < 0:  # -N: keep only the last N updates, forget everything before them
            self._updates = self._updates[offset:]
            if self._updates:
                self._confirmed_below = max(self._confirmed_below, self._updates[0]["update_id"])

    def _get_updates(self, params: dict[str, Any]) -> _Reply:
        if self._webhook is not None:
            raise _ApiError(409, _WEBHOOK_CONFLICT)
        try:
            offset = int(params.get("offset") or 0)
            limit = int(params.get("limit") or MAX_UPDATES_LIMIT)
            timeout = float(params.get("timeout") or 0)
        except (TypeError, ValueError) as exc:
            raise _ApiError(400, "Bad Request: wrong parameter type") from exc
        limit = max(1, min(limit, MAX_UPDATES_LIMIT))
        self._confirm(offset)
        self._poll_generation += 1
        generation = self._poll_generation
        self._cond.notify_all()  # a poll already waiting is terminated by this one, as on Telegram
        deadline = time.monotonic() + max(timeout, 0.0)
        while not self._updates and not self._stopped.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
            if self._poll_generation != generation:
                raise _ApiError(409, _DEFAULT_DESCRIPTIONS[409])
        return _ok(json.loads(json.dumps(self._updates[:limit])))


# -- Update builders: real Telegram Update JSON, as telegram.Update.de_json expects it ---------------
# Pure functions returning fresh dicts: safe to call from any thread.


def _now() -> int:
    return int(time.time())


def user(user_id: int, first_name: str = "Sam") -> dict[str, Any]:
    """A Telegram User (a person, not a bot)."""
    return {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": "en"}


def _bot_user(bot_id: int) -> dict[str, Any]:
    return {"id": bot_id, "is_bot": True, "first_name": "Homework Companion", "username": DEFAULT_USERNAME}


def _chat(chat_id: int, chat_type: str) -> dict[str, Any]:
    if chat_type == "private":
        return {"id": chat_id, "type": "private", "first_name": "Sam"}
    if chat_type == "channel":
        return {"id": chat_id, "type": "channel", "title": "Test channel"}
    return {"id": chat_id, "type": chat_type, "title": f"Test {chat_type}"}


def _default_user_id(chat_id: int, chat_type: str) -> int:
    return chat_id if chat_type == "private" else 424242


def _command_entities(text: str) -> list[dict[str, Any]]:
    """Telegram marks a leading /command with a bot_command entity; PTB's CommandHandler relies on it."""
    if not text.startswith("/"):
        return []
    word = text.split(maxsplit=1)[0]
    return [{"type": "bot_command", "offset": 0, "length": _utf16_len(word)}]


def _message(
    chat_id: int,
    *,
    message_id: int,
    chat_type: str,
    user_id: int | None,
    date: int | None,
) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "from": user(user_id if user_id is not None else _default_user_id(chat_id, chat_type)),
        "chat": _chat(chat_id, chat_type),
        "date": date if date is not None else _now(),
    }


def message_update(
    update_id: int,
    chat_id: int,
    text: str,
    *,
    message_id: int | None = None,
    chat_type: str = "private",
    user_id: int | None = None,
    date: int | None = None,
) -> dict[str, Any]:
    """A text message from a user; a leading /command gets its bot_command entity."""
    message = _message(
        chat_id,
        message_id=message_id if message_id is not None else update_id,
        chat_type=chat_type,
        user_id=user_id,
        date=date,
    )
    message["text"] = text
    entities = _command_entities(text)
    if entities:
        message["entities"] = entities
    return {"update_id": update_id, "message": message}


def edited_message_update(
    update_id: int,
    chat_id: int,
    text: str,
    *,
    message_id: int | None = None,
    chat_type: str = "private",
    user_id: int | None = None,
    date: int | None = None,
    edit_date: int | None = None,
) -> dict[str, Any]:
    """A user's edit of an earlier text message (``edited_message`` with ``edit_date``)."""
    update = message_update(
        update_id, chat_id, text, message_id=message_id, chat_type=chat_type, user_id=user_id, date=date
    )
    message = update.pop("message")
    message["edit_date"] = edit_date if edit_date is not None else message["date"] + 60
    update["edited_message"] = message
    return update


def photo_update(
    update_id: int,
    chat_id: int,
    caption: str | None = None,
    *,
    message_id: int | None = None,
    user_id: int | None = None,
) -> dict[str, Any]:
    """A photo message: Telegram sends an array of PhotoSize, smallest first."""
    message = _message(
        chat_id,
        message_id=message_id if message_id is not None else update_id,
        chat_type="private",
        user_id=user_id,
        date=None,
    )
    message["photo"] = [
        {
            "file_id": f"photo-{update_id}-{w}",
            "file_unique_id": f"ph{update_id}{w}",
            "width": w,
            "height": h,
            "file_size": size,
        }
        for w, h, size in ((90, 67, 1_200), (320, 240, 14_000), (1280, 960, 120_000))
    ]
    if caption is not None:
        message["caption"] = caption
    return {"update_id": update_id, "message": message}


def sticker_update(
    update_id: int,
    chat_id: int,
    emoji: str = "🙂",
    *,
    message_id: int | None = None,
    user_id: int | None = None,
) -> dict[str, Any]:
    """A (regular, static) sticker message."""
    message = _message(
        chat_id,
        message_id=message_id if message_id is not None else update_id,
        chat_type="private",
        user_id=user_id,
        date=None,
    )
    message["sticker"] = {
        "file_id": f"sticker-{update_id}",
        "file_unique_id": f"st{update_id}",
        "type": "regular",
        "width": 512,
        "height": 512,
        "is_animated": False,
        "is_video": False,
        "emoji": emoji,
        "file_size": 20_000,
    }
    return {"update_id": update_id, "message": message}


def voice_update(
    update_id: int,
    chat_id: int,
    duration: int = 3,
    *,
    message_id: int | None = None,
    user_id: int | None = None,
) -> dict[str, Any]:
    """A voice note message (OGG/Opus)."""
    message = _message(
        chat_id,
        message_id=message_id if message_id is not None else update_id,
        chat_type="private",
        user_id=user_id,
        date=None,
    )
    message["voice"] = {
        "file_id": f"voice-{update_id}",
        "file_unique_id": f"vo{update_id}",
        "duration": duration,
        "mime_type": "audio/ogg",
        "file_size": 8_000,
    }
    return {"update_id": update_id, "message": message}


def callback_update(
    update_id: int,
    chat_id: int,
    data: str,
    *,
    message_id: int = 1,
    user_id: int | None = None,
    message_text: str = "Pick one:",
    bot_id: int = DEFAULT_BOT_ID,
) -> dict[str, Any]:
    """A press on an inline button under the bot's message ``message_id`` in a private chat."""
    sender = user(user_id if user_id is not None else chat_id)
    return {
        "update_id": update_id,
        "callback_query": {
            "id": f"cbq-{update_id}",
            "from": sender,
            "message": {
                "message_id": message_id,
                "from": _bot_user(bot_id),
                "chat": _chat(chat_id, "private"),
                "date": _now() - 30,
                "text": message_text,
            },
            "chat_instance": f"ci-{chat_id}",
            "data": data,
        },
    }


def _member(status: str, bot_id: int) -> dict[str, Any]:
    member: dict[str, Any] = {"user": _bot_user(bot_id), "status": status}
    if status == "kicked":
        member["until_date"] = 0
    elif status == "creator":
        member["is_anonymous"] = False
    elif status == "administrator":
        member.update(
            dict.fromkeys(
                (
                    "can_manage_chat",
                    "can_delete_messages",
                    "can_manage_video_chats",
                    "can_restrict_members",
                    "can_change_info",
                    "can_invite_users",
                    "can_pin_messages",
                ),
                True,
            )
        )
        member.update(
            dict.fromkeys(
                (
                    "can_be_edited",
                    "is_anonymous",
                    "can_promote_members",
                    "can_post_stories",
                    "can_edit_stories",
                    "can_delete_stories",
                ),
                False,
            )
        )
    elif status == "restricted":
        member.update(
            dict.fromkeys(
                (
                    "is_member",
                    "can_change_info",
                    "can_invite_users",
                    "can_pin_messages",
                    "can_send_messages",
                    "can_send_polls",
                    "can_send_other_messages",
                    "can_add_web_page_previews",
                    "can_manage_topics",
                    "can_send_audios",
                    "can_send_documents",
                    "can_send_photos",
                    "can_send_videos",
                    "can_send_video_notes",
                    "can_send_voice_notes",
                    "can_edit_tag",
                    "can_react_to_messages",
                ),
                False,
            )
        )
        member["until_date"] = 0
    elif status not in ("member", "left"):
        raise ValueError(f"unknown chat member status {status!r}")
    return member


def my_chat_member_update(
    update_id: int,
    chat_id: int,
    *,
    new_status: str = "kicked",
    chat_type: str = "private",
    old_status: str | None = None,
    user_id: int | None = None,
    bot_id: int = DEFAULT_BOT_ID,
) -> dict[str, Any]:
    """The bot's own membership changed: ``kicked`` in a private chat means the user blocked the bot."""
    if old_status is None:
        old_status = "member" if new_status in ("kicked", "left", "restricted", "administrator") else "left"
    return {
        "update_id": update_id,
        "my_chat_member": {
            "chat": _chat(chat_id, chat_type),
            "from": user(user_id if user_id is not None else _default_user_id(chat_id, chat_type)),
            "date": _now(),
            "old_chat_member": _member(old_status, bot_id),
            "new_chat_member": _member(new_status, bot_id),
        },
    }


def group_message_update(
    update_id: int, chat_id: int, text: str, *, user_id: int | None = None, message_id: int | None = None
) -> dict[str, Any]:
    """A text message in a basic group (type "group"; the chat id is made negative as Telegram's are)."""
    return message_update(update_id, -abs(chat_id), text, message_id=message_id, chat_type="group", user_id=user_id)
