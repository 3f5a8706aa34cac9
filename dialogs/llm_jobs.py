"""LLM mode's job runner: model calls and memory writes decided in a turn, run after its commit.

No network call is made inside a database transaction or under a row lock.
A turn that wants the model (:func:`dialogs.llm_steps.reflect`, ``/digest``)
writes an :class:`storage.LlmJob` row in its own unit of work, holding the
turn's scripted outbox rows as the fallback; memory writes and erasures are
jobs too. After the commit a runner (this module) works each job in three
steps:

1. **claim** — a short transaction leases the row (``claimed_until``),
   ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so processes never work the
   same job at once; a dead process's lease runs out and the job is claimed
   again (nothing is lost in a crash: the row is the truth);
2. **call** — memory retrieval, then the model, with no transaction open,
   within the job's deadline (the wait for a free call slot counts against
   the client's deadline, never against the provider's timeout);
3. **apply** — a second short transaction locks the chat's state row, moves
   the job from ``pending`` with a conditional UPDATE (so a result is applied
   once, by one process), checks that the chat is still where the turn left
   it, and writes the outbox: the model's reply, or the scripted fallback.

A client's next message supersedes a pending reply job of the same chat
(:func:`supersede`, in that turn's transaction under the same row lock):
its scripted reply goes out first, and the late result is dropped. Every
call is recorded in ``LlmUsage`` with the tokens the provider reported,
whether the reply was used or not.

The service runs :meth:`JobRunner.run` beside the outbox senders, woken as
soon as a turn that wrote a job commits (:meth:`JobRunner.wake`) and polling
otherwise; the console runs :meth:`JobRunner.run_pending` after each line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import and_, insert, or_, update
from sqlmodel import Session, col, select

from storage import ConversationState, Database, LlmJob, OutboxMessage

if TYPE_CHECKING:
    from dialogs.engine import Engine

log = logging.getLogger("companion.llm")

PENDING: Final = "pending"
# How long past the call's timeout (or the deadline, if sooner) a lease lasts: time for the apply.
LEASE_MARGIN: Final = timedelta(seconds=5)
# Memory writes are not waited for by anyone; they may run late (after a restart, say) but not forever.
BACKGROUND_DEADLINE: Final = timedelta(hours=1)


@dataclass(frozen=True)
class Claimed:
    """A job as its runner holds it between the transactions (plain values; no session is kept open)."""

    id: int
    kind: str
    client_id: int | None
    state_id: int | None
    flow: str
    step: str
    channel: str
    address: str
    request: dict[str, Any]
    fallback: list[dict[str, Any]]
    created_at: datetime
    deadline_at: datetime


def outbox_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outbox rows as stored in a job (``created_at`` as ISO text) → rows to INSERT."""
    return [{**r, "created_at": datetime.fromisoformat(r["created_at"])} for r in rows]


def stored_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outbox rows to keep in a job's fallback (JSON: times as ISO text)."""
    return [{**r, "created_at": r["created_at"].isoformat()} for r in rows]


