"""APScheduler drives the periodic sweep inside `companion run`; the due work itself lives in the database."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from dialogs.engine import Engine
from dialogs.retention import RetentionPolicy
from scheduler.sweep import SweepReport, purge, sweep
from storage import Database

log = logging.getLogger("companion.scheduler")


def start(
    *,
    db: Database,
    engine: Engine,
    interval_seconds: float,
    retention: RetentionPolicy | None = None,
    on_sweep: Callable[[SweepReport | None, float], None] | None = None,
) -> AsyncIOScheduler:
    """Start one interval job that sweeps due work; call from inside the running event loop.

    There is one APScheduler job in all, never one per nudge or alert: due
    work is rows with a due time, so it survives restarts and is shared by
    processes. The sweep is synchronous (database work) and runs in
    APScheduler's thread pool, off the event loop; ``max_instances=1`` keeps
    a slow sweep from overlapping the next. ``on_sweep`` hears each sweep's
    report (None when it raised) and its duration in seconds (for /metrics).
    """

    def job() -> None:
        began, report = time.perf_counter(), None
        try:
            report = sweep(db=db, engine=engine)
        except Exception:  # a failed sweep must not stop the next one
            log.exception("sweep failed")
        if on_sweep is not None:
            on_sweep(report, time.perf_counter() - began)

    scheduler = AsyncIOScheduler()
    scheduler.add_job(job, "interval", seconds=interval_seconds, max_instances=1, coalesce=True, id="sweep")
    if retention is not None:

        def purge_job() -> None:
            try:
                purge(db=db, engine=engine, policy=retention)
            except Exception:
                log.exception("retention purge failed")

        scheduler.add_job(purge_job, "interval", hours=1, max_instances=1, coalesce=True, id="retention")
    scheduler.start()
    return scheduler
