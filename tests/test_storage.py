"""Storage on SQLite and PostgreSQL: migrations, UTC times, the unit of work, dedupe, the outbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect
from sqlmodel import select

from bot.wiring import Companion
from storage import Database, OutboxMessage, ProcessedInbound, Therapist
from storage import queries as q


def test_migrations_create_every_table_and_are_idempotent(db_url: str) -> None:
    db = Database(db_url)
    db.upgrade()
    db.upgrade()
    tables = set(inspect(db.engine).get_table_names())
    assert {
        "therapist",
        "client",
        "identity",
        "invite",
        "homework",
        "occasion",
        "debrief",
        "logentry",
        "conversationstate",
        "outboxmessage",
        "processedinbound",
        "joinfailure",
        "alembic_version",
    } <= tables
    db.dispose()


def test_times_come_back_aware_and_utc(companion: Companion) -> None:
    created = datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    with companion.db.unit_of_work() as session:
        q.add_therapist(session, name="Dana", timezone="Europe/Berlin", now=created)
    with companion.db.unit_of_work() as session:
        therapist = session.exec(select(Therapist)).one()
        assert therapist.created_at == created
        assert therapist.created_at.tzinfo is not None and therapist.created_at.utcoffset() == timedelta(0)


def test_naive_datetimes_are_refused(companion: Companion) -> None:
    with pytest.raises(Exception, match="naive datetime"), companion.db.unit_of_work() as session:
        q.add_therapist(session, name="Dana", timezone="UTC", now=datetime(2026, 1, 1))


def test_a_failed_unit_of_work_leaves_nothing_half_written(companion: Companion) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(RuntimeError), companion.db.unit_of_work() as session:
        q.add_therapist(session, name="Dana", timezone="UTC", now=now)
        q.enqueue(session, channel="console", address="therapist:Dana", payload={"text": "hi"}, now=now)
        raise RuntimeError("crash between the state change and the commit")
    with companion.db.unit_of_work() as session:
        assert session.exec(select(Therapist)).first() is None
        assert session.exec(select(OutboxMessage)).first() is None


def test_an_inbound_id_is_claimed_once(companion: Companion) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with companion.db.unit_of_work() as session:
        assert q.claim_inbound(session, channel="telegram", message_id="42", now=now)
        assert not q.claim_inbound(session, channel="telegram", message_id="42", now=now)
        assert q.claim_inbound(session, channel="whatsapp", message_id="42", now=now)
    with companion.db.unit_of_work() as session:
        assert len(session.exec(select(ProcessedInbound)).all()) == 2


def test_the_outbox_hands_out_pending_rows_oldest_first(companion: Companion) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with companion.db.unit_of_work() as session:
        for n in range(3):
            q.enqueue(session, channel="console", address="client:a", payload={"text": str(n)}, now=now)
        q.enqueue(session, channel="console", address="client:b", payload={"text": "b"}, now=now)
    with companion.db.unit_of_work() as session:
        rows = q.pending_outbox(session, channel="console", address="client:a")
        assert [r.payload["text"] for r in rows] == ["0", "1", "2"]
        q.mark_sent(session, message=rows[0], now=now)
    with companion.db.unit_of_work() as session:
        assert [r.payload["text"] for r in q.pending_outbox(session, channel="console")] == ["1", "2", "b"]


@pytest.mark.postgres
def test_a_connection_that_sat_idle_is_tested_and_replaced_if_the_server_dropped_it(
    postgres_schema_url: str,
) -> None:
    """No ping on every checkout (a round trip per message); one that sat idle is tested first."""
    from sqlalchemy import create_engine, text

    from tests.conftest import POSTGRES_URL

    db = Database(postgres_schema_url, idle_ping=0.0)  # every reuse counts as idle here
    db.upgrade()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with db.unit_of_work() as session:
        q.add_therapist(session, name="Dana", timezone="UTC", now=now)
        backend = session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:  # the server drops the pooled connection (a restart, a timeout)
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
    admin.dispose()
    with db.unit_of_work() as session:  # replaced at checkout: the unit of work never sees the dead one
        assert session.exec(select(Therapist.name)).one() == "Dana"
    db.dispose()
