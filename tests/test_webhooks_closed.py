"""Fail-closed webhooks: a route exists only for a configured channel, and a channel without its secret never starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from bot.cli import app as cli
from bot.config import Settings
from bot.http import create_app
from bot.wiring import Companion, WiringError, build
from dialogs.clock import FrozenClock
from tests.conftest import make_companion

WEBHOOKS = ["/telegram/webhook", "/telegram/hook", "/slack/events", "/whatsapp/inbound", "/whatsapp/status"]


@pytest.mark.parametrize("path", WEBHOOKS)
def test_with_no_channel_configured_no_webhook_exists(sqlite_companion: Companion, path: str) -> None:
    client = TestClient(create_app(sqlite_companion, background=False))
    assert (
        client.post(path, content=b'{"update_id": 1}', headers={"Content-Type": "application/json"}).status_code == 404
    )


def test_telegram_long_polling_mounts_no_webhook(sqlite_url: str, clock: FrozenClock, tmp_path: Path) -> None:
    """Without webhook_url nobody should be posting updates: there is nothing to post them to."""
    companion = make_companion(sqlite_url, clock, tmp_path, TELEGRAM_BOT_TOKEN="123456:TEST-TOKEN")
    assert companion.telegram is not None
    client = TestClient(create_app(companion, background=False))  # not started: no Bot API calls
    assert client.post("/telegram/webhook", json={"update_id": 1}).status_code == 404
    companion.db.dispose()


@pytest.mark.parametrize(
    ("whatsapp", "secrets", "message"),
    [
        ({"public_url": "https://x.example/wa"}, {"TWILIO_ACCOUNT_SID": "AC" + "0" * 32}, "TWILIO_AUTH_TOKEN"),
        ({}, {"TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "t"}, "whatsapp.public_url"),
    ],
    ids=["no-auth-token", "no-public-url"],
)
def test_whatsapp_without_what_verifies_signatures_refuses_to_start(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, whatsapp: dict[str, str], secrets: dict[str, str], message: str
) -> None:
    settings = Settings(
        DATABASE_URL=sqlite_url,
        config_dir=tmp_path,
        whatsapp={"from_number": "+14155238886", **whatsapp},
        **secrets,  # type: ignore[arg-type]
    )
    with pytest.raises(WiringError, match=message):
        build(settings, clock=clock)


@pytest.mark.parametrize(
    ("config", "env", "message"),
    [
        (
            "telegram:\n  webhook_url: https://companion.example.org/telegram/hook\n",
            {"TELEGRAM_BOT_TOKEN": "123456:TEST-TOKEN"},
            "telegram.webhook_url is set but TELEGRAM_WEBHOOK_SECRET is not",
        ),
        ("", {"SLACK_BOT_TOKEN": "xoxb-x"}, "SLACK_BOT_TOKEN is set but SLACK_SIGNING_SECRET is not"),
        (
            "whatsapp:\n  from_number: '+14155238886'\n",
            {},
            "whatsapp.from_number is set but TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN are not",
        ),
    ],
    ids=["telegram", "slack", "whatsapp"],
)
def test_the_cli_refuses_to_start_a_channel_without_its_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str, env: dict[str, str], message: str
) -> None:
    """`companion run` and every other command build the service the same way (``_companion``): exit 2, say why.

    ``db upgrade`` stands in for ``run`` so that a regression fails here instead of starting a server.
    """
    path = tmp_path / "config.yaml"
    path.write_text("database:\n  path: c.db\n" + config, encoding="utf-8")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, ["db", "upgrade", "--config", str(path)])
    assert result.exit_code == 2 and f"error: {message}" in result.output


SECRET_VARIABLES = [
    "DATABASE_URL",
    "COMPANION_DATA_KEY",
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_WEBHOOK_SECRET",
    "SLACK_BOT_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_APP_TOKEN",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
]
# Everything a channel needs, so that only the blank variable is wrong.
FULL_CONFIG = (
    "telegram:\n  webhook_url: https://companion.example.org/telegram/hook\n"
    "whatsapp:\n  from_number: '+14155238886'\n  public_url: https://companion.example.org/whatsapp/inbound\n"
)
FULL_ENV = {
    "TELEGRAM_BOT_TOKEN": "123456:TEST-TOKEN",
    "TELEGRAM_WEBHOOK_SECRET": "a-webhook-secret",
    "SLACK_BOT_TOKEN": "xoxb-x",
    "SLACK_SIGNING_SECRET": "a-signing-secret",
    "SLACK_APP_TOKEN": "xapp-x",
    "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "TWILIO_AUTH_TOKEN": "an-auth-token",
}


@pytest.mark.parametrize("blank", ["", "  \t"], ids=["empty", "whitespace"])
@pytest.mark.parametrize("variable", SECRET_VARIABLES)
def test_an_empty_secret_is_missing_and_the_service_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, blank: str
) -> None:
    """An empty TWILIO_AUTH_TOKEN used to open the WhatsApp webhook (Twilio's validator accepts an empty key).

    Every secret, blank, stops every command with one line naming it, before anything is served.
    """
    path = tmp_path / "config.yaml"
    path.write_text("database:\n  path: c.db\n" + FULL_CONFIG, encoding="utf-8")
    for name, value in FULL_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(variable, blank)
    result = CliRunner().invoke(cli, ["db", "upgrade", "--config", str(path)])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {variable} is empty"), line
    assert "Traceback" not in result.output


def test_an_empty_auth_token_can_never_verify_a_whatsapp_signature(sqlite_companion: Companion) -> None:
    """Defence in depth: the adapter itself refuses a blank token, whoever builds it."""
    from twilio.rest import Client as TwilioClient

    from channels.whatsapp import WhatsAppChannel

    with pytest.raises(ValueError, match="auth token"):
        WhatsAppChannel(
            client=TwilioClient("AC" + "0" * 32, "x"),
            auth_token=" ",
            from_number="+14155238886",
            status_callback_url=None,
            templates={},
            db=sqlite_companion.db,
            engine=sqlite_companion.engine,
        )
