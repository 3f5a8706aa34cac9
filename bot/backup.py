"""`companion backup` and `companion restore`: a consistent copy of the SQLite database with a manifest.

The archive is a gzipped tar holding ``companion.db`` (taken with SQLite's
online backup API: one consistent snapshot, safe while `companion run` is
writing, because it reads under SQLite's own locking), ``manifest.json``
(schema version, created at, the data key's fingerprint, the database's
SHA-256) and, only with ``--include-key``, ``companion.db.key``. Without the
key the archive is useless to whoever finds it; with it, it is as sensitive
as the key itself. On PostgreSQL the database's own tools do this job
better; :func:`postgres_commands` says which.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from alembic.script import ScriptDirectory
from cryptography.fernet import InvalidToken
from sqlalchemy import Text, create_engine, inspect, select, text
from sqlalchemy.engine import Engine, make_url

from storage import crypto
from storage.db import Database, alembic_config

FORMAT: Final = "homework-companion-backup/1"
DATABASE_MEMBER: Final = "companion.db"
MANIFEST_MEMBER: Final = "manifest.json"
KEY_MEMBER: Final = "companion.db.key"
SAMPLE: Final = 50  # encrypted values checked per table at restore: enough to catch a wrong key, quick on any size


class BackupError(Exception):
    """The backup or restore cannot go ahead; the message says why and what to do."""


@dataclass(frozen=True)
class Manifest:
    format: str
    created_at: str
    schema_version: str | None
    key_fingerprint: str
    key_included: bool
    database_sha256: str

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
            manifest = cls(**{name: data[name] for name in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError) as exc:
            raise BackupError(f"not a companion backup: the manifest is unreadable ({exc})") from exc
        if manifest.format != FORMAT:
            raise BackupError(f"unknown backup format {manifest.format!r} (this companion reads {FORMAT})")
        return manifest


def fingerprint(key: bytes) -> str:
    """A short, one-way name for a data key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(key.strip()).hexdigest()[:16]


def default_name(now: datetime) -> Path:
    return Path(f"companion-backup-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}.tar.gz")


def postgres_commands(url: str) -> tuple[str, str]:
    """The pg_dump and pg_restore commands for a PostgreSQL DATABASE_URL (libpq's form, no driver suffix)."""
    parsed = make_url(url).set(drivername="postgresql")
    safe = parsed.render_as_string(hide_password=True).replace("***", "PASSWORD")
    dump = f'pg_dump --format=custom --no-owner --file companion-$(date -u +%Y%m%dT%H%M%SZ).dump "{safe}"'
    restore = f'pg_restore --clean --if-exists --no-owner --dbname "{safe}" companion-YYYYMMDDTHHMMSSZ.dump'
    return dump, restore


def schema_version(path: Path) -> str | None:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        try:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError:
            return None
    return row[0] if row else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _private_file(path: Path) -> Any:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(descriptor, "wb")


