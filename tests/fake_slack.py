"""A local fake of the Slack Web API for the real slack_sdk clients, plus signed Slack-to-app request bodies."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import json
import mimetypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from zoneinfo import ZoneInfo

from tests.fake_http import KeepAliveHandler, KeepAliveServer, ServedFake, parse_multipart
from tests.fake_http import UploadedFile as FilePart

__all__ = [
    "RAW_UPLOAD",
    "Call",
    "FakeSlackAPI",
    "FilePart",
    "block_action",
    "message_event",
    "sign",
    "slash_command",
    "view_submission",
]

DEFAULT_TOKEN = "xoxb-fake"
DEFAULT_BOT_USER_ID = "UBOT"
DEFAULT_BOT_ID = "B0001"
DEFAULT_TEAM_ID = "T0001"
DEFAULT_APP_ID = "A0001"
DEFAULT_TZ = "Europe/London"

RAW_UPLOAD = "upload"
"""The ``Call.method`` recorded for the raw byte POST to an upload URL (also usable with ``fail_next``)."""

MAX_MESSAGE_BLOCKS = 50
MAX_MODAL_BLOCKS = 100
MAX_TEXT_LENGTH = 40_000
MAX_MODAL_TITLE = 24

# Params Slack takes as JSON; in form-encoded (or query-string) requests they arrive as JSON strings.
_JSON_PARAMS = frozenset({"attachments", "blocks", "files", "metadata", "user_auth_blocks", "view"})

_TS_BASE_MICROS = 1_700_000_000 * 1_000_000


@dataclass
class Call:
    """One request the fake received: Slack method name, decoded params, arrival time.

    ``encoding`` says where the params came from: "json", "form", "multipart", "query" (the async client
    sends ``params=`` calls in the query string) or "raw" (the bytes POSTed to an upload URL). The token is
    never part of ``params``. The fake never mutates a Call once recorded.
    """

    method: str
    params: dict[str, Any]
    at: float  # time.monotonic() when received
    encoding: str = ""


@dataclass
class _Fault:
    method: str
    error: str
    status: int
    retry_after: int | None
    times: int


@dataclass
class _Reply:
    status: int
    body: dict[str, Any] | str
    headers: dict[str, str]


class _SlackError(Exception):
    """A Slack API error: ``{"ok": false, "error": error}`` (with optional response_metadata messages)."""

    def __init__(self, error: str, *messages: str) -> None:
        super().__init__(error)
        self.error = error
        self.messages = list(messages)


def _ok(**fields: Any) -> _Reply:
    return _Reply(200, {"ok": True, **fields}, {})


def _error(error: str, *, status: int = 200, messages: list[str] | None = None) -> _Reply:
    body: dict[str, Any] = {"ok": False, "error": error}
    if messages:
        body["response_metadata"] = {"messages": messages}
    return _Reply(status, body, {})


def _decode_json_params(params: dict[str, Any]) -> dict[str, Any]:
    """Decode the JSON-string values of the params Slack takes as JSON (``blocks``, ``view``, ...)."""
    decoded = dict(params)
    for name in _JSON_PARAMS & decoded.keys():
        value = decoded[name]
        if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
            with contextlib.suppress(ValueError):
                decoded[name] = json.loads(value)
    return decoded


def _ts(counter: int) -> str:
    micros = _TS_BASE_MICROS + counter * 100
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def _is_user_id(value: str) -> bool:
    return len(value) > 1 and value[0] in "UW" and value[1:].isalnum()


def _tz_fields(tz: str) -> dict[str, Any]:
    offset = datetime.now(ZoneInfo(tz)).utcoffset()
    seconds = int(offset.total_seconds()) if offset is not None else 0
    label = datetime.now(ZoneInfo(tz)).tzname() or tz
    return {"tz": tz, "tz_label": label, "tz_offset": seconds}


class _Server(KeepAliveServer):
    fake: FakeSlackAPI


class _Handler(KeepAliveHandler):
    server: _Server

    def _serve(self) -> None:
        received = time.monotonic()
        with self.server.connections_lock:
            self.server.idle.discard(self.connection)
        try:
            self._send(self._answer(received))
        except OSError:  # the client went away
            self.close_connection = True
        finally:
            self._mark_idle()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, received: float) -> _Reply:
        fake = self.server.fake
        body = self._read_body()
        split = urlsplit(self.path)
        path = split.path
        if path.startswith("/upload/v1/"):
            return fake._upload(path[len("/upload/v1/") :], body, received)
        if path.startswith("/response/"):
            return fake._respond(split.geturl(), body)
        if not path.startswith("/api/"):
            return _Reply(404, "Not Found", {})
        method = path[len("/api/") :]
        try:
            params, encoding = self._params(split.query, body)
        except UnicodeDecodeError:
            return _error("invalid_form_data")
        except ValueError as exc:
            return _error(str(exc) if str(exc) in ("invalid_json", "invalid_form_data") else "invalid_form_data")
        token = params.pop("token", None)
        authorization = self.headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            token = authorization[len("Bearer ") :].strip()
        return fake._dispatch(method, params, token, encoding, received)

    def _params(self, query: str, body: bytes) -> tuple[dict[str, Any], str]:
        params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
        encoding = "query" if params else "empty"
        if body:
            content_type = self.headers.get("Content-Type", "")
            media_type = content_type.split(";", 1)[0].strip().lower()
            if media_type == "application/json":
                try:
                    decoded = json.loads(body)
                except ValueError:
                    raise ValueError("invalid_json") from None
                if not isinstance(decoded, dict):
                    raise ValueError("invalid_json")
                params.update(decoded)
                encoding = "json"
            elif media_type == "multipart/form-data":
                params.update(parse_multipart(content_type, body))
                encoding = "multipart"
            else:
                params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
                encoding = "form"
        return _decode_json_params(params), encoding

    def _send(self, reply: _Reply) -> None:
        if isinstance(reply.body, str):
            payload = reply.body.encode("utf-8")
            content_type = "text/plain; charset=utf-8"
        else:
            payload = json.dumps(reply.body).encode("utf-8")
            content_type = "application/json; charset=utf-8"
        self.send_response(reply.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()


class FakeSlackAPI(ServedFake):
    """A Slack Web API server on 127.0.0.1 for tests; point ``WebClient(token, base_url=fake.base_url)`` at it.

    Thread-safety: every public method and property may be called from any thread while the server answers
    requests on its own threads; all state sits behind one lock and the accessors return copies. Requests
    are recorded in arrival order, including rejected and failed ones (a failed call has no other effect).
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        bot_user_id: str = DEFAULT_BOT_USER_ID,
        team_id: str = DEFAULT_TEAM_ID,
        *,
        bot_id: str = DEFAULT_BOT_ID,
    ) -> None:
        self.token = token
        self.bot_user_id = bot_user_id
        self.team_id = team_id
        self.bot_id = bot_id
        # The bot token's granted scopes (Slack's x-oauth-scopes header); those deploy/slack-app-manifest.yaml asks for.
        self.scopes: list[str] = ["chat:write", "commands", "im:write", "files:write"]
        self._lock = threading.RLock()
        self._changed = threading.Event()
        self._stopped = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._calls: list[Call] = []
        self._posted: list[tuple[str, dict[str, Any]]] = []  # (resolved channel, params)
        self._messages: dict[tuple[str, str], dict[str, Any]] = {}  # (resolved channel, ts) -> message
        self._views: list[dict[str, Any]] = []
        self._open_views: dict[str, dict[str, Any]] = {}
        self._files: dict[str, dict[str, Any]] = {}  # file_id -> {filename, length, alt_txt, data}
        self._uploads: list[dict[str, Any]] = []
        self._responses: list[dict[str, Any]] = []
        self._users: dict[str, dict[str, Any]] = {}
        self._faults: list[_Fault] = []
        self._counter = 0
        self._handlers: dict[str, Callable[[dict[str, Any]], _Reply]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "conversations.open": self._conversations_open,
            "views.open": self._views_open,
            "views.update": self._views_update,
            "views.push": self._views_push,
            "files.getUploadURLExternal": self._files_get_upload_url_external,
            "files.completeUploadExternal": self._files_complete_upload_external,
            "users.info": self._users_info,
        }

    # -- lifecycle -------------------------------------------------------------------------------

    _thread_name = "fake-slack"

    def _new_server(self) -> _Server:
        return _Server(self, self._stopped, _Handler)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/api/``; slack_sdk requests ``{base_url}{method}``. Only valid once started."""
        return f"{self.root_url}/api/"

    # -- inspection ------------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """A snapshot of every request received, in order (including rejected and failed ones)."""
        with self._lock:
            return list(self._calls)

    def calls_to(self, method: str) -> list[Call]:
        """The recorded calls to one method (e.g. "chat.postMessage", or ``RAW_UPLOAD``), in order."""
        return [call for call in self.calls if call.method == method]

    def posted(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Params of the successful chat.postMessage calls (blocks decoded), in order.

        ``channel`` matches the channel as sent or as Slack resolves it: a message sent to user "U123"
        lands in the DM "DU123", so ``posted("U123")`` and ``posted("DU123")`` both find it.
        """
        with self._lock:
            return [
                copy.deepcopy(params)
                for resolved, params in self._posted
                if channel is None or channel in (resolved, params.get("channel"))
            ]

    def texts(self, channel: str) -> list[str]:
        """The ``text`` of each message successfully posted to ``channel`` ("" for a blocks-only message)."""
        return [str(params.get("text") or "") for params in self.posted(channel)]

    def message(self, channel: str, ts: str) -> dict[str, Any] | None:
        """The current state of a posted message (after any chat.update), as Slack would return it."""
        with self._lock:
            found = self._messages.get((self._resolve_channel(channel), ts))
            return copy.deepcopy(found) if found is not None else None

    @property
    def views(self) -> list[dict[str, Any]]:
        """The ``view`` payloads (decoded) of successful views.open / views.update / views.push calls, in order."""
        with self._lock:
            return copy.deepcopy(self._views)

    @property
    def uploads(self) -> list[dict[str, Any]]:
        """Completed uploads: file_id, filename, title, channel_id, bytes, initial_comment, thread_ts."""
        with self._lock:
            return copy.deepcopy(self._uploads)

    @property
    def responses(self) -> list[dict[str, Any]]:
        """What was POSTed to the fake's response URLs (see ``response_url``): ``{"url", "payload"}`` each."""
        with self._lock:
            return copy.deepcopy(self._responses)

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

    def fail_next(
        self,
        method: str,
        *,
        error: str = "ratelimited",
        status: int | None = None,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` authorised calls to ``method`` fail without effect.

        ``status`` defaults to 429 for "ratelimited" and to 200 for any other error. A 429 carries a
        ``Retry-After`` header (``retry_after``, default 1) and the body ``{"ok": false, "error": error}``;
        a 200 is Slack's usual ``{"ok": false, "error": error}``. Other statuses (e.g. 500) send the same
        body, plus ``Retry-After`` when ``retry_after`` is given. ``method`` may be ``RAW_UPLOAD``.
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        if status is None:
            status = 429 if error == "ratelimited" else 200
        if status == 429 and retry_after is None:
            retry_after = 1
        with self._lock:
            self._faults.append(_Fault(method, error, status, retry_after, times))

    def set_user(self, user_id: str, **fields: Any) -> None:
        """Override fields of the user users.info returns (e.g. ``tz="America/New_York"``, ``deleted=True``)."""
        with self._lock:
            self._users.setdefault(user_id, {}).update(fields)

    def response_url(self) -> str:
        """A fresh response_url on this server; pass it to the request helpers to capture ``respond()`` posts."""
        with self._lock:
            self._counter += 1
            return f"{self.root_url}/response/{self.team_id}/{self._counter}"

    # -- request dispatch (server threads) -------------------------------------------------------

    def _record(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)
        self._changed.set()

    def _take_fault(self, method: str) -> _Fault | None:
        for fault in self._faults:
            if fault.method == method:
                fault.times -= 1
                if fault.times == 0:
                    self._faults.remove(fault)
                return fault
        return None

    @staticmethod
    def _fault_reply(fault: _Fault, *, text: bool = False) -> _Reply:
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        body: dict[str, Any] | str = fault.error if text else {"ok": False, "error": fault.error}
        return _Reply(fault.status, body, headers)

    def _dispatch(
        self, method: str, params: dict[str, Any], token: str | None, encoding: str, received: float
    ) -> _Reply:
        try:
            with self._lock:
                self._calls.append(Call(method, copy.deepcopy(params), received, encoding))
                handler = self._handlers.get(method)
                if handler is None:
                    return _error("unknown_method")
                if token != self.token:
                    return _error("invalid_auth")
                fault = self._take_fault(method)
                if fault is not None:
                    return self._fault_reply(fault)
                try:
                    return handler(params)
                except _SlackError as exc:
                    return _error(exc.error, messages=exc.messages)
        finally:
            self._changed.set()

    def _upload(self, file_id: str, body: bytes, received: float) -> _Reply:
        try:
            with self._lock:
                self._calls.append(Call(RAW_UPLOAD, {"file_id": file_id, "length": len(body)}, received, "raw"))
                pending = self._files.get(file_id)
                if pending is None:
                    return _Reply(404, "file not found", {})
                fault = self._take_fault(RAW_UPLOAD)
                if fault is not None:
                    return self._fault_reply(fault, text=True)
                pending["data"] = bytes(body)
                return _Reply(200, f"OK - {len(body)}", {})
        finally:
            self._changed.set()

    def _respond(self, url: str, body: bytes) -> _Reply:
        try:
            payload: Any = json.loads(body) if body else {}
        except ValueError:
            return _Reply(400, "invalid_payload", {})
        with self._lock:
            self._responses.append({"url": f"{self.root_url}{url}", "payload": payload})
        self._changed.set()
        return _Reply(200, "ok", {})

    # -- method implementations (called with the lock held) --------------------------------------

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def _resolve_channel(self, channel: str) -> str:
        """A user id as a channel means the app's DM with that user, as on Slack."""
        return f"D{channel}" if _is_user_id(channel) else channel

    def _channel(self, params: dict[str, Any]) -> str:
        channel = params.get("channel")
        if not isinstance(channel, str) or not channel.strip():
            raise _SlackError("channel_not_found")
        return self._resolve_channel(channel.strip())

    @staticmethod
    def _check_content(params: dict[str, Any]) -> list[dict[str, Any]] | None:
        text = params.get("text")
        blocks = params.get("blocks")
        has_text = isinstance(text, str) and text.strip() != ""
        if not has_text and not blocks and not params.get("attachments") and not params.get("markdown_text"):
            raise _SlackError("no_text")
        if isinstance(text, str) and len(text) > MAX_TEXT_LENGTH:
            raise _SlackError("msg_too_long")
        if blocks is None or blocks == "":
            return None
        if not isinstance(blocks, list) or not all(isinstance(b, dict) and b.get("type") for b in blocks):
            raise _SlackError("invalid_blocks", "[ERROR] failed to match all allowed schemas [json-pointer:/blocks]")
        if len(blocks) > MAX_MESSAGE_BLOCKS:
            raise _SlackError(
                "invalid_blocks", f"[ERROR] no more than {MAX_MESSAGE_BLOCKS} items allowed [json-pointer:/blocks]"
            )
        return blocks

    def _auth_test(self, params: dict[str, Any]) -> _Reply:
        reply = _ok(
            url="https://companion-test.slack.com/",
            team="Companion Test",
            user="companion",
            team_id=self.team_id,
            user_id=self.bot_user_id,
            bot_id=self.bot_id,
            is_enterprise_install=False,
        )
        reply.headers["x-oauth-scopes"] = ",".join(self.scopes)
        return reply

    def _bot_message(self, ts: str, params: dict[str, Any], blocks: list[dict[str, Any]] | None) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "message",
            "subtype": "bot_message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": DEFAULT_APP_ID,
            "team": self.team_id,
            "text": str(params.get("text") or ""),
            "ts": ts,
        }
        if blocks is not None:
            message["blocks"] = copy.deepcopy(blocks)
        if params.get("thread_ts"):
            message["thread_ts"] = str(params["thread_ts"])
        return message

    def _chat_post_message(self, params: dict[str, Any]) -> _Reply:
        channel = self._channel(params)
        blocks = self._check_content(params)
        ts = _ts(self._next())
        message = self._bot_message(ts, params, blocks)
        self._messages[(channel, ts)] = message
        self._posted.append((channel, copy.deepcopy(params)))
        return _ok(channel=channel, ts=ts, message=copy.deepcopy(message))

    def _chat_update(self, params: dict[str, Any]) -> _Reply:
        channel = self._channel(params)
        ts = params.get("ts")
        if not ts:
            raise _SlackError("message_not_found")
        stored = self._messages.get((channel, str(ts)))
        if stored is None:
            raise _SlackError("message_not_found")
        blocks = self._check_content(params)
        stored["text"] = str(params.get("text") or "")
        if blocks is not None:
            stored["blocks"] = copy.deepcopy(blocks)
        stored["edited"] = {"user": self.bot_user_id, "ts": _ts(self._next())}
        return _ok(channel=channel, ts=str(ts), text=stored["text"], message=copy.deepcopy(stored))

    def _chat_post_ephemeral(self, params: dict[str, Any]) -> _Reply:
        self._channel(params)
        if not params.get("user"):
            raise _SlackError("user_not_in_channel")
        self._check_content(params)
        return _ok(message_ts=_ts(self._next()))

    def _conversations_open(self, params: dict[str, Any]) -> _Reply:
        if params.get("channel"):
            return _ok(channel={"id": str(params["channel"])}, no_op=True, already_open=True)
        users = params.get("users")
        ids = users if isinstance(users, list) else str(users or "").split(",")
        ids = [str(u).strip() for u in ids if str(u).strip()]
        if not ids:
            raise _SlackError("users_list_not_supplied")
        if len(ids) > 8:
            raise _SlackError("too_many_users")
        if len(ids) == 1:
            channel: dict[str, Any] = {"id": f"D{ids[0]}"}
            if str(params.get("return_im", "")).lower() in ("1", "true"):
                channel.update(is_im=True, user=ids[0], created=int(time.time()), is_open=True)
            return _ok(channel=channel)
        return _ok(channel={"id": "G" + hashlib.sha1(",".join(sorted(ids)).encode()).hexdigest()[:10].upper()})

    def _check_view(self, params: dict[str, Any], *, modal_only: bool) -> dict[str, Any]:
        view = params.get("view")
        if not isinstance(view, dict):
            raise _SlackError("invalid_arguments", "[ERROR] missing required field: view")
        kind = view.get("type")
        if kind != "modal" and (modal_only or kind != "home"):
            raise _SlackError("invalid_arguments", "[ERROR] must be a valid enum value [json-pointer:/view/type]")
        blocks = view.get("blocks")
        if not isinstance(blocks, list):
            raise _SlackError("invalid_arguments", "[ERROR] missing required field: blocks [json-pointer:/view]")
        if len(blocks) > MAX_MODAL_BLOCKS:
            raise _SlackError(
                "invalid_arguments",
                f"[ERROR] no more than {MAX_MODAL_BLOCKS} items allowed [json-pointer:/view/blocks]",
            )
        title = view.get("title")
        if kind == "modal":
            if not isinstance(title, dict) or not str(title.get("text", "")).strip():
                raise _SlackError("invalid_arguments", "[ERROR] missing required field: title [json-pointer:/view]")
            if len(str(title["text"])) > MAX_MODAL_TITLE:
                raise _SlackError(
                    "invalid_arguments",
                    f"[ERROR] must be less than {MAX_MODAL_TITLE + 1} characters [json-pointer:/view/title/text]",
                )
        return view

    def _stored_view(self, view: dict[str, Any], view_id: str, previous: dict[str, Any] | None) -> dict[str, Any]:
        stored = copy.deepcopy(view)
        stored.update(
            id=view_id,
            team_id=self.team_id,
            state={"values": {}},
            hash=f"{int(time.time())}.{self._next():08x}",
            private_metadata=view.get("private_metadata", ""),
            callback_id=view.get("callback_id", ""),
            external_id=view.get("external_id", ""),
            clear_on_close=bool(view.get("clear_on_close", False)),
            notify_on_close=bool(view.get("notify_on_close", False)),
            root_view_id=previous["root_view_id"] if previous else view_id,
            previous_view_id=None,
            app_id=DEFAULT_APP_ID,
            app_installed_team_id=self.team_id,
            bot_id=self.bot_id,
        )
        self._open_views[view_id] = stored
        self._views.append(copy.deepcopy(view))
        return copy.deepcopy(stored)

    def _views_open(self, params: dict[str, Any]) -> _Reply:
        if not params.get("trigger_id") and not params.get("interactivity_pointer"):
            raise _SlackError("invalid_arguments", "[ERROR] missing required field: trigger_id")
        view = self._check_view(params, modal_only=True)
        return _ok(view=self._stored_view(view, f"V{self._next():08d}", None))

    def _views_push(self, params: dict[str, Any]) -> _Reply:
        if not params.get("trigger_id") and not params.get("interactivity_pointer"):
            raise _SlackError("invalid_arguments", "[ERROR] missing required field: trigger_id")
        view = self._check_view(params, modal_only=True)
        stored = self._stored_view(view, f"V{self._next():08d}", None)
        return _ok(view=stored)

    def _views_update(self, params: dict[str, Any]) -> _Reply:
        view_id = params.get("view_id")
        external_id = params.get("external_id")
        if not view_id and not external_id:
            raise _SlackError("invalid_arguments", "[ERROR] either view_id or external_id is required")
        view = self._check_view(params, modal_only=False)
        if not view_id:
            matches = [v for v in self._open_views.values() if v.get("external_id") == external_id]
            view_id = matches[-1]["id"] if matches else f"V{self._next():08d}"
        # Lenient: a view_id this fake never issued (e.g. from a view_submission() helper) is accepted.
        previous = self._open_views.get(str(view_id))
        return _ok(view=self._stored_view(view, str(view_id), previous))

    def _files_get_upload_url_external(self, params: dict[str, Any]) -> _Reply:
        filename = params.get("filename")
        length = params.get("length")
        if not filename:
            raise _SlackError("invalid_arguments", "[ERROR] missing required field: filename")
        try:
            size = int(length)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise _SlackError("invalid_arguments", "[ERROR] missing required field: length") from None
        if size < 1:
            raise _SlackError("invalid_arguments", "[ERROR] length must be positive")
        file_id = f"F{self._next():08d}"
        self._files[file_id] = {"filename": str(filename), "length": size, "alt_txt": params.get("alt_txt")}
        return _ok(upload_url=f"{self.root_url}/upload/v1/{file_id}", file_id=file_id)

    def _files_complete_upload_external(self, params: dict[str, Any]) -> _Reply:
        files = params.get("files")
        if not isinstance(files, list) or not files or not all(isinstance(f, dict) and f.get("id") for f in files):
            raise _SlackError("invalid_arguments", "[ERROR] missing required field: files")
        for entry in files:
            pending = self._files.get(str(entry["id"]))
            if pending is None or pending.get("data") is None:
                raise _SlackError("file_not_found")
        channels = [c for c in str(params.get("channels") or "").split(",") if c]
        channel_id = params.get("channel_id") or (channels[0] if channels else None)
        shared = [channel_id] if channel_id and not channels else channels
        now = int(time.time())
        completed: list[dict[str, Any]] = []
        for entry in files:
            file_id = str(entry["id"])
            pending = self._files.pop(file_id)
            filename = pending["filename"]
            title = str(entry.get("title") or filename)
            mimetype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
            data: bytes = pending["data"]
            self._uploads.append(
                {
                    "file_id": file_id,
                    "filename": filename,
                    "title": title,
                    "channel_id": channel_id,
                    "bytes": data,
                    "initial_comment": params.get("initial_comment"),
                    "thread_ts": params.get("thread_ts"),
                }
            )
            completed.append(
                {
                    "id": file_id,
                    "created": now,
                    "timestamp": now,
                    "name": filename,
                    "title": title,
                    "mimetype": mimetype,
                    "filetype": filename.rsplit(".", 1)[-1].lower() if "." in filename else "binary",
                    "user": self.bot_user_id,
                    "size": len(data),
                    "channels": list(shared),
                    "url_private": f"{self.root_url}/files/{file_id}/{filename}",
                    "permalink": f"https://companion-test.slack.com/files/{self.bot_user_id}/{file_id}/{filename}",
                }
            )
        return _ok(files=completed)

    def _users_info(self, params: dict[str, Any]) -> _Reply:
        user_id = params.get("user")
        if not user_id:
            raise _SlackError("user_not_found")
        user_id = str(user_id)
        overrides = self._users.get(user_id, {})
        tz = str(overrides.get("tz", DEFAULT_TZ))
        name = f"user_{user_id.lower()}"
        user: dict[str, Any] = {
            "id": user_id,
            "team_id": self.team_id,
            "name": name,
            "deleted": False,
            "real_name": name.replace("_", " ").title(),
            **_tz_fields(tz),
            "is_bot": user_id == self.bot_user_id,
            "is_admin": False,
            "is_app_user": False,
            "updated": int(time.time()),
            "profile": {"real_name": name.replace("_", " ").title(), "display_name": name, "team": self.team_id},
        }
        user.update(copy.deepcopy(overrides))
        if str(params.get("include_locale", "")).lower() in ("1", "true"):
            user.setdefault("locale", "en-GB")
        return _ok(user=user)


# -- What Slack sends to an app: signed request bodies ----------------------------------------------
# Pure functions returning fresh bytes: safe to call from any thread.


def sign(body: bytes, secret: str, timestamp: int | None = None, *, content_type: str | None = None) -> dict[str, str]:
    """Headers Slack would send with ``body``: v0 HMAC-SHA256 of ``v0:{timestamp}:{body}`` keyed by ``secret``.

    ``timestamp`` defaults to now (slack_sdk rejects signatures more than 5 minutes off). ``Content-Type``
    follows the body's kind unless given: application/json for a JSON object (Events API), else
    application/x-www-form-urlencoded (slash commands and interactions).
    """
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode("utf-8"), b"v0:" + ts.encode("ascii") + b":" + body, hashlib.sha256).hexdigest()
    if content_type is None:
        is_json = body.lstrip()[:1] == b"{"
        content_type = "application/json" if is_json else "application/x-www-form-urlencoded"
    return {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest}",
    }


def _user(user_id: str, team_id: str) -> dict[str, str]:
    name = f"user_{user_id.lower()}"
    return {"id": user_id, "username": name, "name": name, "team_id": team_id}


def _team(team_id: str) -> dict[str, str]:
    return {"id": team_id, "domain": "companion-test"}


def _channel_name(channel_id: str) -> str:
    return "directmessage" if channel_id.startswith("D") else f"channel-{channel_id.lower()}"


def _now_ts() -> str:
    return f"{time.time():.6f}"


def slash_command(
    command: str,
    text: str,
    *,
    user_id: str = "U123",
    trigger_id: str = "T.1",
    team_id: str = DEFAULT_TEAM_ID,
    channel_id: str = "D123",
    response_url: str = "https://hooks.slack.com/commands/T0001/1/fake",
) -> bytes:
    """The form-encoded body Slack POSTs for a slash command (a leading "/" is added when missing)."""
    fields = {
        "token": "verification-token",
        "team_id": team_id,
        "team_domain": "companion-test",
        "channel_id": channel_id,
        "channel_name": _channel_name(channel_id),
        "user_id": user_id,
        "user_name": f"user_{user_id.lower()}",
        "command": command if command.startswith("/") else f"/{command}",
        "text": text,
        "api_app_id": DEFAULT_APP_ID,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id,
    }
    return urlencode(fields).encode("utf-8")


def block_action(
    action_id: str,
    value: str,
    *,
    user_id: str = "U123",
    trigger_id: str = "T.2",
    team_id: str = DEFAULT_TEAM_ID,
    channel_id: str = "D123",
    block_id: str = "actions",
    message_ts: str = "1700000000.000100",
    message: dict[str, Any] | None = None,
    view_id: str | None = None,
    response_url: str = "https://hooks.slack.com/actions/T0001/1/fake",
) -> bytes:
    """The form-encoded ``payload=<json>`` of a button press (``block_actions``).

    By default the button sits on the bot's message ``message_ts`` in ``channel_id``; pass ``message`` to
    supply that message. With ``view_id`` the button sits in a modal instead (no channel, message or
    response_url, as on Slack).
    """
    now = _now_ts()
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": _user(user_id, team_id),
        "api_app_id": DEFAULT_APP_ID,
        "token": "verification-token",
        "trigger_id": trigger_id,
        "team": _team(team_id),
        "enterprise": None,
        "is_enterprise_install": False,
    }
    if view_id is None:
        payload["container"] = {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": False,
        }
        payload["channel"] = {"id": channel_id, "name": _channel_name(channel_id)}
        payload["message"] = message or {
            "type": "message",
            "user": DEFAULT_BOT_USER_ID,
            "bot_id": DEFAULT_BOT_ID,
            "team": team_id,
            "text": "",
            "ts": message_ts,
        }
        payload["response_url"] = response_url
    else:
        payload["container"] = {"type": "view", "view_id": view_id}
        payload["view"] = {
            "id": view_id,
            "team_id": team_id,
            "type": "modal",
            "blocks": [],
            "private_metadata": "",
            "callback_id": "",
            "state": {"values": {}},
            "hash": f"{int(time.time())}.fake",
            "root_view_id": view_id,
            "previous_view_id": None,
            "app_id": DEFAULT_APP_ID,
            "bot_id": DEFAULT_BOT_ID,
        }
    payload["state"] = {"values": {}}
    payload["actions"] = [
        {
            "action_id": action_id,
            "block_id": block_id,
            "text": {"type": "plain_text", "text": value, "emoji": True},
            "value": value,
            "type": "button",
            "action_ts": now,
        }
    ]
    return urlencode({"payload": json.dumps(payload)}).encode("utf-8")


def view_submission(
    callback_id: str,
    values: dict[str, Any],
    *,
    user_id: str = "U123",
    private_metadata: str = "",
    view_id: str = "V1",
    trigger_id: str = "T.3",
    team_id: str = DEFAULT_TEAM_ID,
    response_urls: list[dict[str, Any]] | None = None,
) -> bytes:
    """The form-encoded ``payload=<json>`` of a modal submission (``view_submission``).

    ``values`` is Slack's ``view.state.values`` shape:
    ``{block_id: {action_id: {"type": "plain_text_input", "value": ...}}}`` (or ``"selected_option"`` etc.).
    """
    payload = {
        "type": "view_submission",
        "team": _team(team_id),
        "user": _user(user_id, team_id),
        "api_app_id": DEFAULT_APP_ID,
        "token": "verification-token",
        "trigger_id": trigger_id,
        "view": {
            "id": view_id,
            "team_id": team_id,
            "type": "modal",
            "blocks": [],
            "private_metadata": private_metadata,
            "callback_id": callback_id,
            "state": {"values": values},
            "hash": f"{int(time.time())}.fake",
            "title": {"type": "plain_text", "text": "Homework", "emoji": True},
            "clear_on_close": False,
            "notify_on_close": False,
            "close": None,
            "submit": {"type": "plain_text", "text": "Submit", "emoji": True},
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": DEFAULT_APP_ID,
            "external_id": "",
            "app_installed_team_id": team_id,
            "bot_id": DEFAULT_BOT_ID,
        },
        "response_urls": response_urls or [],
        "is_enterprise_install": False,
        "enterprise": None,
    }
    return urlencode({"payload": json.dumps(payload)}).encode("utf-8")


def message_event(
    text: str,
    *,
    user_id: str = "U123",
    channel_id: str = "D123",
    team_id: str = DEFAULT_TEAM_ID,
    ts: str | None = None,
    bot_user_id: str = DEFAULT_BOT_USER_ID,
) -> bytes:
    """The JSON body of an Events API ``message`` event: a user's DM (``channel_type`` "im") to the app."""
    event_ts = ts or _now_ts()
    body = {
        "token": "verification-token",
        "team_id": team_id,
        "api_app_id": DEFAULT_APP_ID,
        "event": {
            "type": "message",
            "channel": channel_id,
            "user": user_id,
            "text": text,
            "ts": event_ts,
            "event_ts": event_ts,
            "channel_type": "im" if channel_id.startswith("D") else "channel",
            "team": team_id,
            "client_msg_id": hashlib.md5(f"{user_id}:{event_ts}".encode()).hexdigest(),
        },
        "type": "event_callback",
        "event_id": f"Ev{hashlib.sha1(event_ts.encode()).hexdigest()[:10].upper()}",
        "event_time": int(float(event_ts)),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": bot_user_id,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
    }
    return json.dumps(body).encode("utf-8")
