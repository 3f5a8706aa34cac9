"""`companion doctor` against the three fakes: every check passes on a good deployment, and each fault is named."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from bot.cli import app as cli
from bot.config import load_settings
from bot.doctor import SLACK_SCOPES
from bot.wiring import build
from dialogs.clock import FrozenClock
from storage import LogEntry
from storage import queries as q
from tests.conftest import MONDAY, TEST_DATA_KEY
from tests.fake_openai import FakeOpenAI
from tests.fake_slack import FakeSlackAPI
from tests.fake_telegram import FakeBotAPI
from tests.fake_twilio import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, FakeTwilioAPI

WEBHOOK = "https://companion.example.org/telegram/hook"
SENDER = "+447911123456"
runner = CliRunner()


@pytest.fixture
def fakes() -> Iterator[tuple[FakeBotAPI, FakeSlackAPI, FakeTwilioAPI]]:
    telegram, slack, twilio = FakeBotAPI().start(), FakeSlackAPI().start(), FakeTwilioAPI().start()
    twilio.numbers = [SENDER]
    # What `companion run` does at start in webhook mode.
    httpx.post(f"{telegram.base_url}{telegram.token}/setWebhook", json={"url": WEBHOOK, "secret_token": "s3cret"})
    yield telegram, slack, twilio
    for fake in (telegram, slack, twilio):
        fake.stop()


def deployment(tmp_path: Path, fakes: Any, **extra: Any) -> tuple[Path, dict[str, str]]:
    telegram, slack, twilio = fakes
    config: dict[str, Any] = {
        "database": {"path": "data/companion.db"},
        "web": {"demo": False, "base_url": "https://companion.example.org"},
        "telegram": {"webhook_url": WEBHOOK, "api_base_url": telegram.base_url, "request_timeout": 5},
        "slack": {"api_base_url": slack.base_url},
        "whatsapp": {
            "from_number": SENDER,
            "public_url": "https://companion.example.org/whatsapp/inbound",
            "status_callback_url": "https://companion.example.org/whatsapp/status",
            "api_base_url": twilio.base_url,
        },
        "safety": {"crisis_resources": {"GB": ["Samaritans: call 116 123"], "US": ["988"]}},
        **extra,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {
        "TELEGRAM_BOT_TOKEN": telegram.token,
        "TELEGRAM_WEBHOOK_SECRET": "s3cret",
        "SLACK_BOT_TOKEN": slack.token,
        "SLACK_SIGNING_SECRET": "signing-secret",
        "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": DEFAULT_AUTH_TOKEN,
    }
    return path, env


def with_clients(config: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, *zones: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    companion = build(load_settings(config), clock=FrozenClock(MONDAY))
    with companion.db.unit_of_work() as session:
        therapist = q.add_therapist(session, name="Dana", timezone="Europe/London", now=MONDAY)
        session.flush()
        for n, zone in enumerate(zones):
            client = q.create_client(session, therapist_id=therapist.id or 0, name=f"Client {n}", now=MONDAY)
            client.timezone = zone
            session.add(client)
            session.flush()
            session.add(LogEntry(client_id=client.id or 0, text=f"private words {n}", created_at=MONDAY))
    companion.db.dispose()
    for name in env:
        monkeypatch.delenv(name)


def doctor(config: Path, env: dict[str, str], *args: str) -> tuple[int, list[str]]:
    result = runner.invoke(cli, ["doctor", "--config", str(config), *args], env=env)
    return result.exit_code, result.output.splitlines()


def line(lines: list[str], check: str, status: str | None = None) -> str:
    found = [item for item in lines if item[6:].startswith(check + ":")]
    assert found, f"no {check!r} line in:\n" + "\n".join(lines)
    if status is not None:
        assert any(item.startswith(status) for item in found), "\n".join(found)
    return "\n".join(found)


def test_a_good_deployment_passes_every_check(tmp_path: Path, fakes: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    config, env = deployment(tmp_path, fakes)
    with_clients(config, env, monkeypatch, "Europe/London", "America/New_York")
    code, lines = doctor(config, env)
    assert code == 0, "\n".join(lines)
    assert not [item for item in lines if item.startswith(("FAIL", "warn"))], "\n".join(lines)
    assert "webhook at /telegram/hook" in line(lines, "telegram", "ok")
    assert "on (SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET set)" in line(lines, "slack", "ok")
    assert "schema at" in line(lines, "database", "ok") and "(the latest)" in line(lines, "database")
    assert "opens the data" in line(lines, "data key", "ok")
    assert f"@{fakes[0].username}" in line(lines, "telegram token", "ok")
    assert "1 update(s) pending" not in line(lines, "telegram webhook", "ok")
    assert "has the manifest's" in line(lines, "slack scopes", "ok")
    assert "active" in line(lines, "twilio account", "ok")
    assert "belongs to this account" in line(lines, "whatsapp sender", "ok")
    assert "GB: 1 line(s)" in line(lines, "crisis resources", "ok") and "US: 1 line(s)" in "\n".join(lines)
    assert "scripted mode" in line(lines, "llm", "ok")
    assert lines[-1].endswith("check(s) passed.")
    assert [c.path for c in fakes[2].calls] == [
        f"/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}.json",
        f"/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}/IncomingPhoneNumbers.json",
    ]  # read-only: nothing was sent


def test_each_fault_is_a_failed_line_with_its_fix(tmp_path: Path, fakes: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    telegram, slack, twilio = fakes
    config, env = deployment(tmp_path, fakes)
    with_clients(config, env, monkeypatch, "Europe/London", "Australia/Sydney")
    telegram.webhook_failed("Wrong response from the webhook: 502 Bad Gateway", int(time.time()) - 120)
    slack.scopes = ["chat:write", "commands"]
    twilio.numbers = []
    code, lines = doctor(config, env)
    assert code == 1
    webhook = line(lines, "telegram webhook", "FAIL")
    assert "502 Bad Gateway" in webhook and "fix: check that" in webhook
    scopes = line(lines, "slack scopes", "FAIL")
    assert "missing im:write, files:write" in scopes and "reinstall the app" in scopes
    assert "is not a number on this account" in line(lines, "whatsapp sender", "FAIL")
    crisis = line(lines, "crisis resources", "FAIL")
    assert "AU: none" in crisis and "fix: add safety.crisis_resources.AU" in crisis

    twilio.account_status = "suspended"
    bad = {**env, "TELEGRAM_BOT_TOKEN": "123456:" + "A" * 35, "SLACK_BOT_TOKEN": "xoxb-wrong"}
    code, lines = doctor(config, bad)
    assert code == 1
    assert "fix: check TELEGRAM_BOT_TOKEN with @BotFather" in line(lines, "telegram token", "FAIL")
    assert "auth.test: invalid_auth" in line(lines, "slack token", "FAIL")
    assert "status suspended" in line(lines, "twilio account", "FAIL")

    # A different data key than the data was written with.
    code, lines = doctor(config, {**env, "COMPANION_DATA_KEY": TEST_DATA_KEY})
    assert code == 1 and "does not open" in line(lines, "data key", "FAIL")


def test_configuration_faults_and_what_is_off(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "telegram": {"webhook_url": "http://localhost:8080/telegram/hook"},
                "whatsapp": {"from_number": SENDER, "public_url": "http://companion.example.org/wa?x=1"},
                "llm": {"provider": "openai"},
            }
        )
    )
    env = {"TELEGRAM_BOT_TOKEN": "123:abc", "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID, "TWILIO_AUTH_TOKEN": "x"}
    code, lines = doctor(config, {**env, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert code == 1
    assert "TELEGRAM_WEBHOOK_SECRET is not" in line(lines, "telegram", "FAIL")
    assert "off (SLACK_BOT_TOKEN is not set)" in line(lines, "slack", "ok")
    assert "COMPANION_DATA_KEY is not" in line(lines, "data key", "FAIL")
    assert "OPENAI_API_KEY is not set" in line(lines, "llm", "FAIL")
    assert "cannot connect" in line(lines, "database", "FAIL")
    assert "is not https://" in line(lines, "telegram.webhook_url", "FAIL")
    assert "is not https://" in line(lines, "whatsapp.public_url", "FAIL")
    assert "not called (add --llm" in line(lines, "llm", "skip")


def test_llm_is_called_once_and_only_with_the_flag(tmp_path: Path) -> None:
    with FakeOpenAI() as server:
        config = tmp_path / "config.yaml"
        llm = {"provider": "openai", "base_url": server.base_url, "model": "local-model", "timeout_seconds": 5}
        config.write_text(yaml.safe_dump({"llm": llm, "memory": {"enabled": False}}))
        env = {"OPENAI_API_KEY": "sk-local"}
        _, lines = doctor(config, env)
        assert "not called (add --llm" in line(lines, "llm", "skip") and server.chat_requests() == []
        assert "off (memory.enabled: false)" in line(lines, "memory", "ok")
        code, lines = doctor(config, env, "--llm")
        assert code == 0 and "openai local-model answered in" in line(lines, "llm", "ok")
        assert len(server.chat_requests()) == 1
        assert "OK" in str(server.chat_requests()[0]["messages"])  # a fixed word: no client data
        server.fail_next(status=500)
        code, lines = doctor(config, env, "--llm")
        assert code == 1 and "call failed" in line(lines, "llm", "FAIL")


def test_the_doctor_knows_the_slack_manifest_scopes() -> None:
    manifest = yaml.safe_load((Path(__file__).parent.parent / "deploy/slack-app-manifest.yaml").read_text())
    assert tuple(manifest["oauth_config"]["scopes"]["bot"]) == SLACK_SCOPES
