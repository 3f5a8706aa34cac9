"""Encryption at rest: no client text in the database file, key handling, rotation (resumable), legacy plaintext."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import inspect, text
from sqlmodel import select
from typer.testing import CliRunner

from bot.cli import app as cli
from bot.config import Settings, load_settings
from bot.wiring import Companion, WiringError, build
from dialogs.clock import FrozenClock
from storage import Debrief, LogEntry, SafetyFlag, crypto
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


def test_invite_and_link_codes_are_stored_only_as_keyed_hashes(companion: Companion, tmp_path: Path) -> None:
    """A copy of the database used to hold every unspent code as issued: anyone with it could join as the client."""
    from tests.support import invite_code

    add_therapist(companion)
    dana = Chat(companion, "therapist", "Dana")
    code = invite_code(dana.send("/invite Sam"))
    env = {"DATABASE_URL": companion.settings.url}
    if companion.settings.data_key is not None:
        env["COMPANION_DATA_KEY"] = companion.settings.data_key.get_secret_value()
    linked = CliRunner().invoke(cli, ["therapist", "link", "Dana", "--telegram"], env=env)
    link_code = linked.output.split("/start ")[1].split()[0]
    with companion.db.engine.connect() as connection:
        stored = connection.execute(text("SELECT code_hash FROM invite")).scalars().all()
        columns = {c["name"] for c in inspect(companion.db.engine).get_columns("invite")}
    assert len(stored) == 2 and "code" not in columns
    assert code not in stored and link_code not in stored and all(len(h) == 64 for h in stored)
    if companion.db.dialect == "sqlite":
        companion.db.dispose()
        for path in tmp_path.glob("companion.db*"):
            assert code.encode() not in path.read_bytes() and link_code.encode() not in path.read_bytes(), path
    # Looked up by hash, the codes still work, once.
    sam = Chat(companion, "client", "sam")
    assert "Welcome, Sam" in sam.send(f"/start {code.lower()}")
    assert "linked" in Chat(companion, "therapist", "dana-phone").send(f"/start {link_code}")


def test_flag_reasons_are_encrypted_and_the_level_stays_queryable(companion: Companion, tmp_path: Path) -> None:
    add_therapist(companion)
    dana = Chat(companion, "therapist", "Dana")
    sam = join(companion, dana, "Sam", "sam")
    sam.send("I have a plan to kill myself tonight, I have the pills ready")
    with companion.db.unit_of_work() as session:
        (flag,) = session.exec(select(SafetyFlag)).all()
        reasons = flag.reasons
    assert reasons and flag.level == "crisis"
    with companion.db.engine.connect() as connection:
        level, stored = connection.execute(text("SELECT level, reasons FROM safetyflag")).one()
    assert level == "crisis"  # alerts, retention and the caseload query by it: listed in SECURITY.md
    assert stored.startswith(crypto.PREFIX) and not any(reason in stored for reason in reasons)
    if companion.db.dialect == "sqlite":
        companion.db.dispose()
        for path in tmp_path.glob("companion.db*"):
            assert all(reason.encode() not in path.read_bytes() for reason in reasons), path


def test_the_upgrade_hashes_existing_codes_and_encrypts_existing_reasons(
    db_url: str, tmp_path: Path, clock: FrozenClock
) -> None:
    """An installation from before migration 0010: its unspent invite still works, its reasons are sealed."""
    from storage import Database
    from tests.conftest import TEST_DATA_KEY

    old = Database(db_url)
    old.upgrade("0008")
    now = clock.now().replace(tzinfo=None)
    with old.engine.begin() as connection:
        connection.execute(
            text("INSERT INTO therapist (name, timezone, created_at, role) VALUES ('Dana', 'UTC', :t, 'therapist')"),
            {"t": now},
        )
        connection.execute(
            text("INSERT INTO client (therapist_id, name, name_key, status, created_at, scheduled_count) "
                 "VALUES (1, 'Sam', 'sam', 'invited', :t, 0)"),
            {"t": now},
        )
        connection.execute(
            text("INSERT INTO invite (code, client_id, created_at, expires_at) VALUES ('K7QMRT4W', 1, :t, :e)"),
            {"t": now, "e": now + timedelta(days=3)},
        )
        connection.execute(
            text("INSERT INTO safetyflag (client_id, therapist_id, level, reasons, text, created_at) "
                 "VALUES (1, 1, 'concern', :r, 'x', :t)"),
            {"r": '["hopelessness"]', "t": now},
        )
    old.dispose()
    companion = build(Settings(DATABASE_URL=db_url, config_dir=tmp_path, COMPANION_DATA_KEY=TEST_DATA_KEY), clock=clock)
    with companion.db.engine.connect() as connection:
        assert connection.execute(text("SELECT code_hash FROM invite")).scalar_one() != "K7QMRT4W"
        assert connection.execute(text("SELECT reasons FROM safetyflag")).scalar_one().startswith(crypto.PREFIX)
    with companion.db.unit_of_work() as session:
        assert session.exec(select(SafetyFlag)).one().reasons == ["hopelessness"]
    assert "Welcome, Sam" in Chat(companion, "client", "sam").send("/start K7QMRT4W")
    companion.db.dispose()


def test_the_database_file_and_its_wal_are_private(tmp_path: Path, clock: FrozenClock) -> None:
    """SQLite used to create companion.db, -wal and -shm with the umask (world-readable under 022)."""
    old = os.umask(0o022)
    try:
        config = tmp_path / "config.yaml"
        config.write_text("database:\n  path: data/c.db\n", encoding="utf-8")
        companion = build(load_settings(config), clock=clock)
        play_a_debrief(companion)
        names = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "data").iterdir()}
        companion.db.dispose()
    finally:
        os.umask(old)
    assert {"c.db", "c.db-wal", "c.db-shm", "c.db.key"} <= set(names)
    assert all(mode == 0o600 for mode in names.values()), names


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


def test_a_missing_key_file_beside_a_populated_database_refuses_to_start(tmp_path: Path, clock: FrozenClock) -> None:
    """Deleting the key file used to make the service create a new key and write new rows under it."""
    config = tmp_path / "config.yaml"
    config.write_text("database:\n  path: c.db\n", encoding="utf-8")
    companion = build(load_settings(config), clock=clock)
    play_a_debrief(companion)
    companion.db.dispose()
    key_file = tmp_path / "c.db.key"
    saved = key_file.read_text()
    key_file.unlink()

    result = CliRunner().invoke(cli, ["db", "upgrade", "--config", str(config)])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert f"the data key file {key_file} is missing, but {tmp_path / 'c.db'} holds encrypted data" in line
    assert "restore the key file from your backup" in line
    assert not key_file.exists()  # no new key, so nothing was written under one

    key_file.write_text(saved)  # the backup comes back: everything reads
    again = build(load_settings(config), clock=clock)
    with again.db.unit_of_work() as session:
        assert session.exec(select(Debrief)).one().what_happened == SECRET_WORDS
    again.db.dispose()


def test_a_wrong_key_refuses_to_start_on_both_databases(db_url: str, tmp_path: Path, clock: FrozenClock) -> None:
    """A wrong COMPANION_DATA_KEY used to start, then fail at the first read with a misleading KeyError."""
    from tests.conftest import TEST_DATA_KEY

    companion = build(Settings(DATABASE_URL=db_url, config_dir=tmp_path, COMPANION_DATA_KEY=TEST_DATA_KEY), clock=clock)
    play_a_debrief(companion)
    with companion.db.engine.connect() as connection:
        (check,) = connection.execute(text("SELECT value FROM instancevalue WHERE name = 'key_check'")).scalars()
    assert check.startswith(crypto.PREFIX)  # a known value, encrypted: readable only with the right key
    companion.db.dispose()

    wrong = Fernet.generate_key().decode()
    with pytest.raises(WiringError) as refused:
        build(Settings(DATABASE_URL=db_url, config_dir=tmp_path, COMPANION_DATA_KEY=wrong), clock=clock)
    assert str(refused.value).startswith("the data key (COMPANION_DATA_KEY) cannot decrypt the data in this database")
    result = CliRunner().invoke(cli, ["db", "upgrade"], env={"DATABASE_URL": db_url, "COMPANION_DATA_KEY": wrong})
    assert result.exit_code == 2 and "cannot decrypt the data in this database" in result.output

    # The right key as the second of a rotation's pair ("NEW,OLD") reads it: that is a rotation, not a mismatch.
    rotating = f"{wrong},{TEST_DATA_KEY}"
    build(Settings(DATABASE_URL=db_url, config_dir=tmp_path, COMPANION_DATA_KEY=rotating), clock=clock).db.dispose()


def test_a_database_from_before_the_key_check_is_checked_by_its_data(
    db_url: str, tmp_path: Path, clock: FrozenClock
) -> None:
    from tests.conftest import TEST_DATA_KEY

    settings = Settings(DATABASE_URL=db_url, config_dir=tmp_path, COMPANION_DATA_KEY=TEST_DATA_KEY)
    companion = build(settings, clock=clock)
    play_a_debrief(companion)
    with companion.db.engine.begin() as connection:
        connection.execute(text("DELETE FROM instancevalue"))  # as written before the check existed
    companion.db.dispose()
    wrong = Fernet.generate_key().decode()
    with pytest.raises(WiringError, match="cannot decrypt the data in this database"):
        build(Settings(DATABASE_URL=db_url, config_dir=tmp_path, COMPANION_DATA_KEY=wrong), clock=clock)
    again = build(settings, clock=clock)  # the right key: the check is recorded now
    with again.db.engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM instancevalue")).scalar_one() == 1
    again.db.dispose()


def test_a_new_key_is_made_only_for_an_empty_database(
    tmp_path: Path, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("database:\n  path: c.db\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="companion"):
        build(load_settings(config), clock=clock).db.dispose()
    assert f"created a new data key {tmp_path / 'c.db.key'}" in caplog.text
    assert "holds no encrypted data yet" in caplog.text
    (tmp_path / "c.db.key").unlink()  # only the key check was written: losing the key loses nothing else...
    with pytest.raises(WiringError, match="is missing, but"):  # ...but it is encrypted data all the same
        build(load_settings(config), clock=clock)


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


SECRET_NAMES = [
    "DATABASE_URL",
    "COMPANION_DATA_KEY",
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_WEBHOOK_SECRET",
    "SLACK_BOT_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_APP_TOKEN",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
]


@pytest.mark.parametrize("casing", [str.upper, str.lower, lambda name: name.title()], ids=["upper", "lower", "title"])
@pytest.mark.parametrize("name", [*SECRET_NAMES, "data_key"])
def test_a_secret_in_the_config_file_is_refused_in_any_casing(tmp_path: Path, name: str, casing: object) -> None:
    """``Telegram_Bot_Token: …`` used to be loaded from the file; every secret, by its variable or field name."""
    key = casing(name)  # type: ignore[operator]
    config = tmp_path / "config.yaml"
    config.write_text(f"database:\n  path: c.db\n{key}: 'secret-value'\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["db", "upgrade", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert f"{key} must come from the environment, not the config file" in result.output
    assert not (tmp_path / "c.db").exists()  # refused before anything was opened


def test_rotation_round_trip_through_the_cli(tmp_path: Path, clock: FrozenClock) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("database:\n  path: c.db\ninvites:\n  ttl_days: 90\n", encoding="utf-8")
    companion = build(load_settings(config), clock=clock)
    play_a_debrief(companion)
    Chat(companion, "therapist", "Dana").send("/invite Kim")  # unspent: its hash is under the old key
    companion.db.dispose()
    key_file = tmp_path / "c.db.key"
    old_key = key_file.read_text().strip()

    result = CliRunner().invoke(cli, ["keys", "rotate", "--config", str(config), "--batch", "3"])
    assert result.exit_code == 0, result.output
    assert "1 unspent invite or link code(s) were issued under the old key" in result.output
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
