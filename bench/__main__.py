"""Every benchmark in one command; prints a line per run as it goes and a table to paste into BENCHMARKS.md.

    python -m bench [inbound] [outbound] [sweep] [digest] [kill] [safety] [history]   (default: all of them)
        [--backends sqlite,postgresql] [--workers 1,2] [--duration 15] [--quick]

    inbound   `companion run` (webhook) under Telegram-format load, with its memory, and the bare-stack ceiling
    outbound  the outbox sender to a fake platform, without and with rate limits
    sweep     bench.scheduler_sweep (100,000 due nudges)
    digest    bench.digest (50 clients x 8 weeks)
    kill      bench.kill (`companion run` killed three times while 2,000 nudges go out)
    safety    bench.safety_screen (p50/p95 per message: the lexicon alone and the combined risk screen)
    history   bench.history (one client at 5 / 100 / 400 homework; 50 clients x 2 years)

PostgreSQL runs use a fresh schema in $COMPANION_BENCH_POSTGRES_URL (default
postgresql+psycopg://postgres@127.0.0.1:5432/test), dropped afterwards.
--quick shrinks every benchmark to check that it runs, not to measure.
Benchmarks are not tests: nothing here runs in the test suite.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

from bench import inbound, outbound
from bench._support import load_average, machine

ALL = ("inbound", "outbound", "sweep", "digest", "kill", "safety", "history")


def _run_module(module: str, *args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", module, *args], check=True, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line and not line.startswith("#")]
    for line in lines:
        print(line, flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("which", nargs="*", help=f"benchmarks to run: {', '.join(ALL)} (default: all)")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--workers", default="1,2", help="inbound: worker counts (above 1: PostgreSQL only)")
    parser.add_argument("--clients", type=int, default=10_000, help="inbound: clients in the database")
    parser.add_argument("--active", type=int, default=2_000, help="inbound: clients mid-debrief sending messages")
    parser.add_argument("--connections", type=int, default=40, help="inbound: concurrent keep-alive connections")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=15.0, help="inbound: measured seconds per run")
    parser.add_argument("--messages", type=int, default=50_000, help="outbound: queued messages")
    parser.add_argument("--limit", type=int, default=30, help="outbound: the messages/s limit to check")
    parser.add_argument("--limited-seconds", type=float, default=10.0)
    parser.add_argument("--nudges", type=int, default=100_000, help="sweep: due nudges")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that everything runs")
    args = parser.parse_args()
    which = args.which or list(ALL)
    if set(which) - set(ALL):
        parser.error(f"unknown benchmark(s): {', '.join(sorted(set(which) - set(ALL)))}")
    args.backends = args.backends.split(",")
    args.workers = [int(w) for w in args.workers.split(",")]
    if args.quick:
        args.clients, args.active, args.connections = 500, 200, 8
        args.warmup, args.duration, args.messages, args.limited_seconds, args.nudges = 1, 3, 2_000, 3, 2_000

    print(f"# python -m bench {' '.join(sys.argv[1:])}")
    print(f"# {machine()}")
    table: list[str] = []
    if "inbound" in which:
        for row in _inbound(args):
            table.append(row)
    if "outbound" in which:
        for result in outbound.run(args):
            table.append(
                f"| outbound: {result['what']} | {result['backend']} | {result['messages']:,} messages"
                f" | **{result['rate']:,.0f} msg/s**, busiest second {result['max_1s']} | {result['load']} |"
            )
    if "sweep" in which:
        for line in _run_module(
            "bench.scheduler_sweep", "--clients", str(args.nudges), "--backends", ",".join(args.backends)
        ):
            words = line.split()
            table.append(
                f"| scheduler sweep, {args.nudges:,} nudges | {words[1]} | | **{words[2]} s**, {words[4]} nudges/s,"
                f" peak {words[7]} MB | {load_average()} |"
            )
    if "digest" in which:
        for line in _run_module("bench.digest", "--repeat", "3" if args.quick else "10"):
            table.append(f"| digest, 50 clients x 8 weeks | sqlite | | {line.split(': ', 1)[1]} | {load_average()} |")
    if "kill" in which:
        nudges = "300" if args.quick else "2000"
        for line in _run_module("bench.kill", "--nudges", nudges, "--backends", ",".join(args.backends)):
            backend, _, result = line.removeprefix("kill ").partition(" ")
            row = f"| kill -9 mid-dispatch | {backend} | {nudges} nudges | {result.strip()} | {load_average()} |"
            table.append(row)
    if "safety" in which:
        for line in _run_module("bench.safety_screen", "--messages", "200" if args.quick else "1000"):
            if line.startswith("mix"):
                continue
            name, figures = line.split(": ", 1)
            table.append(f"| risk screen: {name} | - | per message | {figures} | {load_average()} |")
    if "history" in which:
        quick = ("--levels", "2,6", "--window", "2", "--weeks", "8", "--repeat", "2") if args.quick else ()
        _run_module("bench.history", *quick)  # prints its own two tables (levels of one client; the caseload)
    print()
    print(f"# {machine()}")
    print("| benchmark | database | size | result | load average |")
    print("|---|---|---|---|---|")
    for row in table:
        print(row)


def _inbound(args: Any) -> list[str]:
    rows = []
    for result in inbound.run(args):
        if result["what"] == "bare stack":
            rows.append(
                f"| inbound: bare stack, {result['workers']} worker(s) | - | {args.connections} connections"
                f" | {result['rate']:,.0f} req/s, p50 {result['p50_ms']:.1f} / p95 {result['p95_ms']:.1f}"
                f" / p99 {result['p99_ms']:.1f} ms | {result['load']} |"
            )
        else:
            errors = sum(result["errors"].values())
            rows.append(
                f"| inbound: companion run, {result['workers']} worker(s) | {result['backend']}"
                f" | {args.active:,} of {args.clients:,} clients | **{result['rate']:,.0f} msg/s**,"
                f" p50 {result['p50_ms']:.1f} / p95 {result['p95_ms']:.1f} / **p99 {result['p99_ms']:.1f} ms**,"
                f" {result['ratio']:.0%} of bare, {errors} errors; RSS per worker idle {result['idle_mb']:.0f} MB,"
                f" peak {result['peak_mb']:.0f} MB | {result['load']} |"
            )
    return rows


if __name__ == "__main__":
    main()
