"""The therapist dashboard: sign-in links, the caseload, a client's page, homework and alert acknowledgement.

Every page and form runs in one unit of work that starts by finding the
session from its cookie, reaches clients only through :mod:`dialogs.access`
(another therapist's client is a 404 like a missing one) and records an audit
entry. Every form carries the session's CSRF secret, checked before anything
changes, and the cookie is SameSite=Strict and HttpOnly. Client text appears
only in page bodies, never in URLs or logs.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from bot.web._pages import RowId, templates
from bot.web.chart import adherence_chart
from bot.wiring import Companion
from dialogs import access, measures, review, safety_plan, signin
from dialogs.digest import build_caseload, build_client_digest
from dialogs.digest_text import measure_line, quote, rubric
from dialogs.homework import SPECIFICITY, missing_elements, normalise_field, set_homework
from dialogs.messages import Outbound, enqueue
from storage import (
    Client,
    Debrief,
    FlagLevel,
    Homework,
    LogEntry,
    MeasureSchedule,
    Occasion,
    SafetyFlag,
    Therapist,
    WebToken,
)
from storage import queries as q
from storage.models import HOMEWORK_FIELDS, SAFETY_PLAN_FIELDS, DebriefStatus

COOKIE: Final = "companion_session"
OUTCOMES: Final = ("delivered", "pending_join", "pending_busy", "pending_inactive")
TIMELINE_LIMIT: Final = 60
_LONG_FIELDS: Final = ("what", "rationale")


@dataclass(frozen=True)
class Signed:
    token: WebToken
    therapist: Therapist

    @property
    def therapist_id(self) -> int:
        return self.therapist.id or 0

    @property
    def actor(self) -> str:
        return access.therapist_actor(self.therapist_id)


Work = Callable[[Session, "Signed", dict[str, str]], "Page"]
"""A page's decision, given the unit of work, the signed-in therapist and the form fields (empty for a GET)."""


@dataclass(frozen=True)
class Page:
    """What a unit of work decided: a template and its context, or a redirect, with a status."""

    template: str | None = None
    context: dict[str, Any] | None = None
    status: int = 200
    redirect: str | None = None
    cookie: str | None = None  # a new session token to set
    clear_cookie: bool = False


