"""The outbox under a backlog and across failures: priority, one chat's order, multi-part resumption, shared rates.

Through the real python-telegram-bot against the Telegram fake, with the
real sender (channels.sender) and the real database on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import col, select

from bot.wiring import Companion
from channels.sender import OutboxSender, RateLimiter, SenderIdentity, SharedBudget
from dialogs.clock import FrozenClock
from dialogs.messages import Outbound, enqueue
from storage import Database, OutboxMessage
from storage.models import BULK, REPLY, URGENT
from tests.fake_telegram import FakeBotAPI, message_update
from tests.test_telegram import SAM, Harness, joined, run, telegram_companion


@pytest.fixture
def fake() -> Iterator[FakeBotAPI]:
    api = FakeBotAPI().start()
    yield api
    api.stop()


@pytest.fixture
def service(db_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeBotAPI) -> Iterator[Companion]:
    companion = telegram_companion(db_url, clock, tmp_path, fake, webhook=True)
    yield companion
    companion.db.dispose()


def _queue(companion: Companion, rows: list[tuple[str, str, int]]) -> None:
    with companion.db.unit_of_work() as session:
        for chat, text, priority in rows:
            enqueue(
                session,
                channel="telegram",
                address=chat,
                message=Outbound(text),
                now=companion.clock.now(),
                priority=priority,
            )


def _unsent(companion: Companion) -> list[OutboxMessage]:
    with companion.db.unit_of_work() as session:
        return list(session.exec(select(OutboxMessage).where(col(OutboxMessage.sent_at).is_(None))).all())


def test_a_reply_goes_before_a_backlog_of_nudges(service: Companion, fake: FakeBotAPI) -> None:
    async def scenario(h: Harness) -> None:
        await joined(service)(h)
        _queue(service, [(str(6_000 + n), f"nudge {n}", BULK) for n in range(300)])
        await h.receive(message_update(80, SAM, "/help"))  # Sam just wrote: the reply is queued after 300 nudges
        sender = h.app.state.senders["telegram"]
        before = len(fake.sent())
        await sender.drain_once()
        assert "What you can send me" in fake.texts(SAM)[-1]  # in the first claim, ahead of the backlog
        assert len(fake.sent()) - before <= sender.batch and len(_unsent(service)) >= 300 - sender.batch

    run(service, fake, True, scenario)


def test_crisis_rows_then_replies_then_bulk_and_each_chat_in_order(service: Companion, fake: FakeBotAPI) -> None:
    async def scenario(h: Harness) -> None:
        _queue(
            service,
            [
                ("7001", "nudge A", BULK),
                ("7002", "reply B", REPLY),
                ("7001", "reply A after its nudge", REPLY),
                ("7003", "crisis C", URGENT),
            ],
        )
        assert service.telegram is not None
        one_at_a_time = OutboxSender(
            db=service.db,
            channel=service.telegram,
            clock=service.clock,
            prompts=service.engine.prompts,
            limiter=RateLimiter(0, 0),
            batch=1,
        )
        while await one_at_a_time.drain_once():
            pass
        # Chats go in the order of their most urgent row; within a chat, rows keep their order.
        assert [p["text"] for p in fake.sent()] == ["crisis C", "reply B", "nudge A", "reply A after its nudge"]

    run(service, fake, True, scenario)


def test_a_long_message_resumes_after_the_parts_already_accepted(
    service: Companion, fake: FakeBotAPI, clock: FrozenClock
) -> None:
    text = "\n\n".join(f"Paragraph {i}: " + "words " * 150 for i in range(9))  # about 8,300 characters: 3 parts

    async def scenario(h: Harness) -> None:
        _queue(service, [("4242", text, REPLY)])
        fake.fail_next("sendMessage", status=500, after=1, chat_id=4242)  # the second part fails
        await h.deliver()
        assert len(fake.texts(4242)) == 1
        (row,) = _unsent(service)
        assert row.parts_sent == 1 and row.attempts == 1
        clock.advance(seconds=5)  # past the retry's backoff
        await h.deliver()
        parts = fake.texts(4242)
        assert len(parts) == 3 and len(set(parts)) == 3  # the first part was not sent again
        assert parts[0].startswith("Paragraph 0") and parts[-1].rstrip().endswith("words")
        assert " ".join(" ".join(parts).split()) == " ".join(text.split())
        assert _unsent(service) == []

    run(service, fake, True, scenario)


def test_two_budgets_on_one_database_never_hand_out_the_same_second_twice(db_url: str) -> None:
    """Two processes' budgets (as two objects here) reserve disjoint runs of slots from one row."""
    db = Database(db_url)
    db.upgrade()
    now = [1_000.0]

    def budget() -> SharedBudget:
        return SharedBudget(db, "telegram", 20, monotonic=lambda: now[0], wall=lambda: now[0] + 5_000.0)

    first, second = budget(), budget()

    async def take() -> list[float]:
        slots = []
        for b in (first, second, first, second):
            slots += [await b.slot(now[0]) for _ in range(7)]
        return slots

    slots = asyncio.run(take())
    assert len(set(slots)) == len(slots)
    ordered = sorted(slots)
    assert all(b - a >= 1 / 20 - 1e-9 for a, b in itertools.pairwise(ordered))  # 20/s at most, overall
    with db.unit_of_work() as session:
        SenderIdentity(db).beat(session)  # the heartbeat registers a process on either database
    db.dispose()
