"""The try-it page and the dashboard in a real browser: Playwright driving Debian's Chromium against a real uvicorn.

The server runs in a thread on a socket bound before it starts (port 0), with
the test's frozen clock: the demo's "skip to the next reminder" moves that
clock, so a client's week plays in seconds without sleeping. Chromium comes
from apt (`.ci/run` installs it); a missing browser fails these tests, it
never skips them. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright

from bot.config import Settings
from bot.http import create_app
from bot.web.demo import THERAPIST
from bot.wiring import Companion, build
from dialogs import signin
from dialogs.clock import FrozenClock
from storage import queries as q
from tests.conftest import CRISIS_RESOURCES, MONDAY

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 8000


@dataclass
class Server:
    url: str
    companion: Companion
    clock: FrozenClock


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("web")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    clock = FrozenClock(MONDAY)
    settings = Settings(
        DATABASE_URL=f"sqlite:///{tmp / 'companion.db'}",
        config_dir=tmp,
        server={"host": "127.0.0.1", "port": port},
        safety={"crisis_resources": CRISIS_RESOURCES},
    )
    companion = build(settings, clock=clock)
    app = create_app(companion, run_scheduler=False, background=False)
    uv = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    # The socket listens before the thread starts: the first request queues instead of racing the start-up.
    sock.listen()
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{port}", companion, clock)
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        sock.close()
        companion.db.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is required at {CHROMIUM} for the browser tests: apt-get install chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


def shoot(page: Page, name: str, *, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)


def pane(page: Page, name: str) -> tuple[object, object]:
    return page.locator(f".pane-{name} textarea"), page.locator(f".pane-{name} .messages")


def say(page: Page, name: str, text: str) -> None:
    box = page.locator(f".pane-{name} textarea")
    box.fill(text)
    box.press("Enter")


def last(page: Page, name: str) -> object:
    return page.locator(f".pane-{name} .messages li.theirs").last


def tap(page: Page, name: str, label: str) -> None:
    """A button under the newest message of a pane (an Outbound option)."""
    last(page, name).get_by_role("button", name=label, exact=True).click()


def sign_in(page: Page, link: str) -> None:
    page.goto(link)
    page.get_by_role("button", name="Sign in").click()


def test_a_client_week_on_the_try_it_page_shows_on_the_dashboard(server: Server, browser: Browser) -> None:
    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(server.url + "/")
    expect(page.get_by_role("heading", name="Local demo")).to_be_visible()

    # Monday: the therapist invites Sam; the client pane joins with the code (the real onboarding).
    say(page, "therapist", "/invite Sam")
    expect(last(page, "therapist")).to_contain_text("Invite for Sam")
    page.get_by_role("button", name=re.compile("Join as the client with")).click()
    expect(last(page, "client")).to_contain_text("Do you agree")
    tap(page, "client", "Yes")
    expect(last(page, "client")).to_contain_text("time zone")
    say(page, "client", "London")
    expect(last(page, "client")).to_contain_text("18:00")
    say(page, "client", "6pm")
    expect(page.locator(".pane-client .messages")).to_contain_text("All set")
    expect(last(page, "therapist")).to_contain_text("Sam has joined")

    # The therapist sets homework in one message (Shift+Enter lines); it is delivered with its rationale.
    say(
        page,
        "therapist",
        "/homework Sam\ntitle: Paced breathing\nwhat: 10 minutes of paced breathing\nwhen: every evening at 18:00\n"
        "where: at home, in the bedroom\nwith whom: alone\nrecord: tension 0-10 before and after\n"
        "rationale: tension drives the worry spiral; this shows it can come down",
    )
    expect(last(page, "therapist")).to_contain_text("I've sent it to them")
    expect(last(page, "client")).to_contain_text("In your own words")
    expect(page.locator(".pane-client .messages")).to_contain_text("this shows it can come down")
    say(page, "client", "To see that the tension comes down by itself")
    expect(last(page, "client")).to_contain_text("How confident")
    tap(page, "client", "8")
    expect(last(page, "client")).to_contain_text("how important")
    tap(page, "client", "9")
    expect(last(page, "client")).to_contain_text("When you've done it")
    page.evaluate("window.scrollTo(0, 0)")
    shoot(page, "try-it.png", full_page=False)

    # Nothing is due yet; then the demo clock skips to Monday 18:00 and the reminder goes out.
    page.get_by_role("button", name="Send due reminders now").click()
    expect(page.locator("#status")).to_contain_text("0 reminder(s) sent")
    page.get_by_role("button", name="Skip to the next reminder").click()
    expect(page.locator("#status")).to_contain_text("1 reminder(s) sent")
    expect(page.locator("#clock")).to_contain_text("18:00")
    expect(last(page, "client")).to_contain_text("A reminder for “Paced breathing”")
    tap(page, "client", "Done")
    expect(last(page, "client")).to_contain_text("What happened")
    say(page, "client", "Did 10 minutes at 18:00 in the bedroom, tension went from 7 to 3")
    expect(last(page, "client")).to_contain_text("surprised")
    say(page, "client", "How quickly it dropped")
    expect(last(page, "client")).to_contain_text("hard")
    say(page, "client", "Not checking my phone")
    expect(last(page, "client")).to_contain_text("learn")
    say(page, "client", "Tension passes if I let it")
    expect(last(page, "client")).to_contain_text("How much of it did you do?")
    tap(page, "client", "4 all")
    expect(last(page, "client")).to_contain_text("saved for Demo therapist")

    # Tuesday's reminder: it didn't happen, and the obstacle is recorded (problem-solving, not scolding).
    page.get_by_role("button", name="Skip to the next reminder").click()
    expect(page.locator("#status")).to_contain_text("1 reminder(s) sent")
    expect(last(page, "client")).to_contain_text("A reminder for “Paced breathing”")
    tap(page, "client", "Didn't do it")
    expect(last(page, "client")).to_contain_text("got in the way")
    say(page, "client", "Worked late and forgot")
    expect(last(page, "client")).to_contain_text("help")
    say(page, "client", "A reminder at 17:00 instead")
    say(page, "client", "/log Slept better on Monday night")
    expect(last(page, "client")).to_contain_text("about your homework")
    tap(page, "client", "Yes")
    expect(last(page, "client")).to_contain_text("Noted")
    shoot(page, "try-it-week.png")

    # The dashboard, from the demo's button: one sign-in, then the caseload and Sam's page.
    with context.expect_page() as opened:
        page.get_by_role("button", name="Open the therapist dashboard").click()
    dashboard = opened.value
    dashboard.get_by_role("button", name="Sign in").click()
    expect(dashboard.get_by_role("heading", name="Your clients")).to_be_visible()
    expect(dashboard.locator(".caseload")).to_contain_text("Paced breathing")
    shoot(dashboard, "caseload.png")
    dashboard.get_by_role("link", name="Sam").click()
    expect(dashboard.get_by_role("heading", name="Sam", exact=True)).to_be_visible()
    body = dashboard.locator("main")
    for expected in (
        "10 minutes of paced breathing",  # the homework with its specificity
        "tension drives the worry spiral",  # and its rationale
        "To see that the tension comes down by itself",  # in the client's own words
        "Confidence: 8/10",
        "Did 10 minutes at 18:00 in the bedroom",  # the debrief in the timeline
        "Worked late and forgot",  # the obstacle
        "Slept better on Monday night",  # the log entry
        "Reminder for “Paced breathing”",  # the nudges
        "Next-session review agenda",
        "Start with what went well",
    ):
        expect(body).to_contain_text(expected)
    expect(dashboard.locator("figure.chart svg circle.dot-amount")).to_have_count(1)
    shoot(dashboard, "dashboard.png")

    # The safety plan, written in session, from the page; then the homework marked reviewed (the review loop).
    dashboard.get_by_label("Things I can do on my own").fill("cold water on my face\nthe breathing app")
    dashboard.get_by_label("People I can ask for help").fill("Alex: 07700 900123")
    dashboard.get_by_role("button", name="Save the safety plan").click()
    expect(dashboard.locator(".notice")).to_contain_text("Saved Sam's safety plan")
    expect(dashboard.locator("#plan")).to_contain_text("Safety plan: last reviewed")
    expect(dashboard.get_by_label("Things I can do on my own")).to_have_value(
        "cold water on my face\nthe breathing app"
    )
    expect(page.locator(".pane-client .messages")).to_contain_text("saved the safety plan you made together")
    dashboard.get_by_label("Review note (private to you)").fill("went well; keep the time")
    dashboard.get_by_role("button", name="Mark reviewed").click()
    expect(dashboard.locator("#homework-1")).to_contain_text("went well; keep the time")
    expect(dashboard.locator("#homework-1").get_by_role("button", name="Mark reviewed")).to_have_count(0)
    expect(dashboard.locator("#homework-1")).to_contain_text("Importance: 9/10")
    shoot(dashboard, "dashboard-clinical.png")

    # Set homework from the page: the missing specificity is named first, then "Save anyway" saves it.
    dashboard.get_by_role("link", name="Set homework").click()
    dashboard.get_by_label("Title").fill("Worry time")
    dashboard.get_by_label("What").fill("15 minutes of scheduled worry time")
    expect(dashboard.locator(".live-missing")).to_contain_text("when")
    dashboard.get_by_role("button", name="Save").click()
    expect(dashboard.locator(".notice")).to_contain_text("Missing before it's specific")
    dashboard.get_by_role("button", name="Save anyway").click()
    expect(dashboard.locator(".notice")).to_contain_text("Saved homework #2 for Sam")
    expect(dashboard.locator("main")).to_contain_text("15 minutes of scheduled worry time")

    # At phone width the pages stack into one column and stay usable.
    phone = browser.new_context(viewport=PHONE)
    small = phone.new_page()
    small.context.add_cookies(context.cookies())
    small.goto(dashboard.url)
    expect(small.get_by_role("heading", name="Sam", exact=True)).to_be_visible()
    shoot(small, "dashboard-phone.png")
    small.goto(server.url + "/")
    expect(small.locator(".pane-client .messages")).to_contain_text("Noted")
    shoot(small, "try-it-phone.png", full_page=False)
    phone.close()
    context.close()

    if os.environ.get("COMPANION_UPDATE_DOCS"):  # the README's screenshots, refreshed on request only
        docs = Path(__file__).resolve().parent.parent / "docs"
        for name in ("try-it.png", "dashboard.png"):
            shutil.copyfile(ARTIFACTS / name, docs / name)


def test_sign_in_links_are_single_use_expire_and_never_reach_another_therapists_client(
    server: Server, browser: Browser
) -> None:
    expect.set_options(timeout=TIMEOUT_MS)
    companion = server.companion
    with companion.db.unit_of_work() as session:
        demo = q.therapist_by_name(session, name=THERAPIST)
        assert demo is not None and demo.id is not None
        other = q.add_therapist(session, name="Other", timezone="Europe/Berlin", now=server.clock.now())
        robin = q.create_client(session, therapist_id=other.id or 0, name="Robin Hidden", now=server.clock.now())
        ttl = timedelta(minutes=15)
        first = signin.issue_link(session, therapist_id=demo.id, now=server.clock.now(), ttl=ttl)
        late = signin.issue_link(session, therapist_id=demo.id, now=server.clock.now(), ttl=ttl)
    link = f"{server.url}/dashboard/login?token="

    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    sign_in(page, link + first)
    expect(page.get_by_role("heading", name="Your clients")).to_be_visible()

    # Another therapist's client, by URL: the same 404 as a missing one, and nothing of theirs shown.
    response = page.goto(f"{server.url}/dashboard/clients/{robin.id}")
    assert response is not None and response.status == 404
    expect(page.locator("main")).to_contain_text("no such page")
    assert "Robin" not in page.content()

    # The same link a second time, from another browser: refused.
    again = browser.new_context(viewport=DESKTOP).new_page()
    response = again.goto(link + first)
    assert response is not None and response.status == 403
    expect(again.locator("main")).to_contain_text("expired or has been used already")
    shoot(again, "link-refused.png")
    again.context.close()

    # A link past its 15 minutes: refused.
    server.clock.advance(minutes=16)
    stale = browser.new_context(viewport=DESKTOP).new_page()
    response = stale.goto(link + late)
    assert response is not None and response.status == 403
    expect(stale.get_by_role("button", name="Sign in")).to_have_count(0)
    stale.context.close()

    # Signing out ends the session: the caseload asks to sign in again.
    page.goto(server.url + "/dashboard")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="You're signed out")).to_be_visible()
    response = page.goto(server.url + "/dashboard")
    assert response is not None and response.status == 401
    context.close()
