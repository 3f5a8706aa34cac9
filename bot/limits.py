"""Request body limits: a pure ASGI middleware that refuses oversized (413) and too-slow (408) bodies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BODY: Final = 256 * 1024  # Telegram updates and Slack payloads are a few KiB
DEFAULT_BODY_TIMEOUT: Final = 30.0


class _Refused(Exception):
    """Raised inside the wrapped ``receive``; caught by the middleware, which answers ``status``."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status, self.error = status, error


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413 and bodies that take over ``timeout`` seconds with 408.

    A declared ``Content-Length`` over the limit is refused before the app
    runs and before a byte of the body is read. A chunked (or understated)
    body is counted as the app reads it, and reading stops at the limit: at
    most ``max_bytes`` plus one chunk is ever held. The time bound covers the
    whole body from the first read, so a client trickling one byte at a time
    (a slow-loris body) is cut off; uvicorn has no body timeout of its own
    (its ``timeout_keep_alive`` only closes idle connections between
    requests), and slow *headers* are the reverse proxy's job
    (nginx ``client_header_timeout``). ``clock`` is injectable for tests.

    If the app has already started its response when a limit trips (it
    never does here: every handler reads the body first), the connection is
    simply not answered further.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int = DEFAULT_MAX_BODY,
        timeout: float = DEFAULT_BODY_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app, self.max_bytes, self.timeout, self.clock = app, max_bytes, timeout, clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            await _refuse(send, 400, "bad content-length")
            return
        if declared is not None and declared > self.max_bytes:
            await _refuse(send, 413, "request body too large")
            return
        received = 0
        deadline: float | None = None
        started = complete = False

        async def limited_receive() -> Message:
            nonlocal received, deadline, complete
            if complete:  # the body is in; later reads only wait for a disconnect
                return await receive()
            if deadline is None:
                deadline = self.clock() + self.timeout
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise _Refused(408, "request body too slow")
            try:
                message = await asyncio.wait_for(receive(), timeout=remaining)
            except TimeoutError:
                raise _Refused(408, "request body too slow") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _Refused(413, "request body too large")
                complete = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _Refused as refused:
            if not started:
                await _refuse(send, refused.status, refused.error)


def _content_length(scope: Scope) -> int | None:
    """The declared length; None when absent, -1 when it is not a plain non-negative integer."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() and text.isascii() else -1
    return None


async def _refuse(send: Send, status: int, error: str) -> None:
    body = b'{"error":"' + error.encode() + b'"}'
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
