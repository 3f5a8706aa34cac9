"""Slack Socket Mode end to end: the service's own AsyncSocketModeHandler against a local fake of Slack's WebSocket."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from bot.cli import app as cli
from bot.http import create_app
from bot.wiring import Companion
from dialogs.clock import FrozenClock
from storage import Invite, ProcessedInbound, SafetyFlag, crypto
from tests.conftest import make_companion
from tests.fake_http import made_up_token
from tests.fake_slack import block_action, slash_command
from tests.fake_slack_socket import (
    CONNECTIONS_OPEN,
    Ack,
    FakeSocketMode,
    FakeSocketModeAPI,
    command_payload,
    interaction_payload,
)
from tests.support import Chat, add_therapist, invite_code, join

SECRET = "slack-signing-secret-for-tests"
APP_TOKEN = made_up_token("slack-app")
DANA = "U0DANA"


@pytest.fixture
def fake() -> Iterator[FakeSocketModeAPI]:
    api = FakeSocketModeAPI(app_token=APP_TOKEN).start()
    yield api
    api.stop()


def socket_companion(
    url: str, clock: FrozenClock, tmp_path: Path, fake: FakeSocketModeAPI, app_token: str
) -> Companion:
    return make_companion(
        url,
        clock,
        tmp_path,
        slack={"api_base_url": fake.base_url, "messages_per_second": 1000, "per_chat_per_second": 100},
        SLACK_BOT_TOKEN=fake.token,
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_APP_TOKEN=app_token,
    )


@pytest.fixture
def service(sqlite_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeSocketModeAPI) -> Iterator[Companion]:
    companion = socket_companion(sqlite_url, clock, tmp_path, fake, APP_TOKEN)
    yield companion
    companion.db.dispose()


class Harness:
    """The service as `companion run` starts it (lifespan entered, background tasks on) and Slack's side of it."""

    def __init__(self, companion: Companion, fake: FakeSocketModeAPI) -> None:
        self.companion, self.fake = companion, fake
        self.app = create_app(companion, background=True)
        self.triggers = itertools.count(1)
        self.socket = FakeSocketMode()

    async def __aenter__(self) -> Harness:
        self.fake.socket = await self.socket.start()
        self._lifespan = self.app.router.lifespan_context(self.app)
        try:
            await self._lifespan.__aenter__()
        except BaseException:
            await self.socket.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._lifespan.__aexit__(None, None, None)
        finally:
            await self.socket.stop()

    async def command(self, text: str, *, user: str = DANA) -> Ack:
        """``/companion text`` as Slack delivers it over the socket; returns the app's ack."""
        body = slash_command("/companion", text, user_id=user, trigger_id=f"trigger.{next(self.triggers)}")
        return await self.socket.ack(await self.socket.send("slash_commands", command_payload(body)))

    async def posted(self, predicate: Callable[[str], bool], channel: str = DANA) -> str:
        """Wait (bounded) for the background sender to post a message to ``channel`` that satisfies ``predicate``."""

        def found() -> bool:
            return any(predicate(text) for text in self.fake.texts(channel))

        assert await asyncio.to_thread(self.fake.wait_for, found, 5.0), self.fake.texts(channel)
        return next(text for text in self.fake.texts(channel) if predicate(text))