def router(companion: Companion) -> APIRouter:
    settings, db, prompts = companion.settings, companion.db, companion.engine.prompts
    pages = templates(prompts)
    session_ttl = timedelta(hours=settings.web.session_ttl_hours)
    api = APIRouter(prefix="/dashboard")

    def now() -> datetime:
        return companion.clock.now()

    def secure(request: Request) -> bool:
        if settings.web.secure_cookies is not None:
            return settings.web.secure_cookies
        return request.url.scheme == "https" or settings.web_base_url.startswith("https://")

    def respond(request: Request, page: Page) -> Response:
        response: Response
        if page.redirect is not None:
            response = RedirectResponse(page.redirect, status_code=303)
        else:
            assert page.template is not None
            context = {"csrf": None, "therapist": None, **(page.context or {})}
            response = pages.TemplateResponse(request, page.template, context, status_code=page.status)
        if page.cookie is not None:
            response.set_cookie(
                COOKIE,
                page.cookie,
                max_age=int(session_ttl.total_seconds()),
                path="/dashboard",
                httponly=True,
                samesite="strict",
                secure=secure(request),
            )
        if page.clear_cookie:
            response.delete_cookie(COOKIE, path="/dashboard", httponly=True, samesite="strict", secure=secure(request))
        return response

    def signed_in(session: Session, request: Request) -> Signed | None:
        found = signin.current_session(session, token=request.cookies.get(COOKIE), now=now())
        return Signed(*found) if found is not None else None

    async def run(request: Request, work: Work, *, form: bool = False) -> Response:
        """Sign-in check, the CSRF check for forms, then ``work``, all in one unit of work."""
        fields = {k: str(v) for k, v in (await request.form()).items()} if form else {}

        def unit() -> Page:
            with db.unit_of_work() as session:
                who = signed_in(session, request)
                if who is None:
                    return Page("signed_out.html", {"reason": "needed"}, status=401, clear_cookie=True)
                # As bytes: compare_digest raises TypeError (a 500) on a str with non-ASCII characters.
                given = fields.get("csrf", "").encode("utf-8", "surrogatepass")
                if form and not hmac.compare_digest(given, (who.token.csrf_secret or "\0").encode()):
                    return Page("error.html", {"message": prompts.text("web.csrf_refused")}, status=403)
                page = work(session, who, fields)
                context = {"therapist": who.therapist, "csrf": who.token.csrf_secret, **(page.context or {})}
                return Page(page.template, context, page.status, page.redirect, page.cookie, page.clear_cookie)

        return respond(request, await run_in_threadpool(unit))

    # --- sign-in --------------------------------------------------------------------------

    @api.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, token: str = "") -> Response:
        """The link from chat: a button that signs in, so a link preview that fetches the URL cannot use it up."""

        def unit() -> Page:
            with db.unit_of_work() as session:
                if not token or signin.usable_link(session, token=token, now=now()) is None:
                    return Page("signed_out.html", {"reason": "link_refused"}, status=403)
                return Page("login.html", {"token": token})

        return respond(request, await run_in_threadpool(unit))

    @api.post("/login")
    async def login(request: Request) -> Response:
        token = str((await request.form()).get("token") or "")

        def unit() -> Page:
            with db.unit_of_work() as session:
                started = (
                    signin.redeem_link(session, token=token, now=now(), session_ttl=session_ttl) if token else None
                )
                if started is None:
                    return Page("signed_out.html", {"reason": "link_refused"}, status=403)
                value, row = started
                access.audit(
                    session,
                    actor=access.therapist_actor(row.therapist_id),
                    action="dashboard.signin",
                    now=now(),
                    therapist_id=row.therapist_id,
                )
                return Page(redirect="/dashboard", cookie=value)

        return respond(request, await run_in_threadpool(unit))

    @api.post("/logout")
    async def logout(request: Request) -> Response:
        def work(session: Session, who: Signed, _fields: dict[str, str]) -> Page:
            signin.end_session(session, row=who.token, now=now())
            access.audit(session, actor=who.actor, action="dashboard.signout", now=now(), therapist_id=who.therapist_id)
            return Page("signed_out.html", {"reason": "signed_out"}, clear_cookie=True)

        response = await run(request, work, form=True)
        return response

    # --- pages -----------------------------------------------------------------------------

    @api.get("", response_class=HTMLResponse)
    async def caseload(request: Request) -> Response:
        def work(session: Session, who: Signed, _fields: dict[str, str]) -> Page:
            model = build_caseload(session, prompts=prompts, therapist=who.therapist, now=now())
            ids = {c.name: c.id for c in access.own_clients(session, therapist_id=who.therapist_id)}
            access.audit(
                session,
                actor=who.actor,
                action="dashboard.caseload.read",
                now=now(),
                therapist_id=who.therapist_id,
                clients=len(ids),
            )
            return Page("caseload.html", {"caseload": model, "ids": ids, "now": now()})

        return await run(request, work)

    @api.get("/clients/{client_id}", response_class=HTMLResponse)
    async def client_page(
        request: Request, client_id: RowId, saved: int | None = None, outcome: str = "", plan: str = ""
    ) -> Response:
        def work(session: Session, who: Signed, _fields: dict[str, str]) -> Page:
            client = access.own_client(session, therapist_id=who.therapist_id, client_id=client_id)
            if client is None:
                return _not_found(prompts)
            access.audit(session, actor=who.actor, action="dashboard.client.read", now=now(), client=client)
            notice = None
            if saved is not None and outcome in OUTCOMES:
                notice = prompts.text(
                    f"therapist.homework.{outcome}", id=saved, client=client.name, status=client.status
                )
            elif plan == "saved":
                notice = prompts.text("plan.saved", client=client.name)
            return Page("client.html", {**_client_context(session, who, client), "notice": notice})

        return await run(request, work)

    @api.get("/clients/{client_id}/homework", response_class=HTMLResponse)
    async def homework_form(request: Request, client_id: RowId) -> Response:
        def work(session: Session, who: Signed, _fields: dict[str, str]) -> Page:
            client = access.own_client(session, therapist_id=who.therapist_id, client_id=client_id)
            if client is None:
                return _not_found(prompts)
            return Page("homework.html", _form_context(client, {}, {}, None, warned=False))

        return await run(request, work)

    @api.post("/clients/{client_id}/homework", response_class=HTMLResponse)
    async def homework_save(request: Request, client_id: RowId) -> Response:
        def work(session: Session, who: Signed, fields: dict[str, str]) -> Page:
            client = access.own_client(session, therapist_id=who.therapist_id, client_id=client_id)
            if client is None:
                return _not_found(prompts)
            draft: dict[str, str] = {}
            errors: dict[str, str] = {}
            for field in HOMEWORK_FIELDS:
                typed = fields.get(field, "").strip()
                if not typed:
                    continue
                value = normalise_field(field, typed, prompts=prompts, now=now(), timezone=who.therapist.timezone)
                if value:
                    draft[field] = value
                elif field in ("type", "due", "nudges"):
                    errors[field] = prompts.text(f"therapist.homework.bad_{field}", types=_types(prompts))
            if not draft.get("title"):
                errors["title"] = prompts.text("slack.title_required")
            missing = missing_elements(draft)
            warned = fields.get("warned") == "1"
            if errors or (missing and not warned):
                notice = None
                if missing and not errors:
                    notice = prompts.text(
                        "therapist.homework.missing",
                        missing=", ".join(prompts.text(f"therapist.missing.{m}") for m in missing),
                    )
                    notice += " " + prompts.text("web.save_anyway")
                context = _form_context(client, fields, errors, notice, warned=not errors and bool(missing))
                return Page("homework.html", context, status=422 if errors else 200)
            homework, outcome, messages = set_homework(
                session, prompts=prompts, settings=companion.engine.settings, client=client, draft=draft, now=now()
            )
            for channel, address, message in messages:
                enqueue(session, channel=channel, address=address, message=message, now=now())
            access.audit(
                session,
                actor=who.actor,
                action="dashboard.homework.set",
                now=now(),
                client=client,
                homework_id=homework.id,
                missing=len(missing),
            )
            return Page(redirect=f"/dashboard/clients/{client.id}?saved={homework.id}&outcome={outcome}")

        return await run(request, work, form=True)

    @api.post("/clients/{client_id}/plan")
    async def plan_save(request: Request, client_id: RowId) -> Response:
        """The safety plan form: every step as written (an emptied step is cleared); the client is told."""

        def work(session: Session, who: Signed, fields: dict[str, str]) -> Page:
            client = access.own_client(session, therapist_id=who.therapist_id, client_id=client_id)
            if client is None:
                return _not_found(prompts)
            draft = {f: fields.get(f, "").strip()[:4000] for f in SAFETY_PLAN_FIELDS}
            safety_plan.store(session, client=client, draft=draft, now=now())
            access.audit(session, actor=who.actor, action="dashboard.plan.set", now=now(), client=client)
            chat = q.latest_identity(session, client_id=client.id)
            if chat is not None:
                told = Outbound(prompts.text("plan.told_client", therapist=who.therapist.name))
                enqueue(session, channel=chat.channel, address=chat.address, message=told, now=now())
            return Page(redirect=f"/dashboard/clients/{client.id}?plan=saved#plan")

        return await run(request, work, form=True)

    @api.post("/clients/{client_id}/measure")
    async def measure_set(request: Request, client_id: RowId) -> Response:
        """Ask a questionnaire in chat (the same rules as ``/measure``)."""

        def work(session: Session, who: Signed, fields: dict[str, str]) -> Page:
            client = access.own_client(session, therapist_id=who.therapist_id, client_id=client_id)
            instrument = measures.instruments(prompts.locale).get(fields.get("instrument", ""))
            cadence = fields.get("cadence", "")
            if client is None:
                return _not_found(prompts)
            if instrument is None or cadence not in measures.CADENCES:
                return Page("error.html", {"message": prompts.text("measure.unknown", usage="")}, status=422)
            measures.set_schedule(
                session,
                client=client,
                instrument=instrument,
                cadence=cadence,
                settings=companion.engine.settings,
                now=now(),
            )
            access.audit(
                session,
                actor=who.actor,
                action="dashboard.measure.set",
                now=now(),
                client=client,
                instrument=instrument.key,
                cadence=cadence,
            )
            return Page(redirect=f"/dashboard/clients/{client.id}#measures")

        return await run(request, work, form=True)

    @api.post("/homework/{homework_id}/reviewed")
    async def mark_reviewed(request: Request, homework_id: RowId) -> Response:
        """The review button: marks the homework reviewed in session, with the therapist's private note."""

        def work(session: Session, who: Signed, fields: dict[str, str]) -> Page:
            homework = session.get(Homework, homework_id)
            client = (
                access.own_client(session, therapist_id=who.therapist_id, client_id=homework.client_id)
                if homework
                else None
            )
            if homework is None or client is None:
                return _not_found(prompts)
            note = " ".join(fields.get("note", "").split())[:1000] or None
            review.mark(session, homework=homework, therapist_id=who.therapist_id, note=note, now=now())
            access.audit(
                session,
                actor=who.actor,
                action="dashboard.homework.review",
                now=now(),
                client=client,
                homework_id=homework.id,
            )
            return Page(redirect=f"/dashboard/clients/{client.id}#homework-{homework.id}")

        return await run(request, work, form=True)

    @api.post("/alerts/{flag_id}/ack")
    async def acknowledge(request: Request, flag_id: RowId) -> Response:
        def work(session: Session, who: Signed, fields: dict[str, str]) -> Page:
            flag = session.get(SafetyFlag, flag_id)
            client = (
                access.own_client(session, therapist_id=who.therapist_id, client_id=flag.client_id) if flag else None
            )
            if flag is None or client is None or flag.therapist_id != who.therapist_id:
                return _not_found(prompts)
            if flag.acknowledged_at is None:
                flag.acknowledged_at, flag.acknowledged_by = now(), who.therapist_id
                note = " ".join(fields.get("note", "").split())[:500]
                flag.ack_note = note or None
                session.add(flag)
                access.audit(
                    session, actor=who.actor, action="dashboard.alert.ack", now=now(), client=client, flag=flag.id
                )
            return Page(redirect=f"/dashboard/clients/{client.id}#alerts")

        return await run(request, work, form=True)

    # --- helpers needing the prompts ----------------------------------------------------------

    def _form_context(
        client: Client, fields: dict[str, str], errors: dict[str, str], notice: str | None, *, warned: bool
    ) -> dict[str, Any]:
        return {
            "client": client,
            "fields": HOMEWORK_FIELDS,
            "long_fields": _LONG_FIELDS,
            "specificity": SPECIFICITY,
            "values": fields,
            "errors": errors,
            "notice": notice,
            "warned": warned,
            "types": [(key, kind.label) for key, kind in prompts.homework_types.items()],
        }

    def _client_context(session: Session, who: Signed, client: Client) -> dict[str, Any]:
        model = build_client_digest(session, prompts=prompts, client=client, therapist=who.therapist, now=now())
        homeworks = list(reversed(q.homeworks_of(session, client_id=client.id or 0)))
        views = {h.id: h for h in model.homeworks}
        flags = list(reversed(q.flags_since(session, client_id=client.id or 0, since=client.created_at)))
        return {
            "client": client,
            "digest": model,
            "tz": who.therapist.timezone,
            "homeworks": homeworks,
            "views": views,
            "rubric": {hid: rubric(prompts, view) for hid, view in views.items() if view.debriefs},
            "specificity": SPECIFICITY,
            "agenda": _agenda_lines(model),
            "chart": adherence_chart(model),
            "flags": flags,
            "crisis": FlagLevel.CRISIS,
            "timeline": _timeline(session, client, {h.id: h for h in homeworks}),
            "plan": safety_plan.plan_of(session, client.id or 0),
            "plan_fields": SAFETY_PLAN_FIELDS,
            "plan_items": safety_plan.items,
            "measures": model.measures,
            "measure_chart": measures.chart_points(model.measures),
            "review": model.review,
            "measure_line": lambda view: measure_line(prompts, view, who.therapist.timezone),
            "instruments": measures.instruments(prompts.locale),
            "cadences": measures.CADENCES,
            "schedules": session.exec(select(MeasureSchedule).where(MeasureSchedule.client_id == client.id)).all(),
        }

    def _agenda_lines(model: Any) -> list[str]:
        lines = []
        for item in model.agenda:
            fields = dict(item.fields)
            if "missing" in fields:
                fields["missing"] = ", ".join(prompts.text(f"therapist.missing.{m}") for m in fields["missing"])
            if "text" in fields:
                fields["text"] = quote(fields["text"], 160)
            lines.append(prompts.text(f"digest.agenda.{item.key}", client=model.client, **fields))
        return lines

    def _timeline(session: Session, client: Client, homeworks: dict[int | None, Homework]) -> list[dict[str, Any]]:
        cid = client.id or 0

        def title(homework_id: int | None) -> str:
            found = homeworks.get(homework_id)
            return found.title if found else "—"

        entries: list[dict[str, Any]] = []
        for occasion in session.exec(
            select(Occasion)
            .where(Occasion.client_id == cid, col(Occasion.sent_at).is_not(None))
            .order_by(col(Occasion.sent_at).desc())
            .limit(TIMELINE_LIMIT)
        ):
            entries.append(
                {
                    "at": occasion.sent_at,
                    "kind": "nudge",
                    "title": title(occasion.homework_id),
                    "status": occasion.status,
                }
            )
        for debrief in session.exec(
            select(Debrief)
            .where(Debrief.client_id == cid, Debrief.status == DebriefStatus.COMPLETE)
            .order_by(col(Debrief.started_at).desc())
            .limit(TIMELINE_LIMIT)
        ):
            entries.append(
                {
                    "at": debrief.started_at,
                    "kind": debrief.kind,
                    "title": title(debrief.homework_id),
                    "debrief": debrief,
                }
            )
        for entry in session.exec(
            select(LogEntry)
            .where(LogEntry.client_id == cid)
            .order_by(col(LogEntry.created_at).desc())
            .limit(TIMELINE_LIMIT)
        ):
            entries.append({"at": entry.created_at, "kind": "log", "text": entry.text})
        for flag in session.exec(
            select(SafetyFlag)
            .where(SafetyFlag.client_id == cid)
            .order_by(col(SafetyFlag.created_at).desc())
            .limit(TIMELINE_LIMIT)
        ):
            entries.append({"at": flag.created_at, "kind": "flag", "flag": flag})
        entries.sort(key=lambda e: e["at"], reverse=True)
        return entries[:TIMELINE_LIMIT]

    return api


def _not_found(prompts: Any) -> Page:
    """The same answer for a client (or alert) that is missing and one that is someone else's."""
    return Page("error.html", {"message": prompts.text("web.not_found")}, status=404)


def _types(prompts: Any) -> str:
    return " · ".join(kind.label for kind in prompts.homework_types.values())
