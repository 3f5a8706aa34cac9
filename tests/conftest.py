"""Fixtures: a database per test on SQLite and on the real PostgreSQL, a frozen clock, console chats."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from bot.config import Settings
from bot.wiring import Companion, build
from dialogs.clock import FrozenClock

POSTGRES_URL = os.environ.get("COMPANION_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MONDAY = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not pick up an operator's DATABASE_URL or COMPANION_* settings."""
    for name in list(os.environ):
        if name == "DATABASE_URL" or (name.startswith("COMPANION_") and name != "COMPANION_TEST_POSTGRES_URL"):
            monkeypatch.delenv(name)


def _postgres_schema_url() -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.begin() as connection:
            connection.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # a missing PostgreSQL is a failure, never a skip
        admin.dispose()
        pytest.fail(f"PostgreSQL is required at {POSTGRES_URL} ({exc.__class__.__name__}: {exc})")
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'companion.db'}"
    else:
        yield from _postgres_schema_url()


@pytest.fixture
def postgres_schema_url() -> Iterator[str]:
    yield from _postgres_schema_url()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'companion.db'}"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(MONDAY)


TEST_DATA_KEY = "ZmRWTXRlc3Qta2V5LWZvci1ob21ld29yay1jb21wYW4="  # a fixed Fernet key for tests only

CRISIS_RESOURCES = {
    "GB": ["Samaritans: call 116 123"],
    "US": ["988 Suicide & Crisis Lifeline: call or text 988"],
}


def make_companion(url: str, clock: FrozenClock, tmp_path: Path, **overrides: Any) -> Companion:
    """A companion as `companion run` would build it, on ``url``, with the test's clock."""
    overrides.setdefault("safety", {"crisis_resources": CRISIS_RESOURCES})
    if not url.startswith("sqlite"):
        overrides.setdefault("COMPANION_DATA_KEY", TEST_DATA_KEY)  # the SQLite default makes its own key file
    return build(Settings(DATABASE_URL=url, config_dir=tmp_path, **overrides), clock=clock)


@pytest.fixture
def companion(db_url: str, clock: FrozenClock, tmp_path: Path) -> Iterator[Companion]:
    built = make_companion(db_url, clock, tmp_path)
    yield built
    built.db.dispose()


@pytest.fixture
def sqlite_companion(sqlite_url: str, clock: FrozenClock, tmp_path: Path) -> Iterator[Companion]:
    built = make_companion(sqlite_url, clock, tmp_path)
    yield built
    built.db.dispose()
