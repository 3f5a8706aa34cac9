"""Benchmark: what a turn, a digest and the caseload cost as a client's history grows.

    python -m bench.history [--levels 5,100,400] [--window 5] [--clients 50] [--weeks 104] [--repeat 10]

Part one drives one client in-process through the console channel on SQLite,
as the issue measured it: each cycle (one week on the clock) the therapist
sets a homework in one message, the client receives it (own words,
confidence), says "done" and answers the debrief; the sweep runs; nobody
closes anything by hand. At each level (homework + debriefs so far) the
last ``--window`` cycles are timed: "done", a debrief answer, setting the
homework, then ``/digest Sam`` and ``/clients``. A cycle writes about twelve
messages each way, so 100 cycles is a client in their second year.

Part two seeds a caseload in bulk: ``--clients`` clients with ``--weeks`` of
history each (a homework a week, closed by the history rule except the
current one; a nudge a day; three debriefs, an obstacle and a note a week;
a concern flag now and then; the weekly sums the engine keeps), and times
``/clients``, the caseload ``/digest`` and one ``/digest NAME`` through the
console channel, ``--repeat`` times each.

Every figure is a median of repeated runs in one process, reported as wall
time and as the process's CPU time (``time.process_time``: SQLite runs
in-process, so it includes the database, and other processes on a shared
machine inflate it far less than wall time). The ratios compare levels of
the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from bench._support import KEY, load_average, machine

START = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)  # a Monday
TASK = (
    "/homework Sam\ntitle: Bus experiment {n}\ntype: behavioural experiment\n"
    "what: ride the bus two stops without holding the rail\nwhen: mornings\nwhere: the 73 from the corner\n"
    "with whom: alone\nrecord: belief I'll faint, before and after\n"
    "rationale: you predict you'll faint on the bus; this tests it\nnudges: 10am"
)
DEBRIEF = ("Rode two stops on the 73 at 10am, no rail", "I didn't faint", "The first minute", "It passes", "80", "30")


def _timed(action: Callable[[], Any]) -> tuple[float, float]:
    """(wall, cpu) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def _companion(workdir: Path, url: str, clock: Any) -> Any:
    from bot.config import Settings
    from bot.wiring import build

    return build(
        Settings(DATABASE_URL=url, config_dir=workdir, COMPANION_DATA_KEY=KEY),
        clock=clock,
    )


# --- part one: one client, driven ---------------------------------------------------------------


