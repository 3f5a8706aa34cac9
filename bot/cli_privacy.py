"""Operator commands for privacy: export and forget a client, read the audit log, manage therapists.

The operator on the host is the admin: these commands bypass therapists'
ownership (they act on any client) and each one leaves an audit entry with
the actor "operator".
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlmodel import Session, col, select

from bot.wiring import Companion
from dialogs import access, client_data
from storage import Client, Therapist
from storage import queries as q

ROLES = ("therapist", "admin")
# Module-level: Typer reads the annotations by name.
config_option = Annotated[Path | None, typer.Option("--config", "-c", help="config.yaml to use")]
therapist_option = Annotated[str | None, typer.Option(help="whose client, when two share a name")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _client(session: Session, name: str, therapist: str | None) -> Client:
    """A client by name: unambiguous across therapists, or narrowed with --therapist."""
    key = q.name_key(name)
    query = select(Client).where(Client.name_key == key)
    if therapist is not None:
        owner = q.therapist_by_name(session, name=therapist)
        if owner is None:
            raise _fail(f"no therapist called {therapist!r}")
        query = query.where(Client.therapist_id == owner.id)
    found = session.exec(query).all()
    if not found:
        raise _fail(f"no client called {name!r}" + (f" for {therapist}" if therapist else ""))
    if len(found) > 1:
        raise _fail(f"{len(found)} clients are called {name!r}: say whose with --therapist NAME", 2)
    return found[0]


def register(app: typer.Typer, therapist_app: typer.Typer, companion_for: Callable[[Path | None], Companion]) -> None:
    """Add the commands to the CLI (``companion_for(config)`` builds the companion quietly)."""

    @app.command()
    def export(
        name: str,
        therapist: therapist_option = None,
        out: Annotated[Path | None, typer.Option(help="write here (mode 0600) instead of stdout")] = None,
        config: config_option = None,
    ) -> None:
        """Everything stored about a client as JSON (every row and column, decrypted), for a data request."""
        companion = companion_for(config)
        with companion.db.unit_of_work() as session:
            client = _client(session, name, therapist)
            document = client_data.export(
                session, prompts=companion.engine.prompts, client=client, now=companion.clock.now(), for_client=False
            )
            access.audit(
                session, actor=access.OPERATOR, action="client.export", now=companion.clock.now(), client=client
            )
        text = json.dumps(document, ensure_ascii=False, indent=1)
        if out is None:
            typer.echo(text)
            return
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        typer.echo(f"Written to {out} (readable only by you). It holds health data: handle it accordingly.", err=True)

    @app.command()
    def forget(
        name: str,
        therapist: therapist_option = None,
        yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
        config: config_option = None,
    ) -> None:
        """Erase a client: rows, vectors, pending nudges, outbox messages. The audit log keeps only a number."""
        companion = companion_for(config)
        with companion.db.unit_of_work() as session:
            client = _client(session, name, therapist)
            label, client_id = client.name, client.id
        if not yes and not typer.confirm(
            f"Erase everything stored about {label} (client #{client_id})? This cannot be undone"
        ):
            raise typer.Exit(1)
        with companion.db.unit_of_work() as session:
            target = session.get(Client, client_id)
            if target is None:
                raise _fail("the client is already gone")
            access.audit(
                session, actor=access.OPERATOR, action="client.forget", now=companion.clock.now(), client=target
            )
            counts = client_data.erase(session, client=target)
        assert client_id is not None
        companion.engine.forget(client_id)
        total = sum(counts.values())
        typer.echo(
            f"Erased client #{client_id}: {total} row(s) ({', '.join(f'{k} {v}' for k, v in counts.items() if v)})."
        )

    @app.command()
    def audit(
        client: Annotated[str | None, typer.Option(help="only this client (by name, or #ID after an erasure)")] = None,
        therapist: therapist_option = None,
        limit: Annotated[int, typer.Option(help="how many entries, newest first")] = 50,
        config: config_option = None,
    ) -> None:
        """The audit log: who read or changed which client's data, and when (never the content)."""
        from rich.console import Console
        from rich.table import Table

        companion = companion_for(config)
        with companion.db.unit_of_work() as session:
            client_id: int | None = None
            if client is not None:
                client_id = (
                    int(client[1:])
                    if client.startswith("#") and client[1:].isdigit()
                    else _client(session, client, therapist).id
                )
            entries = access.audit_entries(session, client_id=client_id, limit=limit)
            rows = [(e.at, e.actor, e.action, e.client_id, e.detail) for e in entries]
        table = Table("when (UTC)", "who", "what", "client", "detail")
        for at, actor, action, cid, detail in rows:
            table.add_row(
                at.strftime("%Y-%m-%d %H:%M:%S"),
                actor,
                action,
                f"#{cid}" if cid is not None else "",
                ", ".join(f"{k}={v}" for k, v in detail.items()),
            )
        Console(width=160).print(table)

    def _therapist(session: Session, name: str) -> Therapist:
        found = q.therapist_by_name(session, name=name)
        if found is None:
            raise _fail(f"no therapist called {name!r}")
        return found

    @therapist_app.command("list")
    def therapist_list(config: config_option = None) -> None:
        """Every therapist with their role, status and number of clients."""
        companion = companion_for(config)
        with companion.db.unit_of_work() as session:
            lines = []
            for t in session.exec(select(Therapist).order_by(col(Therapist.name))).all():
                n = len(access.own_clients(session, therapist_id=t.id or 0))
                state = f"disabled {t.disabled_at:%Y-%m-%d}" if t.disabled_at else "active"
                lines.append(f"{t.name}\t{t.role}\t{state}\t{n} client(s)\t{t.timezone}")
        typer.echo("\n".join(lines) or "No therapists yet: companion therapist add NAME")

    def _set(name: str, config: Path | None, action: str, change: Callable[[Therapist, Any], None]) -> None:
        companion = companion_for(config)
        with companion.db.unit_of_work() as session:
            found = _therapist(session, name)
            change(found, companion.clock.now())
            session.add(found)
            access.audit(
                session,
                actor=access.OPERATOR,
                action=action,
                now=companion.clock.now(),
                therapist_id=found.id,
                role=found.role,
                disabled=found.disabled_at is not None,
            )

    @therapist_app.command("disable")
    def therapist_disable(name: str, config: config_option = None) -> None:
        """Stop a therapist's access at once: their chats are treated as strangers'. Clients and data stay."""
        _set(name, config, "therapist.disable", lambda t, now: setattr(t, "disabled_at", now))
        typer.echo(f"{name} is disabled. Their clients' nudges continue; move or close them as needed.")

    @therapist_app.command("enable")
    def therapist_enable(name: str, config: config_option = None) -> None:
        """Restore a disabled therapist's access."""
        _set(name, config, "therapist.enable", lambda t, _now: setattr(t, "disabled_at", None))
        typer.echo(f"{name} is enabled.")

    @therapist_app.command("role")
    def therapist_role(
        name: str,
        role: Annotated[str, typer.Argument(help="therapist or admin")],
        config: config_option = None,
    ) -> None:
        """Make a therapist an admin (may list therapists from chat with /therapists) or a therapist again."""
        if role not in ROLES:
            raise _fail(f"role must be one of {', '.join(ROLES)}", 2)
        _set(name, config, "therapist.role", lambda t, _now: setattr(t, "role", role))
        typer.echo(f"{name} is now {role}.")
