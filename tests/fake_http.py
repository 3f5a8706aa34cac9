"""The HTTP plumbing the fake platform servers share: keep-alive connections that a stop can close."""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self


@dataclass(frozen=True)
class UploadedFile:
    """A file part of a multipart/form-data request (a certificate, a document, a chart)."""

    filename: str
    content_type: str
    data: bytes


def parse_multipart(
    content_type: str, body: bytes, decode: Callable[[str, str], Any] = lambda _name, text: text
) -> dict[str, Any]:
    """A multipart/form-data body as fields: files as :class:`UploadedFile`, the rest through ``decode(name, text)``."""
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = BytesParser(EmailMessage, policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ValueError("malformed multipart body")
    params: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            params[name] = UploadedFile(filename, part.get_content_type(), data)
        else:
            params[name] = decode(name, data.decode("utf-8"))
    return params


def made_up_token(kind: str) -> str:
    """A token shaped like the platform's, made up for this run: no credential-like string stands in the source.

    ``kind``: "telegram" (a bot token), "slack-bot" (xoxb-) or "slack-app" (xapp-, Socket Mode).
    """
    if kind == "telegram":
        return f"{100_000_000 + secrets.randbelow(900_000_000)}:{secrets.token_hex(18)}"
    if kind == "slack-bot":
        return f"xoxb-{secrets.randbelow(10**6)}-{secrets.randbelow(10**6)}-{secrets.token_hex(12)}"
    if kind == "slack-app":
        return f"xapp-1-A{secrets.token_hex(4).upper()}-{secrets.randbelow(10**6)}-{secrets.token_hex(12)}"
    raise ValueError(kind)


class KeepAliveServer(ThreadingHTTPServer):
    """A loopback server on port 0 that tracks idle keep-alive connections so :func:`close` can end them.

    ``stopped`` is the owning fake's stop event; ``fake`` is the fake itself,
    for handlers to reach its state.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: Any, stopped: threading.Event, handler: type[BaseHTTPRequestHandler]) -> None:
        self.fake = fake
        self.stopped = stopped
        self.idle: set[socket.socket] = set()  # keep-alive connections waiting for their next request
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), handler)


class KeepAliveHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive (aiohttp and httpx keep connections open); subclasses implement ``_serve``."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; avoid the 40 ms delayed-ACK stall
    server: KeepAliveServer

    def setup(self) -> None:
        super().setup()
        self._mark_idle()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.idle.discard(self.connection)

    def _mark_idle(self) -> None:
        # close() sets the stopped event before it shuts the idle connections down, so a connection is
        # either shut down by close() or, having answered its request, closes itself here.
        with self.server.connections_lock:
            if self.server.stopped.is_set():
                self.close_connection = True
            else:
                self.server.idle.add(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        raise NotImplementedError


def close(server: KeepAliveServer, thread: threading.Thread | None) -> None:
    """Shut the server down, end its idle keep-alive connections and join its thread (call after setting stopped)."""
    server.shutdown()
    server.server_close()
    with server.connections_lock:  # busy connections answer (stop woke them) and then close themselves
        connections = list(server.idle)
    for connection in connections:
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)
    if thread is not None:
        thread.join(timeout=2)


class ServedFake:
    """Start, stop and ``with`` for a fake platform that serves from a daemon thread on a free loopback port.

    A subclass sets ``_lock`` (its state lock), ``_stopped`` (an Event), and
    ``_server``/``_thread`` to None in its ``__init__``, and gives
    :meth:`_new_server`. :meth:`_on_stop` runs under the lock as serving stops
    (to wake waiting requests); :meth:`_shut` ends the server.
    """

    _lock: Any
    _stopped: threading.Event
    _server: Any
    _thread: threading.Thread | None
    _thread_name = "fake-platform"

    def _new_server(self) -> ThreadingHTTPServer:
        raise NotImplementedError

    def _on_stop(self) -> None:
        """Called under the lock when serving stops."""

    def _shut(self, server: Any, thread: threading.Thread | None) -> None:
        close(server, thread)

    def start(self) -> Self:
        """Bind a free port on 127.0.0.1 and serve from a daemon thread. Returns ``self``."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError(f"{type(self).__name__} is already started")
            self._stopped.clear()
            self._server = self._new_server()
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name=self._thread_name, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and join the server thread. Safe to call twice."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server, self._thread = None, None
            self._stopped.set()
            self._on_stop()
        if server is not None:
            self._shut(server, thread)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash). Only valid once started."""
        server = self._server
        if server is None:
            raise RuntimeError(f"start() the {type(self).__name__} before asking for its URL")
        return f"http://127.0.0.1:{server.server_address[1]}"
