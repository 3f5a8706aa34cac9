"""The `companion` command line: run the service, chat on the console, manage therapists and the schema."""

from __future__ import annotations

import logging
import os
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlmodel import Session, select

from bot import cli_ops, cli_privacy, cli_safety, logs
from bot.config import CONFIG_ENV, ConfigError, Settings, load_settings
from bot.wiring import Companion, WiringError, build
from channels import console
from dialogs.timeparse import resolve_timezone
from storage import Therapist
from storage import queries as q

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Homework Companion: CBT homework between sessions.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
therapist_app = typer.Typer(no_args_is_help=True, help="Therapists.")
app.add_typer(db_app, name="db")
app.add_typer(therapist_app, name="therapist")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="config.yaml to use (default: $COMPANION_CONFIG or ./config.yaml)"),
]


def _settings(config: Path | None) -> Settings:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    logs.configure(settings)
    return settings


def _companion(config: Path | None, *, quiet: bool = False) -> Companion:
    settings = _settings(config)
    if quiet:  # interactive commands: schema chatter would interleave with the conversation
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return build(settings)
    except WiringError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def run(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="override server.host")] = None,
    port: Annotated[int | None, typer.Option(help="override server.port")] = None,
    workers: Annotated[int, typer.Option(min=1, help="worker processes (more than 1 needs PostgreSQL)")] = 1,
) -> None:
    """Start the service: upgrade the schema, then serve HTTP (health, and webhooks as channels are enabled)."""
    import uvicorn

    from bot.http import create_app

    companion = _companion(config)
    if workers > 1:
        # Each worker runs the scheduler and the outbox senders too; that is safe only
        # where due rows and outbox rows are claimed with FOR UPDATE SKIP LOCKED.
        if companion.db.dialect != "postgresql":
            typer.echo("error: --workers above 1 needs PostgreSQL (DATABASE_URL)", err=True)
            raise typer.Exit(2)
        if companion.telegram is not None and not companion.settings.telegram.webhook_url:
            typer.echo("error: --workers above 1 needs telegram.webhook_url (one long poller only)", err=True)
            raise typer.Exit(2)
        if companion.settings.demo_enabled:  # its clock moves on "skip", in one process only
            typer.echo("error: the try-it demo runs in one process: set web.demo: false or use one worker", err=True)
            raise typer.Exit(2)
    host = host or companion.settings.server.host
    port = port or companion.settings.server.port
    if (host, port) != (companion.settings.server.host, companion.settings.server.port):
        # The web pages check where the service really listens (the demo is loopback-only) and link there.
        server = companion.settings.server.model_copy(update={"host": host, "port": port})
        companion.settings = companion.settings.model_copy(update={"server": server})
    logging.getLogger("companion").info(
        "database %s ready; console chats: `companion chat --as therapist:NAME` / `--as client:HANDLE`",
        companion.db.dialect,
    )
    if not companion.settings.safety.crisis_resources:
        logging.getLogger("companion").warning(
            "no safety.crisis_resources configured: clients in crisis get only the generic emergency advice"
        )
    log_level = companion.settings.log_level.lower()
    if workers > 1:
        if config is not None:  # the workers read the same file
            os.environ[CONFIG_ENV] = str(config.resolve())
        companion.db.dispose()  # the schema is up to date; each worker builds its own companion
        from bot.metrics import prepare_multiprocess

        prepare_multiprocess()  # the workers' counters are summed by whichever one answers /metrics
        from bot import workers as worker_processes

        if worker_processes.supported():  # one socket per worker: connections spread evenly (see bot.workers)
            raise typer.Exit(worker_processes.serve(host, port, workers, log_level))
        uvicorn.run(
            "bot.http:app_from_env",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level=log_level,
            log_config=None,
        )
        return
    try:
        app_ = create_app(companion, run_scheduler=companion.settings.scheduler.enabled)
    except WiringError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    # log_config=None: uvicorn's loggers go through our (redacting) root handler instead of its own.
    uvicorn.run(app_, host=host, port=port, log_level=log_level, log_config=None)


@app.command()
def tick(config: ConfigOption = None) -> None:
    """Run one sweep of due work now and exit (for deployments that prefer cron to `run`'s scheduler)."""
    from scheduler.sweep import purge, sweep

    companion = _companion(config)
    report = sweep(db=companion.db, engine=companion.engine)
    purge(db=companion.db, engine=companion.engine, policy=companion.settings.retention_policy())
    n = report.nudges
    typer.echo(
        f"Sweep done: {n.sent} nudge(s) sent, {n.followed_up} follow-up(s), {n.digests} digest(s), "
        f"{n.missed} missed, {n.skipped} skipped, {report.alerts_escalated} alert(s) re-sent."
    )


