"""Benchmark: the weekly digest for a therapist with 50 clients and 8 weeks of data.

    python -m bench.digest [--clients 50] [--weeks 8] [--repeat 20]

Seeds one therapist's caseload (each client: one homework per week, a nudge
a day, five debriefs a week with realistic answers, an obstacle a week, a
note, a concern flag now and then) into a fresh SQLite file, then times what
the weekly digest does: build the caseload overview and every client's
digest, and render them as text. Reports the median and the worst of
``--repeat`` runs, in-process and warm (the service is a long-running process).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

from storage import crypto

# Client text is encrypted at rest; every process of a run uses this one (benchmark-only) key.
crypto.use([b"YmVuY2htYXJrLW9ubHkta2V5LTMyLWJ5dGVzLWxvbmc="])

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def seed(url: str, clients: int, weeks: int) -> None:
    from storage import Client, Database, Debrief, Homework, LogEntry, Occasion, SafetyFlag, Therapist

    db = Database(url)
    db.upgrade()
    start = NOW - timedelta(weeks=weeks)
    homeworks, occasions, debriefs, logs, flags = [], [], [], [], []
    hw_id = occ_id = 0
    for c in range(1, clients + 1):
        for w in range(weeks):
            hw_id += 1
            week_start = start + timedelta(weeks=w)
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
                    "status": "open" if w == weeks - 1 else "closed",
                    "created_at": week_start,
                    "delivered_at": week_start,
                    "rationale_own_words": "to learn the fear passes",
                    "confidence": 5 + c % 5,
                    "smaller_version_wanted": c % 7 == 0,
                }
            )
            for d in range(7):
                occ_id += 1
                due = week_start + timedelta(days=d, hours=10)
                done = d < 5
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
                    debriefs.append(
                        {
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
                    )
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
                {
                    "client_id": c,
                    "homework_id": hw_id,
                    "text": "Felt braver today",
                    "created_at": week_start + timedelta(days=3),
                }
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
    # Completed debriefs carry the rubric criteria they met, as the engine stores them on completion.
    import prompts
    from dialogs.digest import judged

    catalogue = prompts.load("en")
    extras = [e.key for e in catalogue.homework_types["exposure"].extras]
    due_of = {o["id"]: Occasion(**o) for o in occasions}
    for row in debriefs:
        if row["kind"] == "debrief":
            row["criteria"] = judged(catalogue, Debrief(**row), extras, due_of.get(row.get("occasion_id") or 0))
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
                    "last_contact_at": NOW - timedelta(days=c % 9),
                }
                for c in range(1, clients + 1)
            ],
        )
        for table, rows in (
            (Homework, homeworks),
            (Occasion, occasions),
            (Debrief, debriefs),
            (LogEntry, logs),
            (SafetyFlag, flags),
        ):
            if rows:
                keys = {key for row in rows for key in row}  # executemany needs the same keys in every row
                connection.execute(insert(table), [{key: row.get(key) for key in keys} for row in rows])
    db.dispose()


def weekly_digest(url: str) -> tuple[int, list[float]]:
    import prompts
    from dialogs.digest import build_weekly
    from dialogs.digest_text import render_caseload_text, render_text
    from storage import Database, Therapist

    catalogue = prompts.load("en")
    db = Database(url)

    def once() -> int:
        with db.unit_of_work() as session:
            therapist = session.get(Therapist, 1)
            assert therapist is not None
            caseload, digests = build_weekly(session, prompts=catalogue, therapist=therapist, now=NOW)
            size = len(render_caseload_text(caseload, catalogue))
            size += sum(len(render_text(digest, catalogue)) for digest in digests)
        return size

    size = once()  # warm: imports, prompt catalogue, SQLite page cache
    times = []
    for _ in range(ARGS.repeat):
        started = time.perf_counter()
        once()
        times.append(time.perf_counter() - started)
    db.dispose()
    return size, times


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        url = f"sqlite:///{Path(workdir) / 'digest.db'}"
        seed(url, ARGS.clients, ARGS.weeks)
        size, times = weekly_digest(url)
    print(
        f"# weekly digest, {ARGS.clients} clients x {ARGS.weeks} weeks on SQLite; {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"caseload + {ARGS.clients} client digests, text: median {statistics.median(times) * 1000:.0f} ms, "
        f"worst {max(times) * 1000:.0f} ms over {len(times)} runs ({size:,} characters)"
    )


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--clients", type=int, default=50)
parser.add_argument("--weeks", type=int, default=8)
parser.add_argument("--repeat", type=int, default=20)
ARGS = parser.parse_args() if __name__ == "__main__" else parser.parse_args([])

if __name__ == "__main__":
    main()
