"""One sweep over due work: everything time-driven that must happen without a message arriving."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from dialogs import measures, retention
from dialogs.digest import due_digest_clients, send_due_digests
from dialogs.engine import Engine
from dialogs.guard import alert_unanswered_questions, escalate_due_alerts
from dialogs.history import close_expired
from dialogs.llm_steps import narrate
from dialogs.nudges import SweepCounts, extend_plans, follow_up, send_due_nudges
from dialogs.retention import RetentionPolicy
from storage import Database

log = logging.getLogger("companion.scheduler")


@dataclass(frozen=True)
class SweepReport:
    alerts_escalated: int
    nudges: SweepCounts


def sweep(*, db: Database, engine: Engine) -> SweepReport:
    """Run every due job once; each batch is its own unit of work.

    Safe to run from several processes at once: due rows are claimed with
    ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite serialises writers), and
    a row's claim, decision and outbox message commit together, so a process
    that dies mid-sweep leaves its batch to the next sweep, sent once.
    """
    now = engine.clock.now()
    settings, prompts = engine.settings, engine.prompts
    with db.unit_of_work() as session:
        alert_unanswered_questions(session, prompts=prompts, settings=settings, now=now)
    with db.unit_of_work() as session:
        escalated = escalate_due_alerts(session, prompts=prompts, settings=settings, now=now)
    counts = SweepCounts()
    while True:  # homework past its due date and grace closes first, so no plan is extended for it
        with db.unit_of_work() as session:
            if not close_expired(session, settings=settings, now=now):
                break
    with db.unit_of_work() as session:
        extend_plans(session, settings=settings, now=now)
    cursor = None
    while True:
        with db.unit_of_work() as session:
            cursor = send_due_nudges(session, prompts=prompts, settings=settings, now=now, counts=counts, after=cursor)
        if cursor is None:
            break
    while True:
        with db.unit_of_work() as session:
            if not follow_up(session, prompts=prompts, settings=settings, now=now, counts=counts):
                break
    if engine.llm is not None:
        # LLM mode: the narratives first, each call with no transaction open; the digests then reuse them.
        with db.unit_of_work() as session:
            due = due_digest_clients(session, settings=settings, now=now)
        llm = engine.llm
        # Several at once (within the model's own call slots): a weekly digest can cover a whole caseload.
        with ThreadPoolExecutor(max_workers=max(1, min(llm.max_concurrency, len(due) or 1))) as pool:
            list(pool.map(lambda client_id: narrate(db, llm=llm, prompts=prompts, client_id=client_id, now=now), due))
    with db.unit_of_work() as session:
        measures.send_due_measures(session, prompts=prompts, settings=settings, now=now)
    with db.unit_of_work() as session:
        send_due_digests(session, prompts=prompts, settings=settings, now=now, counts=counts, llm=engine.llm)
    if escalated:
        log.warning("re-sent %d unacknowledged crisis alert(s)", escalated)
    log.info("sweep: %s", asdict(counts))
    return SweepReport(alerts_escalated=escalated, nudges=counts)


def purge(*, db: Database, engine: Engine, policy: RetentionPolicy) -> dict[str, int]:
    """Delete what is past its retention (dialogs.retention); hourly from the scheduler, and on `companion tick`."""
    with db.unit_of_work() as session:
        counts = retention.purge(session, policy=policy, now=engine.clock.now())
    if counts:
        log.info("retention: purged %s", counts)
    return counts