def one_client(levels: list[int], window: int) -> list[dict[str, Any]]:
    from dialogs.clock import FrozenClock
    from scheduler.sweep import sweep
    from tests.support import Chat, add_therapist, invite_code

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        clock = FrozenClock(START)
        companion = _companion(workdir, f"sqlite:///{workdir / 'history.db'}", clock)
        add_therapist(companion)
        dana = Chat(companion, "therapist", "Dana")
        code = invite_code(dana.send("/invite Sam"))
        sam = Chat(companion, "client", "sam")
        for message in (f"/start {code}", "yes", "London", "6pm"):
            sam.send(message)
        timings: dict[str, list[tuple[float, float]]] = {}
        measured = False

        def step(name: str, action: Callable[[], Any]) -> None:
            took = _timed(action)
            if measured:
                timings.setdefault(name, []).append(took)

        for cycle in range(1, max(levels) + 1):
            measured = any(level - window < cycle <= level for level in levels)
            step("set homework", lambda n=cycle: dana.send(TASK.format(n=n)))
            for answer in ("To find out whether I really faint", "8", "9"):  # own words, confidence, importance
                sam.send(answer)
            clock.advance(hours=26)  # the next morning, after the first nudge
            sweep(db=companion.db, engine=companion.engine)
            step("done", lambda: sam.send("done"))
            for n, answer in enumerate(DEBRIEF):
                if n == 1:  # a debrief answer in the middle of the debrief
                    step("debrief answer", lambda answer=answer: sam.send(answer))
                else:
                    sam.send(answer)
            sam.send("4")
            dana.open()
            if measured:
                step("/digest Sam", lambda: dana.send("/digest Sam"))
                step("/clients", lambda: dana.send("/clients"))
            clock.advance(days=6, hours=-2)
            sweep(db=companion.db, engine=companion.engine)
            if cycle in levels:
                row: dict[str, Any] = {"level": cycle}
                for name, values in timings.items():
                    row[name] = (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
                row["digest_chars"] = len(dana.send("/digest Sam"))
                results.append(row)
                timings.clear()
                print(f"level {cycle}: " + ", ".join(f"{k} {_ms(v)}" for k, v in row.items() if isinstance(v, tuple)))
        companion.db.dispose()
    return results


def _ms(value: tuple[float, float]) -> str:
    return f"{value[0] * 1000:.1f} ms (cpu {value[1] * 1000:.1f})"


# --- part two: a caseload in its second year ----------------------------------------------------


def seed_caseload(url: str, clients: int, weeks: int, now: datetime) -> None:
    """Bulk-load ``clients`` clients with ``weeks`` of history each, as the engine would have left it."""
    import prompts
    from dialogs.digest import CRITERIA, judged
    from dialogs.history import week_of
    from storage import (
        Client,
        Database,
        Debrief,
        DebriefWeek,
        Homework,
        Identity,
        LogEntry,
        Occasion,
        SafetyFlag,
        Therapist,
    )

    db = Database(url)
    db.upgrade()
    catalogue = prompts.load("en")
    extras = [e.key for e in catalogue.homework_types["exposure"].extras]
    start = now - timedelta(weeks=weeks)
    homeworks, occasions, debriefs, logs, flags = [], [], [], [], []
    sums: dict[tuple[int, date], list[int]] = {}
    hw_id = occ_id = 0
    for c in range(1, clients + 1):
        for w in range(weeks):
            hw_id += 1
            week_start = start + timedelta(weeks=w)
            current = w == weeks - 1
            homeworks.append(
                {
                    "id": hw_id,
                    "client_id": c,
                    "therapist_id": 1,
                    "title": f"Step {w + 1}",
                    "type": "exposure",
                    "what": "ride the bus two stops",
                    "when": "mornings",
                    "where": "the 73",
                    "with_whom": "alone",
                    "record": "distress before and after",
                    "rationale": "staying until it falls teaches it falls",
                    "status": "open" if current else "closed",
                    "created_at": week_start,
                    "delivered_at": week_start,
                    "closed_at": None if current else week_start + timedelta(weeks=1),
                    "closed_reason": None if current else "superseded",
                    "rationale_own_words": "to learn the fear passes",
                    "confidence": 5 + c % 5,
                    "smaller_version_wanted": c % 7 == 0,
                }
            )
            for d in range(7):
                occ_id += 1
                due = week_start + timedelta(days=d, hours=1)
                done = d in (0, 2, 4)
                occasions.append(
                    {
                        "id": occ_id,
                        "homework_id": hw_id,
                        "client_id": c,
                        "kind": "nudge",
                        "local_date": due.date(),
                        "local_time": "10:00",
                        "due_at": due,
                        "status": "answered" if done else "not_reviewed",
                        "sent_at": due,
                        "followed_up_at": None if done else due + timedelta(days=1),
                        "closed_at": due,
                    }
                )
                if done:
                    row = {
                        "homework_id": hw_id,
                        "client_id": c,
                        "occasion_id": occ_id,
                        "kind": "debrief",
                        "status": "complete",
                        "started_at": due + timedelta(hours=2),
                        "completed_at": due + timedelta(hours=2, minutes=5),
                        "quantity": (c + d) % 5,
                        "what_happened": f"Rode {d + 1} stops on the 73 at 10am with my bag, no rail",
                        "surprised": "The fear came down after a few minutes",
                        "hard": "The first stop",
                        "learned": "It passes if I stay",
                        "ratings": {"distress_before": 70, "distress_after": 30},
                    }
                    row["criteria"] = judged(catalogue, Debrief(**row), extras, Occasion(**occasions[-1]))
                    debriefs.append(row)
                    total = sums.setdefault((c, week_of(row["started_at"], "Europe/London")), [0, 0, 0, 0, 0])
                    for i, value in enumerate((1, row["quantity"], 1, len(row["criteria"]), 1)):
                        total[i] += value
            debriefs.append(
                {
                    "homework_id": hw_id,
                    "client_id": c,
                    "kind": "obstacle",
                    "status": "complete",
                    "started_at": week_start + timedelta(days=6, hours=9),
                    "quantity": 0,
                    "obstacle": "It rained",
                    "would_help": "Go earlier",
                    "ratings": {},
                }
            )
            logs.append(
                {"client_id": c, "homework_id": hw_id, "text": "Felt braver", "created_at": week_start + timedelta(3)}
            )
            if (c + w) % 11 == 0:
                flags.append(
                    {
                        "client_id": c,
                        "therapist_id": 1,
                        "level": "concern",
                        "reasons": ["hopelessness"],
                        "text": "what's the point",
                        "created_at": week_start + timedelta(days=2),
                    }
                )
    assert len(CRITERIA) == 5
    with db.engine.begin() as connection:
        connection.execute(
            insert(Therapist), [{"id": 1, "name": "Dana", "timezone": "Europe/London", "created_at": start}]
        )
        connection.execute(
            insert(Client),
            [
                {
                    "id": c,
                    "therapist_id": 1,
                    "name": f"Client {c}",
                    "name_key": f"client {c}",
                    "status": "active",
                    "timezone": "Europe/London",
                    "nudge_time": "10:00",
                    "created_at": start,
                    "scheduled_count": 0,
                    "last_contact_at": now - timedelta(days=c % 9),
                }
                for c in range(1, clients + 1)
            ],
        )
        connection.execute(  # the console chats, so /clients and /digest go through the channel
            insert(Identity).values(created_at=start),
            [{"channel": "console", "address": "therapist:Dana", "therapist_id": 1, "client_id": None}]
            + [
                {"channel": "console", "address": f"client:c{c}", "therapist_id": None, "client_id": c}
                for c in range(1, clients + 1)
            ],
        )
        weeks_rows = [
            dict(zip(("debriefs", "quantity_sum", "quantity_count", "criteria_met", "criteria_judged"), v, strict=True))
            | {"client_id": c, "week": week}
            for (c, week), v in sums.items()
        ]
        for table, rows in (
            (Homework, homeworks),
            (Occasion, occasions),
            (Debrief, debriefs),
            (LogEntry, logs),
            (SafetyFlag, flags),
            (DebriefWeek, weeks_rows),
        ):
            keys = {key for row in rows for key in row}  # executemany needs the same keys in every row
            for i in range(0, len(rows), 5000):
                connection.execute(insert(table), [{key: row.get(key) for key in keys} for row in rows[i : i + 5000]])
    db.dispose()


def caseload(clients: int, weeks: int, repeat: int) -> dict[str, Any]:
    from dialogs.clock import FrozenClock
    from tests.support import Chat

    now = START + timedelta(weeks=weeks, days=3)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        url = f"sqlite:///{workdir / 'caseload.db'}"
        seed_caseload(url, clients, weeks, now)
        companion = _companion(workdir, url, FrozenClock(now))
        dana = Chat(companion, "therapist", "Dana")
        result: dict[str, Any] = {"clients": clients, "weeks": weeks}
        for command in ("/clients", "/digest", "/digest Client 1"):
            dana.send(command)  # warm
            runs = [_timed(lambda command=command: dana.send(command)) for _ in range(repeat)]
            result[command] = (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
            result[f"{command} chars"] = len(dana.send(command))
            print(f"{clients} clients x {weeks} weeks: {command} {_ms(result[command])}")
        companion.db.dispose()
    return result


def main() -> None:
    print(f"# python -m bench.history; {machine()}")
    levels = [int(n) for n in ARGS.levels.split(",")]
    rows = one_client(levels, ARGS.window)
    base = rows[0]
    print("\n| homework + debriefs | " + " | ".join(k for k in base if isinstance(base[k], tuple)) + " |")
    print("|---:|" + "---:|" * sum(isinstance(v, tuple) for v in base.values()))
    for row in rows:
        cells = [
            f"{row[k][0] * 1000:.1f} ms (cpu {row[k][1] * 1000:.1f}, ×{row[k][1] / base[k][1]:.2f})"
            for k in base
            if isinstance(base[k], tuple)
        ]
        print(f"| {row['level']} | " + " | ".join(cells) + f" | digest {row['digest_chars']:,} chars")
    result = caseload(ARGS.clients, ARGS.weeks, ARGS.repeat)
    print(f"\n| {ARGS.clients} clients × {ARGS.weeks} weeks | median wall | median cpu | characters |")
    print("|---|---:|---:|---:|")
    for command in ("/clients", "/digest", "/digest Client 1"):
        wall, cpu = result[command]
        print(f"| `{command}` | {wall * 1000:.0f} ms | {cpu * 1000:.0f} ms | {result[command + ' chars']:,} |")
    print(f"# load average at the end: {load_average()}")


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--levels", default="5,100,400")
parser.add_argument("--window", type=int, default=9, help="cycles timed at each level (medians)")
parser.add_argument("--clients", type=int, default=50)
parser.add_argument("--weeks", type=int, default=104)
parser.add_argument("--repeat", type=int, default=10)
ARGS = parser.parse_args() if __name__ == "__main__" else parser.parse_args([])

if __name__ == "__main__":
    main()
