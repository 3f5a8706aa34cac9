"""Benchmark: `companion run` killed with SIGKILL mid-dispatch, again and again, while 2,000 nudges go out.

    python -m bench.kill [--backends sqlite,postgresql] [--nudges 2000] [--kills 3] [--latency 0.3]

The service is the real one (`python -m bot.cli run`, Telegram webhook mode,
the configured 30 messages/s and 1/s per chat) and the Bot API a minimal
aiohttp fake in its own process that records each sendMessage when it
arrives and answers it ``--latency`` seconds later (what the issue measured
with: 0.3 s). Each run queues ``--nudges`` due nudges to as many chats,
kills the service ``--kills`` times at evenly spaced points, restarts it each
time, and waits until every row is sent. Reported: messages lost (never
arrived), duplicates (arrived twice), how many requests were still open at
the fake just after each kill (an undercount of what was in flight: the
fake answers those within ``--latency``, and rows answered but not yet
committed are in flight too), and the time from each restart to its first
send (from the process's start, and from uvicorn's "startup complete").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert
from sqlmodel import col, select

from bench._support import KEY, drop, free_port, fresh_url, load_average, machine, wait_http

TOKEN = "123456:BENCH-TOKEN"
STARTED = "Application startup complete"


def serve_fake(port: int, latency: float) -> None:
    from aiohttp import web

    arrivals: list[tuple[float, str]] = []
    state = {"open": 0}
    bot = {"id": 123456, "is_bot": True, "first_name": "Companion", "username": "bench_bot"}

    async def method(request: web.Request) -> web.Response:
        name = request.match_info["method"]
        if name == "getMe":
            return web.json_response({"ok": True, "result": {**bot, "can_join_groups": True}})
        if name != "sendMessage":
            return web.json_response({"ok": True, "result": True})
        params = await request.post() if request.content_type != "application/json" else await request.json()
        arrivals.append((time.monotonic(), str(params.get("text", ""))))  # accepted: the client has it
        state["open"] += 1
        try:
            await asyncio.sleep(latency)
        finally:
            state["open"] -= 1
        message = {
            "message_id": len(arrivals),
            "date": int(time.time()),
            "chat": {"id": int(str(params.get("chat_id"))), "type": "private", "first_name": "Sam"},
            "from": bot,
            "text": str(params.get("text", "")),
        }
        return web.json_response({"ok": True, "result": message})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"arrivals": arrivals, "open": state["open"], "now": time.monotonic()})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", stats)
    app.router.add_post("/bot{token}/{method}", method)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, handler_cancellation=False)


def queue_nudges(url: str, nudges: int) -> None:
    """``nudges`` due nudges to as many chats, each text unique so deliveries can be counted per message."""
    from dialogs.messages import Option, Outbound
    from storage import Database, OutboxMessage
    from storage.models import BULK

    db = Database(url)
    db.upgrade()
    now = datetime.now(UTC)
    options = (Option("done", "Done"), Option("didn't do it", "Didn't do it"), Option("later", "Later"))
    rows = [
        {
            "channel": "telegram",
            "address": str(5_000_000 + n),
            "payload": Outbound(
                f"Time for your evening walk (nudge {n}).", kind="choice", options=options
            ).to_payload(),
            "created_at": now,
            "attempts": 0,
            "priority": BULK,
            "parts_sent": 0,
        }
        for n in range(nudges)
    ]
    with db.engine.begin() as connection:
        connection.execute(insert(OutboxMessage), rows)
    db.dispose()


def unsent(url: str) -> int:
    from storage import Database, OutboxMessage

    db = Database(url)
    with db.unit_of_work() as session:
        count = session.exec(
            select(func.count()).select_from(OutboxMessage).where(col(OutboxMessage.sent_at).is_(None))
        ).one()
    db.dispose()
    return int(count)


class Service:
    def __init__(self, url: str, fake_url: str, cwd: Path) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "COMPANION_DATA_KEY": KEY,
            "COMPANION_SERVER__PORT": str(free_port()),
            "COMPANION_SCHEDULER__ENABLED": "false",
            "COMPANION_WEB__DEMO": "false",
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_WEBHOOK_SECRET": "bench-secret",
            "COMPANION_TELEGRAM__API_BASE_URL": f"{fake_url}/bot",
            "COMPANION_TELEGRAM__WEBHOOK_URL": "https://companion.example.org/telegram/hook",
        }
        self.spawned = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "run"],
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def started(self) -> float:
        while self.process.poll() is None:
            try:
                if STARTED in self.lines.get(timeout=0.5):
                    return time.monotonic()
            except queue.Empty:
                continue
        raise RuntimeError("the service exited during start-up")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=60)


def _stats(fake_url: str) -> dict[str, Any]:
    import httpx

    return dict(httpx.get(f"{fake_url}/stats", timeout=30).json())


def run_backend(backend: str, args: Any, workdir: Path, fake_url: str) -> dict[str, Any]:
    url = fresh_url(backend, workdir)
    try:
        queue_nudges(url, args.nudges)
        base = len(_stats(fake_url)["arrivals"])
        in_flight: list[int] = []
        restarts: list[tuple[float, float]] = []  # (from spawn, from startup complete) to the first send
        started_at = time.monotonic()
        service = Service(url, fake_url, workdir)
        service.started()
        for k in range(1, args.kills + 1):
            target = base + args.nudges * k // (args.kills + 1)
            while len(_stats(fake_url)["arrivals"]) < target:
                time.sleep(0.05)
            service.kill()
            stats = _stats(fake_url)
            in_flight.append(int(stats["open"]))
            before = len(stats["arrivals"])
            service = Service(url, fake_url, workdir)
            ready = service.started()
            while len(arrivals := _stats(fake_url)["arrivals"]) <= before:
                time.sleep(0.02)
            first = float(arrivals[before][0])
            restarts.append((first - service.spawned, first - ready))
        while unsent(url):
            time.sleep(0.2)
        elapsed = time.monotonic() - started_at
        service.stop()
        texts = Counter(text for _, text in _stats(fake_url)["arrivals"][base:])
        lost = sum(1 for n in range(args.nudges) if texts[f"Time for your evening walk (nudge {n})."] == 0)
        duplicates = sum(count - 1 for count in texts.values())
        return {
            "backend": backend,
            "nudges": args.nudges,
            "kills": args.kills,
            "lost": lost,
            "duplicates": duplicates,
            "in_flight": in_flight,
            "restart_to_send": restarts,
            "seconds": elapsed,
            "load": load_average(),
        }
    finally:
        drop(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--nudges", type=int, default=2_000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--serve-fake", type=int)
    args = parser.parse_args()
    if args.serve_fake:
        serve_fake(args.serve_fake, args.latency)
        return
    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "bench.kill", "--serve-fake", str(port), "--latency", str(args.latency)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    fake_url = f"http://127.0.0.1:{port}"
    print(f"# python -m bench.kill {' '.join(sys.argv[1:])}")
    print(f"# {machine()}")
    try:
        wait_http(f"{fake_url}/healthz")
        with tempfile.TemporaryDirectory() as workdir:
            for backend in args.backends.split(","):
                r = run_backend(backend, args, Path(workdir), fake_url)
                spawn = ", ".join(f"{a:.1f}" for a, _ in r["restart_to_send"])
                ready = ", ".join(f"{b:.2f}" for _, b in r["restart_to_send"])
                print(
                    f"kill {r['backend']:10} {r['nudges']:,} nudges, {r['kills']} kills: lost {r['lost']}, "
                    f"duplicates {r['duplicates']} ({100 * r['duplicates'] / r['nudges']:.2f} %), "
                    f"open at the fake after each kill {r['in_flight']}, restart to first send {spawn} s from spawn / "
                    f"{ready} s from startup complete, all sent in {r['seconds']:.0f} s, load {r['load']}",
                    flush=True,
                )
    finally:
        fake.terminate()
        fake.wait()


if __name__ == "__main__":
    main()
