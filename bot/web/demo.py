"""The try-it page: a therapist and a client chatting side by side through the web channel, on this machine only.

Each browser gets a demo id (an HttpOnly, SameSite=Strict cookie); its two
panes are two web-channel addresses, ``demo-ID/therapist`` (linked to the
"Demo therapist", created when the page is first opened) and ``demo-ID/client`` (a stranger
until it joins with an invite code, the real onboarding path). Requests must
carry that cookie, name this machine in their Host header (no DNS rebinding)
and, for posts, be JSON, so another web site cannot drive the demo.

"Send due reminders now" runs one scheduler sweep. "Skip to the next
reminder" moves the demo clock (:class:`dialogs.clock.OffsetClock`, wired only
in demo mode) to the next planned reminder and sweeps, so a week plays in
minutes; the engine, the scheduler and the dashboard share that clock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlparse

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool

from bot.web._pages import RowIdQuery, templates, when
from bot.wiring import Companion
from channels.web import NAME as WEB
from channels.web import WebChannel
from dialogs import signin
from dialogs.timeparse import resolve_timezone
from scheduler.sweep import sweep
from storage import Occasion, Therapist
from storage import queries as q
from storage.models import OccasionStatus

log = logging.getLogger("companion.web")

COOKIE: Final = "companion_demo"
THERAPIST: Final = "Demo therapist"
PANES: Final = ("therapist", "client")
_DEMO_ID: Final = re.compile(r"[0-9a-f]{32}")
_LOCAL_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


class MovableClock(Protocol):
    def now(self) -> datetime: ...

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime: ...


def local_zone() -> str:
    """This machine's IANA zone (TZ, or /etc/localtime's target), for the demo therapist; UTC if unknown."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    with contextlib.suppress(OSError):
        candidates.append(str(Path("/etc/localtime").resolve()).partition("zoneinfo/")[2])
    for candidate in candidates:
        zone = resolve_timezone(candidate) if candidate and "/" in candidate else None
        if zone:
            return zone
    return "UTC"


def ensure_therapist(companion: Companion) -> int:
    """The demo therapist's id, created the first time (idempotent)."""
    with companion.db.unit_of_work() as session:
        found = q.therapist_by_name(session, name=THERAPIST)
        if found is None:
            found = q.add_therapist(session, name=THERAPIST, timezone=local_zone(), now=companion.clock.now())
        assert found.id is not None
        return found.id


