"""Encryption at rest: no client text in the database file, key handling, rotation (resumable), legacy plaintext."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlmodel import select
from typer.testing import CliRunner

from bot.cli import app as cli
from bot.config import Settings, load_settings
from bot.wiring import Companion, WiringError, build
from dialogs.clock import FrozenClock
from storage import Debrief, LogEntry, crypto
from tests.conftest import POSTGRES_URL
from tests.support import Chat, add_therapist, join

SECRET_WORDS = "Rode the 73 past Aunt Margaret's flat and felt my chest tighten"


def play_a_debrief(companion: Companion) -> None:
    add_therapist(companion)
    dana = Chat(companion, "therapist", "Dana")
    sam = join(companion, dana, "Sam", "sam")
    dana.send("/homework Sam\ntitle: Bus practice\nwhat: ride two stops\nrationale: the fear passes if I stay")
    dana.send("save")
    sam.open()
    for answer in (
        "it shows the fear passes",
        "8",
        "8",
        "done",
        SECRET_WORDS,
        "calmer than expected",
        "the start",
        "it passes",
        "3",
    ):
        sam.send(answer)
    sam.send(f"/log {SECRET_WORDS} again")
    sam.send("yes")
    dana.send("/plan Sam\ncoping: call Aunt Margaret\npeople: Aunt Margaret: 07700 900123")
    dana.send("/reviewed Sam 1 Aunt Margaret came up again")
    assert SECRET_WORDS in dana.send("/digest Sam")  # readable through the service...


def test_client_text_is_not_in_the_database_file(sqlite_companion: Companion, tmp_path: Path) -> None:
    play_a_debrief(sqlite_companion)
    sqlite_companion.db.dispose()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("companion.db")]
    assert files
    for path in files:  # ...but not in the file, its WAL or its shared memory
        raw = path.read_bytes()
        assert SECRET_WORDS.encode() not in raw, path
        assert b"Aunt Margaret" not in raw and b"the fear passes" not in raw


def test_stored_values_are_ciphertext_on_both_databases(companion: Companion) -> None:
    play_a_debrief(companion)
    with companion.db.engine.connect() as connection:
        stored = connection.execute(text("SELECT what_happened FROM debrief")).scalar_one()
        payloads = connection.execute(text("SELECT CAST(payload AS TEXT) FROM outboxmessage")).scalars().all()
        plan = connection.execute(text("SELECT coping, people FROM safetyplan")).one()
        note = connection.execute(text("SELECT review_note FROM homework")).scalar_one()
    assert stored.startswith(crypto.PREFIX) and "Margaret" not in stored
    assert payloads and all(p.startswith(crypto.PREFIX) for p in payloads)
    assert all(v.startswith(crypto.PREFIX) and "Margaret" not in v for v in (*plan, note))


def test_the_embedded_default_creates_a_private_key_file_once(tmp_path: Path, clock: FrozenClock) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("database:\n  path: data/c.db\n", encoding="utf-8")
    first = build(load_settings(config), clock=clock)
    key_file = tmp_path / "data" / "c.db.key"
    assert key_file.exists() and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text()
    first.db.dispose()
    build(load_settings(config), clock=clock).db.dispose()
    assert key_file.read_text() == key  # reused, never replaced


def test_a_server_database_without_a_key_refuses_to_start(tmp_path: Path, clock: FrozenClock) -> None:
    with pytest.raises(WiringError, match="COMPANION_DATA_KEY is required"):
        build(Settings(DATABASE_URL=POSTGRES_URL, config_dir=tmp_path), clock=clock)
    with pytest.raises(WiringError, match="Fernet keys"):
        build(Settings(DATABASE_URL=POSTGRES_URL, config_dir=tmp_path, COMPANION_DATA_KEY="not-a-key"), clock=clock)


def test_a_key_in_the_config_file_is_refused(tmp_path: Path) -> None:
    from bot.config import ConfigError

    config = tmp_path / "config.yaml"
    config.write_text("COMPANION_DATA_KEY: abc\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must come from the environment"):
        load_settings(config)


def test_rotation_round_trip_through_the_cli(tmp_path: Path, clock: FrozenClock) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("database:\n  path: c.db\n", encoding="utf-8")
    companion = build(load_settings(config), clock=clock)
    play_a_debrief(companion)
    companion.db.dispose()
    key_file = tmp_path / "c.db.key"
    old_key = key_file.read_text().strip()

    result = CliRunner().invoke(cli, ["keys", "rotate", "--config", str(config), "--batch", "3"])
    assert result.exit_code == 0, result.output
    new_key = key_file.read_text().strip()
    assert new_key != old_key and "," not in new_key and stat.S_IMODE(key_file.stat().st_mode) == 0o600

    reopened = build(load_settings(config), clock=clock)  # the new key alone reads everything
    with reopened.db.unit_of_work() as session:
        assert session.exec(select(Debrief)).one().what_happened == SECRET_WORDS
    with reopened.db.engine.connect() as connection:
        stored = connection.execute(text("SELECT what_happened FROM debrief")).scalar_one()
    with pytest.raises(Exception):  # noqa: B017 - the old key no longer opens anything
        Fernet(old_key.encode()).decrypt(stored.removeprefix(crypto.PREFIX).encode())
    reopened.db.dispose()


def test_an_interrupted_rotation_resumes(sqlite_companion: Companion) -> None:
    play_a_debrief(sqlite_companion)
    old = crypto.parse_keys((Path(sqlite_companion.settings.url.removeprefix("sqlite:///") + ".key")).read_text())
    new = Fernet.generate_key()
    engine = sqlite_companion.db.engine
    crypto.use([new, *old])
    first = crypto.rotate(engine, [new, *old], batch=2, max_batches=2)  # interrupted after two batches
    assert 0 < first <= 4  # stopped early
    crypto.rotate(engine, [new, *old], batch=2)  # run again: it finishes
    crypto.use([new])  # the old key is gone: everything must still read
    with sqlite_companion.db.unit_of_work() as session:
        assert session.exec(select(Debrief)).one().what_happened == SECRET_WORDS
        assert SECRET_WORDS in session.exec(select(LogEntry)).one().text


def test_plaintext_from_before_encryption_is_read_and_then_encrypted(sqlite_companion: Companion) -> None:
    play_a_debrief(sqlite_companion)
    engine = sqlite_companion.db.engine
    with engine.begin() as connection:
        connection.execute(text("UPDATE logentry SET text = 'written before encryption'"))
    with sqlite_companion.db.unit_of_work() as session:
        assert session.exec(select(LogEntry)).one().text == "written before encryption"
    keys = crypto.parse_keys(Path(sqlite_companion.settings.url.removeprefix("sqlite:///") + ".key").read_text())
    crypto.rotate(engine, keys)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT text FROM logentry")).scalar_one().startswith(crypto.PREFIX)
