"""Delivers the outbox to a push platform: leases, rate limits, retries, and blocked chats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import or_, update
from sqlmodel import col, select

from channels.base import AsyncOutputChannel, Rejected, RetryLater, Undeliverable, Unreachable
from dialogs.clock import Clock
from dialogs.messages import Outbound
from dialogs.nudges import outbound
from dialogs.presence import set_reachable
from prompts import Prompts
from storage import Database, Homework, OutboxMessage

log = logging.getLogger("companion.sender")
MAX_BACKOFF: Final = timedelta(minutes=10)


class RateLimiter:
    """Spaces sends to at most ``per_second`` overall and ``per_chat_per_second`` per chat.

    Time and sleep are injected so tests need no real waiting. Not thread-safe:
    one limiter per sender task (asyncio is single-threaded).
    """

    def __init__(
        self,
        per_second: float,
        per_chat_per_second: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self._global_gap = 1 / per_second if per_second > 0 else 0.0
        self._chat_gap = 1 / per_chat_per_second if per_chat_per_second > 0 else 0.0
        self._monotonic, self._sleep = monotonic, sleep
        self._next_global = 0.0
        self._next_chat: dict[str, float] = {}

    async def acquire(self, chat: str) -> None:
        """Wait for this chat's next slot. The slot is reserved before sleeping, so concurrent
        callers (the sender delivers to several chats at once) queue up instead of sharing one."""
        now = self._monotonic()
        ready = max(now, self._next_global, self._next_chat.get(chat, 0.0))
        self._next_global = ready + self._global_gap
        self._next_chat[chat] = ready + self._chat_gap
        if len(self._next_chat) > 10_000:  # forget chats that are long ready
            self._next_chat = {c: t for c, t in self._next_chat.items() if t > now}
        if ready > now:
            await self._sleep(ready - now)


@dataclass(frozen=True)
class _Claimed:
    id: int
    address: str
    payload: dict[str, Any]
    attempts: int


class OutboxSender:
    """Claims a channel's pending outbox rows and delivers them in order, at least once.

    A row is leased (``claimed_until``) before sending, so several processes
    can run senders without sending a row twice, and a sender that dies
    mid-send leaves the row to be claimed again after the lease. A row is
    marked sent only after the platform accepted it. Rate limits and
    transient errors defer the row *and every later row for the same chat*,
    so a chat never receives messages out of order. A blocked chat fails its
    rows and marks the client unreachable (the therapist is told).
    """

    def __init__(
        self,
        *,
        db: Database,
        channel: AsyncOutputChannel,
        clock: Clock,
        prompts: Prompts,
        limiter: RateLimiter,
        batch: int = 100,
        concurrency: int = 16,
        lease: timedelta = timedelta(minutes=2),
    ) -> None:
        self.db, self.channel, self.clock, self.prompts, self.limiter = db, channel, clock, prompts, limiter
        self.batch, self.concurrency, self.lease = batch, concurrency, lease

    async def drain_once(self) -> int:
        """Claim one batch and try to deliver it; returns how many rows were claimed.

        Chats are served concurrently (up to ``concurrency`` requests in
        flight, always within the rate limiter's pace), and each chat's rows
        strictly in order, one after the other. Accepted rows are marked
        sent together at the end of the batch: one commit per batch rather
        than per message. A process that dies mid-batch leaves those rows
        leased, and they are sent again when the lease ends (delivery is at
        least once, as everywhere).
        """
        claimed = await asyncio.to_thread(self._claim)
        chats: dict[str, list[_Claimed]] = {}
        for row in claimed:
            chats.setdefault(row.address, []).append(row)
        sent: list[tuple[_Claimed, datetime, str | None]] = []
        gate = asyncio.Semaphore(self.concurrency)

        async def serve(rows: list[_Claimed]) -> None:
            async with gate:
                for i, row in enumerate(rows):
                    if not await self._deliver(row, sent):
                        later = [r.id for r in rows[i + 1 :]]
                        if later:  # deferred: this chat's later rows wait, in order
                            await asyncio.to_thread(self._release, later)
                        return

        try:
            await asyncio.gather(*(serve(rows) for rows in chats.values()))
        finally:
            if sent:
                await asyncio.to_thread(self._settle, sent)
        return len(claimed)

    def wake(self) -> None:
        """New rows were committed (from any thread): drain now instead of at the next idle poll."""
        loop, event = getattr(self, "_loop", None), getattr(self, "_woken", None)
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(event.set)

    async def run(self, stop: asyncio.Event, *, idle: float = 0.5) -> None:
        """Drain until ``stop`` is set; with nothing to send, wait ``idle`` seconds or until :meth:`wake`."""
        self._loop, self._woken = asyncio.get_running_loop(), asyncio.Event()
        while not stop.is_set():
            self._woken.clear()
            try:
                sent = await self.drain_once()
            except Exception:  # keep delivering; the next round retries
                log.exception("outbox drain failed for %s", self.channel.name)
                sent = 0
            if not sent:
                waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._woken.wait())}
                _, pending = await asyncio.wait(waits, timeout=idle, return_when=asyncio.FIRST_COMPLETED)
                for waiter in pending:
                    waiter.cancel()

    # --- database steps (run in a worker thread) ---------------------------------------

    def _claim(self) -> list[_Claimed]:
        now = self.clock.now()
        with self.db.unit_of_work() as session:
            rows = session.exec(
                select(OutboxMessage)
                .where(
                    OutboxMessage.channel == self.channel.name,
                    col(OutboxMessage.sent_at).is_(None),
                    col(OutboxMessage.failed_at).is_(None),
                    or_(col(OutboxMessage.next_attempt_at).is_(None), col(OutboxMessage.next_attempt_at) <= now),
                    or_(col(OutboxMessage.claimed_until).is_(None), col(OutboxMessage.claimed_until) < now),
                )
                .order_by(col(OutboxMessage.id))
                .limit(self.batch)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                row.claimed_until = now + self.lease
                session.add(row)
            # Reminders are stored by reference: render them now, their homework loaded in one query.
            referenced = {r.payload.get("ref", {}).get("homework_id") for r in rows} - {None}
            if referenced:
                session.exec(select(Homework).where(col(Homework.id).in_(referenced))).all()
            return [
                _Claimed(r.id or 0, r.address, outbound(session, self.prompts, r.payload).to_payload(), r.attempts)
                for r in rows
            ]

    def _release(self, row_ids: list[int]) -> None:
        with self.db.unit_of_work() as session:
            session.execute(update(OutboxMessage).where(col(OutboxMessage.id).in_(row_ids)).values(claimed_until=None))

    def _settle(self, sent: list[tuple[_Claimed, datetime, str | None]]) -> None:
        """Mark accepted rows sent, in one statement per batch (an executemany by primary key)."""
        with self.db.unit_of_work() as session:
            session.execute(
                update(OutboxMessage),
                [
                    {
                        "id": row.id,
                        "sent_at": at,
                        "platform_id": platform_id,
                        "claimed_until": None,
                        "attempts": row.attempts + 1,
                    }
                    for row, at, platform_id in sent
                ],
            )

    def _finish(self, row: _Claimed, **values: Any) -> None:
        with self.db.unit_of_work() as session:
            session.execute(
                update(OutboxMessage)
                .where(col(OutboxMessage.id) == row.id)
                .values(claimed_until=None, attempts=row.attempts + 1, **values)
            )

    def _defer(self, row: _Claimed, *, until: Any, error: str) -> None:
        with self.db.unit_of_work() as session:
            session.execute(
                update(OutboxMessage)
                .where(col(OutboxMessage.id) == row.id)
                .values(claimed_until=None, attempts=row.attempts + 1, next_attempt_at=until, last_error=error)
            )
            # Later messages to the same chat wait too, so order is kept.
            session.execute(
                update(OutboxMessage)
                .where(
                    col(OutboxMessage.channel) == self.channel.name,
                    col(OutboxMessage.address) == row.address,
                    col(OutboxMessage.id) > row.id,
                    col(OutboxMessage.sent_at).is_(None),
                )
                .values(next_attempt_at=until)
            )

    def _unreachable(self, row: _Claimed, error: str, delivered: list[int]) -> None:
        """Fail the chat's pending rows (not those ``delivered`` in this batch, settled at its end)."""
        now = self.clock.now()
        with self.db.unit_of_work() as session:
            session.execute(
                update(OutboxMessage)
                .where(
                    col(OutboxMessage.channel) == self.channel.name,
                    col(OutboxMessage.address) == row.address,
                    col(OutboxMessage.sent_at).is_(None),
                    col(OutboxMessage.failed_at).is_(None),
                    col(OutboxMessage.id).not_in(delivered),
                )
                .values(failed_at=now, claimed_until=None, last_error=error)
            )
            set_reachable(
                session,
                prompts=self.prompts,
                channel=self.channel.name,
                address=row.address,
                reachable=False,
                now=now,
            )

    # --- one delivery --------------------------------------------------------------------

    async def _deliver(self, row: _Claimed, sent: list[tuple[_Claimed, datetime, str | None]]) -> bool:
        """Send one row; True if it is settled (sent, noted in ``sent``; or failed for good), False if deferred."""
        await self.limiter.acquire(row.address)
        now = self.clock.now()
        try:
            platform_id = await self.channel.send(row.address, Outbound.from_payload(row.payload))
        except Undeliverable as exc:
            await asyncio.to_thread(self._finish, row, failed_at=now, last_error=str(exc))
            return True
        except RetryLater as exc:
            await asyncio.to_thread(self._defer, row, until=now + timedelta(seconds=exc.seconds), error="rate limited")
            return False
        except Unreachable as exc:
            log.warning("%s chat refused delivery (outbox #%d): %s", self.channel.name, row.id, exc)
            await asyncio.to_thread(self._unreachable, row, "unreachable", [r.id for r, _, _ in sent])
            return True
        except Rejected as exc:
            log.error("%s rejected outbox #%d: %s", self.channel.name, row.id, exc)
            await asyncio.to_thread(self._finish, row, failed_at=now, last_error="rejected")
            return True
        except Exception as exc:  # transient: network, 5xx, timeouts
            backoff = min(timedelta(seconds=2 ** min(row.attempts, 12)), MAX_BACKOFF)
            log.warning(
                "%s send failed (outbox #%d, attempt %d): %s",
                self.channel.name,
                row.id,
                row.attempts + 1,
                exc.__class__.__name__,
            )
            await asyncio.to_thread(self._defer, row, until=now + backoff, error=exc.__class__.__name__)
            return False
        sent.append((row, now, platform_id))
        return True
