"""Operator commands: `companion backup`, `companion restore` and `companion doctor`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from bot.config import Settings
from storage import crypto

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="config.yaml to use (default: $COMPANION_CONFIG or ./config.yaml)"),
]


def _configured_keys(settings: Settings, database: Path) -> list[bytes] | None:
    """COMPANION_DATA_KEY, else the key file beside ``database``; None when neither exists (never creates one)."""
    if settings.data_key is not None:
        return crypto.parse_keys(settings.data_key.get_secret_value())
    key_file = crypto.key_file_for(database)
    if key_file.exists():
        return crypto.parse_keys(key_file.read_text(encoding="utf-8"))
    return None


def register(app: typer.Typer, load: Callable[[Path | None], Settings]) -> None:
    """Add the operator commands to ``app``; ``load`` reads the settings (and configures logging)."""

    @app.command()
    def backup(
        out: Annotated[
            Path | None, typer.Option("--out", "-o", help="the archive (default: ./companion-backup-UTC.tar.gz)")
        ] = None,
        include_key: Annotated[
            bool, typer.Option("--include-key", help="put the data key inside the archive too")
        ] = False,
        config: ConfigOption = None,
    ) -> None:
        """Copy the live SQLite database (safe while `companion run` serves) with a manifest; PostgreSQL: pg_dump."""
        from bot import backup as backups

        settings = load(config)
        database = settings.sqlite_path
        if database is None:
            dump, restore_ = backups.postgres_commands(settings.url)
            typer.echo("On PostgreSQL, back up with the database's own tool (consistent while the service runs):")
            typer.echo(f"\n  {dump}\n")
            typer.echo(f"Restore into an empty database with:\n\n  {restore_}\n")
            typer.echo("Keep COMPANION_DATA_KEY apart from the dump: without it the client text cannot be read.")
            return
        keys = _configured_keys(settings, database)
        if keys is None:
            typer.echo(
                f"error: no data key for {database} (COMPANION_DATA_KEY or {crypto.key_file_for(database)})", err=True
            )
            raise typer.Exit(2)
        now = datetime.now(UTC)
        target = out or backups.default_name(now)
        if include_key:
            typer.echo(
                "warning: the archive will hold the data key: anyone with the file can read every client's text. "
                "Keep it as safe as the key itself.",
                err=True,
            )
        try:
            manifest = backups.backup(database, keys, target, include_key=include_key, now=now)
        except backups.BackupError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(
            f"Backed up {database} to {target} (schema {manifest.schema_version}, key {manifest.key_fingerprint})."
        )
        if not include_key:
            where = crypto.key_file_for(database) if settings.data_key is None else "COMPANION_DATA_KEY"
            typer.echo(f"The data key is not in it: back up {where} separately; without it the backup cannot be read.")

    @app.command()
    def restore(
        archive: Annotated[Path, typer.Argument(help="an archive from `companion backup`")],
        force: Annotated[bool, typer.Option("--force", help="replace a database that already holds data")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Restore a backup into the configured SQLite database (stop the service first), then migrate it forward."""
        from bot import backup as backups

        settings = load(config)
        database = settings.sqlite_path
        if database is None:
            _, restore_ = backups.postgres_commands(settings.url)
            typer.echo(f"On PostgreSQL, restore a pg_dump archive with:\n\n  {restore_}\n")
            raise typer.Exit(2)
        if not archive.is_file():
            typer.echo(f"error: no file {archive}", err=True)
            raise typer.Exit(2)
        try:
            done = backups.restore(archive, database, _configured_keys(settings, database), force=force)
        except (backups.BackupError, crypto.KeyError_) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        if done.key_written is not None:
            typer.echo(f"The backup's data key was written to {done.key_written} (mode 0600).")
        typer.echo(
            f"Restored {archive} (made {done.manifest.created_at}, schema {done.schema_before}) to {database}; "
            f"the data key opened {done.checked_values} sampled value(s); the schema is now up to date."
        )

    @app.command()
    def doctor(
        llm: Annotated[bool, typer.Option("--llm", help="also make one tiny call to the LLM provider")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Check the configuration, database, data key, platform tokens, URLs, memory and crisis resources."""
        from bot import doctor as checks

        settings = load(config)
        results = checks.run(settings, llm=llm, config=config)
        for result in results:
            typer.echo(result.line())
        failed = [r for r in results if r.status == checks.FAIL]
        typer.echo(f"\n{len(results) - len(failed)} of {len(results)} check(s) passed.")
        raise typer.Exit(1 if failed else 0)
