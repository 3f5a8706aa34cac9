"""A local fake of Slack's Socket Mode: ``apps.connections.open`` on the fake Web API and the WebSocket it opens."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

from tests.fake_http import made_up_token
from tests.fake_slack import DEFAULT_APP_ID, FakeSlackAPI, _ok, _Reply, _SlackError

__all__ = [
    "CONNECTIONS_OPEN",
    "DEFAULT_APP_TOKEN",
    "Ack",
    "FakeSocketMode",
    "FakeSocketModeAPI",
    "command_payload",
    "interaction_payload",
]

CONNECTIONS_OPEN: Final = "apps.connections.open"
DEFAULT_APP_TOKEN: Final = made_up_token("slack-app")
LINK_PATH: Final = "/link/"


@dataclass(frozen=True)
class Ack:
    """What the app sent back for one envelope: ``{"envelope_id": ..., "payload": {...}?}``."""

    envelope_id: str
    payload: dict[str, Any] | None
    connection: int  # 1 for the first WebSocket connection, 2 after a reconnect, ...


class FakeSocketModeAPI(FakeSlackAPI):
    """The fake Web API plus ``apps.connections.open``, which hands out one-time URLs of a :class:`FakeSocketMode`.

    As on Slack, that one method is authorised by the app-level ``xapp-`` token (``Authorization: Bearer``)
    and by nothing else, and the ``xapp-`` token authorises no other method (both refused as
    ``invalid_auth``). Attach the WebSocket server with ``api.socket = server`` before the app connects.
    Calls to it are recorded and scriptable like any other (``calls_to``, ``fail_next``).
    """

    def __init__(self, *args: Any, app_token: str = DEFAULT_APP_TOKEN, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app_token = app_token
        self.socket: FakeSocketMode | None = None
        self._handlers[CONNECTIONS_OPEN] = self._connections_open

    def _dispatch(
        self, method: str, params: dict[str, Any], token: str | None, encoding: str, received: float
    ) -> _Reply:
        # The base class authorises every method with the bot token; swap in the token kind each method takes.
        if method == CONNECTIONS_OPEN:
            token = self.token if token == self.app_token else None
        elif token == self.app_token:
            token = None
        return super()._dispatch(method, params, token, encoding, received)

    def _connections_open(self, params: dict[str, Any]) -> _Reply:
        if self.socket is None:
            raise _SlackError("internal_error", "[ERROR] no FakeSocketMode attached to this fake")
        return _ok(url=self.socket.issue_url())


class FakeSocketMode:
    """Slack's Socket Mode WebSocket endpoint on 127.0.0.1, served on the test's event loop.

    A connection needs a ticket from ``issue_url`` (what ``apps.connections.open`` returns; each ticket
    works once). On connect the server sends Slack's ``hello``; ``send`` then delivers envelopes to the
    newest open connection, and every JSON message the app sends back is recorded as an :class:`Ack`.
    ``issue_url`` may be called from any thread (the Web API fake's); everything else belongs to the loop
    that called ``start``.
    """

    def __init__(self, *, app_id: str = DEFAULT_APP_ID) -> None:
        self.app_id = app_id
        self._lock = threading.Lock()  # guards the tickets: issued on the Web API fake's threads
        self._tickets: set[str] = set()
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self._sockets: list[web.WebSocketResponse] = []
        self._changed = asyncio.Event()
        self.refused = 0  # connection attempts without a valid ticket
        self.acks: list[Ack] = []
        self.sent: list[dict[str, Any]] = []  # everything sent to the app, hello and disconnect included

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> FakeSocketMode:
        app = web.Application()
        app.router.add_get(LINK_PATH, self._link)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        """Close any connection the app left open and stop serving. Safe to call twice."""
        for ws in self._sockets:
            if not ws.closed:
                await ws.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeSocketMode:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def issue_url(self) -> str:
        """A fresh one-time ``ws://127.0.0.1:PORT/link/?ticket=...&app_id=...`` (Slack's is ``wss://``)."""
        if self._port is None:
            raise RuntimeError("start() the FakeSocketMode before issuing URLs")
        ticket = uuid.uuid4().hex
        with self._lock:
            self._tickets.add(ticket)
        return f"ws://127.0.0.1:{self._port}{LINK_PATH}?ticket={ticket}&app_id={self.app_id}"

    # -- inspection ------------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """How many WebSocket connections were accepted so far (open or closed)."""
        return len(self._sockets)

    @property
    def open_connections(self) -> int:
        return sum(1 for ws in self._sockets if not ws.closed)

    def acked(self, envelope_id: str) -> Ack | None:
        return next((a for a in self.acks if a.envelope_id == envelope_id), None)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate`` holds; re-checked whenever a connection opens or closes or a message arrives."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return predicate()
        return True

    async def ack(self, envelope_id: str, timeout: float = 5.0) -> Ack:
        """The app's acknowledgement of ``envelope_id``; fails the test if none arrives within ``timeout``."""
        if not await self.wait_for(lambda: self.acked(envelope_id) is not None, timeout):
            raise AssertionError(f"envelope {envelope_id} was not acknowledged within {timeout} s")
        found = self.acked(envelope_id)
        assert found is not None
        return found

    # -- what Slack sends ------------------------------------------------------------------------

    async def send(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        accepts_response_payload: bool | None = None,
        envelope_id: str | None = None,
        **extra: Any,
    ) -> str:
        """Deliver an envelope (``slash_commands``, ``interactive``, ``events_api``, ...); returns its envelope_id.

        ``accepts_response_payload`` defaults to Slack's: true for slash commands and for interactions
        that can be answered in the ack (view submissions, block suggestions), false otherwise.
        """
        if accepts_response_payload is None:
            accepts_response_payload = kind == "slash_commands" or payload.get("type") in (
                "view_submission",
                "block_suggestion",
            )
        envelope = {
            "envelope_id": envelope_id or str(uuid.uuid4()),
            "payload": payload,
            "type": kind,
            "accepts_response_payload": accepts_response_payload,
            **extra,
        }
        await self.send_raw(envelope)
        return str(envelope["envelope_id"])

    async def disconnect(self, reason: str = "refresh_requested") -> None:
        """Slack's ``disconnect``: the app should fetch a new URL and reconnect (Slack closes this one later)."""
        await self.send_raw({"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-fake"}})

    async def send_raw(self, message: dict[str, Any], timeout: float = 5.0) -> None:
        """Send any JSON message on the newest open connection (waiting up to ``timeout`` for one)."""
        if not await self.wait_for(lambda: self.open_connections > 0, timeout):
            raise AssertionError("the app has no open Socket Mode connection")
        ws = next(ws for ws in reversed(self._sockets) if not ws.closed)
        self.sent.append(message)
        await ws.send_str(json.dumps(message))

    # -- the endpoint ----------------------------------------------------------------------------

    async def _link(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        with self._lock:
            valid = ticket in self._tickets
            self._tickets.discard(ticket)
        if not valid:
            self.refused += 1
            self._changed.set()
            return web.Response(status=401, text="invalid ticket")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        number = len(self._sockets)
        hello = {
            "type": "hello",
            "num_connections": self.open_connections,
            "debug_info": {"host": "applink-fake", "build_number": 1, "approximate_connection_time": 18060},
            "connection_info": {"app_id": self.app_id},
        }
        self.sent.append(hello)
        await ws.send_str(json.dumps(hello))
        self._changed.set()
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                data = json.loads(message.data)
                if isinstance(data, dict) and "envelope_id" in data:
                    self.acks.append(Ack(str(data["envelope_id"]), data.get("payload"), number))
                    self._changed.set()
        finally:
            self._changed.set()
        return ws


# -- Socket Mode payloads from the HTTP request bodies of tests.fake_slack ---------------------------


def command_payload(body: bytes) -> dict[str, Any]:
    """A slash command's envelope payload: the same fields as its form-encoded HTTP body, as a JSON object."""
    return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))


def interaction_payload(body: bytes) -> dict[str, Any]:
    """An interaction's envelope payload: the JSON object an HTTP request carries in its ``payload`` field."""
    payload: dict[str, Any] = json.loads(dict(parse_qsl(body.decode("utf-8")))["payload"])
    return payload
