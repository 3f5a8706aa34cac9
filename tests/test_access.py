"""Who can see what: a therapist reaches only their own clients, through every command; the audit log records it."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import select
from typer.testing import CliRunner

from bot.cli import app as cli
from bot.wiring import Companion
from dialogs.clock import FrozenClock
from storage import AuditEntry, Client, Debrief, Homework, SafetyFlag
from tests.support import Chat, add_therapist, invite_code, join

CRISIS = "I want to kill myself tonight"


def _dana_with_sam(companion: Companion) -> tuple[Chat, Chat, Chat]:
    """Dana's client Sam, with a homework, a finished debrief and an open crisis alert; Eve is another therapist."""
    add_therapist(companion, "Dana")
    add_therapist(companion, "Eve")
    dana, eve = Chat(companion, "therapist", "Dana"), Chat(companion, "therapist", "Eve")
    sam = join(companion, dana, "Sam", "sam")
    dana.send("/homework Sam\ntitle: Bus practice\nwhat: ride two stops\nrationale: the fear passes if I stay")
    dana.send("save")
    sam.open()
    for answer in (
        "it shows the fear passes",
        "8",
        "8",
        "done",
        "Sat on the 73 bus",
        "calm",
        "start",
        "it passes",
        "3",
    ):
        sam.send(answer)
    sam.send(CRISIS)
    dana.open()
    return dana, eve, sam


def _snapshot(companion: Companion) -> tuple[object, ...]:
    with companion.db.unit_of_work() as session:
        sam = session.exec(select(Client).where(Client.name == "Sam")).one()
        homework = session.exec(select(Homework).where(Homework.client_id == sam.id)).all()
        flags = session.exec(select(SafetyFlag).where(SafetyFlag.client_id == sam.id)).all()
        return (
            sam.model_dump(),
            [h.model_dump() for h in homework],
            [f.model_dump() for f in flags],
        )


def test_another_therapist_reaches_nothing_of_sams_through_any_command(companion: Companion) -> None:
    _dana_with_sam(companion)
    eve = Chat(companion, "therapist", "Eve")
    with companion.db.unit_of_work() as session:
        flag_id = session.exec(select(SafetyFlag.id)).one()
        homework_id = session.exec(select(Homework.id)).one()
        debrief_id = session.exec(select(Debrief.id)).one()
    before = _snapshot(companion)
    attempts = [
        "/homeworks Sam",
        f"/close Sam {homework_id}",
        "/session Sam tomorrow 3pm",
        "/digest Sam",
        f"/debrief Sam {debrief_id}",
        f"/ack {flag_id}",
        "/resume Sam",
        "/homework Sam\ntitle: Eve's task",
        "/homework Sam",
    ]
    for attempt in attempts:
        reply = eve.send(attempt)
        assert "Bus practice" not in reply and "73 bus" not in reply and "kill" not in reply, attempt
        refused = r"no client|don.t have|isn.t one of|not found|no open alert|unknown"
        assert re.search(refused, reply, re.I), (attempt, reply)
    caseload = eve.send("/clients") + eve.send("/digest")
    assert "Sam" not in caseload
    assert _snapshot(companion) == before  # nothing of Dana's changed
    # Sam's alert is still open for Dana, and nothing was set for Sam by Eve.
    with companion.db.unit_of_work() as session:
        assert session.exec(select(SafetyFlag)).one().acknowledged_at is None
        assert len(session.exec(select(Homework)).all()) == 1


def test_each_therapist_names_clients_independently(sqlite_companion: Companion) -> None:
    """Eve may have her own "Sam": invites and commands then reach hers, never Dana's."""
    _dana_with_sam(sqlite_companion)
    eve = Chat(sqlite_companion, "therapist", "Eve")
    invite_code(eve.send("/invite Sam"))
    assert "no homework" in eve.send("/homeworks Sam").casefold() or "Bus practice" not in eve.send("/homeworks Sam")
    with sqlite_companion.db.unit_of_work() as session:
        sams = session.exec(select(Client).where(Client.name == "Sam")).all()
        assert len(sams) == 2 and len({c.therapist_id for c in sams}) == 2


def test_only_the_access_module_looks_clients_up_for_therapists() -> None:
    """Ownership is decided in one place: no handler queries a therapist's clients around dialogs.access."""
    root = Path(__file__).resolve().parent.parent
    offenders = []
    for path in [*root.glob("bot/**/*.py"), *root.glob("channels/*.py"), *root.glob("dialogs/*.py")]:
        if path.name == "access.py":
            continue
        source = path.read_text()
        if re.search(r"\bq\.(clients_of|client_by_name)\(", source):
            offenders.append(str(path.relative_to(root)))
    assert offenders == []


def test_the_audit_log_records_reads_and_changes_without_content(companion: Companion) -> None:
    dana, _, _ = _dana_with_sam(companion)
    dana.send("/digest Sam")
    dana.send("/homeworks Sam")
    with companion.db.unit_of_work() as session:
        flag_id = session.exec(select(SafetyFlag.id)).one()
    dana.send(f"/ack {flag_id} called her")
    with companion.db.unit_of_work() as session:
        entries = session.exec(select(AuditEntry).order_by(AuditEntry.id)).all()
        sam_id = session.exec(select(Client.id)).one()
    actions = [e.action for e in entries]
    for expected in ("client.invite", "homework.set", "digest.read", "homework.list", "alert.ack"):
        assert expected in actions
    assert all(e.client_id == sam_id for e in entries if e.action != "caseload.read")
    assert all(e.actor.startswith("therapist:") for e in entries)
    dump = repr([e.model_dump() for e in entries])
    for secret in ("Sam", "Bus practice", "73 bus", "called her", "kill"):
        assert secret not in dump