def backup(database: Path, keys: Sequence[bytes], out: Path, *, include_key: bool, now: datetime) -> Manifest:
    """Write a consistent copy of the SQLite ``database`` to the archive ``out`` (mode 0600).

    The copy is one step of SQLite's backup API: it reads a single snapshot
    (WAL readers never block the writer, and the writer never blocks it for
    long), so rows committed while it runs are either all in or all out.
    """
    if not database.is_file():
        raise BackupError(f"no database at {database}")
    with tempfile.TemporaryDirectory(prefix="companion-backup-") as scratch:
        copy = Path(scratch) / DATABASE_MEMBER
        source = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)  # all pages in one step: one snapshot
        finally:
            target.close()
            source.close()
        manifest = Manifest(
            format=FORMAT,
            created_at=now.astimezone(UTC).isoformat(),
            schema_version=schema_version(copy),
            key_fingerprint=fingerprint(keys[0]),
            key_included=include_key,
            database_sha256=_sha256(copy),
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        with _private_file(out) as handle, tarfile.open(fileobj=handle, mode="w:gz") as archive:
            archive.add(copy, arcname=DATABASE_MEMBER)
            _add_bytes(archive, MANIFEST_MEMBER, json.dumps(manifest.__dict__, indent=2).encode())
            if include_key:
                _add_bytes(archive, KEY_MEMBER, (",".join(k.decode() for k in keys) + "\n").encode())
    return manifest


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(datetime.now(UTC).timestamp())
    archive.addfile(info, io.BytesIO(data))


@dataclass(frozen=True)
class Restored:
    manifest: Manifest
    schema_before: str | None
    key_written: Path | None
    checked_values: int


def read_archive(archive_path: Path, scratch: Path) -> tuple[Manifest, Path, list[bytes] | None]:
    """The manifest, the extracted database (under ``scratch``) and the keys it holds, if any."""
    try:
        with tarfile.open(archive_path, mode="r:gz") as archive:
            members = {m.name: m for m in archive.getmembers() if m.isfile()}
            if MANIFEST_MEMBER not in members or DATABASE_MEMBER not in members:
                raise BackupError(f"{archive_path} is not a companion backup (no manifest or database inside)")
            manifest = Manifest.parse(_read(archive, members[MANIFEST_MEMBER]))
            database = scratch / DATABASE_MEMBER
            with _private_file(database) as handle:
                handle.write(_read(archive, members[DATABASE_MEMBER]))
            keys = None
            if KEY_MEMBER in members:
                keys = crypto.parse_keys(_read(archive, members[KEY_MEMBER]).decode())
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(f"{archive_path} cannot be read as a backup: {exc}") from exc
    if _sha256(database) != manifest.database_sha256:
        raise BackupError(f"{archive_path} is damaged: the database does not match the manifest's checksum")
    return manifest, database, keys


def _read(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    assert handle is not None  # a regular file
    return handle.read()


def check_schema(version: str | None) -> None:
    """Refuse a schema this companion does not know (a backup from a newer version)."""
    if version is None:
        raise BackupError("the backup has no schema version: it is not a companion database")
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    try:
        scripts.get_revision(version)
    except Exception as exc:
        raise BackupError(
            f"the backup's schema {version} is newer than this companion knows (its newest is "
            f"{scripts.get_current_head()}): upgrade the companion first, then restore"
        ) from exc


def check_key(database: Path, keys: Sequence[bytes]) -> int:
    """Decrypt a sample of every encrypted column of the SQLite file with ``keys``; returns how many were checked."""
    engine = create_engine(f"sqlite:///{database}")
    try:
        return check_key_on(engine, keys)
    finally:
        engine.dispose()


def check_key_on(engine: Engine, keys: Sequence[bytes]) -> int:
    """Decrypt a sample of every encrypted column with ``keys`` (raises BackupError naming the column)."""
    ring = crypto.ring(keys)
    checked = 0
    if True:  # one read-only connection
        with engine.connect() as connection:
            present = set(inspect(connection).get_table_names())
            for table, columns in crypto.encrypted_columns():
                if table.name not in present:
                    continue
                for column in columns:
                    raw = table.c[column.name].cast(Text)  # the stored token: no decryption on the way out or in
                    stored = connection.execute(
                        select(raw).where(raw.like(crypto.PREFIX + "%")).limit(SAMPLE)
                    ).scalars()
                    for value in stored:
                        try:
                            ring.decrypt(value[len(crypto.PREFIX) :].encode("ascii"))
                        except InvalidToken as exc:
                            raise BackupError(
                                f"the configured data key does not open this backup ({table.name}.{column.name}): "
                                "set COMPANION_DATA_KEY (or the key file) to the key it was made with"
                            ) from exc
                        checked += 1
    return checked


def has_data(database: Path) -> bool:
    """Whether ``database`` exists and any of its tables (other than the schema version) holds a row."""
    if not database.is_file() or database.stat().st_size == 0:
        return False
    engine = create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            for name in inspect(connection).get_table_names():
                if name != "alembic_version" and connection.execute(text(f'SELECT 1 FROM "{name}" LIMIT 1')).first():
                    return True
    finally:
        engine.dispose()
    return False


def restore(archive_path: Path, database: Path, configured: Sequence[bytes] | None, *, force: bool) -> Restored:
    """Replace the SQLite ``database`` with the backup's, then migrate it forward.

    Refuses, changing nothing, when the target holds data and ``force`` is
    false, when the schema is unknown, or when the keys (``configured``, else
    the archive's own) do not decrypt the backup's data. The service must be
    stopped meanwhile: the file is swapped underneath any open connection.
    """
    if not force and has_data(database):
        raise BackupError(f"{database} already holds data: restore over it with --force (it is replaced)")
    database.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".companion-restore-", dir=database.parent) as scratch:
        manifest, extracted, archived_keys = read_archive(archive_path, Path(scratch))
        before = schema_version(extracted)
        check_schema(before)
        keys = list(configured) if configured else archived_keys
        if not keys:
            raise BackupError(
                f"no data key: the backup was made with key {manifest.key_fingerprint} and does not hold it; "
                f"set COMPANION_DATA_KEY or put the key file at {crypto.key_file_for(database)}"
            )
        checked = check_key(extracted, keys)
        key_written = None
        if not configured:
            key_written = crypto.key_file_for(database)
            crypto.write_key_file(key_written, keys)
        for stale in (Path(f"{database}-wal"), Path(f"{database}-shm")):
            stale.unlink(missing_ok=True)  # the old database's journal must not be replayed onto the new one
        os.replace(extracted, database)
    crypto.use(keys)
    migrated = Database(f"sqlite:///{database}")
    try:
        migrated.upgrade()
    finally:
        migrated.dispose()
    return Restored(manifest=manifest, schema_before=before, key_written=key_written, checked_values=checked)
