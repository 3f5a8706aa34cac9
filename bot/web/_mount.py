"""Mounting the pages on the app: the dashboard always, the demo only where it is safe."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bot.wiring import Companion, WiringError

log = logging.getLogger("companion.web")
STATIC: Final = Path(__file__).resolve().parent / "static"
# Scripts and styles come only from /static (no inline code), pages cannot be framed, and no
# address (a sign-in link carries its token) leaks to another site in a Referer header.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (server.host) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _SecurityHeaders:
    """The pages' security headers, as a plain ASGI middleware.

    Starlette's ``BaseHTTPMiddleware`` wraps every response in a stream and
    task group, on every request: under webhook load (which these headers
    never concern) it showed in the profile. This one only looks at the path
    and, for pages, adds headers to the response start.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/" or path.startswith(("/dashboard", "/demo", "/static"))):
            await self.app(scope, receive, send)
            return
        extra = dict(SECURITY_HEADERS)
        if not path.startswith("/static"):
            extra["Cache-Control"] = "no-store"

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    if name not in headers:
                        headers.append(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)


def mount(app: FastAPI, companion: Companion) -> None:
    """Add the dashboard, and the try-it demo if enabled; refuse a demo on a public interface.

    Raises :class:`WiringError` when the demo would be served on a host that is
    not loopback without ``web.demo_public``: the demo lets whoever opens it
    chat as a therapist, with no sign-in.
    """
    from bot.web import dashboard, demo

    settings = companion.settings
    demo_on = settings.demo_enabled
    if demo_on and not is_loopback(settings.server.host) and not settings.web.demo_public:
        raise WiringError(
            f"the try-it chat lets anyone who opens it act as a therapist without signing in, and server.host "
            f"{settings.server.host!r} is not loopback: set web.demo: false (or configure a platform), or "
            "web.demo_public: true if you really want it reachable from other machines"
        )
    # Sign-in links point at this service, wherever it was told to listen.
    companion.engine.settings = dataclasses.replace(
        companion.engine.settings,
        dashboard_url=f"{settings.web_base_url}/dashboard",
    )
    app.add_middleware(_SecurityHeaders)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(dashboard.router(companion))
    if demo_on:
        app.include_router(demo.router(companion))
        log.info("try-it chat on %s/ (local demo)", settings.web_base_url)
