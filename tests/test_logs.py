"""Log redaction: client text, phone numbers and tokens never reach the log output, whatever the libraries log."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot import logs
from bot.config import Settings
from bot.http import create_app
from bot.wiring import Companion
from dialogs.clock import FrozenClock
from tests.conftest import TEST_DATA_KEY, make_companion
from tests.fake_http import made_up_token
from tests.fake_telegram import FakeBotAPI, message_update
from tests.fake_twilio import FakeTwilioAPI, inbound_message, signed_headers

BOT_TOKEN = made_up_token("telegram")
SLACK_TOKEN = made_up_token("slack-bot")
APP_TOKEN = made_up_token("slack-app")
PHONE = "+447911123456"
SENTENCE = "I panicked on the bus again and could not breathe"
PUBLIC = "https://companion.example.org/whatsapp/inbound"
SECRET = "log-test-hook-secret"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure() changes process-wide logging: put it back for the next test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = [*logs._QUIET, *logs._PAYLOAD, "companion"]
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


@pytest.fixture
def telegram() -> Iterator[FakeBotAPI]:
    with FakeBotAPI(token=BOT_TOKEN) as api:
        yield api


@pytest.fixture
def twilio() -> Iterator[FakeTwilioAPI]:
    with FakeTwilioAPI() as api:
        yield api


def service(
    url: str, clock: FrozenClock, tmp_path: Path, telegram: FakeBotAPI, twilio: FakeTwilioAPI, **overrides: Any
) -> Companion:
    return make_companion(
        url,
        clock,
        tmp_path,
        telegram={"api_base_url": telegram.base_url, "webhook_url": "https://companion.example.org/telegram/hook"},
        whatsapp={"from_number": "+14155238886", "public_url": PUBLIC, "api_base_url": twilio.base_url},
        TELEGRAM_BOT_TOKEN=BOT_TOKEN,
        TELEGRAM_WEBHOOK_SECRET=SECRET,
        TWILIO_ACCOUNT_SID=twilio.account_sid,
        TWILIO_AUTH_TOKEN=twilio.auth_token,
        **overrides,
    )


def run_flow(companion: Companion, twilio: FakeTwilioAPI) -> None:
    """A client's sentence (with their number in it) over Telegram and over WhatsApp, replies delivered."""

    async def main() -> None:
        app = create_app(companion, background=False)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
                text = f"{SENTENCE}, call me on {PHONE}"
                update = message_update(1, 4242, text)
                headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
                assert (await http.post("/telegram/hook", json=update, headers=headers)).status_code == 200
                params = inbound_message(message_sid="SM" + "1" * 32, from_=f"whatsapp:{PHONE}", body=text)
                signed = signed_headers(PUBLIC, params, twilio.auth_token)
                assert (await http.post("/whatsapp/inbound", data=params, headers=signed)).status_code == 200
            for sender in app.state.senders.values():
                while await sender.drain_once():
                    pass
        # Library loggers as they log requests and failures (the URL form is httpx's own).
        logging.getLogger("httpx").warning(
            'HTTP Request: POST %s%s/sendMessage "HTTP/1.1 502"', "https://api.telegram.org/bot", BOT_TOKEN
        )
        logging.getLogger("slack_sdk.web").warning("Authorization: Bearer %s; app token %s", SLACK_TOKEN, APP_TOKEN)
        try:
            raise ValueError(f"could not store {text!r} for whatsapp:{PHONE}")
        except ValueError:
            logging.getLogger("companion").exception("failed while recording")

    asyncio.run(main())


def assert_clean(output: str) -> None:
    for secret in (BOT_TOKEN, SLACK_TOKEN, APP_TOKEN, PHONE, PHONE[1:], "7911 123456", TEST_DATA_KEY, SECRET):
        assert secret not in output, f"{secret!r} leaked into the logs:\n{output}"


def test_a_real_flow_logs_no_client_text_numbers_or_tokens(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, telegram: FakeBotAPI, twilio: FakeTwilioAPI
) -> None:
    out = io.StringIO()
    logs.configure(Settings(config_dir=tmp_path, log_level="DEBUG"), stream=out)  # as the CLI: before building
    companion = service(sqlite_url, clock, tmp_path, telegram, twilio, log_level="DEBUG")
    run_flow(companion, twilio)
    companion.db.dispose()
    output = out.getvalue()
    assert "telegram: webhook mode" in output  # the capture really is the service's log output
    assert "<telegram-token>" in output and "<slack-token>" in output and "whatsapp:<phone>" in output
    assert_clean(output)
    assert SENTENCE not in output and "breathe" not in output
    assert "client text may appear" not in output


def test_the_debug_flag_announces_itself_and_still_masks_tokens_and_numbers(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, telegram: FakeBotAPI, twilio: FakeTwilioAPI
) -> None:
    out = io.StringIO()
    logs.configure(Settings(config_dir=tmp_path, log_level="DEBUG", log_text=True), stream=out)
    companion = service(sqlite_url, clock, tmp_path, telegram, twilio, log_level="DEBUG", log_text=True)
    run_flow(companion, twilio)
    companion.db.dispose()
    output = out.getvalue()
    first = output.splitlines()[0]
    assert "WARNING" in first and logs.LOG_TEXT_WARNING in first
    # python-telegram-bot's own debug output now flows (with the bot token in its URLs)...
    assert "Calling Bot API endpoint `sendMessage`" in output and "Set Bot API URL" in output
    assert "Calling Bot API endpoint `setWebhook`" in output  # its parameters held the webhook secret in clear
    assert_clean(output)  # ...and is masked all the same
    for reveals in ("client text", "SQL statements with their parameters", "failed validation", "stay masked"):
        assert reveals in first  # the warning says exactly what the flag lets through


