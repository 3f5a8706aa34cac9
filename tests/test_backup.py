"""`companion backup` / `companion restore`: a live SQLite copy under writes, the manifest, the key checks."""

from __future__ import annotations

import json
import tarfile
import threading
from pathlib import Path

from sqlalchemy import text
from sqlmodel import select
from typer.testing import CliRunner

from bot.backup import backup as take_backup
from bot.backup import fingerprint
from bot.cli import app as cli
from bot.config import load_settings
from bot.wiring import build
from dialogs.clock import FrozenClock
from storage import LogEntry, crypto
from storage import queries as q
from tests.conftest import MONDAY, TEST_DATA_KEY

runner = CliRunner()


def site(root: Path) -> Path:
    """A deployment directory with its config.yaml (the embedded SQLite default, its key file beside it)."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yaml"
    config.write_text("database:\n  path: data/companion.db\nweb:\n  demo: false\n")
    return config


def seeded(config: Path) -> tuple[object, int]:
    companion = build(load_settings(config), clock=FrozenClock(MONDAY))
    with companion.db.unit_of_work() as session:
        therapist = q.add_therapist(session, name="Dana", timezone="Europe/London", now=MONDAY)
        session.flush()
        client = q.create_client(session, therapist_id=therapist.id or 0, name="Sam", now=MONDAY)
        session.flush()
        client_id = client.id or 0
    return companion, client_id


def entries(config: Path) -> list[str]:
    restored = build(load_settings(config), clock=FrozenClock(MONDAY))
    with restored.db.unit_of_work() as session:
        texts = [e.text for e in session.exec(select(LogEntry).order_by(LogEntry.id)).all()]  # type: ignore[arg-type]
    restored.db.dispose()
    return texts


def test_a_backup_taken_during_writes_restores_every_row_committed_before_it(tmp_path: Path) -> None:
    source = site(tmp_path / "live")
    companion, client_id = seeded(source)
    committed: list[int] = []
    enough, stop = threading.Event(), threading.Event()

    def write() -> None:  # what `companion run` does meanwhile: small commits, one after another
        n = 0
        while not stop.is_set():
            with companion.db.unit_of_work() as session:  # type: ignore[attr-defined]
                session.add(LogEntry(client_id=client_id, text=f"entry {n}", created_at=MONDAY))
            committed.append(n)
            n += 1
            if n == 30:
                enough.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert enough.wait(30)
        before = len(committed)
        archive = tmp_path / "backup.tar.gz"
        result = runner.invoke(cli, ["backup", "--out", str(archive), "--config", str(source)])
        after = len(committed)
    finally:
        stop.set()
        writer.join()
    assert result.exit_code == 0, result.output
    assert "The data key is not in it" in result.output
    assert archive.stat().st_mode & 0o777 == 0o600
    key = (tmp_path / "live/data/companion.db.key").read_text().strip().encode()
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["companion.db", "manifest.json"]  # no key inside
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest["key_fingerprint"] == fingerprint(key) and manifest["key_included"] is False
    assert manifest["schema_version"] == _head()
    assert manifest["created_at"].endswith("+00:00")

    # A new machine without the key: refused, nothing written.
    target = site(tmp_path / "new")
    refused = runner.invoke(cli, ["restore", str(archive), "--config", str(target)])
    assert refused.exit_code == 1 and "no data key" in refused.output
    assert not (tmp_path / "new/data/companion.db").exists()
    # With the key file copied across: restored, and it opens with the same key.
    (tmp_path / "new/data").mkdir(parents=True, exist_ok=True)
    (tmp_path / "new/data/companion.db.key").write_text(key.decode() + "\n")
    done = runner.invoke(cli, ["restore", str(archive), "--config", str(target)])
    assert done.exit_code == 0, done.output
    assert "the data key opened 0 " not in done.output  # the encrypted rows really were decrypted
    texts = entries(target)
    # One consistent snapshot: every row committed before the backup began, and no gaps after.
    assert before <= len(texts) <= after
    assert texts == [f"entry {n}" for n in range(len(texts))]
    companion.db.dispose()  # type: ignore[attr-defined]


def test_restore_refuses_the_wrong_key_and_a_database_with_data(tmp_path: Path) -> None:
    source = site(tmp_path / "live")
    companion, client_id = seeded(source)
    with companion.db.unit_of_work() as session:  # type: ignore[attr-defined]
        session.add(LogEntry(client_id=client_id, text="a private note", created_at=MONDAY))
    companion.db.dispose()  # type: ignore[attr-defined]
    archive = tmp_path / "b.tar.gz"
    assert runner.invoke(cli, ["backup", "-o", str(archive), "-c", str(source)]).exit_code == 0

    target = site(tmp_path / "other")
    wrong = runner.invoke(cli, ["restore", str(archive), "-c", str(target)], env={"COMPANION_DATA_KEY": TEST_DATA_KEY})
    assert wrong.exit_code == 1 and "does not open this backup" in wrong.output
    assert not (tmp_path / "other/data/companion.db").exists()

    # Restoring over the live database (it has data) needs --force.
    again = runner.invoke(cli, ["restore", str(archive), "-c", str(source)])
    assert again.exit_code == 1 and "--force" in again.output
    forced = runner.invoke(cli, ["restore", str(archive), "-c", str(source), "--force"])
    assert forced.exit_code == 0, forced.output
    assert entries(source) == ["a private note"]


def test_include_key_warns_and_restores_on_a_machine_without_it(tmp_path: Path) -> None:
    source = site(tmp_path / "live")
    companion, _ = seeded(source)
    companion.db.dispose()  # type: ignore[attr-defined]
    archive = tmp_path / "with-key.tar.gz"
    result = runner.invoke(cli, ["backup", "-o", str(archive), "--include-key", "-c", str(source)])
    assert result.exit_code == 0 and "warning: the archive will hold the data key" in result.output
    with tarfile.open(archive) as tar:
        assert "companion.db.key" in tar.getnames()
    target = site(tmp_path / "fresh")
    done = runner.invoke(cli, ["restore", str(archive), "-c", str(target)])
    assert done.exit_code == 0 and "data key was written" in done.output
    key_file = tmp_path / "fresh/data/companion.db.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text() == (tmp_path / "live/data/companion.db.key").read_text()


def test_a_backup_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    source = site(tmp_path / "live")
    companion, _ = seeded(source)
    with companion.db.engine.begin() as connection:  # type: ignore[attr-defined]
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    companion.db.dispose()  # type: ignore[attr-defined]
    archive = tmp_path / "future.tar.gz"
    take_backup(tmp_path / "live/data/companion.db", [Fernet_key()], archive, include_key=True, now=MONDAY)
    result = runner.invoke(cli, ["restore", str(archive), "-c", str(site(tmp_path / "t"))])
    assert result.exit_code == 1 and "newer than this companion knows" in result.output


def test_on_postgresql_backup_prints_the_pg_dump_command(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": "postgresql://companion:s3cret@db.internal:5432/companion",
        "COMPANION_DATA_KEY": TEST_DATA_KEY,
    }
    result = runner.invoke(cli, ["backup", "-c", str(site(tmp_path))], env=env)
    assert result.exit_code == 0
    assert (
        "pg_dump --format=custom" in result.output
        and "postgresql://companion:PASSWORD@db.internal:5432/companion" in result.output
    )
    assert "s3cret" not in result.output and "pg_restore" in result.output


def Fernet_key() -> bytes:
    from cryptography.fernet import Fernet

    return Fernet.generate_key()


def _head() -> str:
    from alembic.script import ScriptDirectory

    from storage.db import alembic_config

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


assert crypto  # the ring the CLI sets is the one the tests read with
