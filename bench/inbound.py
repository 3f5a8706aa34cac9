"""Benchmark: the inbound path and memory of a real `companion run`, against the bare stack.

    python -m bench inbound [--backends sqlite,postgresql] [--workers 1,2] [--duration 15]

One run per backend and worker count:

1. A fresh database (a SQLite file, or a new schema in the bench PostgreSQL
   database) gets ``--clients`` clients (default 10,000) through the real
   models and encryption: each active on Telegram with an open homework; the
   first ``--active`` (default 2,000) mid-debrief, at its first question.
2. A fake Telegram Bot API (tests/fake_telegram.py) runs in this process, so
   the service's getMe and setWebhook succeed and its outbox sender delivers.
3. `companion run --workers N` starts as a subprocess in webhook mode, with
   the scheduler on; idle resident memory is read once it answers.
4. bench.loadgen (its own process) posts Telegram-format updates over 40
   keep-alive connections: every update is the answer to the question that
   client was just asked. The webhook commits the reply to the outbox before
   it answers 200, so request-to-response time is request-to-commit time.
5. The same load against bench.bare (the same uvicorn settings, one route
   that checks the secret and parses the update) gives the ceiling.

The load generator competes with the server for the same cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text

from bench._support import KEY, children, drop, free_port, fresh_url, load_average, rss_mb, wait_http

FIRST_CHAT = 5_000_000
SECRET = "bench-webhook-secret"
THERAPIST_CHAT = 4_000_000


def seed(url: str, clients: int, active: int, now: datetime) -> None:
    """``clients`` active Telegram clients with an open homework; the first ``active`` mid-debrief."""
    from storage import Client as ClientRow
    from storage import ConversationState, Database, Debrief, Homework, Identity, Occasion, Therapist

    db = Database(url)
    db.upgrade()
    with db.engine.begin() as connection:
        connection.execute(insert(Therapist), [{"id": 1, "name": "Bench", "timezone": "UTC", "created_at": now}])
        connection.execute(
            insert(Identity),
            [{"channel": "telegram", "address": str(THERAPIST_CHAT), "therapist_id": 1, "created_at": now}],
        )
        for start in range(1, clients + 1, 5_000):
            ids = range(start, min(start + 5_000, clients + 1))
            busy = [i for i in ids if i <= active]
            connection.execute(
                insert(ClientRow),
                [
                    {
                        "id": i,
                        "therapist_id": 1,
                        "name": f"Client {i}",
                        "name_key": f"client {i}",
                        "status": "active",
                        "timezone": "Europe/London",
                        "nudge_time": "18:00",
                        "consented_at": now,
                        "created_at": now,
                        "scheduled_count": 0,
                    }
                    for i in ids
                ],
            )
            connection.execute(
                insert(Identity),
                [
                    {"channel": "telegram", "address": str(FIRST_CHAT + i - 1), "client_id": i, "created_at": now}
                    for i in ids
                ],
            )
            connection.execute(
                insert(Homework),
                [
                    {
                        "id": i,
                        "client_id": i,
                        "therapist_id": 1,
                        "title": "Evening walk",
                        "what": "a 20 minute walk after dinner",
                        "type": "custom",
                        "status": "open",
                        "due": (now + timedelta(days=7)).date(),  # bounded plan: the scheduler has nothing to extend
                        "created_at": now,
                        "delivered_at": now,
                        "smaller_version_wanted": False,
                    }
                    for i in ids
                ],
            )
            if busy:
                connection.execute(
                    insert(Occasion),
                    [
                        {
                            "id": i,
                            "homework_id": i,
                            "client_id": i,
                            "kind": "nudge",
                            "local_date": now.date(),
                            "local_time": "18:00",
                            "due_at": now - timedelta(minutes=5),
                            "status": "answered",
                            "sent_at": now - timedelta(minutes=5),
                            "closed_at": now,
                        }
                        for i in busy
                    ],
                )
                connection.execute(
                    insert(Debrief),
                    [
                        {
                            "id": i,
                            "homework_id": i,
                            "client_id": i,
                            "occasion_id": i,
                            "kind": "debrief",
                            "status": "in_progress",
                            "started_at": now,
                            "ratings": {},
                        }
                        for i in busy
                    ],
                )
            connection.execute(
                insert(ConversationState),
                [
                    {
                        "channel": "telegram",
                        "address": str(FIRST_CHAT + i - 1),
                        "flow": "debrief" if i <= active else "idle",
                        "step": "what_happened" if i <= active else "",
                        "data": {"debrief_id": i} if i <= active else {},
                        "updated_at": now,
                        "last_inbound_at": now,
                    }
                    for i in ids
                ],
            )
    if db.dialect == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("ANALYZE"))
        # Continue the id sequences after the explicit ids above.
        with db.engine.begin() as connection:
            for table in ("client", "homework", "occasion", "debrief"):
                connection.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
                )
    db.dispose()


def _counts(url: str) -> dict[str, int]:
    from storage import Database

    db = Database(url)
    with db.engine.connect() as connection:
        found = {
            table: int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in ("processedinbound", "outboxmessage")
        }
    db.dispose()
    return found


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _server_pids(process: subprocess.Popen[bytes], workers: int) -> list[int]:
    """The processes that serve requests: the one process, or uvicorn's worker children."""
    if workers == 1:
        return [process.pid]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = children(process.pid)
        # uvicorn's supervisor also starts a multiprocessing resource tracker: keep the big ones.
        workers_found = [pid for pid in found if rss_mb(pid)[0] > 40]
        if len(workers_found) >= workers:
            return workers_found[:workers]
        time.sleep(0.5)
    raise RuntimeError("uvicorn's workers did not appear")