def test_configured_secrets_are_masked_by_value_in_every_mode(tmp_path: Path) -> None:
    """A secret in a shape no pattern knows (a library's repr, an error message) is still masked."""
    secret, signing, password = "plain words secret", "0f1e2d3c4b5a", "hunter2-db-pass"
    settings = Settings(
        config_dir=tmp_path,
        TELEGRAM_WEBHOOK_SECRET=secret,
        SLACK_SIGNING_SECRET=signing,
        DATABASE_URL=f"postgresql://companion:{password}@db/x",
    )
    for log_text in (False, True):
        out = io.StringIO()
        logs.configure(settings.model_copy(update={"log_text": log_text}), stream=out)
        logging.getLogger("telegram.ext").warning("odd reply <%s> / %s / (%s)", secret, signing, password)
        assert secret not in out.getvalue() and signing not in out.getvalue() and password not in out.getvalue()
        assert "<secret>" in out.getvalue()


def test_the_debug_flag_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COMPANION_LOG_TEXT", "1")
    monkeypatch.setenv("COMPANION_LOG_FORMAT", "json")
    settings = Settings(config_dir=tmp_path)
    assert settings.log_text and settings.log_format == "json"


def test_json_lines_are_masked_too(tmp_path: Path) -> None:
    out = io.StringIO()
    logs.configure(Settings(config_dir=tmp_path, log_format="json"), stream=out)
    logging.getLogger("companion").warning("sent to %s with %s", f"whatsapp:{PHONE}", BOT_TOKEN)
    try:
        raise RuntimeError(SLACK_TOKEN)
    except RuntimeError:
        logging.getLogger("companion").exception("boom")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["message"] == "sent to whatsapp:<phone> with <telegram-token>"
    assert lines[0]["level"] == "WARNING" and lines[0]["logger"] == "companion"
    assert "<slack-token>" in lines[1]["exception"]
    assert_clean(out.getvalue())


def test_configuring_again_replaces_the_handler(tmp_path: Path) -> None:
    first, second = io.StringIO(), io.StringIO()
    logs.configure(Settings(config_dir=tmp_path), stream=first)
    logs.configure(Settings(config_dir=tmp_path), stream=second)
    logging.getLogger("companion").warning("once")
    assert first.getvalue() == "" and second.getvalue().count("once") == 1
    assert logging.getLogger("httpx").level == logging.WARNING


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        (f"https://api.telegram.org/bot{BOT_TOKEN}/getMe", "https://api.telegram.org/bot<telegram-token>/getMe"),
        (f"from whatsapp:{PHONE} to whatsapp:+1 (415) 523-8886", "from whatsapp:<phone> to whatsapp:<phone>"),
        ("call +44 7911 123456 or +1-415-523-8886", "call <phone> or <phone>"),
        (
            "https://wa.me/447911123456?text=join%20X To=%2B447911123456",
            "https://wa.me/<phone>?text=join%20X To=<phone>",
        ),
        (f"{SLACK_TOKEN} {APP_TOKEN} xoxp-1-2-3", "<slack-token> <slack-token> <slack-token>"),
        ("X-Slack-Signature: v0=" + "a" * 64, "X-Slack-Signature: v0=<signature>"),
        ("AccountSid AC" + "0123456789abcdef" * 2, "AccountSid AC<sid>"),
        ("auth token " + "0123456789abcdef" * 2, "auth token <hex-secret>"),
        (f"COMPANION_DATA_KEY={TEST_DATA_KEY}", "COMPANION_DATA_KEY=<key>"),
        ("cipher gAAAAABl" + "x" * 60, "cipher <fernet-token>"),
        ("Authorization: Bearer abc.def-ghi_jkl", "Authorization: Bearer <redacted>"),
        ("postgresql://companion:hunter2@db:5432/x", "postgresql://<credentials>@db:5432/x"),
        ("GET /hook?token=s3cret&x=1", "GET /hook?token=<redacted>&x=1"),
        (
            "parameters `{'url': 'https://x/h', 'secret_token': 'abc-DEF_1'}`",
            "parameters `{'url': 'https://x/h', 'secret_token': '<redacted>'}`",
        ),
        ('{"signing_secret": "s3cr3t", "n": 1}', '{"signing_secret": "<redacted>", "n": 1}'),
        ("[parameters: ('I feel awful', 3)]", "[parameters: <redacted>]"),
        ("input_value='I feel awful', input_type=str", "input_value=<redacted>, input_type=str"),
    ],
)
def test_redact_masks(raw: str, masked: str) -> None:
    assert logs.redact(raw) == masked


@pytest.mark.parametrize(
    "kept",
    [
        "2026-11-23 09:00:00,123 INFO companion: sweep done",
        "telegram update 123456789 could not be recorded",
        "whatsapp rejected outbox #42: 63016",
        "slack message ts 1700000000.000100",
        "database sqlite ready; 3 nudge(s) sent",
    ],
)
def test_redact_keeps_ordinary_lines(kept: str) -> None:
    assert logs.redact(kept) == kept


def test_log_text_leaves_data_in_but_never_secrets() -> None:
    line = f"[parameters: ('I feel awful', '{PHONE}')]"
    assert logs.redact(line, text=True) == "[parameters: ('I feel awful', '<phone>')]"