@app.command()
def chat(
    as_: Annotated[str, typer.Option("--as", help="therapist:NAME or client:HANDLE")],
    config: ConfigOption = None,
) -> None:
    """Chat on the console as a therapist or a client: one line is one message (end a line with \\ to continue it)."""
    role, _, handle = as_.partition(":")
    try:
        chat_address = console.address(role, handle)
    except ValueError as exc:
        typer.echo(f"error: --as {exc}", err=True)
        raise typer.Exit(2) from exc
    companion = _companion(config, quiet=True)
    if role == "therapist":
        with companion.db.unit_of_work() as session:
            therapist = q.therapist_by_name(session, name=handle)
            if therapist is None:
                typer.echo(
                    f"error: no therapist called {handle!r}; add one with `companion therapist add NAME`", err=True
                )
                raise typer.Exit(1)
            chat_address = console.address("therapist", therapist.name)
    channel = console.ConsoleChannel(db=companion.db, engine=companion.engine, chat=chat_address, jobs=companion.jobs)
    interactive = sys.stdin.isatty()
    stop = threading.Event()
    if interactive:
        channel.watch(stop)
    try:
        channel.run(sys.stdin, prompt="> " if interactive else "")
    finally:
        stop.set()


@app.command()
def digest(
    name: Annotated[str | None, typer.Argument(help="the client; omit for the caseload overview")] = None,
    therapist: Annotated[str | None, typer.Option(help="whose client (default: the only therapist)")] = None,
    format_: Annotated[str, typer.Option("--format", help="text or md")] = "text",
    chart: Annotated[Path | None, typer.Option(help="also write the adherence chart (PNG) here")] = None,
    config: ConfigOption = None,
) -> None:
    """Print a client's digest (or the caseload overview) as text or Markdown; optionally write the chart."""
    from dialogs import access
    from dialogs.digest import build_caseload, build_client_digest
    from dialogs.digest_text import render_caseload_text, render_markdown, render_text
    from dialogs.llm_steps import narrate, with_narrative
    from storage import Client

    if format_ not in ("text", "md"):
        typer.echo("error: --format must be text or md", err=True)
        raise typer.Exit(2)
    companion = _companion(config, quiet=True)
    prompts_ = companion.engine.prompts
    with companion.db.unit_of_work() as session:
        owner = _one_therapist(session, therapist)
        now = companion.clock.now()
        if name is None:
            typer.echo(
                render_caseload_text(build_caseload(session, prompts=prompts_, therapist=owner, now=now), prompts_)
            )
            return
        client = access.own_client_named(session, therapist_id=owner.id or 0, name=name)
        if client is None:
            typer.echo(f"error: {owner.name} has no client called {name!r}", err=True)
            raise typer.Exit(1)
        client_id = client.id
    llm = companion.engine.llm
    if llm is not None and client_id is not None:
        # LLM mode: the narrative as /digest shows it, written (once per period) with no transaction open.
        narrate(companion.db, llm=llm, prompts=prompts_, client_id=client_id, now=now)
    with companion.db.unit_of_work() as session:
        client = session.get(Client, client_id)
        assert client is not None
        model = build_client_digest(session, prompts=prompts_, client=client, therapist=owner, now=now)
        model = with_narrative(session, llm=llm, digest=model, prompts=prompts_, now=now)
        access.audit(session, actor=access.OPERATOR, action="digest.read", now=now, client=client)
    typer.echo(render_markdown(model, prompts_) if format_ == "md" else render_text(model, prompts_))
    if chart is not None:
        from dialogs.digest_chart import adherence_png

        chart.write_bytes(adherence_png(model, prompts_))
        typer.echo(f"Chart written to {chart}", err=True)


@app.command("dashboard-link")
def dashboard_link(name: str, config: ConfigOption = None) -> None:
    """Print a single-use sign-in link to NAME's web dashboard (valid for web.link_ttl_minutes, 15 by default)."""
    from datetime import timedelta

    from dialogs import access, signin

    companion = _companion(config, quiet=True)
    settings = companion.settings
    with companion.db.unit_of_work() as session:
        therapist = q.therapist_by_name(session, name=name)
        if therapist is None or therapist.id is None:
            typer.echo(f"error: no therapist called {name!r}", err=True)
            raise typer.Exit(1)
        now = companion.clock.now()
        token = signin.issue_link(
            session, therapist_id=therapist.id, now=now, ttl=timedelta(minutes=settings.web.link_ttl_minutes)
        )
        access.audit(session, actor=access.OPERATOR, action="dashboard.link", now=now, therapist_id=therapist.id)
    typer.echo(f"{settings.web_base_url}/dashboard/login?token={token}")
    typer.echo(f"It signs {therapist.name} in once, within {settings.web.link_ttl_minutes} minutes.", err=True)


