"""Benchmark: the outbox sender draining queued messages to a fake platform that answers at once.

    python -m bench outbound [--backends sqlite,postgresql] [--messages 50000]

The sender is the real one (channels.sender.OutboxSender with the Telegram
channel and python-telegram-bot), in this process; the fake Bot API is a
minimal aiohttp server in its own process that answers every sendMessage at
once and records when each arrived. First with the rate limits switched
off: how fast the sender itself goes. Then with Telegram's limits on (30/s
overall, 1/s per chat): the fastest second seen by the platform must not
exceed the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from bench._support import drop, free_port, fresh_url, load_average, wait_http

TOKEN = "123456:BENCH-TOKEN"


# --- the fake platform (its own process) --------------------------------------------------


def serve_fake(port: int) -> None:
    from aiohttp import web

    arrivals: list[float] = []
    bot = {"id": 123456, "is_bot": True, "first_name": "Companion", "username": "bench_bot"}

    async def method(request: web.Request) -> web.Response:
        name = request.match_info["method"]
        if name == "getMe":
            return web.json_response({"ok": True, "result": {**bot, "can_join_groups": True}})
        if name == "sendMessage":
            arrivals.append(time.monotonic())
            params = await request.post() if request.content_type != "application/json" else await request.json()
            chat = int(str(params.get("chat_id")))
            message = {
                "message_id": len(arrivals),
                "date": int(time.time()),
                "chat": {"id": chat, "type": "private", "first_name": "Sam"},
                "from": bot,
                "text": str(params.get("text", "")),
            }
            return web.json_response({"ok": True, "result": message})
        return web.json_response({"ok": True, "result": True})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"arrivals": arrivals})

    async def reset(request: web.Request) -> web.Response:
        arrivals.clear()
        return web.json_response({})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    app.router.add_post("/bot{token}/{method}", method)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- the sender (this process) --------------------------------------------------------------


def queue(url: str, messages: int, chats: int, now: datetime) -> None:
    """``messages`` pending Telegram messages spread over ``chats`` chats, inserted through the model (encrypted)."""
    from dialogs.messages import Option, Outbound
    from storage import Database, OutboxMessage

    payload = Outbound(
        "Time for your evening walk: a 20 minute walk after dinner. Tell me how it went when you can.",
        kind="choice",
        options=(Option("done", "Done"), Option("didn't do it", "Didn't do it"), Option("later", "Later")),
    ).to_payload()
    db = Database(url)
    db.upgrade()
    with db.engine.begin() as connection:
        for start in range(0, messages, 10_000):
            connection.execute(
                insert(OutboxMessage),
                [
                    {
                        "channel": "telegram",
                        "address": str(5_000_000 + n % chats),
                        "payload": payload,
                        "created_at": now,
                        "attempts": 0,
                    }
                    for n in range(start, min(start + 10_000, messages))
                ],
            )
    db.dispose()


async def drain(url: str, fake_url: str, per_second: float, per_chat: float, limit_s: float) -> dict[str, Any]:
    # As bot.wiring builds it.
    from telegram import Bot
    from telegram.request import HTTPXRequest

    import prompts
    from channels.sender import OutboxSender, RateLimiter
    from channels.telegram import TelegramChannel
    from dialogs.clock import SystemClock
    from dialogs.engine import Engine
    from storage import Database

    db = Database(url)
    engine = Engine(prompts=prompts.load("en"), clock=SystemClock())
    bot = Bot(TOKEN, base_url=f"{fake_url}/bot", request=HTTPXRequest(connection_pool_size=8))
    channel = TelegramChannel(bot=bot, db=db, engine=engine)
    await channel.start()
    sender = OutboxSender(
        db=db, channel=channel, clock=engine.clock, prompts=engine.prompts, limiter=RateLimiter(per_second, per_chat)
    )
    started = time.perf_counter()
    sent = 0
    while time.perf_counter() - started < limit_s:
        claimed = await sender.drain_once()
        if not claimed:
            break
        sent += claimed
    elapsed = time.perf_counter() - started
    await channel.stop()
    db.dispose()
    return {"claimed": sent, "seconds": elapsed}


def _arrivals(fake_url: str) -> list[float]:
    import httpx

    return list(httpx.get(f"{fake_url}/stats", timeout=30).json()["arrivals"])


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most arrivals in any ``window`` seconds."""
    best, left = 0, 0
    for right, at in enumerate(times):
        while at - times[left] >= window:
            left += 1
        best = max(best, right - left + 1)
    return best


def run_backend(backend: str, args: Any, workdir: Path, fake_url: str) -> list[dict[str, Any]]:
    import httpx

    rows = []
    now = datetime.now(UTC)
    url = fresh_url(backend, workdir)
    try:
        queue(url, args.messages, chats=10_000, now=now)
        httpx.post(f"{fake_url}/reset")
        result = asyncio.run(drain(url, fake_url, 0, 0, limit_s=600))
        arrivals = _arrivals(fake_url)
        rows.append(
            {
                "what": "sender, no limits",
                "backend": backend,
                "messages": len(arrivals),
                "seconds": result["seconds"],
                "rate": len(arrivals) / result["seconds"],
                "max_1s": max_in_window(arrivals),
                "load": load_average(),
            }
        )
    finally:
        drop(url)
    url = fresh_url(backend, workdir)
    try:
        limited = int(args.limited_seconds * args.limit) + args.limit
        queue(url, limited, chats=limited, now=now)
        httpx.post(f"{fake_url}/reset")
        result = asyncio.run(drain(url, fake_url, args.limit, 1, limit_s=args.limited_seconds))
        arrivals = _arrivals(fake_url)
        span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
        rows.append(
            {
                "what": f"sender, {args.limit:g}/s limit",
                "backend": backend,
                "messages": len(arrivals),
                "seconds": result["seconds"],
                "rate": (len(arrivals) - 1) / span,
                "max_1s": max_in_window(arrivals),
                "load": load_average(),
            }
        )
    finally:
        drop(url)
    return rows


def run(args: Any) -> list[dict[str, Any]]:
    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "bench.outbound", "--serve-fake", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    fake_url = f"http://127.0.0.1:{port}"
    rows: list[dict[str, Any]] = []
    try:
        wait_http(f"{fake_url}/healthz")
        with tempfile.TemporaryDirectory() as workdir:
            for backend in args.backends:
                for row in run_backend(backend, args, Path(workdir), fake_url):
                    rows.append(row)
                    print(
                        f"outbound {row['what']:18} {row['backend']:10} {row['messages']:7,} sent in "
                        f"{row['seconds']:6.2f} s  {row['rate']:7,.1f} msg/s  busiest second {row['max_1s']}"
                        f"  load {row['load']}",
                        flush=True,
                    )
    finally:
        fake.terminate()
        fake.wait()
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve-fake", type=int, required=True)
    serve_fake(parser.parse_args().serve_fake)
