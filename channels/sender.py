"""Delivers the outbox to a push platform: leases held by live processes, shared rate limits, retries, blocked chats."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from sqlalchemy import case, delete, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from channels.base import AsyncOutputChannel, Progress, Rejected, RetryLater, Undeliverable, Unreachable
from dialogs.clock import Clock
from dialogs.messages import Outbound
from dialogs.nudges import outbound
from dialogs.presence import set_reachable
from prompts import Prompts
from storage import Database, Homework, OutboxMessage, RateBudget, SenderProcess

log = logging.getLogger("companion.sender")
MAX_BACKOFF: Final = timedelta(minutes=10)
HEARTBEAT: Final = 2.0  # seconds between a process's heartbeats
STALE: Final = timedelta(seconds=10)  # a process silent this long (five missed beats) is gone
FORGET: Final = timedelta(hours=1)  # process rows this old are deleted, whatever their host
PER_CHAT: Final = 20  # at most this many of one chat's rows in one claim
BLOCK_SECONDS: Final = 0.25  # a shared rate budget is reserved this much at a time
EDIT_WAIT: Final = timedelta(seconds=5)  # an edit whose message is not delivered yet waits this long


def _wall() -> datetime:
    return datetime.now(UTC)


# --- which process holds a lease ------------------------------------------------------------


def _pid_started(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), so a pid reused by another program is not taken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22, counted after the command name


def _host() -> str:
    """This host and PID namespace: pids are comparable only between processes that share both."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}|{namespace}"


def _alive(pid: int, started: str | None) -> bool:
    if pid == os.getpid():
        return False  # that is us now, so the process that registered with our pid is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, run by another user
    return started is None or _pid_started(pid) in (None, started)


