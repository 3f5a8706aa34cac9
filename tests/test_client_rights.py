"""A client's rights and the operator's duties: /mydata, /delete, export, forget, and retention."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import inspect
from sqlmodel import Session, SQLModel, select
from typer.testing import CliRunner

from bot.cli import app as cli
from bot.wiring import Companion
from dialogs import client_data
from dialogs.clock import FrozenClock
from dialogs.messages import Outbound
from dialogs.retention import RetentionPolicy, purge
from storage import (
    AuditEntry,
    Client,
    ConversationState,
    Debrief,
    Homework,
    Identity,
    LogEntry,
    MeasureResponse,
    Occasion,
    OutboxMessage,
    ProcessedInbound,
    SafetyFlag,
    TherapistNote,
)
from tests.fake_telegram import FakeBotAPI
from tests.support import Chat, add_therapist, join
from tests.test_telegram import SAM, Harness, joined, telegram_companion

WORDS = "Sat on the 73 bus past the hospital and my chest went tight"
NOTE = "Formulation: safety behaviours keep the fear going"


def _sams_week(companion: Companion) -> tuple[Chat, Chat]:
    add_therapist(companion, "Dana")
    dana = Chat(companion, "therapist", "Dana")
    sam = join(companion, dana, "Sam", "sam")
    dana.send("/homework Sam\ntitle: Bus practice\nwhat: ride two stops\nrationale: the fear passes if I stay")
    dana.send("save")
    sam.open()
    for answer in ("it shows the fear passes", "8", "8", "done", WORDS, "calm", "start", "it passes", "3"):
        sam.send(answer)
    sam.send("/log slept badly before the bus")
    sam.send("yes")  # it is about the bus homework
    sam.send("I feel hopeless about all this")  # a concern flag: a message about Sam to Dana may follow
    dana.send("/plan Sam\ncoping: a walk round the block\npeople: Alex: 07700 900123")
    dana.send("/measure Sam gad7 once")
    sam.send("/questionnaire")  # nothing started yet
    with companion.db.unit_of_work() as session:
        client = session.exec(select(Client)).one()
        session.add(  # a half-finished questionnaire, as the sweep leaves it after two answers
            MeasureResponse(
                client_id=client.id or 0, instrument="gad7", started_at=companion.clock.now(), answers=[1, 2]
            )
        )
        session.add(
            TherapistNote(
                client_id=client.id or 0, therapist_id=client.therapist_id, text=NOTE, created_at=companion.clock.now()
            )
        )
    dana.open()
    return dana, sam


def _count(session: Session, table: type[SQLModel], client_id: int) -> int:
    return len(session.exec(select(table).where(table.client_id == client_id)).all())  # type: ignore[attr-defined]


def test_every_table_with_a_client_id_is_covered_by_export_and_erasure() -> None:
    """A new table that holds a client's rows must join client_data.CLIENT_TABLES (or be the audit log)."""
    with_client = {table.name for table in SQLModel.metadata.sorted_tables if "client_id" in table.columns} - {
        "auditentry"
    }
    assert with_client == {t.__tablename__ for t in client_data.CLIENT_TABLES}  # type: ignore[attr-defined]


def test_mydata_gives_the_client_their_own_words_and_is_audited(companion: Companion) -> None:
    _, sam = _sams_week(companion)
    reply = sam.send("/mydata")
    document = json.loads(reply[reply.index("{") :])
    assert document["format"] == client_data.FORMAT
    assert document["client"]["name"] == "Sam" and "name_key" not in document["client"]
    assert any(d["what_happened"] == WORDS for d in document["debrief"])
    assert any(entry["text"] == "slept badly before the bus" for entry in document["logentry"])
    assert any(h["title"] == "Bus practice" for h in document["homework"])
    assert document["messages_sent_to_client"]
    assert document["safetyplan"][0]["coping"] == "a walk round the block"
    assert document["measureresponse"][0]["answers"] == [1, 2] and document["measureschedule"]
    assert "therapistnote" not in document and NOTE not in reply  # the therapist's records: ask the therapist
    with companion.db.unit_of_work() as session:
        entry = session.exec(select(AuditEntry).where(AuditEntry.action == "client.export")).one()
        assert entry.actor.startswith("client:") and entry.client_id == document["client"]["id"]