def _hostname(header: str) -> str:
    """The Host header without its port ("[::1]:8080" → "[::1]")."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0]


def address(demo: str, pane: str) -> str:
    return f"demo-{demo}/{pane}"


def _encodable(text: str) -> bool:
    """Whether ``text`` is storable: a lone surrogate cannot be encoded (nor encrypted), and failed as a 500."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def router(companion: Companion) -> APIRouter:
    settings, db, engine = companion.settings, companion.db, companion.engine
    pages = templates(engine.prompts)
    channel = WebChannel(db=db, engine=engine)
    created: list[int] = []
    lock = threading.Lock()

    def therapist_id() -> int:
        """The demo therapist, created when the page is first opened (not merely because the demo is mounted)."""
        with lock:
            if not created:
                created.append(ensure_therapist(companion))
            return created[0]

    allowed_hosts = set(_LOCAL_HOSTS)
    if settings.web.demo_public or settings.web.base_url:
        allowed_hosts.add(urlparse(settings.web_base_url).hostname or "")
    api = APIRouter()

    def check_host(request: Request) -> None:
        """Loopback names only (unless public): a page on another site cannot rebind its name to us."""
        if not settings.web.demo_public and _hostname(request.headers.get("host", "")) not in allowed_hosts:
            raise HTTPException(status_code=403, detail="the demo answers only on this machine's loopback address")

    def demo_id(request: Request) -> str:
        check_host(request)
        value = request.cookies.get(COOKIE, "")
        if not _DEMO_ID.fullmatch(value):
            raise HTTPException(status_code=403, detail="open the demo page first")
        return value

    def check_json(request: Request) -> None:
        # A cross-site form cannot send JSON without a CORS preflight, which this app never grants.
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HTTPException(status_code=415, detail="JSON only")

    def clock_label() -> str:
        with db.unit_of_work() as session:
            therapist = session.get(Therapist, therapist_id())
            zone = therapist.timezone if therapist else "UTC"
        return when(companion.clock.now(), zone)

    @api.get("/", response_class=HTMLResponse)
    async def page(request: Request) -> Response:
        check_host(request)
        demo = request.cookies.get(COOKIE, "")
        fresh = not _DEMO_ID.fullmatch(demo)
        if fresh:
            demo = secrets.token_hex(16)

        def link() -> None:
            with db.unit_of_work() as session:
                therapist_pane = address(demo, "therapist")
                if q.identity(session, channel=WEB, address=therapist_pane) is None:
                    q.link_identity(
                        session,
                        channel=WEB,
                        address=therapist_pane,
                        now=companion.clock.now(),
                        therapist_id=therapist_id(),
                    )

        await run_in_threadpool(link)
        context = {"therapist_name": THERAPIST, "clock": await run_in_threadpool(clock_label)}
        response = pages.TemplateResponse(request, "demo.html", context)
        if fresh:
            response.set_cookie(
                COOKIE,
                demo,
                max_age=30 * 24 * 3600,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return response

    @api.post("/demo/send")
    async def send(request: Request) -> JSONResponse:
        demo = demo_id(request)
        check_json(request)
        try:
            body = await request.json()
        except (ValueError, RecursionError):  # RecursionError: JSON nested too deeply to parse
            raise HTTPException(status_code=400, detail="not JSON") from None
        pane, text, message_id = (body.get(k) if isinstance(body, dict) else None for k in ("pane", "text", "id"))
        if pane not in PANES or not isinstance(text, str) or not isinstance(message_id, str):
            raise HTTPException(status_code=400, detail="pane, text and id are required")
        if not _encodable(text) or not _encodable(message_id):  # JSON may carry a lone surrogate ("\ud800")
            raise HTTPException(status_code=400, detail="text and id must be valid Unicode")
        try:
            await run_in_threadpool(channel.receive, address(demo, pane), text, message_id)
        except ValueError:
            raise HTTPException(status_code=400, detail="bad message id") from None
        return JSONResponse({"ok": True})

    @api.get("/demo/messages")
    async def messages(request: Request, pane: str, after: RowIdQuery = 0) -> JSONResponse:
        demo = demo_id(request)
        if pane not in PANES:
            raise HTTPException(status_code=400, detail="unknown pane")
        shown = await run_in_threadpool(channel.fetch, address(demo, pane), after=after)
        return JSONResponse({"messages": [m.to_json() for m in shown], "clock": await run_in_threadpool(clock_label)})

    def swept_text() -> str:
        report = sweep(db=db, engine=engine)
        n = report.nudges
        return engine.prompts.text(
            "web.demo.swept", sent=n.sent, followed_up=n.followed_up, digests=n.digests, skipped=n.skipped
        )

    @api.post("/demo/sweep")
    async def sweep_now(request: Request) -> JSONResponse:
        demo_id(request)
        check_json(request)
        text = await run_in_threadpool(swept_text)
        return JSONResponse({"status": text, "clock": await run_in_threadpool(clock_label)})

    @api.post("/demo/skip")
    async def skip(request: Request) -> JSONResponse:
        """Move the demo clock to the next planned reminder (this demo's client's, else anyone's), then sweep."""
        demo = demo_id(request)
        check_json(request)
        clock: Any = companion.clock
        if not callable(getattr(clock, "advance", None)):
            raise HTTPException(status_code=409, detail="this clock cannot skip ahead")

        def work() -> dict[str, Any]:
            with db.unit_of_work() as session:
                who = q.identity(session, channel=WEB, address=address(demo, "client"))
                query = select(Occasion.due_at).where(Occasion.status == OccasionStatus.PLANNED)
                if who is not None and who.client_id is not None:
                    query = query.where(Occasion.client_id == who.client_id)
                due = session.exec(query.order_by(col(Occasion.due_at)).limit(1)).first()
            if due is None:
                return {"status": engine.prompts.text("web.demo.nothing_planned")}
            movable: MovableClock = clock
            if due > movable.now():
                movable.advance(due - movable.now())
            return {"status": swept_text()}

        result = await run_in_threadpool(work)
        return JSONResponse({**result, "clock": await run_in_threadpool(clock_label)})

    @api.post("/demo/dashboard")
    async def dashboard(request: Request) -> Response:
        """The demo therapist's sign-in link, as `/dashboard` would give it, followed at once."""
        demo_id(request)

        def issue() -> str:
            with db.unit_of_work() as session:
                return signin.issue_link(
                    session,
                    therapist_id=therapist_id(),
                    now=companion.clock.now(),
                    ttl=timedelta(minutes=settings.web.link_ttl_minutes),
                )

        token = await run_in_threadpool(issue)
        return RedirectResponse(f"/dashboard/login?token={token}", status_code=303)

    return api
