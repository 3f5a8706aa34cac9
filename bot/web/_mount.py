"""Mounting the pages on the app: the dashboard always, the demo only where it is safe."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from pathlib import Path
from typing import Final

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

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


class _SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        path = request.url.path
        if path == "/" or path.startswith(("/dashboard", "/demo", "/static")):
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            if not path.startswith("/static"):
                response.headers.setdefault("Cache-Control", "no-store")
        return response


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
