"""The web pages without a browser: sign-in links and sessions, ownership, CSRF, the demo's mounting and guards."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import timedelta
from html import unescape
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlmodel import select
from typer.testing import CliRunner

from bot.cli import app as cli
from bot.http import create_app
from bot.web.dashboard import COOKIE
from bot.web.demo import COOKIE as DEMO_COOKIE
from bot.wiring import Companion, WiringError
from dialogs.clock import FrozenClock, OffsetClock, SystemClock
from storage import AuditEntry, FlagLevel, Homework, MeasureSchedule, SafetyFlag, WebToken
from storage import queries as q
from tests.conftest import make_companion
from tests.support import Chat, add_therapist, join

BASE = "http://127.0.0.1"
LINK = re.compile(r"(https?://\S+/dashboard/login\?token=([\w-]+))")
SECRET_WORDS = "my brother shouted at me on the bus"


@pytest.fixture
def web(sqlite_url: str, clock: FrozenClock, tmp_path: Path) -> Iterator[tuple[Companion, TestClient]]:
    companion = make_companion(sqlite_url, clock, tmp_path)
    with TestClient(create_app(companion, background=False), base_url=BASE) as client:
        yield companion, client
    companion.db.dispose()


def main(page: str) -> str:
    found = re.search(r"<main.*</main>", page, re.S)
    assert found
    return found.group(0)


def link_from(chat: Chat) -> str:
    match = LINK.search(chat.send("/dashboard"))
    assert match, "no sign-in link"
    return match.group(2)


def signed_in(client: TestClient, token: str) -> str:
    """Sign in with a link token; returns the page's CSRF secret."""
    assert client.get("/dashboard/login", params={"token": token}).status_code == 200
    response = client.post("/dashboard/login", data={"token": token}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"
    page = client.get("/dashboard")
    assert page.status_code == 200
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match
    return match.group(1)


def setup_week(companion: Companion) -> tuple[Chat, Chat, int]:
    """Dana with Sam (joined, with a debrief's worth of words in a log) and Lee (Other's client)."""
    add_therapist(companion, "Dana")
    add_therapist(companion, "Other")
    dana = Chat(companion, "therapist", "Dana")
    sam = join(companion, dana, "Sam", "sam-phone")
    sam.send(f"/log {SECRET_WORDS}")
    sam.send("yes")
    other = Chat(companion, "therapist", "Other")
    other.send("/invite Lee Private")
    with companion.db.unit_of_work() as session:
        owner = q.therapist_by_name(session, name="Other")
        assert owner is not None
        lee = q.client_by_name(session, therapist_id=owner.id or 0, name="Lee Private")
        assert lee is not None and lee.id is not None
        return dana, sam, lee.id


def client_id(companion: Companion, therapist: str, name: str) -> int:
    with companion.db.unit_of_work() as session:
        owner = q.therapist_by_name(session, name=therapist)
        found = q.client_by_name(session, therapist_id=owner.id or 0, name=name) if owner else None
        assert found is not None and found.id is not None
        return found.id


def test_a_sign_in_link_works_once_and_starts_a_strict_http_only_session(
    web: tuple[Companion, TestClient], clock: FrozenClock
) -> None:
    companion, client = web
    dana, _, _ = setup_week(companion)
    token = link_from(dana)
    with companion.db.unit_of_work() as session:
        rows = session.exec(select(WebToken)).all()
        assert [r.kind for r in rows] == ["link"] and token not in rows[0].token_hash  # only its hash is kept
    assert client.get("/dashboard/login", params={"token": token}).status_code == 200  # looking does not use it
    response = client.post("/dashboard/login", data={"token": token}, follow_redirects=False)
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Path=/dashboard" in cookie and "Secure" not in cookie  # plain http on loopback
    caseload = client.get("/dashboard")
    assert caseload.status_code == 200 and "Sam" in caseload.text and "Lee" not in caseload.text

    # The same link again (another device): refused, and no second session.
    other = TestClient(client.app, base_url=BASE)
    assert other.get("/dashboard/login", params={"token": token}).status_code == 403
    assert other.post("/dashboard/login", data={"token": token}).status_code == 403
    assert other.get("/dashboard").status_code == 401
    with companion.db.unit_of_work() as session:
        assert len(session.exec(select(WebToken).where(WebToken.kind == "session")).all()) == 1
        actions = {e.action for e in session.exec(select(AuditEntry))}
        assert {"dashboard.link", "dashboard.signin", "dashboard.caseload.read"} <= actions


def test_an_expired_link_and_an_expired_session_are_refused(
    web: tuple[Companion, TestClient], clock: FrozenClock
) -> None:
    companion, client = web
    dana, _, _ = setup_week(companion)
    stale = link_from(dana)
    clock.advance(minutes=16)
    assert client.get("/dashboard/login", params={"token": stale}).status_code == 403
    assert client.post("/dashboard/login", data={"token": stale}).status_code == 403

    signed_in(client, link_from(dana))
    clock.advance(hours=11, minutes=59)
    assert client.get("/dashboard").status_code == 200
    clock.advance(minutes=2)  # past web.session_ttl_hours (12 h)
    response = client.get("/dashboard")
    assert response.status_code == 401 and "sign in" in response.text.lower()


def test_another_therapists_client_is_a_404_with_nothing_of_theirs(web: tuple[Companion, TestClient]) -> None:
    companion, client = web
    dana, _, lee = setup_week(companion)
    csrf = signed_in(client, link_from(dana))
    missing = client.get("/dashboard/clients/99999")
    for path in (f"/dashboard/clients/{lee}", f"/dashboard/clients/{lee}/homework"):
        response = client.get(path)
        assert response.status_code == 404 and "Lee" not in response.text and "Private" not in response.text
        assert main(response.text) == main(missing.text)  # the same answer as for a missing client: no oracle
    form = {"csrf": csrf, "title": "Intrusion", "what": "x"}
    assert client.post(f"/dashboard/clients/{lee}/homework", data=form).status_code == 404
    with companion.db.unit_of_work() as session:
        assert session.exec(select(Homework)).all() == []


def test_csrf_missing_or_wrong_is_refused_and_changes_nothing(
    web: tuple[Companion, TestClient], clock: FrozenClock
) -> None:
    companion, client = web
    dana, _, _ = setup_week(companion)
    csrf = signed_in(client, link_from(dana))
    sam = client_id(companion, "Dana", "Sam")
    with companion.db.unit_of_work() as session:
        owner = q.therapist_by_name(session, name="Dana")
        assert owner is not None
        flag = SafetyFlag(
            client_id=sam,
            therapist_id=owner.id or 0,
            level=FlagLevel.CRISIS,
            text="…",
            created_at=clock.now(),
            reasons=["test"],
        )
        session.add(flag)
        session.flush()
        flag_id = flag.id
    homework = {"title": "Breathing", "what": "10 minutes", "warned": "1"}
    for fields in ({}, {"csrf": "wrong"}, {"csrf": csrf + "x"}):
        assert client.post(f"/dashboard/clients/{sam}/homework", data={**homework, **fields}).status_code == 403
        assert client.post(f"/dashboard/alerts/{flag_id}/ack", data=fields).status_code == 403
        assert client.post("/dashboard/logout", data=fields).status_code == 403
    with companion.db.unit_of_work() as session:
        assert session.exec(select(Homework)).all() == []
        assert session.get(SafetyFlag, flag_id).acknowledged_at is None  # type: ignore[union-attr]
    assert client.get("/dashboard").status_code == 200  # still signed in

    # With the right token: the alert is acknowledged, by whom and when.
    response = client.post(
        f"/dashboard/alerts/{flag_id}/ack", data={"csrf": csrf, "note": "called"}, follow_redirects=False
    )
    assert response.status_code == 303
    with companion.db.unit_of_work() as session:
        acked = session.get(SafetyFlag, flag_id)
        assert acked is not None and acked.acknowledged_at == clock.now() and acked.ack_note == "called"


def test_sign_out_ends_the_session(web: tuple[Companion, TestClient]) -> None:
    companion, client = web
    dana, _, _ = setup_week(companion)
    csrf = signed_in(client, link_from(dana))
    cookie = client.cookies.get(COOKIE)
    response = client.post("/dashboard/logout", data={"csrf": csrf})
    assert response.status_code == 200 and "signed out" in response.text
    assert client.get("/dashboard").status_code == 401
    replay = TestClient(client.app, base_url=BASE, cookies={COOKIE: cookie or ""})
    assert replay.get("/dashboard").status_code == 401  # the old cookie is dead server-side too


def test_homework_from_the_page_names_what_is_missing_then_saves_and_delivers(
    web: tuple[Companion, TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    companion, client = web
    dana, sam_chat, _ = setup_week(companion)
    csrf = signed_in(client, link_from(dana))
    sam = client_id(companion, "Dana", "Sam")
    caplog.set_level(logging.DEBUG)
    page = client.get(f"/dashboard/clients/{sam}")
    assert page.status_code == 200 and SECRET_WORDS in page.text  # the log entry, in the body only
    fields = {"csrf": csrf, "title": "Bus ride", "what": "ride two stops", "type": "exposure", "due": "in 5 days"}
    first = client.post(f"/dashboard/clients/{sam}/homework", data=fields)
    assert (
        first.status_code == 200
        and "Missing before it's specific" in unescape(first.text)
        and 'name="warned"' in first.text
    )
    bad = client.post(f"/dashboard/clients/{sam}/homework", data={**fields, "due": "someday never"})
    assert bad.status_code == 422 and "couldn't read that as a future date" in unescape(bad.text)
    with companion.db.unit_of_work() as session:
        assert session.exec(select(Homework)).all() == []
    saved = client.post(f"/dashboard/clients/{sam}/homework", data={**fields, "warned": "1"}, follow_redirects=False)
    assert saved.status_code == 303
    location = saved.headers["location"]
    assert location.startswith(f"/dashboard/clients/{sam}?saved=") and "Bus" not in location
    assert "I've sent it to them" in unescape(client.get(location).text)
    assert "New homework from Dana: Bus ride" in sam_chat.open()
    with companion.db.unit_of_work() as session:
        homework = session.exec(select(Homework)).one()
        assert homework.type == "exposure" and homework.due is not None and homework.delivered_at is not None
        actions = [e.action for e in session.exec(select(AuditEntry).where(AuditEntry.client_id == sam))]
        assert "dashboard.client.read" in actions and "dashboard.homework.set" in actions
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET_WORDS not in logged and "ride two stops" not in logged


def test_the_cli_prints_a_working_link(web: tuple[Companion, TestClient], tmp_path: Path) -> None:
    companion, client = web
    add_therapist(companion, "Dana")
    config = tmp_path / "config.yaml"
    config.write_text(f"database:\n  path: {companion.settings.sqlite_path}\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["dashboard-link", "Dana", "--config", str(config)])
    assert result.exit_code == 0, result.output
    match = LINK.search(result.output)
    assert match and match.group(1).startswith("http://127.0.0.1:8080/dashboard/login?token=")
    signed_in(client, match.group(2))
    assert CliRunner().invoke(cli, ["dashboard-link", "Nobody", "--config", str(config)]).exit_code == 1


def test_cookies_are_secure_behind_https(sqlite_url: str, clock: FrozenClock, tmp_path: Path) -> None:
    companion = make_companion(sqlite_url, clock, tmp_path, web={"base_url": "https://companion.example.org/"})
    add_therapist(companion, "Dana")
    dana = Chat(companion, "therapist", "Dana")
    token = link_from(dana)
    assert "https://companion.example.org/dashboard/login?token=" in dana.send("/dashboard")
    with TestClient(create_app(companion, background=False), base_url="https://companion.example.org") as client:
        response = client.post("/dashboard/login", data={"token": token}, follow_redirects=False)
        assert "Secure" in response.headers["set-cookie"]
    companion.db.dispose()


# --- the demo ----------------------------------------------------------------------


def demo_settings(**web: Any) -> dict[str, Any]:
    return {"web": web} if web else {}


def test_the_demo_is_served_only_without_a_platform_or_when_asked(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path
) -> None:
    with_slack = {"SLACK_BOT_TOKEN": "xoxb-test", "SLACK_SIGNING_SECRET": "s" * 32}
    cases: list[tuple[dict[str, Any], int]] = [
        ({}, 200),
        (with_slack, 404),
        ({**with_slack, "web": {"demo": True}}, 200),
        ({"web": {"demo": False}}, 404),
    ]
    for overrides, status in cases:
        companion = make_companion(sqlite_url, clock, tmp_path, **overrides)
        app = create_app(companion, background=False)
        response = TestClient(app, base_url=BASE).get("/")
        assert response.status_code == status, overrides
        assert TestClient(app, base_url=BASE).get("/dashboard").status_code == 401  # the dashboard always is
        companion.db.dispose()


def test_the_demo_refuses_a_public_host_unless_explicitly_allowed(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    companion = make_companion(sqlite_url, clock, tmp_path, server={"host": "0.0.0.0"})
    with pytest.raises(WiringError, match="not loopback"):
        create_app(companion, background=False)
    companion.db.dispose()
    off = make_companion(sqlite_url, clock, tmp_path, server={"host": "0.0.0.0"}, web={"demo": False})
    create_app(off, background=False)  # a public host without the demo is fine
    off.db.dispose()
    public = make_companion(sqlite_url, clock, tmp_path, server={"host": "0.0.0.0"}, web={"demo_public": True})
    assert TestClient(create_app(public, background=False), base_url="http://10.0.0.5").get("/").status_code == 200
    public.db.dispose()
    # `companion run --host` is checked the same way, before anything listens.
    config = tmp_path / "config.yaml"
    config.write_text("database:\n  path: cli.db\n", encoding="utf-8")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn must not start"))
    result = CliRunner().invoke(cli, ["run", "--host", "0.0.0.0", "--config", str(config)])
    assert result.exit_code == 2 and "not loopback" in result.output


def test_the_demo_needs_its_cookie_a_local_host_and_json(web: tuple[Companion, TestClient]) -> None:
    _, client = web
    message = {"pane": "therapist", "text": "/invite Sam", "id": "m1"}
    assert client.post("/demo/send", json=message).status_code == 403  # no demo cookie: not opened here
    page = client.get("/")
    assert page.status_code == 200 and "Local demo" in page.text
    cookie = page.headers["set-cookie"]
    assert DEMO_COOKIE in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert client.post("/demo/send", data={"pane": "therapist", "text": "x", "id": "m0"}).status_code == 415
    rebound = client.post("/demo/send", json=message, headers={"host": "evil.example"})
    assert rebound.status_code == 403
    assert client.post("/demo/send", json=message).status_code == 200
    assert client.post("/demo/send", json=message).status_code == 200  # a retried post is handled once
    shown = client.get("/demo/messages", params={"pane": "therapist"}).json()["messages"]
    assert len(shown) == 1 and "Invite for Sam" in shown[0]["text"]
    # Fetching marks them sent; asking after the last id gives nothing new, asking from 0 the history again.
    assert client.get("/demo/messages", params={"pane": "therapist", "after": shown[0]["id"]}).json()["messages"] == []
    assert len(client.get("/demo/messages", params={"pane": "therapist"}).json()["messages"]) == 1
    code = re.search(r"/start ([A-Z0-9]{8})", shown[0]["text"])
    assert code
    client.post("/demo/send", json={"pane": "client", "text": f"/start {code.group(1)}", "id": "c1"})
    consent = client.get("/demo/messages", params={"pane": "client"}).json()["messages"][-1]
    assert [o["value"] for o in consent["options"]] == ["yes", "no"]  # buttons, whose value is sent back as text


def test_skipping_ahead_moves_the_clock_to_the_next_reminder_and_sweeps(web: tuple[Companion, TestClient]) -> None:
    _, client = web
    client.get("/")
    nothing = client.post("/demo/skip", json={})
    assert nothing.status_code == 200 and "No reminders are planned" in nothing.json()["status"]
    swept = client.post("/demo/sweep", json={})
    assert "0 reminder(s) sent" in swept.json()["status"]
    assert client.post("/demo/sweep", data={}).status_code == 415


def test_the_demo_clock_only_moves_forward() -> None:
    clock = OffsetClock(SystemClock())
    before = clock.now()
    later = clock.advance(hours=5)
    assert later - before >= timedelta(hours=5)
    assert clock.advance(hours=-3) >= later


def test_pages_carry_security_headers_and_webhooks_do_not(web: tuple[Companion, TestClient]) -> None:
    """No framing, no inline scripts, no Referer leak of a sign-in link, nothing cached; /healthz untouched."""
    _, client = web
    page = client.get("/dashboard")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    health = client.get("/healthz")
    assert "content-security-policy" not in health.headers


def test_the_safety_plan_and_the_review_mark_from_the_page(web: tuple[Companion, TestClient]) -> None:
    companion, client = web
    dana, sam_chat, lee = setup_week(companion)
    csrf = signed_in(client, link_from(dana))
    sam = client_id(companion, "Dana", "Sam")
    page = unescape(client.get(f"/dashboard/clients/{sam}").text)
    assert "Safety plan: none yet" in page and "1. Warning signs" in page
    plan = {"csrf": csrf, "coping": "cold water on my face\nthe breathing app", "people": "Alex: 07700 900123"}
    saved = client.post(f"/dashboard/clients/{sam}/plan", data=plan, follow_redirects=False)
    assert saved.status_code == 303 and "water" not in saved.headers["location"]
    assert "Saved Sam's safety plan" in unescape(client.get(saved.headers["location"]).text)
    assert "saved the safety plan you made together" in sam_chat.open()
    assert "• the breathing app" in sam_chat.send("/plan")
    # Another therapist's client, and a form without the CSRF secret, change nothing.
    assert client.post(f"/dashboard/clients/{lee}/plan", data={**plan, "coping": "x"}).status_code == 404
    assert client.post(f"/dashboard/clients/{sam}/plan", data={"coping": "x"}).status_code == 403

    dana.send(
        "/homework Sam\ntitle: Walk\nwhat: a walk\nwhen: 10:00\nwhere: park\nwith whom: alone\n"
        "record: mood\nrationale: mood"
    )
    sam_chat.open()
    for answer in ("it helps", "8", "9"):
        sam_chat.send(answer)
    with companion.db.unit_of_work() as session:
        homework_id = session.exec(select(Homework.id)).one()
    page = unescape(client.get(f"/dashboard/clients/{sam}").text)
    assert "Importance: 9/10" in page and f'action="/dashboard/homework/{homework_id}/reviewed"' in page
    marked = client.post(
        f"/dashboard/homework/{homework_id}/reviewed", data={"csrf": csrf, "note": "went well"}, follow_redirects=False
    )
    assert marked.status_code == 303
    page = unescape(client.get(f"/dashboard/clients/{sam}").text)
    assert "Reviewed " in page and ": went well" in page
    with companion.db.unit_of_work() as session:
        homework = session.get(Homework, homework_id)
        assert homework is not None and homework.review_note == "went well" and homework.reviewed_at is not None
        actions = [e.action for e in session.exec(select(AuditEntry).where(AuditEntry.client_id == sam))]
        assert "dashboard.plan.set" in actions and "dashboard.homework.review" in actions
    overview = unescape(client.get("/dashboard").text)
    assert "Safety plan" in overview
    # A questionnaire asked from the page, with the chat's rules.
    asked = client.post(
        f"/dashboard/clients/{sam}/measure", data={"csrf": csrf, "instrument": "phq9", "cadence": "weekly"}
    )
    assert "PHQ-9: every week · next" in unescape(asked.text)
    assert client.post(f"/dashboard/clients/{sam}/measure", data={"csrf": csrf, "instrument": "x"}).status_code == 422
    with companion.db.unit_of_work() as session:
        assert session.exec(select(MeasureSchedule)).one().cadence == "weekly"
