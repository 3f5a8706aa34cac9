"""Benchmark: LLM mode under concurrent replies, with a crisis and a therapist command in the middle.

    python -m bench.llm [--backends sqlite,postgresql] [--clients 20] [--latency 3] [--concurrency 32]

One run per backend:

1. A fresh database gets ``--clients`` + 1 Telegram clients, each mid-debrief
   at its first question (bench.inbound.seed), and a therapist on Telegram.
2. A fake Telegram Bot API and a local OpenAI-compatible model server
   (tests/fake_openai.py) that answers every chat call after ``--latency``
   seconds run in this process; `companion run` (webhook mode, LLM mode with
   ``llm.provider: openai`` pointed at it, memory on with its embeddings)
   starts as a subprocess.
3. All clients answer the question at the same moment (one webhook request
   each, concurrently); as soon as those are accepted, one more client sends
   a crisis message and the therapist sends ``/clients``.
4. Each reply's time is from its request to the first message Telegram
   received for that chat (the reflection and the next question arrive as
   one message); the crisis reply's and the therapist's likewise.

Reported: p50/p95/max of the client replies against the model latency, the
crisis and therapist times, HTTP errors, calls in flight at once at the model
server, and how the calls ended (from LlmUsage).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench._support import KEY, drop, free_port, fresh_url, load_average, machine, wait_http
from bench.inbound import FIRST_CHAT, SECRET, THERAPIST_CHAT, seed

ANSWER = "Walked for twenty minutes after dinner, the first five were the hardest"
CRISIS = "I want to kill myself tonight"


class Watch:
    """When the fake Telegram first sent something to each chat after a mark (polled every 5 ms)."""

    def __init__(self, fake: Any) -> None:
        self.fake = fake
        self.first: dict[int, float] = {}
        self.texts: dict[int, list[str]] = {}
        self._base: dict[int, int] = {}
        self._stop = threading.Event()

    def mark(self, chats: list[int]) -> None:
        self._base = {chat: len(self.fake.texts(chat)) for chat in chats}
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            for chat, base in self._base.items():
                if chat not in self.first and len(self.fake.texts(chat)) > base:
                    self.first[chat] = time.monotonic()

    def wait(self, chats: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(c in self.first for c in chats):
            time.sleep(0.05)
        time.sleep(1.0)  # anything sent after the reply (there should be nothing)
        self._stop.set()
        self.texts = {chat: self.fake.texts(chat)[base:] for chat, base in self._base.items()}


async def _post(client: Any, url: str, update_id: int, chat: int, text_: str) -> tuple[int, float]:
    from tests.fake_telegram import message_update

    sent = time.monotonic()
    try:
        response = await client.post(
            url, json=message_update(update_id, chat, text_), headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}
        )
        return response.status_code, sent
    except Exception:  # a timeout or a reset: counted as an error
        return 0, sent


async def _scenario(port: int, clients: int) -> dict[str, Any]:
    import httpx

    url = f"http://127.0.0.1:{port}/telegram/hook"
    chats = [FIRST_CHAT + i for i in range(clients)]
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=clients + 4)) as client:
        answers = await asyncio.gather(*(_post(client, url, 10 + i, chat, ANSWER) for i, chat in enumerate(chats)))
        crisis, therapist = await asyncio.gather(
            _post(client, url, 5, FIRST_CHAT + clients, CRISIS), _post(client, url, 6, THERAPIST_CHAT, "/clients")
        )
    return {"answers": answers, "crisis": crisis, "therapist": therapist}


def _outcomes(url: str) -> dict[str, int]:
    from storage import Database

    db = Database(url)
    with db.engine.connect() as connection:
        rows = connection.execute(text("SELECT outcome, count(*) FROM llmusage GROUP BY outcome")).all()
    db.dispose()
    return {str(outcome): int(n) for outcome, n in rows}


def run_backend(backend: str, args: Any, workdir: Path) -> dict[str, Any]:
    from tests.fake_openai import FakeOpenAI
    from tests.fake_telegram import FakeBotAPI

    url = fresh_url(backend, workdir)
    telegram = FakeBotAPI().start()
    model = FakeOpenAI(latency=args.latency).start()
    process = None
    try:
        seed(url, args.clients + 1, args.clients + 1, datetime.now(UTC))
        port = free_port()
        config = workdir / f"llm-{backend}.yaml"
        config.write_text(
            json.dumps(
                {
                    "server": {"host": "127.0.0.1", "port": port},
                    "telegram": {
                        "webhook_url": "https://companion.bench.invalid/telegram/hook",
                        "api_base_url": telegram.base_url,
                    },
                    "llm": {
                        "provider": "openai",
                        "base_url": model.base_url,
                        "model": "local-model",
                        "max_concurrency": args.concurrency,
                    },
                    "memory": {"embeddings": "provider", "embedding_model": "local-embed", "path": "memory"},
                }
            )
        )
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "COMPANION_DATA_KEY": KEY,
            "TELEGRAM_BOT_TOKEN": telegram.token,
            "TELEGRAM_WEBHOOK_SECRET": SECRET,
            "OPENAI_API_KEY": "sk-local-server-needs-none",
            "COMPANION_LOG_LEVEL": "WARNING",
        }
        command = [sys.executable, "-m", "bot.cli", "run", "--config", str(config)]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=120)
        time.sleep(1)
        watch = Watch(telegram)
        chats = [FIRST_CHAT + i for i in range(args.clients)]
        crisis_chat = FIRST_CHAT + args.clients
        everyone = [*chats, crisis_chat, THERAPIST_CHAT]
        watch.mark(everyone)
        started = time.monotonic()
        result = asyncio.run(_scenario(port, args.clients))
        watch.wait(everyone, timeout=args.latency * 4 + 20)
        replies = sorted(
            watch.first.get(c, float("inf")) - sent for c, (_, sent) in zip(chats, result["answers"], strict=True)
        )
        statuses = [s for s, _ in result["answers"]] + [result["crisis"][0], result["therapist"][0]]
        # One coherent reply: one message, the reflection with the next question.
        texts = watch.texts
        coherent = sum(1 for c in chats if len(texts.get(c, [])) == 1 and texts[c][0].startswith("It sounds"))
        return {
            "backend": backend,
            "clients": args.clients,
            "latency_s": args.latency,
            "p50_s": statistics.median(replies),
            "p95_s": replies[max(0, int(len(replies) * 0.95) - 1)],
            "max_s": replies[-1],
            "crisis_s": watch.first.get(crisis_chat, float("inf")) - result["crisis"][1],
            "therapist_s": watch.first.get(THERAPIST_CHAT, float("inf")) - result["therapist"][1],
            "errors": sum(1 for s in statuses if s != 200),
            "coherent": coherent,
            "in_flight": model.max_in_flight,
            # When the model server saw each call, after the clients' requests began: the time before the call.
            "calls_at_s": sorted(r.at - started for r in model.received if r.path == "/chat/completions"),
            "embeddings_at_s": sorted(r.at - started for r in model.received if r.path == "/embeddings"),
            "outcomes": _outcomes(url),
            "load": load_average(),
        }
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        model.stop()
        telegram.stop()
        drop(url)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.llm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--latency", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32, help="llm.max_concurrency")
    args = parser.parse_args()
    print(f"# {machine()}")
    with tempfile.TemporaryDirectory() as workdir:
        for backend in args.backends.split(","):
            row = run_backend(backend, args, Path(workdir))
            print(
                f"llm  {row['backend']:10} {row['clients']} clients, model {row['latency_s']:.1f} s: "
                f"replies p50 {row['p50_s']:.2f} s  p95 {row['p95_s']:.2f} s  max {row['max_s']:.2f} s  "
                f"(p95 − latency {row['p95_s'] - row['latency_s']:+.2f} s)  crisis {row['crisis_s']:.2f} s  "
                f"therapist {row['therapist_s']:.2f} s  errors {row['errors']}  coherent {row['coherent']}/"
                f"{row['clients']}  in flight {row['in_flight']}  outcomes {row['outcomes']}  load {row['load']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
