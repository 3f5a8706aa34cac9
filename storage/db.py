"""Engines, the unit of work, and schema upgrades through Alembic."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import InvalidatePoolError
from sqlmodel import Session, create_engine

MIGRATIONS: Final = Path(__file__).resolve().parent / "migrations"
# The advisory lock that serialises schema upgrades on PostgreSQL, one per schema (search_path), so
# processes starting together migrate once: the first upgrades, the others wait and find it done.
MIGRATION_LOCK: Final = "SELECT pg_advisory_xact_lock(hashtext('homework-companion:migrate:' || current_schema()))"


def normalise_url(url: str) -> str:
    """Accept the URLs operators paste (``postgres://…``) and pick the installed driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets `companion chat` in one terminal read while `companion run`
    # writes; the busy timeout makes writers queue instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def create_private_file(path: Path) -> None:
    """Create the SQLite file (mode 0600) before SQLite does, if it does not exist yet.

    SQLite would create it with the process's umask (often world-readable),
    and it gives its -wal and -shm files the main file's mode, so creating
    the main file private keeps all three private. An existing file's mode is
    the operator's and is left as it is.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


IDLE_PING: Final = 10.0
"""Seconds a pooled connection may sit unused before it is tested at checkout."""


def _ping_when_idle(engine: Engine, idle: float) -> None:
    """Test a pooled connection at checkout only if it sat idle for ``idle`` seconds (:data:`IDLE_PING`).

    ``pool_pre_ping`` tests every checkout: one more round trip on every
    inbound message (about a tenth of a turn on PostgreSQL, issue 21). A
    connection reused within seconds was just working; one that sat idle
    may have outlived a database restart, so it is tested and, if dead, the
    pool's connections are all replaced before anyone uses one (what
    pre-ping does on a failed ping). A restart in the middle of a burst fails
    the units of work in flight, as it would with pre-ping.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < idle:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # the driver's own error for a dead connection
            raise InvalidatePoolError() from error
        if not alive:
            raise InvalidatePoolError()


class Database:
    """One engine per process; sessions come only from :meth:`unit_of_work`.

    Data functions in :mod:`storage.queries` take a session and never commit:
    the caller's unit of work commits a dialog turn's state change and its
    outbox rows together, or neither.
    """

    def __init__(self, url: str, *, idle_ping: float = IDLE_PING) -> None:
        self.url = normalise_url(url)
        kwargs: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            path = self.url.split("///", 1)[-1].split("?", 1)[0]
            if path and path != ":memory:":
                create_private_file(Path(path))
            kwargs["connect_args"] = {"check_same_thread": False}
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            _ping_when_idle(self.engine, idle_ping)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        """A session whose work is committed on normal exit and rolled back on error."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def upgrade(self, revision: str = "head") -> None:
        """Bring the schema to ``revision`` (idempotent; run on every start).

        Safe when several processes start at once: on PostgreSQL the upgrade
        runs under a transaction-scoped advisory lock, so one process migrates
        and the others wait for its commit, then find nothing to do. SQLite
        serialises writers itself (and several processes there is not a
        supported deployment).
        """
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text(MIGRATION_LOCK))
            config = alembic_config(self.url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at our migrations, with no alembic.ini needed."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation treats % specially (URL-encoded passwords).
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config