def _one_therapist(session: Session, name: str | None) -> Therapist:
    if name is not None:
        found = q.therapist_by_name(session, name=name)
        if found is None:
            typer.echo(f"error: no therapist called {name!r}", err=True)
            raise typer.Exit(1)
        return found
    everyone = session.exec(select(Therapist)).all()
    if len(everyone) != 1:
        typer.echo("error: say whose client with --therapist NAME", err=True)
        raise typer.Exit(2)
    return everyone[0]


@therapist_app.command("add")
def therapist_add(
    name: str,
    timezone: Annotated[str, typer.Option(help="IANA zone or city, e.g. Europe/London")] = "UTC",
    config: ConfigOption = None,
) -> None:
    """Create a therapist; they chat with `companion chat --as therapist:NAME`."""
    zone = resolve_timezone(timezone)
    if zone is None:
        typer.echo(f"error: unknown time zone {timezone!r}; try a city or a name like Europe/London", err=True)
        raise typer.Exit(2)
    clean = " ".join(name.split())
    if not clean or ":" in clean or len(clean) > 80:
        typer.echo("error: a therapist name must be 1–80 characters without ':'", err=True)
        raise typer.Exit(2)
    companion = _companion(config, quiet=True)
    with companion.db.unit_of_work() as session:
        if q.therapist_by_name(session, name=clean) is not None:
            typer.echo(f"error: a therapist called {clean!r} already exists", err=True)
            raise typer.Exit(1)
        q.add_therapist(session, name=clean, timezone=zone, now=companion.clock.now())
    typer.echo(f"Added therapist {clean} ({zone}). Chat with: companion chat --as 'therapist:{clean}'")


@therapist_app.command("link")
def therapist_link(
    name: str,
    telegram: Annotated[bool, typer.Option("--telegram", help="link a Telegram account")] = False,
    slack: Annotated[bool, typer.Option("--slack", help="link a Slack account")] = False,
    config: ConfigOption = None,
) -> None:
    """A one-time code that links a chat account (Telegram, later Slack) to this therapist.

    The therapist sends `/start CODE` to the companion from that account; the
    code works once and expires in 24 hours.
    """
    from datetime import timedelta

    from dialogs.onboarding import new_code
    from storage import Invite

    companion = _companion(config, quiet=True)
    with companion.db.unit_of_work() as session:
        therapist = q.therapist_by_name(session, name=name)
        if therapist is None:
            typer.echo(f"error: no therapist called {name!r}", err=True)
            raise typer.Exit(1)
        now = companion.clock.now()
        code = new_code()
        session.add(Invite(code=code, therapist_id=therapist.id, created_at=now, expires_at=now + timedelta(days=1)))
    if slack:
        typer.echo(f"In Slack, {therapist.name} sends:\n\n/companion link {code}\n")
    else:
        where = "the companion's Telegram bot" if telegram else "the companion"
        typer.echo(f"Send this from the account to link to {therapist.name}, in {where}:\n\n/start {code}\n")
    typer.echo("It works once, within 24 hours.")


keys_app = typer.Typer(no_args_is_help=True, help="The data key that encrypts client text at rest.")
app.add_typer(keys_app, name="keys")


