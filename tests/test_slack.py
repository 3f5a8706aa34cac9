"""Slack end to end: real signed requests to /slack/events, the real slack_sdk against a local fake Web API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select
from typer.testing import CliRunner

from bot.cli import app as cli
from bot.http import create_app
from bot.wiring import Companion
from dialogs.clock import FrozenClock
from storage import Homework, Identity, ProcessedInbound, SafetyFlag
from tests.conftest import make_companion
from tests.fake_slack import FakeSlackAPI, block_action, sign, slash_command, view_submission
from tests.support import Chat, add_therapist, join

SECRET = "slack-signing-secret-for-tests"
DANA = "U0DANA"


@pytest.fixture
def fake() -> Iterator[FakeSlackAPI]:
    api = FakeSlackAPI().start()
    yield api
    api.stop()


@pytest.fixture
def service(sqlite_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeSlackAPI) -> Iterator[Companion]:
    companion = make_companion(
        sqlite_url,
        clock,
        tmp_path,
        slack={"api_base_url": fake.base_url, "messages_per_second": 1000, "per_chat_per_second": 100},
        SLACK_BOT_TOKEN=fake.token,
        SLACK_SIGNING_SECRET=SECRET,
    )
    yield companion
    companion.db.dispose()


class Harness:
    def __init__(self, companion: Companion) -> None:
        self.companion = companion
        self.app = create_app(companion, background=False)
        self.triggers = iter(range(1, 10_000))

    async def __aenter__(self) -> Harness:
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://service")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self._lifespan.__aexit__(None, None, None)

    async def post(self, body: bytes, *, headers: dict[str, str] | None = None, signed: bool = True) -> httpx.Response:
        all_headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if signed:
            all_headers.update(sign(body, SECRET, int(time.time())))
        all_headers.update(headers or {})
        return await self.http.post("/slack/events", content=body, headers=all_headers)

    async def command(self, command: str, text: str, user: str = DANA, **kwargs: Any) -> httpx.Response:
        trigger = kwargs.pop("trigger_id", f"trigger.{next(self.triggers)}")
        response = await self.post(slash_command(command, text, user_id=user, trigger_id=trigger), **kwargs)
        await self.deliver()
        return response

    async def deliver(self) -> None:
        sender = self.app.state.senders["slack"]
        while await sender.drain_once():
            pass


def run(companion: Companion, scenario: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with Harness(companion) as harness:
            await scenario(harness)

    asyncio.run(main())


def link(companion: Companion, tmp_path: Path) -> str:
    """The operator's real CLI: a one-time code for Dana's Slack account."""
    config = tmp_path / "link.yaml"
    config.write_text(f"database:\n  path: {companion.settings.url.removeprefix('sqlite:///')}\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["therapist", "link", "Dana", "--slack", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return next(line.split()[-1] for line in result.output.splitlines() if line.startswith("/companion link"))


def texts(fake: FakeSlackAPI, channel: str = DANA) -> str:
    return "\n".join(fake.texts(channel))


def test_link_invite_homework_modal_digest_and_alert(
    service: Companion, fake: FakeSlackAPI, tmp_path: Path, clock: FrozenClock
) -> None:
    add_therapist(service)
    code = link(service, tmp_path)
    sam_chat: dict[str, Chat] = {}

    async def scenario(h: Harness) -> None:
        # An unlinked Slack user learns how to link, and nothing else.
        response = await h.command("/companion", "clients")
        assert response.status_code == 200 and "isn't linked" in response.text
        assert (await h.command("/companion", f"link {code}")).status_code == 200
        assert "linked to therapist Dana" in texts(fake)

        # Invite: the code arrives in Dana's DM with the app.
        await h.command("/companion", "invite Sam")
        assert "Invite for Sam" in texts(fake)
        dana_console = Chat(service, "therapist", "Dana")
        sam_chat["sam"] = join(service, dana_console, "Sam", "sam")  # Sam joins on the console
        await h.deliver()
        assert "Sam has joined" in texts(fake)

        # The homework modal lists only Dana's own clients.
        await h.command("/homework", "")
        (opened,) = [v for v in fake.views]
        client_block = next(b for b in opened["blocks"] if b.get("block_id") == "client")
        assert [o["value"] for o in client_block["element"]["options"]] == ["Sam"]

        # Submitted without a title: an inline error, nothing saved.
        values = {
            "client": {"value": {"type": "static_select", "selected_option": {"value": "Sam"}}},
            "title": {"value": {"type": "plain_text_input", "value": ""}},
        }
        missing_title = await h.post(view_submission("homework_modal", values, user_id=DANA))
        assert missing_title.json()["response_action"] == "errors" and "title" in missing_title.json()["errors"]

        # With a title but not specific: the modal names what is missing once...
        values["title"] = {"value": {"type": "plain_text_input", "value": "Breathing"}}
        values["what"] = {"value": {"type": "plain_text_input", "value": "10 minutes paced breathing"}}
        warned = await h.post(view_submission("homework_modal", values, user_id=DANA))
        body = warned.json()
        assert body["response_action"] == "update"
        assert "Missing before it's specific: when, where, with whom" in json.dumps(body["view"])
        # ...and saves anyway when submitted again.
        saved = await h.post(
            view_submission("homework_modal", values, user_id=DANA, private_metadata="warned", view_id="V2")
        )
        assert saved.status_code == 200 and saved.text in ("", "{}", "null")
        await h.deliver()
        assert "Saved homework #1 for Sam" in texts(fake)
        assert "New homework from Dana: Breathing" in sam_chat["sam"].open()

        # A debrief, then the digest arrives as Block Kit with the adherence chart attached.
        for answer in (
            "it calms me",
            "8",
            "8",
            "done",
            "Breathed for 10 minutes at 9pm in bed",
            "it was easy",
            "staying awake",
            "slower breathing helps",
            "4",
        ):
            sam_chat["sam"].send(answer)
        await h.command("/companion", "digest Sam")
        digest_posts = [p for p in fake.posted(DANA) if p.get("blocks") and "Digest for Sam" in json.dumps(p["blocks"])]
        assert digest_posts and digest_posts[0]["blocks"][0]["type"] == "header"
        assert "Breathed for 10 minutes at 9pm in bed" in json.dumps(digest_posts)
        (chart,) = fake.uploads
        assert chart["filename"].endswith(".png") and bytes(chart["bytes"])[:8] == b"\x89PNG\r\n\x1a\n"

        # A crisis from Sam reaches Dana with an Acknowledge button that works.
        sam_chat["sam"].send("I'm going to kill myself tonight")
        await h.deliver()
        alert = next(p for p in fake.posted(DANA) if "URGENT" in p.get("text", ""))
        button = next(b for b in alert["blocks"] if b["type"] == "actions")["elements"][0]
        assert button["action_id"] == "ack_alert" and button["value"] == "/ack 1"
        await h.post(block_action("ack_alert", button["value"], user_id=DANA))
        await h.deliver()
        assert "Alert #1 for Sam acknowledged" in texts(fake)
        assert len(fake.calls_to("views.open")) == 1 and fake.calls_to("auth.test")

    run(service, scenario)
    with service.db.unit_of_work() as session:
        assert session.exec(select(Homework)).one().title == "Breathing"
        flag = session.exec(select(SafetyFlag)).one()
        assert flag.acknowledged_at is not None and flag.acknowledged_by == 1
        assert session.exec(select(Identity).where(Identity.channel == "slack")).one().therapist_id == 1


@pytest.mark.parametrize("how", ["unsigned", "forged", "stale"])
def test_unverified_requests_are_401_and_touch_nothing(service: Companion, fake: FakeSlackAPI, how: str) -> None:
    add_therapist(service)

    async def scenario(h: Harness) -> None:
        body = slash_command("/companion", "link ABCDEFGH", user_id=DANA, trigger_id="t.x")
        if how == "unsigned":
            response = await h.post(body, signed=False)
        elif how == "forged":
            response = await h.post(body, headers=sign(body, "not-the-secret", int(time.time())))
        else:
            response = await h.post(body, headers=sign(body, SECRET, int(time.time()) - 6 * 60))
        assert response.status_code == 401

    run(service, scenario)
    with service.db.unit_of_work() as session:
        assert session.exec(select(ProcessedInbound)).first() is None
    assert fake.calls_to("chat.postMessage") == []


def test_a_crafted_submission_for_another_therapists_client_is_refused(
    service: Companion, fake: FakeSlackAPI, tmp_path: Path
) -> None:
    add_therapist(service)
    add_therapist(service, "Eli")
    join(service, Chat(service, "therapist", "Eli"), "Kim", "kim")
    code = link(service, tmp_path)

    async def scenario(h: Harness) -> None:
        await h.command("/companion", f"link {code}")
        values = {
            "client": {"value": {"type": "static_select", "selected_option": {"value": "Kim"}}},
            "title": {"value": {"type": "plain_text_input", "value": "Sneaky"}},
        }
        response = await h.post(view_submission("homework_modal", values, user_id=DANA, private_metadata="warned"))
        assert response.json()["response_action"] == "errors"
        assert "your own clients" in response.json()["errors"]["client"]

    run(service, scenario)
    with service.db.unit_of_work() as session:
        assert session.exec(select(Homework)).first() is None


def test_a_retried_command_is_processed_once(service: Companion, fake: FakeSlackAPI, tmp_path: Path) -> None:
    add_therapist(service)
    code = link(service, tmp_path)

    async def scenario(h: Harness) -> None:
        await h.command("/companion", f"link {code}")
        before = len(fake.texts(DANA))
        await h.command("/companion", "invite Sam", trigger_id="same.trigger")
        await h.command(
            "/companion",
            "invite Sam",
            trigger_id="same.trigger",
            headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"},
        )
        assert len(fake.texts(DANA)) == before + 1

    run(service, scenario)


def test_a_429_is_retried_after_retry_after(
    service: Companion, fake: FakeSlackAPI, tmp_path: Path, clock: FrozenClock
) -> None:
    add_therapist(service)
    code = link(service, tmp_path)

    async def scenario(h: Harness) -> None:
        await h.command("/companion", f"link {code}")
        before = len(fake.texts(DANA))
        fake.fail_next("chat.postMessage", error="ratelimited", status=429, retry_after=20)
        await h.command("/companion", "clients")
        assert len(fake.texts(DANA)) == before
        clock.advance(seconds=20)
        await h.deliver()
        assert "no clients yet" in fake.texts(DANA)[-1]

    run(service, scenario)


def test_slack_without_a_signing_secret_refuses_to_start(sqlite_url: str, clock: FrozenClock, tmp_path: Path) -> None:
    from bot.config import Settings
    from bot.wiring import WiringError, build

    with pytest.raises(WiringError, match="SLACK_SIGNING_SECRET"):
        build(Settings(DATABASE_URL=sqlite_url, config_dir=tmp_path, SLACK_BOT_TOKEN="xoxb-x"), clock=clock)


def test_the_safety_plan_modal_sets_the_plan_the_client_reads(
    service: Companion, fake: FakeSlackAPI, tmp_path: Path
) -> None:
    add_therapist(service)
    add_therapist(service, "Eli")
    join(service, Chat(service, "therapist", "Eli"), "Kim", "kim")
    code = link(service, tmp_path)
    sam: dict[str, Chat] = {}

    async def scenario(h: Harness) -> None:
        await h.command("/companion", f"link {code}")
        sam["chat"] = join(service, Chat(service, "therapist", "Dana"), "Sam", "sam")
        await h.command("/plan", "Sam")
        (opened,) = fake.views
        client_block = next(b for b in opened["blocks"] if b.get("block_id") == "client")
        assert [o["value"] for o in client_block["element"]["options"]] == ["Sam"]
        assert client_block["element"]["initial_option"]["value"] == "Sam"
        assert [b["block_id"] for b in opened["blocks"] if b["type"] == "input"][1:] == [
            "warning_signs",
            "coping",
            "distractions",
            "people",
            "professionals",
            "environment",
        ]

        def text(value: str) -> dict[str, Any]:
            return {"value": {"type": "plain_text_input", "value": value}}

        values = {
            "client": {"value": {"type": "static_select", "selected_option": {"value": "Sam"}}},
            "coping": text("cold water on my face\nthe breathing app"),
            "people": text("Alex (sister): 07700 900123"),
        }
        # A crafted submission for another therapist's client is refused.
        crafted = {**values, "client": {"value": {"type": "static_select", "selected_option": {"value": "Kim"}}}}
        refused = await h.post(view_submission("plan_modal", crafted, user_id=DANA))
        assert refused.json()["response_action"] == "errors"
        saved = await h.post(view_submission("plan_modal", values, user_id=DANA, view_id="VP1"))
        assert saved.status_code == 200
        await h.deliver()
        assert "Saved Sam's safety plan" in texts(fake)
        # Opened again, the modal shows the plan so far.
        await h.command("/plan", "sam")
        again = fake.views[-1]
        coping = next(b for b in again["blocks"] if b.get("block_id") == "coping")
        assert coping["element"]["initial_value"] == "cold water on my face\nthe breathing app"

    run(service, scenario)
    mine = sam["chat"].send("/plan")
    assert "• cold water on my face" in mine and "• the breathing app" in mine and "• Alex (sister)" in mine
    with service.db.unit_of_work() as session:
        from storage import SafetyPlan

        assert session.exec(select(SafetyPlan)).one().client_id != 0
