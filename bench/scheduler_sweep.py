"""Benchmark: one scheduler sweep over N due nudges, against one APScheduler job per nudge.

    python -m bench.scheduler_sweep [--clients 100000] [--backends sqlite,postgresql] [--baseline]

Each measurement runs in a fresh subprocess so its peak RSS is its own. The
sweep is the real one (`scheduler.sweep.sweep`): claim with SKIP LOCKED in
batches, decide per row (grace, holds, busy chat, daily cap), render the
nudge and enqueue it in the outbox, commit. The console channel is the null
channel: rows are left in the outbox. The baseline is the naive design the
issue names: APScheduler 3's SQLAlchemyJobStore holding one date job per
nudge, run by a BackgroundScheduler until every job has fired.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, text

from bench._support import drop, fresh_url  # importing it also sets the benchmark-only data key


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed(url: str, clients: int, now: datetime) -> None:
    """N active clients, each with a chat, an open homework and one nudge due now (bulk inserts)."""
    from storage import Client, Database, Homework, Identity, Occasion, Therapist

    db = Database(url)
    db.upgrade()
    with db.engine.begin() as connection:
        connection.execute(insert(Therapist), [{"id": 1, "name": "Bench", "timezone": "UTC", "created_at": now}])
        for start in range(0, clients, 10_000):
            ids = range(start + 1, min(start + 10_000, clients) + 1)
            connection.execute(
                insert(Client),
                [
                    {
                        "id": i,
                        "therapist_id": 1,
                        "name": f"c{i}",
                        "name_key": f"c{i}",
                        "status": "active",
                        "timezone": "Europe/London",
                        "nudge_time": "18:00",
                        "created_at": now,
                        "scheduled_count": 0,
                    }
                    for i in ids
                ],
            )
            connection.execute(
                insert(Identity),
                [{"channel": "console", "address": f"client:c{i}", "client_id": i, "created_at": now} for i in ids],
            )
            connection.execute(
                insert(Homework),
                [
                    {
                        "id": i,
                        "client_id": i,
                        "therapist_id": 1,
                        "title": "Evening walk",
                        "what": "a 20 minute walk",
                        "type": "custom",
                        "status": "open",
                        "created_at": now,
                        "delivered_at": now,
                        "smaller_version_wanted": False,
                    }
                    for i in ids
                ],
            )
            connection.execute(
                insert(Occasion),
                [
                    {
                        "homework_id": i,
                        "client_id": i,
                        "kind": "nudge",
                        "local_date": now.date(),
                        "local_time": "18:00",
                        "due_at": now - timedelta(seconds=30),
                        "status": "planned",
                    }
                    for i in ids
                ],
            )
    if db.dialect == "postgresql":
        # Autovacuum analyses tables this size in production; a benchmark that
        # sweeps right after a bulk load must do it itself, or the planner
        # guesses 89 due rows and sorts all 100,000 for every batch.
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("ANALYZE occasion, client, homework, identity, conversationstate"))
    db.dispose()


def run_sweep(url: str, now: datetime) -> dict[str, float]:
    import prompts
    from dialogs.clock import FrozenClock
    from dialogs.engine import Engine
    from dialogs.turn import DialogSettings
    from scheduler.sweep import sweep
    from storage import Database

    db = Database(url)
    engine = Engine(prompts=prompts.load("en"), clock=FrozenClock(now), settings=DialogSettings())
    before = _peak_mb()
    started = time.perf_counter()
    report = sweep(db=db, engine=engine)
    elapsed = time.perf_counter() - started
    with db.engine.connect() as connection:
        queued = connection.execute(text("SELECT count(*) FROM outboxmessage")).scalar_one()
    db.dispose()
    return {
        "seconds": elapsed,
        "sent": report.nudges.sent,
        "queued": queued,
        "peak_mb": _peak_mb(),
        "peak_mb_before": before,
    }


_fired = 0
_lock = threading.Lock()


def _job() -> None:
    global _fired
    with _lock:
        _fired += 1


def run_baseline(url: str, clients: int) -> dict[str, float]:
    """APScheduler 3, SQLAlchemyJobStore: add one date job per nudge, then run until all fired."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=url)},
        executors={"default": ThreadPoolExecutor(20)},
        job_defaults={"misfire_grace_time": 3600, "coalesce": False},
        timezone=UTC,
    )
    # Paused while adding, so adding is measured on its own; each job is due
    # at once (run_date = now), as 100,000 nudges due now would be.
    scheduler.start(paused=True)
    run_at = datetime.now(UTC)
    started = time.perf_counter()
    for n in range(clients):
        scheduler.add_job(_job, "date", run_date=run_at, id=f"nudge-{n}", args=())
    added = time.perf_counter() - started
    started = time.perf_counter()
    scheduler.resume()
    scheduler.wakeup()
    while _fired < clients:
        time.sleep(0.2)
    ran = time.perf_counter() - started
    scheduler.shutdown(wait=True)
    return {"add_seconds": added, "run_seconds": ran, "fired": _fired, "peak_mb": _peak_mb()}


def _child(args: argparse.Namespace) -> None:
    now = datetime.fromisoformat(args.now)
    result: dict[str, float]
    if args.child == "seed":
        seed(args.url, args.clients, now)
        result = {}
    elif args.child == "sweep":
        result = run_sweep(args.url, now)
    else:
        result = run_baseline(args.url, args.clients)
    print(json.dumps(result))


def _spawn(kind: str, url: str, clients: int, now: datetime) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.scheduler_sweep",
            "--child",
            kind,
            "--url",
            url,
            "--clients",
            str(clients),
            "--now",
            now.isoformat(),
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--baseline", action="store_true", help="also run the APScheduler job-store baseline")
    parser.add_argument("--baseline-backends", default="postgresql")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--now", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    now = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)
    print(
        f"# scheduler sweep, {args.clients:,} due nudges; {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for backend in args.backends.split(","):
            url = fresh_url(backend, Path(workdir))
            try:
                _spawn("seed", url, args.clients, now)
                result = _spawn("sweep", url, args.clients, now)
            finally:
                drop(url)
            results[backend] = result
            print(
                f"sweep    {backend:10} {result['seconds']:7.2f} s  {args.clients / result['seconds']:9,.0f} nudges/s"
                f"  peak {result['peak_mb']:6.0f} MB  (sent {result['sent']:,}, queued {result['queued']:,})"
            )
        if args.baseline:
            for backend in args.baseline_backends.split(","):
                url = fresh_url(backend, Path(workdir))
                try:
                    base = _spawn("baseline", url, args.clients, now)
                finally:
                    drop(url)
                total = base["add_seconds"] + base["run_seconds"]
                print(
                    f"baseline {backend:10} add {base['add_seconds']:7.2f} s  run {base['run_seconds']:7.2f} s"
                    f"  peak {base['peak_mb']:6.0f} MB  (fired {base['fired']:,})"
                )
                if backend in results:
                    ratio = base["run_seconds"] / results[backend]["seconds"]
                    print(
                        f"ratio    {backend:10} baseline run / sweep = {ratio:.1f}x;"
                        f" (add + run) / sweep = {total / results[backend]['seconds']:.1f}x"
                    )


if __name__ == "__main__":
    main()
