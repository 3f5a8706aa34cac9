"""The data-key check: a known value encrypted in the database, so a wrong or lost key is caught at start."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from sqlalchemy import Engine, Text, cast, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from storage import crypto

TABLE: Final = "instancevalue"
NAME: Final = "key_check"
KNOWN: Final = "homework-companion key check"


class KeyMismatch(crypto.KeyError_):
    """The configured key cannot decrypt what this database holds."""


def _samples(engine: Engine) -> list[str]:
    """A few stored ciphertexts: the key check if there is one, else one value per encrypted table.

    Reads raw stored strings whatever the schema's revision (before or after
    any migration), so it runs before the schema is upgraded and before any
    value is written under the configured key.
    """
    present = set(inspect(engine).get_table_names())
    found: list[str] = []
    with engine.connect() as connection:
        if TABLE in present:  # the key check, when there is one, is all that needs reading
            check = connection.execute(text(f"SELECT value FROM {TABLE} WHERE name = :name"), {"name": NAME}).scalar()
            if check is not None:
                return [str(check)]
        for table, columns in crypto.encrypted_columns():
            if table.name not in present:
                continue
            existing = {c["name"] for c in inspect(engine).get_columns(table.name)}
            for column in columns:
                if column.name not in existing:
                    continue
                raw = cast(column, Text)
                try:
                    value = connection.execute(
                        select(raw).select_from(table).where(raw.like(crypto.PREFIX + "%")).limit(1)
                    ).scalar()
                except SQLAlchemyError:  # a column of an older type that cannot be cast: nothing encrypted in it
                    connection.rollback()
                    continue
                if value is not None:
                    found.append(str(value))
                    break
    return found


def holds_encrypted_data(engine: Engine) -> bool:
    """Whether any value in the database was encrypted (by any key)."""
    return bool(_samples(engine))


def verify(engine: Engine) -> bool:
    """Raise :class:`KeyMismatch` unless the process's key ring decrypts this database's data.

    Returns whether there was anything to check (False: a database with no
    encrypted data yet, where any key is right).
    """
    samples = _samples(engine)
    for stored in samples:
        try:
            crypto.decrypt(stored)
        except crypto.KeyError_ as exc:
            raise KeyMismatch(str(exc)) from exc
    return bool(samples)


def record(engine: Engine, *, now: datetime) -> bool:
    """Store the key check if the database has none yet; returns whether it was added. The schema must be current."""
    from storage.models import InstanceValue

    if TABLE not in inspect(engine).get_table_names():  # a schema not upgraded yet: the next start records it
        return False
    with engine.begin() as connection:
        table = InstanceValue.__table__  # type: ignore[attr-defined]
        exists = connection.execute(select(table.c.id).where(table.c.name == NAME)).first()
        if exists is not None:
            return False
        connection.execute(table.insert().values(name=NAME, value=KNOWN, created_at=now))
    return True