def insert_outbox(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:  # one multi-row INSERT, in the order said
        session.execute(insert(OutboxMessage), rows)


def supersede(session: Session, *, state_id: int | None) -> int:
    """In a turn of the chat ``state_id`` (its state row locked): finish that chat's pending reply jobs.

    Their scripted fallback is queued now, before this turn's own replies,
    so every message still gets its reply and in order; a result that
    arrives later for them is recorded and dropped. Returns how many.
    """
    if state_id is None:
        return 0
    jobs = session.exec(
        select(LlmJob).where(LlmJob.state_id == state_id, LlmJob.kind == "reply", LlmJob.status == PENDING)
    ).all()
    for job in jobs:
        insert_outbox(session, outbox_rows(job.fallback))
        job.status, job.outcome = "superseded", "fallback:superseded"
        job.request, job.fallback = {}, []  # the text it carried is not kept once it is finished
        session.add(job)
    return len(jobs)


class JobRunner:
    """Claims due :class:`storage.LlmJob` rows and works them; see the module docstring.

    Thread-safe. ``lease`` is how long a claim lasts past the job's deadline;
    ``batch`` how many jobs one claim takes. Calls are bounded by the
    model's ``max_concurrency`` (dialogs.llm), not here: a runner takes jobs
    freely and they queue for a call slot, each within its own deadline.
    """

    def __init__(self, *, db: Database, engine: Engine, batch: int = 50) -> None:
        self.db, self.engine, self.batch = db, engine, batch
        self._wake = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_wake: asyncio.Event | None = None
        self._running: set[int] = set()
        self._lock = threading.Lock()
        # Jobs run on threads of their own: a job waits seconds for its model, and on the event loop's
        # default executor it would hold threads the webhooks need for their turns (a crisis reply included).
        slots = engine.llm.max_concurrency if engine.llm is not None else 1
        self._pool = ThreadPoolExecutor(max_workers=slots + 4, thread_name_prefix="llm-job")

    # --- waking ----------------------------------------------------------------------------

    def wake(self) -> None:
        """A job was committed: work it now rather than at the next poll (any thread)."""
        self._wake.set()
        loop, event = self._loop, self._async_wake
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(event.set)

    # --- the three steps ---------------------------------------------------------------------

    def claim(self, *, chat: tuple[str, str] | None = None) -> list[Claimed]:
        """Lease due jobs in one short transaction (pending, and not leased by a live runner).

        ``chat`` (channel, address) limits it to that chat's jobs and to jobs
        about no chat (memory writes): what a console waits for.
        """
        now = self.engine.clock.now()
        with self.db.unit_of_work() as session:
            statement = (
                select(LlmJob)
                .where(
                    LlmJob.status == PENDING,
                    or_(col(LlmJob.claimed_until).is_(None), col(LlmJob.claimed_until) < now),
                )
                .order_by(col(LlmJob.id))
                .limit(self.batch)
                .with_for_update(skip_locked=True)
            )
            if chat is not None:
                mine = and_(col(LlmJob.channel) == chat[0], col(LlmJob.address) == chat[1])
                statement = statement.where(or_(mine, col(LlmJob.channel) == ""))
            rows = session.exec(statement).all()
            claimed = []
            llm = self.engine.llm
            for row in rows:
                # Long enough for the call (a live runner finishes by then), short enough that a dead
                # runner's job is taken over within its deadline. A job still queued when its lease ends
                # may be called twice by two processes; it is applied once all the same (see apply).
                left = max(timedelta(0), row.deadline_at - now)
                row.claimed_until = now + min(left, timedelta(seconds=llm.timeout if llm else 0) or left) + LEASE_MARGIN
                row.attempts += 1
                session.add(row)
                claimed.append(
                    Claimed(
                        row.id or 0,
                        row.kind,
                        row.client_id,
                        row.state_id,
                        row.flow,
                        row.step,
                        row.channel,
                        row.address,
                        dict(row.request),
                        list(row.fallback),
                        row.created_at,
                        row.deadline_at,
                    )
                )
            return claimed

    def work(self, job: Claimed) -> None:
        """Call (no transaction open) and apply one claimed job; never raises (a failure is logged)."""
        from dialogs import llm_steps

        with self._lock:
            if job.id in self._running:
                return
            self._running.add(job.id)
        try:
            if job.kind == "reply":
                llm_steps.run_reply(self, job)
            elif job.kind == "narrative":
                llm_steps.run_narrative(self, job)
            elif job.kind == "remember":
                llm_steps.run_remember(self, job)
            elif job.kind == "forget":
                llm_steps.run_forget(self, job)
            else:
                self.finish(job, status="fallback", outcome="fallback:unknown")
        except Exception as exc:  # a job that cannot run falls back; the class name is all we log
            log.exception("llm job #%d (%s) failed: %s", job.id, job.kind, exc.__class__.__name__)
            with contextlib.suppress(Exception):
                self.apply(job, lambda session, state: (job.fallback, "fallback", "fallback:error"))
        finally:
            with self._lock:
                self._running.discard(job.id)

    def seconds_left(self, job: Claimed) -> float:
        """How long until the job's deadline, by the companion's clock."""
        return max(0.0, (job.deadline_at - self.engine.clock.now()).total_seconds())

    def apply(
        self,
        job: Claimed,
        decide: Callable[[Session, ConversationState | None], tuple[list[dict[str, Any]], str, str]],
        *,
        record: Callable[[Session], None] | None = None,
    ) -> bool:
        """The second transaction: lock the chat, take the job from pending (once), write what ``decide`` says.

        ``decide(session, state)`` returns (outbox rows as stored, status,
        outcome); it runs only if this call moved the job from pending, with
        the chat's state row locked (None for jobs about no chat). ``record``
        (the usage row) runs in any case. True if this call applied the job.
        """
        now = self.engine.clock.now()
        with self.db.unit_of_work() as session:
            state = None
            if job.state_id is not None:  # the same lock a turn of this chat takes, taken first
                state = session.exec(
                    select(ConversationState).where(ConversationState.id == job.state_id).with_for_update()
                ).first()
            won = session.execute(
                update(LlmJob)
                .where(col(LlmJob.id) == job.id, col(LlmJob.status) == PENDING)
                .values(status="applying", finished_at=now, claimed_until=None)
            )
            if record is not None:
                record(session)
            if getattr(won, "rowcount", 0) != 1:
                return False  # superseded by the chat's next message, or applied by another process
            rows, status, outcome = decide(session, state)
            insert_outbox(session, outbox_rows(rows))
            # A finished job keeps its bookkeeping, not the client's text it carried (prompt parts, replies).
            session.execute(
                update(LlmJob)
                .where(col(LlmJob.id) == job.id)
                .values(status=status, outcome=outcome, request={}, fallback=[])
            )
        if rows:
            self.engine.notify_outbox()
        return True

    def finish(self, job: Claimed, *, status: str, outcome: str) -> None:
        self.apply(job, lambda session, state: ([], status, outcome))

    # --- driving ---------------------------------------------------------------------------

    def run_pending(self, *, chat: tuple[str, str] | None = None, limit: int = 100) -> int:
        """Claim and work due jobs (of ``chat`` only, see :meth:`claim`), each in its own thread; returns how many.

        For the console (one person waits for the reply: only their chat's
        jobs, never another's model call) and for tests; the service uses :meth:`run`.
        """
        done = 0
        while done < limit:
            claimed = self.claim(chat=chat)
            if not claimed:
                break
            threads = [threading.Thread(target=self.work, args=(job,), name=f"llm-job-{job.id}") for job in claimed]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            done += len(claimed)
        return done

    async def run(self, stop: asyncio.Event, *, idle: float = 0.5) -> None:
        """Work jobs until ``stop``: woken by :meth:`wake`, else every ``idle`` seconds (other processes' jobs)."""
        self._loop, self._async_wake = asyncio.get_running_loop(), asyncio.Event()
        tasks: set[asyncio.Future[None]] = set()
        try:
            while not stop.is_set():
                self._async_wake.clear()
                try:  # on the runner's threads too: the default executor may be full of webhook turns
                    claimed = await asyncio.get_running_loop().run_in_executor(self._pool, self.claim)
                except Exception:  # keep working; the next round retries
                    log.exception("llm job claim failed")
                    claimed = []
                loop = asyncio.get_running_loop()
                for job in claimed:
                    task = asyncio.ensure_future(loop.run_in_executor(self._pool, self.work, job))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if len(claimed) >= self.batch:
                    continue
                waits = {asyncio.ensure_future(self._async_wake.wait()), asyncio.ensure_future(stop.wait())}
                _, pending = await asyncio.wait(waits, timeout=idle, return_when=asyncio.FIRST_COMPLETED)
                for waiter in pending:
                    waiter.cancel()
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self._loop = self._async_wake = None


def new_job(
    session: Session,
    *,
    kind: str,
    now: datetime,
    deadline: timedelta,
    client_id: int | None = None,
    state: ConversationState | None = None,
    channel: str = "",
    address: str = "",
    request: dict[str, Any] | None = None,
    fallback: list[dict[str, Any]] | None = None,
) -> LlmJob:
    """Write one job in the caller's unit of work (the turn's, or a sweep's)."""
    job = LlmJob(
        kind=kind,
        client_id=client_id,
        state_id=state.id if state is not None else None,
        flow=state.flow if state is not None else "",
        step=state.step if state is not None else "",
        channel=channel,
        address=address,
        request=request or {},
        fallback=stored_rows(fallback or []),
        created_at=now,
        deadline_at=now + deadline,
    )
    session.add(job)
    return job


def monotonic_deadline(seconds_left: float) -> float:
    return time.monotonic() + seconds_left