def test_mydata_arrives_as_a_file_on_telegram(sqlite_url: str, clock: FrozenClock, tmp_path: Path) -> None:
    with FakeBotAPI() as fake:
        companion = telegram_companion(sqlite_url, clock, tmp_path, fake, webhook=True)

        async def scenario(h: Harness) -> None:
            await joined(companion)(h)
            await h.say(SAM, "/log the bus was fine today")
            reply = await h.say(SAM, "/mydata")
            assert "JSON" in reply
            (document,) = fake.documents(SAM)
            assert document.filename.startswith("my-data-") and document.filename.endswith(".json")
            data = json.loads(document.data)
            assert data["logentry"][0]["text"] == "the bus was fine today"

        async def main() -> None:
            async with Harness(companion, fake, webhook=True) as harness:
                await scenario(harness)

        asyncio.run(main())
        companion.db.dispose()


def test_delete_asks_first_then_erases_everything_and_tells_the_therapist(companion: Companion) -> None:
    dana, sam = _sams_week(companion)
    with companion.db.unit_of_work() as session:
        client_id = session.exec(select(Client.id)).one()
        assert _count(session, SafetyFlag, client_id) >= 1
    assert "Delete everything?" in sam.send("/delete")
    assert "Please answer yes" in sam.send("ok")  # "ok" is not enough for something irreversible
    assert "nothing has been deleted" in sam.send("no")
    with companion.db.unit_of_work() as session:
        assert session.get(Client, client_id) is not None
    sam.send("/delete")
    assert "has been deleted" in sam.send("yes")
    assert "Sam deleted their data" in dana.open()
    with companion.db.unit_of_work() as session:
        assert session.get(Client, client_id) is None
        for table in client_data.CLIENT_TABLES:
            assert _count(session, table, client_id) == 0, table
        # Nothing about Sam is left in anyone's outbox, except the notice that Sam deleted it and the goodbye.
        for row in session.exec(select(OutboxMessage)).all():
            message = Outbound.from_payload(row.payload)
            assert message.about() != client_id
            assert WORDS not in message.text and "hopeless" not in message.text and "Bus practice" not in message.text
        state = session.exec(select(ConversationState).where(ConversationState.address == "client:sam")).one()
        assert state.flow == "idle" and state.data == {}
        (entry,) = session.exec(select(AuditEntry).where(AuditEntry.action == "client.erase")).all()
        assert entry.client_id == client_id and "Sam" not in json.dumps(entry.detail)
    # The chat is a stranger's now: a "done" explains how to join, and nothing of Sam's comes back.
    assert "to join" in sam.send("done").casefold()


