"""Telegram end to end: the real python-telegram-bot client against a local fake Bot API.

Webhook mode posts real-format updates to the service's webhook (with and
without the secret); polling mode feeds the fake's getUpdates. Outbound goes
through the real outbox sender. Nothing needs the internet.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from bot.http import create_app
from bot.wiring import Companion
from channels.base import split_text
from channels.sender import RateLimiter
from channels.telegram import render
from dialogs.clock import FrozenClock
from dialogs.messages import Option, Outbound
from storage import Client, Debrief, DebriefStatus, OutboxMessage, ProcessedInbound
from tests.conftest import make_companion
from tests.fake_telegram import (
    FakeBotAPI,
    callback_update,
    edited_message_update,
    group_message_update,
    message_update,
    my_chat_member_update,
    photo_update,
    sticker_update,
)
from tests.support import Chat, add_therapist, invite_code

SECRET = "hook-secret-for-tests"
WEBHOOK = "https://companion.example.org/telegram/hook"
SAM = 1001


@pytest.fixture
def fake() -> Iterator[FakeBotAPI]:
    api = FakeBotAPI().start()
    yield api
    api.stop()


def telegram_companion(url: str, clock: FrozenClock, tmp_path: Path, fake: FakeBotAPI, *, webhook: bool) -> Companion:
    return make_companion(
        url,
        clock,
        tmp_path,
        telegram={
            "api_base_url": fake.base_url,
            "webhook_url": WEBHOOK if webhook else None,
            "polling_timeout": 0,
            "request_timeout": 1,
            "messages_per_second": 1000,
            "per_chat_per_second": 100,
        },
        TELEGRAM_BOT_TOKEN=fake.token,
        TELEGRAM_WEBHOOK_SECRET=SECRET,
    )


class Harness:
    """One running service (lifespan entered, no background tasks) and a Telegram user's view of it."""

    def __init__(self, companion: Companion, fake: FakeBotAPI, *, webhook: bool) -> None:
        self.companion, self.fake, self.webhook = companion, fake, webhook
        self.app = create_app(companion, background=False)
        self.update_ids = itertools.count(1)
        self.offset: int | None = None
        self._seen: dict[int, int] = {}

    async def __aenter__(self) -> Harness:
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://service")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self._lifespan.__aexit__(None, None, None)

    async def post(self, update: dict[str, Any], *, secret: str | None = SECRET) -> httpx.Response:
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
        return await self.http.post("/telegram/hook", json=update, headers=headers)

    async def receive(self, update: dict[str, Any]) -> None:
        """Deliver an update the way the configured mode does."""
        if self.webhook:
            response = await self.post(update)
            assert response.status_code == 200, response.text
        else:
            self.fake.queue_update(update)
            assert self.companion.telegram is not None
            self.offset = await self.companion.telegram.poll_once(self.offset, timeout=0)

    async def deliver(self) -> None:
        sender = self.app.state.senders["telegram"]
        while await sender.drain_once():
            pass

    async def say(self, chat: int, text: str) -> str:
        await self.receive(message_update(next(self.update_ids), chat, text))
        return await self.new_texts(chat)

    async def tap(self, chat: int, data: str) -> str:
        await self.receive(callback_update(next(self.update_ids), chat, data))
        return await self.new_texts(chat)

    async def new_texts(self, chat: int) -> str:
        await self.deliver()
        texts = self.fake.texts(chat)
        fresh = texts[self._seen.get(chat, 0) :]
        self._seen[chat] = len(texts)
        return "\n".join(fresh)


