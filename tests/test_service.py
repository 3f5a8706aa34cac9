"""The composition root: config errors, environment overrides, the CLI and the HTTP service."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from bot.cli import app
from bot.config import ConfigError, load_settings
from bot.http import create_app
from bot.wiring import Companion
from storage import Database


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server:\n  port: eighty\n", "server.port"),
        ("server:\n  port: 70000\n", "server.port"),
        ("servr:\n  port: 80\n", "servr: unknown key"),
        ("dialog:\n  default_nudge_time: teatime\n", "dialog.default_nudge_time: Value error, must be a time of day"),
        ("dialog:\n  locale: xx\n", "dialog.locale"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("server: [unclosed\n", "not valid YAML"),
    ],
)
def test_an_invalid_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_settings(write(tmp_path, text))


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_environment_overrides_the_file_and_paths_are_relative_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "server:\n  port: 9000\ndatabase:\n  path: db/c.db\n")
    settings = load_settings(path)
    assert settings.server.port == 9000
    assert settings.url == f"sqlite:///{tmp_path / 'db' / 'c.db'}"
    monkeypatch.setenv("COMPANION_SERVER__PORT", "9100")
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone@db/companion")
    settings = load_settings(path)
    assert settings.server.port == 9100 and settings.url == "postgresql://someone@db/companion"


def test_the_cli_runs_the_console_week_basics(tmp_path: Path) -> None:
    """The real `companion` commands with piped stdin, as a newcomer would use them."""
    config = write(tmp_path, "database:\n  path: c.db\n")
    runner = CliRunner()
    added = runner.invoke(app, ["therapist", "add", "Dana", "--timezone", "london", "--config", str(config)])
    assert added.exit_code == 0, added.output
    assert "Europe/London" in added.output
    assert runner.invoke(app, ["therapist", "add", "dana", "--config", str(config)]).exit_code == 1

    invited = runner.invoke(app, ["chat", "--as", "therapist:dana", "--config", str(config)], input="/invite Sam\n")
    assert invited.exit_code == 0, invited.output
    code = next(line for line in invited.output.splitlines() if len(line) == 8 and line.isalnum())

    homework = (
        "/homework Sam\\\ntitle: Breathing\\\nwhat: 10 minutes paced breathing\\\nwhen: 21:00 daily\\\n"
        "where: bedroom\\\nwith whom: alone\\\nrecord: tension before and after\\\nrationale: calms the body\n"
    )
    saved = runner.invoke(app, ["chat", "--as", "therapist:Dana", "--config", str(config)], input=homework)
    assert "Saved homework #1" in saved.output

    joined = runner.invoke(
        app, ["chat", "--as", "client:sam", "--config", str(config)], input=f"/start {code}\nyes\nLondon\n7pm\n"
    )
    assert joined.exit_code == 0, joined.output
    assert "New homework from Dana: Breathing" in joined.output

    # What waits for a participant is printed when they open the chat, before input.
    waiting = runner.invoke(app, ["chat", "--as", "therapist:Dana", "--config", str(config)], input="")
    assert "Sam has joined" in waiting.output


def test_the_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    config = write(tmp_path, "database:\n  path: c.db\n")
    runner = CliRunner()
    assert runner.invoke(app, ["chat", "--as", "admin:x", "--config", str(config)]).exit_code == 2
    missing = runner.invoke(app, ["chat", "--as", "therapist:Nobody", "--config", str(config)])
    assert missing.exit_code == 1 and "no therapist called" in missing.output
    assert (
        runner.invoke(app, ["therapist", "add", "Eli", "--timezone", "Mars/Base", "--config", str(config)]).exit_code
        == 2
    )
    bad = runner.invoke(app, ["db", "upgrade", "--config", str(write(tmp_path, "server:\n  port: x\n"))])
    assert bad.exit_code == 2 and "server.port" in bad.output


def test_health_and_readiness(companion: Companion) -> None:
    client = TestClient(create_app(companion))
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["database"] == companion.db.dialect


def test_readiness_fails_when_the_database_is_unreachable(companion: Companion) -> None:
    unreachable = Companion(
        settings=companion.settings,
        db=Database("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"),
        engine=companion.engine,
        clock=companion.clock,
    )
    ready = TestClient(create_app(unreachable)).get("/readyz")
    assert ready.status_code == 503 and ready.json() == {"status": "unavailable"}