def run(companion: Companion, fake: FakeSocketModeAPI, scenario: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with Harness(companion, fake) as harness:
            await scenario(harness)

    asyncio.run(main())


def link(companion: Companion, tmp_path: Path) -> str:
    """The operator's real CLI: a one-time code for Dana's Slack account."""
    config = tmp_path / "link.yaml"
    config.write_text(f"database:\n  path: {companion.settings.url.removeprefix('sqlite:///')}\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["therapist", "link", "Dana", "--slack", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return next(line.split()[-1] for line in result.output.splitlines() if line.startswith("/companion link"))


def test_commands_and_the_alert_button_over_socket_mode(
    service: Companion, fake: FakeSocketModeAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_therapist(service)
    code = link(service, tmp_path)
    assert service.slack is not None
    bolt = service.slack.app
    answered: list[tuple[dict[str, Any], int]] = []  # (payload, status) of every request bolt finished
    finished = asyncio.Event()
    dispatch = bolt.async_dispatch

    async def spy(request: Any) -> Any:
        response = await dispatch(request)
        answered.append((request.body, response.status))
        finished.set()
        return response

    async def status(payload: dict[str, Any]) -> int:
        """How bolt answered ``payload``, once it has (bounded)."""
        async with asyncio.timeout(5):
            while not any(body == payload for body, _ in answered):
                finished.clear()
                await finished.wait()
        return next(code for body, code in answered if body == payload)

    monkeypatch.setattr(bolt, "async_dispatch", spy)

    def processed() -> int:
        with service.db.unit_of_work() as session:
            return len(session.exec(select(ProcessedInbound)).all())

    async def scenario(h: Harness) -> None:
        # Start-up: a URL from apps.connections.open (the xapp- token), one connection, Slack's hello.
        assert len(fake.calls_to(CONNECTIONS_OPEN)) == 1
        assert await h.socket.wait_for(lambda: h.socket.open_connections == 1)
        assert h.socket.sent[0]["type"] == "hello" and h.socket.refused == 0

        # An unlinked Slack user gets the explanation in the ack itself, and nothing else.
        unlinked = await h.command("clients")
        assert unlinked.payload is not None and "isn't linked" in unlinked.payload["text"]
        assert fake.texts(DANA) == [] and processed() == 0

        # Linking: an empty ack, then the confirmation posted through the Web API.
        linked = await h.command(f"link {code}")
        assert linked.payload is None
        await h.posted(lambda text: "linked to therapist Dana" in text)

        # The invite code arrives in Dana's DM with the app.
        assert (await h.command("invite Sam")).payload is None
        invite = await h.posted(lambda text: "Invite for Sam" in text)
        with service.db.unit_of_work() as session:
            stored = {i.code_hash for i in session.exec(select(Invite)).all()}
            assert crypto.code_hash(invite_code(invite)) in stored  # stored only as its keyed hash

        # An envelope nothing listens to (an app_mention event): bolt answers 404, so no ack, and nothing changes.
        before = processed()
        mention = {"type": "event_callback", "team_id": "T0001", "api_app_id": "A0001", "event_id": "Ev1"}
        mention["event"] = {"type": "app_mention", "user": DANA, "text": "<@UBOT> hi", "ts": "1.0", "channel": "C1"}
        unknown = await h.socket.send("events_api", mention)
        # A command without its user (Slack never sends one): refused by its shape before any listener, no ack.
        malformed = command_payload(slash_command("/companion", "invite Mallory", trigger_id="trigger.bad"))
        del malformed["user_id"]
        bad = await h.socket.send("slash_commands", malformed)
        assert await status(mention) == 404 and await status(malformed) == 400  # refused by its shape
        # Acks travel in order on the one connection: once a later envelope is acked, none is owed for these two.
        await h.command("clients")
        await h.posted(lambda text: "Your clients:" in text and "Sam" in text)
        assert h.socket.acked(unknown) is None and h.socket.acked(bad) is None
        assert processed() == before + 1 and "Mallory" not in "\n".join(fake.texts(DANA))

        # Sam joins on the console; a crisis reaches Dana with an Acknowledge button.
        sam = join(service, Chat(service, "therapist", "Dana"), "Sam", "sam")
        sam.send("I'm going to kill myself tonight")
        await h.posted(lambda text: "URGENT" in text)
        alert = next(p for p in fake.posted(DANA) if "URGENT" in p.get("text", ""))
        button = next(b for b in alert["blocks"] if b["type"] == "actions")["elements"][0]
        assert button["action_id"] == "ack_alert" and button["value"] == "/ack 1"

        # The button tap arrives as an interactive envelope: acked, then recorded and confirmed.
        tap = block_action("ack_alert", button["value"], user_id=DANA, trigger_id="trigger.tap")
        envelope = await h.socket.send("interactive", interaction_payload(tap))
        assert h.socket.sent[-1]["accepts_response_payload"] is False
        assert (await h.socket.ack(envelope)).payload is None
        await h.posted(lambda text: "Alert #1 for Sam acknowledged" in text)

        # Slack asks the app to move: a new URL, a new connection, and commands keep working on it.
        await h.socket.disconnect()
        assert await h.socket.wait_for(lambda: h.socket.connections == 2)
        assert len(fake.calls_to(CONNECTIONS_OPEN)) == 2
        after = await h.command("invite Kim")
        assert after.connection == 2
        await h.posted(lambda text: "Invite for Kim" in text)

    run(service, fake, scenario)
    with service.db.unit_of_work() as session:
        flag = session.exec(select(SafetyFlag)).one()
        assert flag.acknowledged_at is not None and flag.acknowledged_by == 1
    assert fake.calls_to("auth.test")


def test_a_wrong_app_token_fails_start_up(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeSocketModeAPI
) -> None:
    """A revoked or mistyped SLACK_APP_TOKEN stops the service at start-up, instead of retrying forever."""
    companion = socket_companion(sqlite_url, clock, tmp_path, fake, made_up_token("slack-app"))

    async def main() -> None:
        harness = Harness(companion, fake)
        with pytest.raises(Exception, match="invalid_auth"):
            async with asyncio.timeout(5):
                await harness.__aenter__()
        assert harness.socket.connections == 0

    try:
        asyncio.run(main())
    finally:
        companion.db.dispose()
    assert [call.method for call in fake.calls] == [CONNECTIONS_OPEN]