def run(companion: Companion, fake: FakeBotAPI, webhook: bool, scenario: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with Harness(companion, fake, webhook=webhook) as harness:
            await scenario(harness)

    asyncio.run(main())


@pytest.mark.parametrize("webhook", [True, False], ids=["webhook", "polling"])
def test_a_client_week_over_telegram(
    db_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeBotAPI, webhook: bool
) -> None:
    companion = telegram_companion(db_url, clock, tmp_path, fake, webhook=webhook)
    add_therapist(companion)
    dana = Chat(companion, "therapist", "Dana")

    async def week(h: Harness) -> None:
        if webhook:
            assert fake.webhook is not None and fake.webhook["secret_token"] == SECRET
            assert fake.webhook["url"] == WEBHOOK
        else:
            assert fake.calls_to("deleteWebhook")
        invite = dana.send("/invite Sam")
        code = invite_code(invite)
        assert f"https://t.me/{fake.username}?start={code}" in invite
        dana.send(
            "/homework Sam\ntitle: Thought record\ntype: thought record\nwhat: columns 1-3 when anxious\n"
            "when: when anxiety is above 50\nwhere: wherever I am\nwith whom: alone\nrecord: emotion 0-100\n"
            "rationale: catching the hot thought is the first step to testing it"
        )
        consent = await h.say(SAM, f"/start {code}")
        assert "automated assistant, not a person" in consent
        keyboard = fake.sent(SAM)[-1]["reply_markup"]["inline_keyboard"]
        assert [b["callback_data"] for row in keyboard for b in row] == ["yes", "no"]
        assert "time zone" in await h.tap(SAM, "yes")
        assert fake.calls_to("answerCallbackQuery")
        await h.say(SAM, "Edinburgh")
        delivered = await h.say(SAM, "6pm")
        assert "New homework from Dana: Thought record" in delivered and "In your own words" in delivered
        assert "How confident" in await h.say(SAM, "to catch the thought before it runs away")
        scale = fake.sent(SAM)[-1]["reply_markup"]["inline_keyboard"]
        assert [b["callback_data"] for row in scale for b in row] == [str(n) for n in range(11)]
        assert "how important" in (await h.tap(SAM, "9")).casefold()
        assert "send “done”" in await h.tap(SAM, "8")

        clock.advance(days=2)
        assert "What happened" in await h.say(SAM, "done")
        await h.say(SAM, "Meeting at work, boss frowned")
        await h.say(SAM, "The thought was weaker written down")
        await h.say(SAM, "Finding the hot thought")
        await h.say(SAM, "It's a thought, not a fact")
        await h.say(SAM, "80")
        assert "How much of it" in await h.say(SAM, "40")
        assert "saved for Dana" in await h.tap(SAM, "4")

    run(companion, fake, webhook, week)
    digest = dana.send("/digest Sam")
    assert "“Meeting at work, boss frowned”" in digest and "emotion before 80" in digest
    with companion.db.unit_of_work() as session:
        assert session.exec(select(Debrief)).one().status == DebriefStatus.COMPLETE
        assert all(m.sent_at for m in session.exec(select(OutboxMessage).where(OutboxMessage.channel == "telegram")))
    companion.db.dispose()


@pytest.fixture
def service(sqlite_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeBotAPI) -> Iterator[Companion]:
    companion = telegram_companion(sqlite_url, clock, tmp_path, fake, webhook=True)
    yield companion
    companion.db.dispose()


def joined(companion: Companion) -> Callable[[Harness], Awaitable[None]]:
    """A scenario prefix: Dana exists, Sam joined on Telegram (chat 1001)."""

    async def prefix(h: Harness) -> None:
        add_therapist(companion)
        code = invite_code(Chat(companion, "therapist", "Dana").send("/invite Sam"))
        for step in (f"/start {code}", "yes", "London", "6pm"):
            await h.say(SAM, step)

    return prefix


@pytest.mark.parametrize(("secret", "status"), [(None, 401), ("wrong", 403), ("", 403)])
def test_the_webhook_refuses_a_missing_or_wrong_secret_without_touching_state(
    service: Companion, fake: FakeBotAPI, secret: str | None, status: int
) -> None:
    async def scenario(h: Harness) -> None:
        response = await h.post(message_update(1, SAM, "/start ABCDEFGH"), secret=secret)
        assert response.status_code == status
        await h.deliver()

    run(service, fake, True, scenario)
    assert fake.calls_to("sendMessage") == []
    with service.db.unit_of_work() as session:
        assert session.exec(select(ProcessedInbound)).first() is None


def test_a_webhook_without_a_configured_secret_refuses_to_start(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeBotAPI
) -> None:
    from bot.config import Settings
    from bot.wiring import WiringError, build

    settings = Settings(
        DATABASE_URL=sqlite_url,
        config_dir=tmp_path,
        telegram={"api_base_url": fake.base_url, "webhook_url": WEBHOOK},
        TELEGRAM_BOT_TOKEN=fake.token,
    )
    with pytest.raises(WiringError, match="TELEGRAM_WEBHOOK_SECRET"):
        build(settings, clock=clock)


def test_bad_bodies_are_400(service: Companion, fake: FakeBotAPI) -> None:
    async def scenario(h: Harness) -> None:
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
        assert (await h.http.post("/telegram/hook", content=b"{nope", headers=headers)).status_code == 400
        assert (await h.http.post("/telegram/hook", json=[1, 2], headers=headers)).status_code == 400

    run(service, fake, True, scenario)


def test_a_lone_surrogate_in_a_message_is_dropped_not_a_server_error(service: Companion, fake: FakeBotAPI) -> None:
    """JSON may carry "\\ud800", which UTF-8 cannot: a 500 would make Telegram redeliver it forever."""

    async def scenario(h: Harness) -> None:
        await joined(service)(h)
        update = message_update(90, SAM, "/log tired \ud800 today")
        response = await h.http.post(
            "/telegram/hook",
            content=json.dumps(update).encode(),
            headers={"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"},
        )
        assert response.status_code == 200

    run(service, fake, True, scenario)
    with service.db.unit_of_work() as session:
        assert session.exec(select(ProcessedInbound)).all()


def test_a_redelivered_update_is_processed_once(service: Companion, fake: FakeBotAPI) -> None:
    async def scenario(h: Harness) -> None:
        update = message_update(77, SAM, "hello")
        assert (await h.post(update)).status_code == 200
        assert (await h.post(update)).status_code == 200
        await h.deliver()
        assert len(fake.texts(SAM)) == 1

    run(service, fake, True, scenario)


def test_groups_are_left_with_an_explanation(service: Companion, fake: FakeBotAPI) -> None:
    async def scenario(h: Harness) -> None:
        await h.receive(group_message_update(5, -500, "hi bot"))
        await h.receive(my_chat_member_update(6, -600, new_status="member", chat_type="group"))
        await h.deliver()

    run(service, fake, True, scenario)
    assert "only work in a private chat" in fake.texts(-500)[0]
    assert {c.params["chat_id"] for c in fake.calls_to("leaveChat")} == {-500, -600}


def test_photos_captions_stickers_and_edits(service: Companion, fake: FakeBotAPI) -> None:
    async def scenario(h: Harness) -> None:
        await joined(service)(h)
        await h.receive(photo_update(50, SAM, caption="/log walked to the shop and back"))
        assert "Noted" in await h.new_texts(SAM)  # the caption is read as the message
        await h.receive(sticker_update(51, SAM))
        assert "I can only read text" in await h.new_texts(SAM)
        await h.receive(edited_message_update(52, SAM, "actually I meant 7pm"))
        assert await h.new_texts(SAM) == ""  # an edit is never re-read as an answer...
        await h.receive(edited_message_update(53, SAM, "I'm going to kill myself tonight"))
        assert "not monitored in real time" in await h.new_texts(SAM)  # ...but it is screened

    run(service, fake, True, scenario)


def test_a_blocked_bot_marks_the_client_unreachable_and_tells_the_therapist(
    service: Companion, fake: FakeBotAPI, clock: FrozenClock
) -> None:
    async def scenario(h: Harness) -> None:
        await joined(service)(h)
        dana = Chat(service, "therapist", "Dana")
        dana.open()
        fake.fail_next("sendMessage", status=403, description="Forbidden: bot was blocked by the user")
        dana.send("/homework Sam\ntitle: Walk\nwhat: walk")
        dana.send("save")
        await h.deliver()
        assert "refused" in dana.open()
        assert "unreachable since" in dana.send("/clients")
        # Unblocking (the client writes again) makes them reachable.
        await h.receive(my_chat_member_update(90, SAM, new_status="member"))
        assert "reachable again" in dana.open()

    run(service, fake, True, scenario)


def test_a_429_defers_the_chat_in_order_until_retry_after(
    service: Companion, fake: FakeBotAPI, clock: FrozenClock
) -> None:
    async def scenario(h: Harness) -> None:
        await joined(service)(h)
        fake.fail_next("sendMessage", status=429, description="Too Many Requests: retry after 30", retry_after=30)
        await h.receive(message_update(60, SAM, "/help"))
        await h.receive(message_update(61, SAM, "/homework"))
        await h.deliver()
        assert "What you can send me" not in "\n".join(fake.texts(SAM)[-2:])
        clock.advance(seconds=29)
        await h.deliver()
        before = len(fake.texts(SAM))
        clock.advance(seconds=1)
        await h.deliver()
        texts = fake.texts(SAM)[before:]
        assert len(texts) == 2 and "What you can send me" in texts[0] and "homework" in texts[1]

    run(service, fake, True, scenario)


@pytest.mark.parametrize("fault", ["500", "hang"])
def test_server_errors_and_timeouts_are_retried_with_backoff(
    service: Companion, fake: FakeBotAPI, clock: FrozenClock, fault: str
) -> None:
    async def scenario(h: Harness) -> None:
        await joined(service)(h)
        if fault == "500":
            fake.fail_next("sendMessage", status=500, description="Internal Server Error")
        else:
            fake.hang_next("sendMessage", seconds=2.5)
        await h.receive(message_update(70, SAM, "/help"))
        await h.deliver()
        with service.db.unit_of_work() as session:
            row = session.exec(select(OutboxMessage).order_by(OutboxMessage.id.desc())).first()  # type: ignore[union-attr]
            assert row is not None and row.sent_at is None and row.attempts == 1 and row.next_attempt_at
        clock.advance(seconds=2)
        await h.deliver()
        assert "What you can send me" in fake.texts(SAM)[-1]

    run(service, fake, True, scenario)


def test_a_restart_mid_debrief_resumes_over_telegram(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeBotAPI
) -> None:
    first = telegram_companion(sqlite_url, clock, tmp_path, fake, webhook=True)

    async def before(h: Harness) -> None:
        await joined(first)(h)
        Chat(first, "therapist", "Dana").send("/homework Sam\ntitle: Walk\nwhat: walk")
        Chat(first, "therapist", "Dana").send("save")
        await h.new_texts(SAM)
        await h.say(SAM, "it helps")
        await h.tap(SAM, "8")
        await h.tap(SAM, "8")
        await h.say(SAM, "done")
        assert "surprised" in await h.say(SAM, "Walked round the block")

    run(first, fake, True, before)
    first.db.dispose()
    second = telegram_companion(sqlite_url, clock, tmp_path, fake, webhook=True)

    async def after(h: Harness) -> None:
        h.update_ids = itertools.count(1000)
        assert "hard" in await h.say(SAM, "How calm I felt")

    run(second, fake, True, after)
    second.db.dispose()


def test_long_messages_split_cleanly_and_callbacks_fit() -> None:
    text = ("A line of a long digest.\n" * 300).strip()
    parts = split_text(text, 4096)
    assert all(len(p) <= 4096 for p in parts) and "\n".join(parts) == text
    assert split_text("x" * 5000, 4096) == ["x" * 4096, "x" * 904]
    long_value = "/ack " + "9" * 70
    rendered = render(Outbound("Choose", "choice", (Option("yes", "Yes"), Option(long_value, "Long"))))
    ((text_part, markup),) = rendered
    assert markup is not None and [b.callback_data for row in markup.inline_keyboard for b in row] == ["yes"]
    assert "Long" in text_part  # too long for a button: still offered in the text


def test_the_rate_limiter_spaces_sends_without_real_waiting() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(30, 1, monotonic=lambda: now[0], sleep=sleep)

    async def scenario() -> list[float]:
        times = []
        for chat in ["a"] * 3 + [str(n) for n in range(60)]:
            await limiter.acquire(chat)
            times.append(now[0])
        return times

    times = asyncio.run(scenario())
    assert times[1] - times[0] >= 1.0 and times[2] - times[1] >= 1.0  # one per second per chat
    gaps = [b - a for a, b in itertools.pairwise(times[3:])]
    assert min(gaps) >= 1 / 30 - 1e-9  # never above 30 per second overall
    assert len(times[3:]) / (times[-1] - times[3] + 1 / 30) <= 30.0 + 1e-6


def test_concurrent_senders_queue_for_slots_instead_of_sharing_one() -> None:
    """The sender serves several chats at once: each caller reserves its slot before it sleeps."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(0)  # the other callers run meanwhile, as during a real wait

    limiter = RateLimiter(10, 1, monotonic=lambda: 0.0, sleep=sleep)  # all twenty arrive at t=0

    async def scenario() -> None:
        await asyncio.gather(*(limiter.acquire(str(n)) for n in range(20)))

    asyncio.run(scenario())
    # One slot each, 0.1 s apart (10 per second); none shares a slot with another.
    assert sorted(slept) == pytest.approx([0.1 * k for k in range(1, 20)])


def test_many_chats_are_delivered_concurrently_and_each_in_order(service: Companion, fake: FakeBotAPI) -> None:
    """Sixty chats with three messages each: every chat sees its own messages in the order they were queued."""
    from storage import queries as q

    async def scenario(h: Harness) -> None:
        with service.db.unit_of_work() as session:
            for n in range(3):
                for chat in range(2000, 2060):
                    payload = Outbound(f"message {n} to {chat}").to_payload()
                    q.enqueue(session, channel="telegram", address=str(chat), payload=payload, now=service.clock.now())
        await h.deliver()
        for chat in range(2000, 2060):
            assert fake.texts(chat) == [f"message {n} to {chat}" for n in range(3)]
        with service.db.unit_of_work() as session:
            pending = session.exec(select(OutboxMessage).where(OutboxMessage.sent_at == None)).all()  # noqa: E711
            assert pending == []

    run(service, fake, True, scenario)


def test_unreachable_clients_get_no_nudges(service: Companion, fake: FakeBotAPI, clock: FrozenClock) -> None:
    async def scenario(h: Harness) -> None:
        await joined(service)(h)
        await h.receive(my_chat_member_update(80, SAM, new_status="kicked"))

    run(service, fake, True, scenario)
    with service.db.unit_of_work() as session:
        assert session.exec(select(Client)).one().unreachable_at == clock.now()
    Chat(service, "therapist", "Dana").send("/homework Sam\ntitle: Walk\nwhat: walk\nnudges: 18:00")
    Chat(service, "therapist", "Dana").send("save")
    from scheduler.sweep import sweep

    clock.advance(hours=9)  # 18:00 in London
    sent = sweep(db=service.db, engine=service.engine).nudges
    assert sent.sent == 0 and sent.skipped == 1


def test_a_therapist_links_telegram_and_uses_the_commands_there(
    service: Companion, fake: FakeBotAPI, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from bot.cli import app as cli

    add_therapist(service)
    config = tmp_path / "link.yaml"
    config.write_text(f"database:\n  path: {service.settings.url.removeprefix('sqlite:///')}\n", encoding="utf-8")
    printed = CliRunner().invoke(cli, ["therapist", "link", "Dana", "--telegram", "--config", str(config)])
    assert printed.exit_code == 0, printed.output
    code = next(line.split()[-1] for line in printed.output.splitlines() if line.startswith("/start "))
    dana = 2002

    async def scenario(h: Harness) -> None:
        assert "linked to therapist Dana" in await h.say(dana, f"/start {code}")
        assert "Invite for Kim" in await h.say(dana, "/invite Kim")
        assert "Kim: invited" in await h.say(dana, "/clients")
        assert "code didn't work" in await h.say(3003, f"/start {code}")  # single use

    run(service, fake, True, scenario)