def test_export_and_forget_for_operators(companion: Companion, db_url: str, tmp_path: Path) -> None:
    _sams_week(companion)
    with companion.db.unit_of_work() as session:
        client_id = session.exec(select(Client.id)).one()
        counts = {t.__tablename__: _count(session, t, client_id) for t in client_data.CLIENT_TABLES}  # type: ignore[attr-defined]
    env = {"DATABASE_URL": db_url}
    if not db_url.startswith("sqlite"):
        from tests.conftest import TEST_DATA_KEY

        env["COMPANION_DATA_KEY"] = TEST_DATA_KEY
    runner = CliRunner()
    out = tmp_path / "sam.json"
    result = runner.invoke(cli, ["export", "Sam", "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o600
    document = json.loads(out.read_text())
    for table, n in counts.items():  # every row of every table, with bookkeeping columns too
        assert len(document[table]) == n, table
    assert document["therapistnote"][0]["text"] == NOTE
    assert document["debrief"][0]["client_id"] == client_id
    assert any(d["what_happened"] == WORDS for d in document["debrief"])

    assert runner.invoke(cli, ["forget", "Sam"], env=env, input="n\n").exit_code == 1  # asks first
    result = runner.invoke(cli, ["forget", "Sam", "--yes"], env=env)
    assert result.exit_code == 0, result.output
    with companion.db.unit_of_work() as session:
        assert session.get(Client, client_id) is None
        for table in (Homework, Occasion, Debrief, LogEntry, SafetyFlag, TherapistNote, Identity):
            assert _count(session, table, client_id) == 0, table
        planned = session.exec(select(Occasion)).all()
        assert planned == []  # the pending nudges went with the homework
        pending = session.exec(select(OutboxMessage).where(OutboxMessage.address == "client:sam")).all()
        assert pending == []
        actions = [(e.actor, e.action, e.client_id) for e in session.exec(select(AuditEntry)).all()]
    assert ("operator", "client.export", client_id) in actions
    assert ("operator", "client.forget", client_id) in actions
    assert runner.invoke(cli, ["audit", "--client", f"#{client_id}"], env=env).exit_code == 0


def test_retention_purges_old_messages_and_keeps_records_unless_configured(
    sqlite_companion: Companion, clock: FrozenClock
) -> None:
    _dana, sam = _sams_week(sqlite_companion)
    sam.open()
    clock.advance(timedelta(days=31))
    with sqlite_companion.db.unit_of_work() as session:
        counts = purge(session, policy=RetentionPolicy(messages=timedelta(days=30)), now=clock.now())
    assert counts["outboxmessage"] > 0 and counts["processedinbound"] > 0
    with sqlite_companion.db.unit_of_work() as session:
        assert session.exec(select(ProcessedInbound)).all() == []
        sent = session.exec(select(OutboxMessage).where(OutboxMessage.sent_at != None)).all()  # noqa: E711
        assert sent == []
        assert session.exec(select(Debrief)).all()  # records are kept by default
        entry = session.exec(select(AuditEntry).where(AuditEntry.action == "retention.purge")).one()
        assert entry.actor == "system" and entry.detail["deleted"]["outboxmessage"] == counts["outboxmessage"]
    with sqlite_companion.db.unit_of_work() as session:
        counts = purge(session, policy=RetentionPolicy(messages=None, records=timedelta(days=30)), now=clock.now())
    assert counts["debrief"] >= 1 and counts["logentry"] == 1
    with sqlite_companion.db.unit_of_work() as session:
        assert session.exec(select(Debrief)).all() == [] and session.exec(select(LogEntry)).all() == []
        assert session.exec(select(Homework)).all()  # still open: kept


def test_purge_never_removes_an_open_crisis_alert(sqlite_companion: Companion, clock: FrozenClock) -> None:
    add_therapist(sqlite_companion)
    dana = Chat(sqlite_companion, "therapist", "Dana")
    sam = join(sqlite_companion, dana, "Sam", "sam")
    sam.send("I want to kill myself")
    clock.advance(timedelta(days=400))
    with sqlite_companion.db.unit_of_work() as session:
        purge(session, policy=RetentionPolicy(records=timedelta(days=30)), now=clock.now())
    with sqlite_companion.db.unit_of_work() as session:
        assert session.exec(select(SafetyFlag)).one().acknowledged_at is None


def test_client_tables_in_the_live_schema_match_the_models(sqlite_companion: Companion) -> None:
    """The erasure walks the models; the migrated database must have no other table holding client rows."""
    names = inspect(sqlite_companion.db.engine).get_table_names()
    with_client: set[Any] = {
        n for n in names if "client_id" in {c["name"] for c in inspect(sqlite_companion.db.engine).get_columns(n)}
    }
    assert with_client - {"auditentry"} == {t.__tablename__ for t in client_data.CLIENT_TABLES}  # type: ignore[attr-defined]