def test_the_audit_log_is_append_only_in_the_database(companion: Companion) -> None:
    _dana_with_sam(companion)
    for statement in ("UPDATE auditentry SET action = 'nothing'", "DELETE FROM auditentry"):
        with pytest.raises(DBAPIError, match="append-only"), companion.db.engine.begin() as connection:
            connection.execute(text(statement))
    with companion.db.unit_of_work() as session:
        assert session.exec(select(AuditEntry)).first() is not None


def test_companion_audit_shows_a_clients_entries(sqlite_companion: Companion, sqlite_url: str, tmp_path: Path) -> None:
    dana, _, _ = _dana_with_sam(sqlite_companion)
    dana.send("/digest Sam")
    sqlite_companion.db.dispose()
    result = CliRunner().invoke(cli, ["audit", "--client", "Sam"], env={"DATABASE_URL": sqlite_url})
    assert result.exit_code == 0, result.output
    assert "digest.read" in result.output and "homework.set" in result.output
    assert "therapist:1" in result.output


def test_a_disabled_therapist_is_a_stranger_until_enabled(
    sqlite_companion: Companion, sqlite_url: str, clock: FrozenClock
) -> None:
    dana, _, _ = _dana_with_sam(sqlite_companion)
    runner = CliRunner()
    env = {"DATABASE_URL": sqlite_url}
    assert runner.invoke(cli, ["therapist", "disable", "Dana"], env=env).exit_code == 0
    reply = dana.send("/digest Sam")
    assert "Bus practice" not in reply and "to join" in reply.casefold()  # the stranger's how-to-join text
    listed = runner.invoke(cli, ["therapist", "list"], env=env).output
    assert "Dana\ttherapist\tdisabled" in listed
    assert runner.invoke(cli, ["therapist", "enable", "Dana"], env=env).exit_code == 0
    assert runner.invoke(cli, ["therapist", "role", "Dana", "admin"], env=env).exit_code == 0
    assert runner.invoke(cli, ["therapist", "role", "Dana", "owner"], env=env).exit_code == 2
    assert "Bus practice" in dana.send("/digest Sam")
    listing = dana.send("/therapists")  # an admin sees therapists, not their clients
    assert "Eve (therapist, active): 0 client(s)" in listing and "Sam" not in listing
    assert "Only an admin" in Chat(sqlite_companion, "therapist", "Eve").send("/therapists")
    with sqlite_companion.db.unit_of_work() as session:
        actions = [e.action for e in session.exec(select(AuditEntry).where(AuditEntry.actor == "operator")).all()]
    assert actions == ["therapist.disable", "therapist.enable", "therapist.role"]


def test_code_guessing_is_limited_per_sender_and_globally(sqlite_companion: Companion, clock: FrozenClock) -> None:
    """Many senders, each under their own limit, together hit the global one: then even a right code waits."""
    add_therapist(sqlite_companion)
    dana = Chat(sqlite_companion, "therapist", "Dana")
    code = invite_code(dana.send("/invite Sam"))
    limit = sqlite_companion.engine.settings.join_failure_global_limit
    per_sender = sqlite_companion.engine.settings.join_failure_limit
    for n in range(limit):
        guesser = Chat(sqlite_companion, "client", f"guesser{n // (per_sender - 1)}")
        assert "didn't work" in guesser.send("/start ABCDEFGH")
    sam = Chat(sqlite_companion, "client", "sam")
    assert "wait an hour" in sam.send(f"/start {code}")
    clock.advance(timedelta(hours=1, minutes=1))
    assert "Welcome, Sam" in sam.send(f"/start {code}")


def test_a_long_silent_chat_is_not_the_clients_until_a_new_invite(
    sqlite_companion: Companion, clock: FrozenClock
) -> None:
    """A recycled number or a sold account must not inherit a client's history."""
    dana, _, sam = _dana_with_sam(sqlite_companion)
    dana.send("/resume Sam")
    clock.advance(timedelta(days=181))
    reply = sam.send("/mydata")
    assert "to join" in reply.casefold() and "Bus practice" not in reply and "73 bus" not in reply
    assert "after 181 days of silence" in dana.open()
    assert "to join" in sam.send("done").casefold()  # still a stranger: no new link by itself
    code = invite_code(dana.send("/invite Sam"))
    for step in (f"/start {code}", "yes", "London", "18:00"):
        sam.send(step)
    assert "Bus practice" in dana.send("/digest Sam")  # the records stayed with the therapist
    with sqlite_companion.db.unit_of_work() as session:
        assert len(session.exec(select(Client)).all()) == 1
        entry = session.exec(select(AuditEntry).where(AuditEntry.action == "link.expired")).one()
        assert entry.actor == "system" and entry.detail["idle_days"] == 181
