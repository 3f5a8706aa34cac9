"""Encryption at rest for client free text: Fernet keys, the column types that use them, and key rotation.

Values are stored as ``enc1:<Fernet token>``. A value without the prefix is
plaintext written before encryption was switched on; it is still read, and
``companion keys rotate`` encrypts it. The key ring is process-wide (one
database per process) and must be set with :func:`use` before any session
reads or writes an encrypted column; a missing key ring is an error, never
a silent plaintext write.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Text, literal, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

PREFIX: Final = "enc1:"
# HKDF "info" for the key that hashes invite and link codes: a key of its own, derived from each data key.
_CODE_INFO: Final = b"homework-companion/invite-code-hmac@1"
_lock = threading.Lock()
_ring: MultiFernet | None = None
_code_keys: tuple[bytes, ...] = ()


class KeyError_(Exception):
    """The data key is missing or unusable; the message says what to do."""


def parse_keys(value: str) -> list[bytes]:
    """``"NEW,OLD"`` → Fernet keys, newest (the one that encrypts) first."""
    keys = [k.strip().encode() for k in value.split(",") if k.strip()]
    if not keys:
        raise KeyError_("COMPANION_DATA_KEY is empty")
    for key in keys:
        try:
            Fernet(key)
        except ValueError as exc:
            raise KeyError_(
                "COMPANION_DATA_KEY must be Fernet keys (32 url-safe base64 bytes), comma-separated"
            ) from exc
    return keys


def ring(keys: Sequence[bytes]) -> MultiFernet:
    return MultiFernet([Fernet(k) for k in keys])


def use(keys: Sequence[bytes]) -> None:
    """Set the process's key ring: the first key encrypts, every key decrypts."""
    global _ring, _code_keys
    with _lock:
        _ring = ring(keys)
        _code_keys = tuple(_derive_code_key(k) for k in keys)


def _current() -> MultiFernet:
    if _ring is None:
        raise KeyError_("no data key configured: storage.crypto.use() must run before encrypted data is touched")
    return _ring


def _derive_code_key(key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_CODE_INFO).derive(base64.urlsafe_b64decode(key))


def code_hashes(code: str) -> list[str]:
    """The keyed hashes (HMAC-SHA256) an invite or link code may be stored under: one per key, newest first.

    A code is stored only as ``code_hashes(code)[0]``; looking it up by every
    key's hash keeps codes issued before a key rotation working while their
    key is still in the ring. Codes are compared upper-case.
    """
    if _ring is None:
        _current()  # raises: no key ring
    message = code.strip().upper().encode("utf-8")
    return [hmac.new(key, message, hashlib.sha256).hexdigest() for key in _code_keys]


def code_hash(code: str) -> str:
    """The hash a new code is stored under (the newest key's)."""
    return code_hashes(code)[0]


def key_file_for(database_path: Path) -> Path:
    return database_path.with_name(database_path.name + ".key")


def load_or_create_key_file(path: Path) -> tuple[list[bytes], bool]:
    """The keys in ``path``, creating it (mode 0600) with a new key if it does not exist; returns (keys, created)."""
    if path.exists():
        return parse_keys(path.read_text(encoding="utf-8")), False
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(key.decode() + "\n")
    return [key], True


def write_key_file(path: Path, keys: Sequence[bytes]) -> None:
    """Replace the key file atomically, keeping mode 0600."""
    temporary = path.with_name(path.name + ".new")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(",".join(k.decode() for k in keys) + "\n")
    os.replace(temporary, path)


def encrypt(text: str) -> str:
    return PREFIX + _current().encrypt(text.encode("utf-8")).decode("ascii")


def decrypt(stored: str) -> str:
    if not stored.startswith(PREFIX):
        return stored  # written before encryption was switched on
    try:
        return _current().decrypt(stored[len(PREFIX) :].encode("ascii")).decode("utf-8")
    except InvalidToken as exc:
        raise KeyError_("stored data cannot be decrypted with the configured COMPANION_DATA_KEY") from exc


class EncryptedText(TypeDecorator[str]):
    """Free text, encrypted with the process's key ring."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else encrypt(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else decrypt(value)


class EncryptedJSON(TypeDecorator[Any]):
    """A JSON document (dialog state, outbox payloads), encrypted as a whole."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else encrypt(json.dumps(value, separators=(",", ":")))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, dict | list):  # a JSON column from before encryption
            return value
        return json.loads(decrypt(value))


def encrypted_columns() -> list[tuple[Any, list[Any]]]:
    """(table, [encrypted columns]) for every table that holds encrypted data."""
    from sqlmodel import SQLModel

    found = []
    for table in SQLModel.metadata.sorted_tables:
        columns = [c for c in table.columns if isinstance(c.type, EncryptedText | EncryptedJSON)]
        if columns:
            found.append((table, columns))
    return found


def rotate(
    engine: Any,
    keys: Sequence[bytes],
    *,
    batch: int = 500,
    progress: Callable[[str, int], None] | None = None,
    max_batches: int | None = None,
) -> int:
    """Re-encrypt every encrypted value with ``keys[0]`` (older keys still decrypt); returns rows rewritten.

    Works on the raw stored strings, batch by batch in id order, each batch
    committed on its own: an interrupted rotation is resumed by running it
    again (a value already on the new key is simply rotated again).
    Plaintext from before encryption is encrypted on the way. ``max_batches``
    stops early (to spread a rotation over several runs).
    """
    multi = ring(keys)
    rewritten = batches = 0
    for table, columns in encrypted_columns():
        last_id = 0
        while max_batches is None or batches < max_batches:
            with engine.begin() as connection:
                rows = connection.execute(
                    select(table.c.id, *[c.cast(Text) for c in columns])
                    .where(table.c.id > last_id)
                    .order_by(table.c.id)
                    .limit(batch)
                ).all()
                for row in rows:
                    values = {
                        column.name: literal(_rotated(multi, stored), type_=Text)  # already a token: no re-encryption
                        for column, stored in zip(columns, row[1:], strict=True)
                        if stored is not None
                    }
                    if values:
                        connection.execute(update(table).where(table.c.id == row[0]).values(**values))
            batches += 1
            rewritten += len(rows)
            if progress is not None:
                progress(table.name, len(rows))
            if len(rows) < batch:
                break
            last_id = rows[-1][0]
    return rewritten


def _rotated(multi: MultiFernet, stored: str) -> str:
    if stored.startswith(PREFIX):
        return PREFIX + multi.rotate(stored[len(PREFIX) :].encode("ascii")).decode("ascii")
    return PREFIX + multi.encrypt(stored.encode("utf-8")).decode("ascii")