def _load(port: int, args: Any, first_update: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--url",
            f"http://127.0.0.1:{port}/telegram/hook",
            "--secret",
            SECRET,
            "--first-chat",
            str(FIRST_CHAT),
            "--clients",
            str(args.active),
            "--connections",
            str(args.connections),
            "--warmup",
            str(args.warmup),
            "--duration",
            str(args.duration),
            "--first-update",
            str(first_update),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_companion(backend: str, workers: int, args: Any, workdir: Path) -> dict[str, Any]:
    from tests.fake_telegram import FakeBotAPI

    now = datetime.now(UTC)
    url = fresh_url(backend, workdir)
    fake = FakeBotAPI().start()
    process = None
    try:
        started = time.perf_counter()
        seed(url, args.clients, args.active, now)
        seeded = time.perf_counter() - started
        port = free_port()
        config = workdir / f"bench-{backend}-{workers}.yaml"
        config.write_text(
            json.dumps(  # YAML is a superset of JSON
                {
                    "server": {"host": "127.0.0.1", "port": port},
                    "telegram": {
                        # Telegram calls HTTPS; a TLS-terminating proxy would forward to our port.
                        "webhook_url": "https://companion.bench.invalid/telegram/hook",
                        "api_base_url": fake.base_url,
                    },
                }
            )
        )
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "COMPANION_DATA_KEY": KEY,
            "TELEGRAM_BOT_TOKEN": fake.token,
            "TELEGRAM_WEBHOOK_SECRET": SECRET,
            "COMPANION_LOG_LEVEL": "WARNING",  # no access log line per request
        }
        command = [sys.executable, "-m", "bot.cli", "run", "--config", str(config), "--workers", str(workers)]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_http(f"http://127.0.0.1:{port}/healthz")
        pids = _server_pids(process, workers)
        time.sleep(2)
        idle = [rss_mb(pid)[0] for pid in pids]
        before = _counts(url)
        result = _load(port, args, first_update=1)
        peak = [rss_mb(pid)[1] for pid in pids]
        after = _counts(url)
        result.update(
            idle_mb=max(idle),
            peak_mb=max(peak),
            recorded=after["processedinbound"] - before["processedinbound"],
            queued=after["outboxmessage"] - before["outboxmessage"],
            seed_s=seeded,
            load=load_average(),
        )
        return result
    finally:
        if process is not None:
            _stop(process)
            if process.returncode not in (0, -signal.SIGINT) and process.stderr is not None:
                sys.stderr.write(process.stderr.read().decode(errors="replace")[-3000:])
        fake.stop()
        drop(url)


def run_bare(workers: int, args: Any) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "TELEGRAM_WEBHOOK_SECRET": SECRET}
    command = [sys.executable, "-m", "bench.bare", "--port", str(port), "--workers", str(workers)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        result = _load(port, args, first_update=1)
        result["load"] = load_average()
        return result
    finally:
        _stop(process)


def run(args: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as workdir:
        for workers in args.workers:
            bare = run_bare(workers, args)
            rows.append({"what": "bare stack", "backend": "-", "workers": workers, **bare})
            yield_row(rows[-1])
            for backend in args.backends:
                if workers > 1 and backend != "postgresql":
                    continue  # several workers need SKIP LOCKED (companion run refuses)
                result = run_companion(backend, workers, args, Path(workdir))
                result["ratio"] = result["rate"] / bare["rate"] if bare["rate"] else float("nan")
                rows.append({"what": "companion run", "backend": backend, "workers": workers, **result})
                yield_row(rows[-1])
    return rows


def yield_row(row: dict[str, Any]) -> None:
    """One line per run as it finishes (the table comes at the end)."""
    errors = sum(row.get("errors", {}).values())
    extra = ""
    if "ratio" in row:
        extra = (
            f"  {row['ratio']:.0%} of bare  rss idle {row['idle_mb']:.0f} MB peak {row['peak_mb']:.0f} MB"
            f"  (recorded {row['recorded']:,}, queued {row['queued']:,})"
        )
    print(
        f"inbound  {row['what']:13} {row['backend']:10} w={row['workers']}  {row['rate']:7,.0f} msg/s"
        f"  p50 {row['p50_ms']:5.1f}  p95 {row['p95_ms']:5.1f}  p99 {row['p99_ms']:6.1f} ms"
        f"  errors {errors}  loadgen cpu {row['generator_cpu_s'] / row['wall_s']:.0%}{extra}  load {row['load']}",
        flush=True,
    )