@keys_app.command("rotate")
def keys_rotate(
    config: ConfigOption = None,
    batch: Annotated[int, typer.Option(help="rows per committed batch")] = 500,
) -> None:
    """Re-encrypt every stored value with a new key, with progress; run it again to resume if interrupted.

    With the embedded SQLite default the key file is rotated for you: a new
    key is added in front, everything is re-encrypted, and the old key is
    dropped at the end. With COMPANION_DATA_KEY, set it to "NEW,OLD" first;
    everything is re-encrypted to NEW, and then you can set it to NEW alone.
    """
    from cryptography.fernet import Fernet
    from rich.progress import Progress

    from bot.wiring import data_keys
    from storage import crypto

    settings = _settings(config)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        keys = data_keys(settings)
    except WiringError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    key_file = None if settings.data_key is not None else crypto.key_file_for(settings.sqlite_path or Path())
    if key_file is not None and len(keys) == 1:
        keys = [Fernet.generate_key(), *keys]  # new key first; the old one still decrypts meanwhile
        crypto.write_key_file(key_file, keys)
    elif key_file is None and len(keys) == 1:
        typer.echo(
            "error: set COMPANION_DATA_KEY to 'NEW,OLD' to rotate (generate NEW with: companion keys new)", err=True
        )
        raise typer.Exit(2)
    companion = build(settings)
    with Progress() as progress:
        task = progress.add_task("re-encrypting", total=None)
        done = crypto.rotate(
            companion.db.engine,
            keys,
            batch=batch,
            progress=lambda table, n: progress.update(task, advance=n, description=f"re-encrypting {table}"),
        )
    with companion.db.unit_of_work() as session:
        from dialogs import access

        access.audit(session, actor=access.OPERATOR, action="keys.rotate", now=companion.clock.now(), rows=done)
    if key_file is not None:
        crypto.write_key_file(key_file, keys[:1])
        typer.echo(f"Rotated {done} row(s); {key_file} now holds only the new key. Back it up with the database.")
    else:
        typer.echo(f"Rotated {done} row(s) to the first key; COMPANION_DATA_KEY can now be set to it alone.")


@keys_app.command("new")
def keys_new() -> None:
    """Print a new random data key (for COMPANION_DATA_KEY)."""
    from cryptography.fernet import Fernet

    typer.echo(Fernet.generate_key().decode())


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply the Alembic migrations up to the latest (also done by `companion run`)."""
    companion = _companion(config)
    typer.echo(f"Schema up to date ({companion.db.dialect}).")


@db_app.command("revision")
def db_revision(message: str, config: ConfigOption = None) -> None:
    """For contributors: autogenerate a migration from the models against the configured database."""
    from alembic import command

    from storage.db import alembic_config

    companion = _companion(config)
    command.revision(alembic_config(companion.db.url), message=message, autogenerate=True)


cli_privacy.register(app, therapist_app, lambda config: _companion(config, quiet=True))
cli_ops.register(app, _settings)
cli_safety.register(app)


def _period(text: str) -> timedelta | None:
    """``"7d"``, ``"24h"``, ``"2w"`` → the span; anything else → None."""
    import re

    match = re.fullmatch(r"\s*(\d{1,4})\s*([hdw])\s*", text.casefold())
    if match is None:
        return None
    unit = {"h": "hours", "d": "days", "w": "weeks"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


@app.command()
def usage(
    period: Annotated[str, typer.Option(help="how far back: e.g. 24h, 7d, 4w")] = "7d",
    config: ConfigOption = None,
) -> None:
    """LLM mode's usage per client and in total: calls, fallbacks, tokens and an estimated cost (llm.prices)."""
    from dialogs.llm import usage_report
    from storage import Client

    span = _period(period)
    if span is None:
        typer.echo("error: --period must be like 24h, 7d or 4w", err=True)
        raise typer.Exit(2)
    companion = _companion(config, quiet=True)
    prices = {m: (p.input_per_million, p.output_per_million) for m, p in companion.settings.llm.prices.items()}
    since = companion.clock.now() - span
    with companion.db.unit_of_work() as session:
        lines, total = usage_report(session, since=since, prices=prices)
        labels = {}
        for line in lines:
            client = session.get(Client, line.client_id) if line.client_id is not None else None
            labels[line.client_id] = (
                f"{client.name} (#{client.id})" if client else f"#{line.client_id} (erased)" if line.client_id else "—"
            )
    llm = companion.engine.llm
    mode = f"on ({llm.provider} {llm.model}, at most {llm.max_concurrency} calls at once)" if llm else "off"
    typer.echo(f"LLM mode: {mode}")
    typer.echo(f"Memory: {companion.memory_status}")
    typer.echo(f"LLM usage since {since:%Y-%m-%d %H:%M} UTC ({period}):")
    typer.echo(
        f"{'client':<28} {'calls':>6} {'fallbacks':>9} {'input tokens':>13} {'output tokens':>13} {'est. cost':>10}"
    )

    def row(label: str, line: Any) -> str:
        cost = f"{line.cost:.4f}" if line.cost is not None else "unpriced"
        return (
            f"{label[:28]:<28} {line.calls:>6} {line.fallbacks:>9} {line.input_tokens:>13} "
            f"{line.output_tokens:>13} {cost:>10}"
        )

    for line in lines:
        typer.echo(row(labels[line.client_id], line))
    typer.echo(row("total", total))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