class SenderIdentity:
    """This process as the outbox knows it: a row in ``senderprocess`` with a heartbeat.

    Rows a sender claims carry this id (``claimed_by``), and they stay this
    process's while its heartbeat is fresh (:data:`STALE`): no other process
    takes them, however long a send takes. When the process dies its leases
    end at once for the next process on the same host that looks (it checks
    the pid; so a restart resends within seconds), and after :data:`STALE`
    for processes elsewhere. :meth:`run_heartbeat` beats from a thread of its
    own, so a busy event loop never makes a live process look dead.
    Thread-safe: every method opens its own short transaction.
    """

    def __init__(self, db: Database, *, wall: Callable[[], datetime] = _wall) -> None:
        self.db, self.wall = db, wall
        self.id = uuid.uuid4().hex
        self.host, self.pid = _host(), os.getpid()
        self.pid_started = _pid_started(self.pid)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, session: Session) -> None:
        """Record that this process is alive (registering it if needed).

        Also the first statement of every claim: on SQLite it takes the write
        lock, so claims by several processes never interleave.
        """
        now = self.wall()
        done = session.execute(update(SenderProcess).where(col(SenderProcess.id) == self.id).values(heartbeat_at=now))
        if getattr(done, "rowcount", 1) == 0:
            session.add(
                SenderProcess(
                    id=self.id,
                    host=self.host,
                    pid=self.pid,
                    pid_started=self.pid_started,
                    started_at=now,
                    heartbeat_at=now,
                )
            )
            session.flush()

    def reap(self, session: Session) -> int:
        """Delete the rows of processes that are gone: same host and pid dead, or long silent. Returns how many."""
        now = self.wall()
        gone = [
            p.id
            for p in session.exec(
                select(SenderProcess).where(col(SenderProcess.host) == self.host, col(SenderProcess.id) != self.id)
            )
            if not _alive(p.pid, p.pid_started)
        ]
        if gone:
            session.execute(delete(SenderProcess).where(col(SenderProcess.id).in_(gone)))
        forgotten = session.execute(
            delete(SenderProcess).where(
                col(SenderProcess.heartbeat_at) < now - FORGET, col(SenderProcess.id) != self.id
            )
        )
        return len(gone) + int(getattr(forgotten, "rowcount", 0) or 0)

    def others_alive(self) -> Any:
        """The ids of the other processes whose heartbeat is fresh (a subquery)."""
        return select(SenderProcess.id).where(
            col(SenderProcess.heartbeat_at) >= self.wall() - STALE, col(SenderProcess.id) != self.id
        )

    def start(self) -> None:
        """Register, reclaim the leases of processes that are gone, and beat every :data:`HEARTBEAT` seconds."""
        self._once()
        self._thread = threading.Thread(target=self._loop, name="sender-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating, hand back this process's leases and leave the table (a clean shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT * 2)
        with self.db.unit_of_work() as session:
            session.execute(
                update(OutboxMessage)
                .where(col(OutboxMessage.claimed_by) == self.id, col(OutboxMessage.sent_at).is_(None))
                .values(claimed_by=None, claimed_until=None)
            )
            session.execute(delete(SenderProcess).where(col(SenderProcess.id) == self.id))

    def _once(self) -> None:
        with self.db.unit_of_work() as session:
            self.beat(session)
            self.reap(session)

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                self._once()
            except Exception:  # the database may be down for a moment; keep beating
                log.warning("sender heartbeat failed", exc_info=True)


# --- the platform's rate, shared by every process --------------------------------------------


class SharedBudget:
    """A platform's overall rate shared by all processes through the database (:class:`RateBudget`).

    A process reserves the next :data:`BLOCK_SECONDS` of slots (``rate`` per
    second, evenly spaced) by moving the channel's ``next_at`` forward in one
    short transaction, and hands them to its own sends; slots it does not use
    expire. So however many processes send, the platform sees at most the
    configured rate, and one busy process alone gets the whole of it. The
    alternative, each process pacing itself at its share (rate / processes),
    needs no writes but wastes the idle processes' shares and overshoots
    while the number of processes changes.
    """

    def __init__(
        self,
        db: Database,
        channel: str,
        per_second: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.db, self.channel = db, channel
        self.gap = 1 / per_second
        self.block = max(1, math.ceil(per_second * BLOCK_SECONDS))
        self._monotonic, self._wall = monotonic, wall
        self._slots: list[float] = []  # reserved slots not used yet, monotonic, sorted
        self._lock = asyncio.Lock()

    async def slot(self, not_before: float) -> float:
        """The earliest reserved slot at or after ``not_before`` (monotonic), reserving more when none is left."""
        async with self._lock:
            while True:
                now = self._monotonic()
                self._slots = self._slots[bisect.bisect_left(self._slots, now - self.gap / 2) :]
                index = bisect.bisect_left(self._slots, not_before)
                if index < len(self._slots):
                    return self._slots.pop(index)
                offset = self._wall() - now
                start = await asyncio.to_thread(self._reserve, not_before + offset) - offset
                self._slots = sorted([*self._slots, *(start + i * self.gap for i in range(self.block))])

    def _reserve(self, not_before: float) -> float:
        """Move the channel's budget ``block`` slots forward; the wall time of the first slot reserved."""
        span = self.block * self.gap
        for _ in range(3):  # the row is created by whichever process needs it first
            try:
                with self.db.unit_of_work() as session:
                    moved = session.execute(
                        update(RateBudget)
                        .where(col(RateBudget.channel) == self.channel)
                        .values(
                            next_at=case(
                                (col(RateBudget.next_at) > not_before, col(RateBudget.next_at)), else_=not_before
                            )
                            + span
                        )
                    )
                    if getattr(moved, "rowcount", 1) == 0:
                        session.add(RateBudget(channel=self.channel, next_at=not_before + span))
                        session.flush()
                    budget = session.get(RateBudget, self.channel)
                    assert budget is not None
                    return budget.next_at - span
            except IntegrityError:
                continue
        raise RuntimeError(f"the {self.channel} rate budget could not be reserved")


class RateLimiter:
    """Spaces sends to at most ``per_second`` overall and ``per_chat_per_second`` per chat.

    With a :class:`SharedBudget` the overall rate holds across every process;
    the per-chat rate holds across processes because a chat is served by one
    process at a time and the claim seeds :meth:`after` from the chat's last
    send. Time and sleep are injected so tests need no real waiting. Not
    thread-safe: one limiter per sender task (asyncio is single-threaded).
    """

    def __init__(
        self,
        per_second: float,
        per_chat_per_second: float,
        *,
        shared: SharedBudget | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.per_second = per_second
        self._global_gap = 1 / per_second if per_second > 0 else 0.0
        self.chat_gap = 1 / per_chat_per_second if per_chat_per_second > 0 else 0.0
        self._shared = shared if per_second > 0 else None
        self._monotonic, self._sleep = monotonic, sleep
        self._next_global = 0.0
        self._next_chat: dict[str, float] = {}

    def after(self, chat: str, seconds: float) -> None:
        """This chat's next send waits at least ``seconds`` from now (its last send was that recent)."""
        if seconds > 0:
            ready = self._monotonic() + seconds
            self._next_chat[chat] = max(self._next_chat.get(chat, 0.0), ready)

    async def acquire(self, chat: str) -> None:
        """Wait for this chat's next slot. The slot is reserved before sleeping, so concurrent
        callers (the sender delivers to several chats at once) queue up instead of sharing one."""
        now = self._monotonic()
        if self._shared is not None:
            ready = await self._shared.slot(max(now, self._next_chat.get(chat, 0.0)))
        else:
            ready = max(now, self._next_global, self._next_chat.get(chat, 0.0))
            self._next_global = ready + self._global_gap
        self._next_chat[chat] = ready + self.chat_gap
        if len(self._next_chat) > 10_000:  # forget chats that are long ready
            self._next_chat = {c: t for c, t in self._next_chat.items() if t > now}
        now = self._monotonic()
        if ready > now:
            await self._sleep(ready - now)


# --- the sender -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Claimed:
    id: int
    address: str
    payload: dict[str, Any]
    attempts: int
    parts_sent: int


class _Settler:
    """Marks accepted rows sent as soon as possible: one short transaction for whatever accepted meanwhile.

    A send returns only once its row is committed, so at a crash at most
    the sender's ``concurrency`` messages are accepted by the platform and not
    yet recorded (what a restart may send again).
    """

    def __init__(self, write: Callable[[list[dict[str, Any]]], None]) -> None:
        self._write = write
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def settle(self, values: dict[str, Any]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((values, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            try:
                await asyncio.to_thread(self._write, [values for values, _ in group])
            except Exception as exc:
                for _, future in group:
                    future.set_exception(exc)
            else:
                for _, future in group:
                    future.set_result(None)


class _RowProgress(Progress):
    """Records each accepted part of a multi-part message on its row, in a short transaction."""

    def __init__(self, sender: OutboxSender, row: _Claimed) -> None:
        super().__init__(row.parts_sent)
        self._sender, self._row = sender, row

    async def advance(self, done: int) -> None:
        self.done = done
        await asyncio.to_thread(self._sender._parts, self._row.id, done)


class OutboxSender:
    """Claims a channel's pending outbox rows and delivers them in order, at least once.

    Leases: a claimed row carries this process's id (:class:`SenderIdentity`)
    and no other process takes it while this one's heartbeat is fresh; a
    dead process's rows are claimed again within seconds of a restart. A
    chat is served by one process at a time, its rows strictly in id order;
    when a backlog builds, chats go in the order of their most urgent row
    (``priority``: the crisis path, then replies, then nudges and digests).
    Each row is marked sent as soon as the platform accepted it (a short
    transaction, shared by the rows accepted meanwhile), and each part of a
    multi-part message as soon as it was accepted; so a crash re-sends at
    most what was in flight (``concurrency`` messages). Rate limits and
    transient errors defer the row *and every later row for the same chat*.
    A blocked chat fails its rows and marks the client unreachable (the
    therapist is told).
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
        identity: SenderIdentity | None = None,
    ) -> None:
        self.db, self.channel, self.clock, self.prompts, self.limiter = db, channel, clock, prompts, limiter
        self.concurrency, self.lease = concurrency, lease
        # A claim holds about a second of sends, so a reply written meanwhile waits at most that long.
        paced = max(concurrency, math.ceil(limiter.per_second)) if limiter.per_second > 0 else batch
        self.batch = min(batch, paced)
        # Likewise per chat: a claim takes about a second of one chat's rows, so other chats (and other
        # processes) are not kept waiting behind one chat's long queue.
        self.per_chat = min(PER_CHAT, max(1, math.ceil(1 / limiter.chat_gap))) if limiter.chat_gap > 0 else PER_CHAT
        self.identity = identity or SenderIdentity(db)
        self._settler = _Settler(self._settle)

    async def drain_once(self) -> int:
        """Claim one batch and try to deliver it; returns how many rows were claimed.

        Chats are served concurrently (up to ``concurrency`` at once, always
        within the rate limiter's pace), and each chat's rows one after the
        other. Rows still claimed at the end (a chat deferred part-way) are
        handed back.
        """
        claimed, recent = await asyncio.to_thread(self._claim)
        chats: dict[str, list[_Claimed]] = {}
        for row in claimed:
            chats.setdefault(row.address, []).append(row)
        for chat, seconds in recent.items():
            self.limiter.after(chat, seconds)
        gate = asyncio.Semaphore(self.concurrency)

        async def serve(rows: list[_Claimed]) -> None:
            async with gate:
                for row in rows:
                    if not await self._deliver(row):
                        return  # deferred: this chat's later rows wait, in order

        try:
            # Every chat finishes before the rows are handed back, even when one fails.
            failures = [
                r for r in await asyncio.gather(*(serve(rows) for rows in chats.values()), return_exceptions=True) if r
            ]
        finally:
            if claimed:
                await asyncio.to_thread(self._release, [row.id for row in claimed])
        if failures:
            raise failures[0]
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

    def _pending(self) -> list[Any]:
        return [
            col(OutboxMessage.channel) == self.channel.name,
            col(OutboxMessage.sent_at).is_(None),
            col(OutboxMessage.failed_at).is_(None),
        ]

    def _claim(self) -> tuple[list[_Claimed], dict[str, float]]:
        """Lease the next chats' leading rows; also how recently each of those chats was last sent to.

        A chat is taken only with its oldest pending row, and only while no
        other live process holds any of its rows; rows another claim has
        locked meanwhile (PostgreSQL) are skipped, and the chat with them.
        """
        now = self.clock.now()
        with self.db.unit_of_work() as session:
            self.identity.beat(session)
            free = or_(
                col(OutboxMessage.claimed_by).is_(None),
                col(OutboxMessage.claimed_by).not_in(self.identity.others_alive()),
            )
            due = or_(col(OutboxMessage.next_attempt_at).is_(None), col(OutboxMessage.next_attempt_at) <= now)
            first = session.exec(
                select(OutboxMessage.address)
                .where(*self._pending(), free, due)
                .order_by(col(OutboxMessage.priority), col(OutboxMessage.id))
                .limit(self.batch)
            ).all()
            order = list(dict.fromkeys(first))
            if not order:
                return [], {}
            others = set(session.exec(self.identity.others_alive()).all())
            queued = session.exec(
                select(OutboxMessage.id, OutboxMessage.address, OutboxMessage.claimed_by, OutboxMessage.next_attempt_at)
                .where(*self._pending(), col(OutboxMessage.address).in_(order))
                .order_by(col(OutboxMessage.id))
            ).all()
            by_chat: dict[str, list[tuple[int, str | None, datetime | None]]] = {}
            for row_id, address, claimed_by, next_attempt_at in queued:
                by_chat.setdefault(address, []).append((row_id or 0, claimed_by, next_attempt_at))
            wanted: dict[str, list[int]] = {}
            total = 0
            for chat in order:
                leading: list[int] = []
                for row_id, claimed_by, next_attempt_at in by_chat.get(chat, []):
                    held = claimed_by is not None and claimed_by in others
                    waiting = next_attempt_at is not None and next_attempt_at > now
                    if held or waiting or len(leading) >= self.per_chat:
                        break
                    leading.append(row_id)
                if leading and total < self.batch:
                    wanted[chat] = leading
                    total += len(leading)
            if not wanted:
                return [], {}
            ids = [i for leading in wanted.values() for i in leading]
            locked = {
                row.id: row
                for row in session.exec(
                    select(OutboxMessage)
                    .where(col(OutboxMessage.id).in_(ids), *self._pending(), free)
                    .with_for_update(skip_locked=True)
                ).all()
            }
            rows: list[OutboxMessage] = []
            for leading in wanted.values():
                for row_id in leading:  # a chat's rows only up to the first one taken by someone else
                    if row_id not in locked:
                        break
                    rows.append(locked[row_id])
            if not rows:
                return [], {}
            session.execute(
                update(OutboxMessage)
                .where(col(OutboxMessage.id).in_([r.id for r in rows]))
                .values(claimed_by=self.identity.id, claimed_until=now + self.lease)
            )
            recent = self._recent(session, {r.address for r in rows}, now)
            # Reminders are stored by reference: render them now, their homework loaded in one query.
            referenced = {r.payload.get("ref", {}).get("homework_id") for r in rows} - {None}
            if referenced:
                session.exec(select(Homework).where(col(Homework.id).in_(referenced))).all()
            claimed = [
                _Claimed(
                    r.id or 0,
                    r.address,
                    outbound(session, self.prompts, r.payload).to_payload(),
                    r.attempts,
                    r.parts_sent,
                )
                for r in sorted(rows, key=lambda r: r.id or 0)
            ]
            return claimed, recent

    def _recent(self, session: Session, chats: set[str], now: datetime) -> dict[str, float]:
        """For chats sent to less than a per-chat gap ago (by any process), the seconds still to wait."""
        gap = self.limiter.chat_gap
        if gap <= 0:
            return {}
        last = session.exec(
            select(OutboxMessage.address, func.max(OutboxMessage.sent_at))
            .where(
                col(OutboxMessage.channel) == self.channel.name,
                col(OutboxMessage.address).in_(chats),
                col(OutboxMessage.sent_at) > now - timedelta(seconds=gap),
            )
            .group_by(col(OutboxMessage.address))
        ).all()
        waits = {}
        for chat, at in last:
            if at is not None:
                # Never more than one gap: a test clock may stand still or jump.
                waits[chat] = min(gap, max(0.0, (at - now).total_seconds() + gap))
        return waits

    def _release(self, row_ids: list[int]) -> None:
        with self.db.unit_of_work() as session:
            session.execute(
                update(OutboxMessage)
                .where(
                    col(OutboxMessage.id).in_(row_ids),
                    col(OutboxMessage.claimed_by) == self.identity.id,
                    col(OutboxMessage.sent_at).is_(None),
                )
                .values(claimed_by=None, claimed_until=None)
            )

    def _settle(self, sent: Sequence[dict[str, Any]]) -> None:
        """Mark accepted rows sent, in one statement (an executemany by primary key)."""
        with self.db.unit_of_work() as session:
            session.execute(update(OutboxMessage), list(sent))

    def _parts(self, row_id: int, done: int) -> None:
        with self.db.unit_of_work() as session:
            session.execute(update(OutboxMessage).where(col(OutboxMessage.id) == row_id).values(parts_sent=done))

    def _finish(self, row: _Claimed, **values: Any) -> None:
        with self.db.unit_of_work() as session:
            session.execute(
                update(OutboxMessage)
                .where(col(OutboxMessage.id) == row.id)
                .values(claimed_by=None, claimed_until=None, attempts=row.attempts + 1, **values)
            )

    def _defer(self, row: _Claimed, *, until: Any, error: str) -> None:
        with self.db.unit_of_work() as session:
            session.execute(
                update(OutboxMessage)
                .where(col(OutboxMessage.id) == row.id)
                .values(
                    claimed_by=None,
                    claimed_until=None,
                    attempts=row.attempts + 1,
                    next_attempt_at=until,
                    last_error=error,
                )
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

    def _unreachable(self, row: _Claimed, error: str) -> None:
        """Fail the chat's pending rows (those delivered before are already marked sent)."""
        now = self.clock.now()
        with self.db.unit_of_work() as session:
            session.execute(
                update(OutboxMessage)
                .where(*self._pending(), col(OutboxMessage.address) == row.address)
                .values(failed_at=now, claimed_by=None, claimed_until=None, last_error=error)
            )
            set_reachable(
                session,
                prompts=self.prompts,
                channel=self.channel.name,
                address=row.address,
                reachable=False,
                now=now,
            )

    def _edit_target(self, row_id: int) -> tuple[str, str | None]:
        """Where an edit's message stands: ("sent", its platform id), ("pending", None) or ("gone", None)."""
        with self.db.unit_of_work() as session:
            target = session.get(OutboxMessage, row_id)
            if target is None or target.failed_at is not None:
                return "gone", None
            if target.sent_at is None:
                return "pending", None
            return ("sent", target.platform_id) if target.platform_id else ("gone", None)

    # --- one delivery --------------------------------------------------------------------

    async def _deliver(self, row: _Claimed) -> bool:
        """Send one row; True if it is settled (sent, or failed for good), False if deferred."""
        message = Outbound.from_payload(row.payload)
        if message.kind == "edit":
            edit_of = (message.ref or {}).get("edit_of")
            state, platform_id = await asyncio.to_thread(self._edit_target, int(edit_of or 0))
            if state == "pending":
                until = self.clock.now() + EDIT_WAIT
                await asyncio.to_thread(self._defer, row, until=until, error="waiting for the message it edits")
                return False
            if state == "gone":
                await asyncio.to_thread(self._finish, row, failed_at=self.clock.now(), last_error="nothing to edit")
                return True
            message = Outbound(message.text, "edit", ref={**(message.ref or {}), "platform_id": platform_id})
        await self.limiter.acquire(row.address)
        now = self.clock.now()
        try:
            platform_id = await self.channel.send(row.address, message, _RowProgress(self, row))
        except Undeliverable as exc:
            await asyncio.to_thread(self._finish, row, failed_at=now, last_error=str(exc))
            return True
        except RetryLater as exc:
            await asyncio.to_thread(self._defer, row, until=now + timedelta(seconds=exc.seconds), error="rate limited")
            return False
        except Unreachable as exc:
            log.warning("%s chat refused delivery (outbox #%d): %s", self.channel.name, row.id, exc)
            await asyncio.to_thread(self._unreachable, row, "unreachable")
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
        await self._settler.settle(
            {
                "id": row.id,
                "sent_at": now,
                "platform_id": platform_id,
                "claimed_by": None,
                "claimed_until": None,
                "attempts": row.attempts + 1,
            }
        )
        return True
