"""A closed-loop load generator: Telegram-format debrief answers posted to a webhook over keep-alive connections.

    python -m bench.loadgen --url URL --secret S --first-chat 5000000 --clients 2000 \
        [--connections 40] [--warmup 3] [--duration 15]

Each of ``--connections`` connections posts one update, waits for the answer
and posts the next, as Telegram does (its webhook default is 40 connections).
A client is never in flight twice and clients take turns, so every update
answers the question that client was just asked: the four debrief questions,
the amount, then "done", which starts the next debrief. Prints one JSON line:
answered requests in the measured window, their latencies, errors, and the
CPU this generator used (it shares the machine with the server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections import deque
from typing import Any

import aiohttp

from tests.fake_telegram import message_update

HEADER = "X-Telegram-Bot-Api-Secret-Token"
ROUTES = ("73", "12", "N5", "205", "38")


def answer(client: int, turn: int) -> str:
    """What this client says at this point of its cycle (four answers, the amount, then "done")."""
    cycle, step = divmod(turn, 6)
    k = 1 + (client + cycle) % 9
    if step == 0:
        return f"Rode {k} stops on the {ROUTES[client % 5]} at {7 + k % 4}am with my bag, no rail"
    if step == 1:
        return f"The fear came down after {k + 2} minutes"
    if step == 2:
        return f"The first {k} stops"
    if step == 3:
        return f"It passes if I stay on for {k + 5} minutes"
    if step == 4:
        return str((client + cycle) % 5)
    return "done"


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    headers = {HEADER: args.secret, "Content-Type": "application/json"}
    ready = deque(range(args.clients))
    turns = [0] * args.clients
    next_update = args.first_update
    latencies: list[float] = []
    errors: dict[str, int] = {}
    answered = 0
    started = time.perf_counter()
    measure_from = started + args.warmup
    end = measure_from + args.duration

    async def connection(session: aiohttp.ClientSession) -> None:
        nonlocal next_update, answered
        while time.perf_counter() < end:
            client = ready.popleft()
            next_update += 1
            body = json.dumps(message_update(next_update, args.first_chat + client, answer(client, turns[client])))
            sent = time.perf_counter()
            try:
                async with session.post(args.url, data=body, headers=headers) as response:
                    await response.read()
                    status = str(response.status)
            except aiohttp.ClientError as exc:
                status = exc.__class__.__name__
            done = time.perf_counter()
            if status == "200":
                turns[client] += 1
            if measure_from <= sent and done <= end:
                if status == "200":
                    answered += 1
                    latencies.append(done - sent)
                else:
                    errors[status] = errors.get(status, 0) + 1
            ready.append(client)

    connector = aiohttp.TCPConnector(limit=args.connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(connection(session) for _ in range(args.connections)))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "answered": answered,
        "seconds": args.duration,
        "rate": answered / args.duration,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,
        "errors": errors,
        "generator_cpu_s": usage.ru_utime + usage.ru_stime,
        "wall_s": time.perf_counter() - started,
        "last_update": next_update,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--first-chat", type=int, default=5_000_000)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=40)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--first-update", type=int, default=1)
    args = parser.parse_args()
    if args.clients < 2 * args.connections:
        parser.error("--clients must be at least twice --connections (a client is never in flight twice)")
    try:
        from uvloop import new_event_loop
    except ImportError:
        new_event_loop = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        print(json.dumps(runner.run(run(args))))


if __name__ == "__main__":
    main()
