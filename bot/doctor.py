"""`companion doctor`: one line per check of a deployment, each with the fix when it does not pass.

The checks only read: the database is not upgraded, no key file is created,
nothing is sent to any chat. Platform checks call each platform's read-only
identity methods through the same SDKs and base URLs the service uses
(Telegram getMe and getWebhookInfo, Slack auth.test, Twilio's account and
phone-number fetches); the LLM provider gets one tiny call only with
``--llm``, since it costs money. No client data leaves the machine: the LLM
prompt is a fixed word, and the crisis check reads only time zones.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from bot.config import CONFIG_ENV, DEFAULT_CONFIG, PROVIDER_KEYS, Settings
from storage import crypto

PASS: Final = "ok"
WARN: Final = "warn"
FAIL: Final = "FAIL"
SKIP: Final = "skip"
# The bot scopes deploy/slack-app-manifest.yaml asks for (tests/test_doctor.py keeps the two in step:
# the manifest is not installed with the package, so the list is here).
SLACK_SCOPES: Final = ("chat:write", "commands", "im:write", "files:write")
TWILIO_SANDBOX: Final = "+14155238886"
RECENT_ERROR_SECONDS: Final = 3600  # a webhook error younger than this is failing now, not history
LOOPBACK: Final = ("127.0.0.1", "localhost", "::1", "0.0.0.0")


@dataclass(frozen=True)
class Result:
    status: str
    check: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" — fix: {self.fix}" if self.fix and self.status in (FAIL, WARN) else ""
        return f"{self.status:<4}  {self.check}: {self.detail}{fix}"


def run(settings: Settings, *, llm: bool = False, config: Path | None = None) -> list[Result]:
    """Every check, in the order an operator would fix them; a check that raises is reported as FAIL."""
    results: list[Result] = []
    steps: list[tuple[str, Callable[[], Iterable[Result]]]] = [
        ("config", lambda: _config(settings, config)),
        ("platforms", lambda: _platforms(settings)),
        ("database", lambda: _database(settings)),
        ("telegram", lambda: _telegram(settings)),
        ("slack", lambda: _slack(settings)),
        ("twilio", lambda: _twilio(settings)),
        ("urls", lambda: _urls(settings)),
        ("llm", lambda: _llm(settings, call=llm)),
        ("memory", lambda: _memory(settings)),
        ("crisis resources", lambda: _crisis_resources(settings)),
    ]
    for name, step in steps:
        try:
            results.extend(step())
        except Exception as exc:  # a check's own failure is a finding, not a crash
            results.append(Result(FAIL, name, f"{type(exc).__name__}: {exc}", "see the message"))
    return results


# -- configuration and environment ------------------------------------------------------------


def _config(settings: Settings, config: Path | None) -> Iterable[Result]:
    source = config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    source = source or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    where = f"{source} (paths relative to {settings.config_dir})" if source else "no config file: the defaults"
    database = f"SQLite at {settings.sqlite_path}" if settings.sqlite_path else "DATABASE_URL (PostgreSQL)"
    yield Result(PASS, "config", f"{where}; database {database}")
    if settings.sqlite_path is None and settings.data_key is None:
        yield Result(
            FAIL, "data key", "DATABASE_URL is set but COMPANION_DATA_KEY is not", "make one with `companion keys new`"
        )
    provider = settings.llm.provider
    key = PROVIDER_KEYS.get(provider)
    if key is not None and not os.environ.get(key):
        yield Result(FAIL, "llm", f"llm.provider is {provider} but {key} is not set", f"export {key}=…")


def _platforms(settings: Settings) -> Iterable[Result]:
    telegram, slack, wa = settings.telegram, settings.slack_bot_token is not None, settings.whatsapp
    if settings.telegram_bot_token is None:
        yield Result(PASS, "telegram", "off (TELEGRAM_BOT_TOKEN is not set)")
    elif telegram.webhook_url and settings.telegram_webhook_secret is None:
        yield Result(
            FAIL,
            "telegram",
            "telegram.webhook_url is set but TELEGRAM_WEBHOOK_SECRET is not (the service refuses to start)",
            "export TELEGRAM_WEBHOOK_SECRET=$(openssl rand -hex 24)",
        )
    else:
        mode = f"webhook at {telegram.webhook_path}" if telegram.webhook_url else "long polling (no public URL needed)"
        yield Result(PASS, "telegram", f"on (TELEGRAM_BOT_TOKEN set), {mode}")
    if not slack:
        yield Result(PASS, "slack", "off (SLACK_BOT_TOKEN is not set)")
    elif settings.slack_signing_secret is None:
        yield Result(
            FAIL,
            "slack",
            "SLACK_BOT_TOKEN is set but SLACK_SIGNING_SECRET is not (the service refuses to start)",
            "copy the signing secret from the app's Basic Information page",
        )
    else:
        mode = "Socket Mode (SLACK_APP_TOKEN)" if settings.slack_app_token else "events at /slack/events"
        yield Result(PASS, "slack", f"on (SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET set), {mode}")
    if wa.from_number is None:
        yield Result(PASS, "whatsapp", "off (whatsapp.from_number is not set)")
    elif settings.twilio_account_sid is None or settings.twilio_auth_token is None:
        yield Result(
            FAIL,
            "whatsapp",
            "whatsapp.from_number is set but TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN are not",
            "export both from the Twilio console",
        )
    elif not wa.public_url:
        yield Result(
            FAIL,
            "whatsapp",
            "whatsapp.from_number is set but whatsapp.public_url is not (signatures cannot be checked)",
            "set whatsapp.public_url to the exact URL Twilio calls",
        )
    else:
        yield Result(PASS, "whatsapp", f"on (from {wa.from_number}), inbound at {wa.inbound_path}")
    if not settings.platforms:
        yield Result(WARN, "platforms", "none configured: only the console and the try-it page", "see the README")


# -- database and data key --------------------------------------------------------------------


def _database(settings: Settings) -> Iterable[Result]:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, text

    from bot.backup import check_key_on
    from storage.db import alembic_config, normalise_url

    path = settings.sqlite_path
    if path is not None and not path.exists():
        yield Result(
            WARN, "database", f"no database yet at {path}", "`companion run` (or `companion db upgrade`) creates it"
        )
        return
    engine = create_engine(normalise_url(settings.url))
    try:
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
                current = MigrationContext.configure(connection).get_current_revision()
        except Exception as exc:
            yield Result(
                FAIL,
                "database",
                f"cannot connect ({type(exc).__name__})",
                "check DATABASE_URL and that the server runs",
            )
            return
        scripts = ScriptDirectory.from_config(alembic_config(settings.url))
        head = scripts.get_current_head()
        known = {rev.revision for rev in scripts.walk_revisions()}
        if current == head:
            yield Result(PASS, "database", f"{engine.dialect.name}, schema at {current} (the latest)")
        elif current is not None and current not in known:
            yield Result(
                FAIL,
                "database",
                f"schema {current} is newer than this companion ({head})",
                "upgrade the companion to the version that wrote it",
            )
        else:
            yield Result(
                WARN,
                "database",
                f"schema at {current or 'nothing'}, the latest is {head}",
                "`companion db upgrade` (`companion run` does it on start)",
            )
        keys = _keys(settings)
        if keys is None:
            yield Result(
                FAIL,
                "data key",
                f"no COMPANION_DATA_KEY and no key file at {crypto.key_file_for(path or Path())}",
                "restore the key file from your backup; without it the client text is lost",
            )
            return
        try:
            checked = check_key_on(engine, keys)
        except Exception as exc:
            yield Result(
                FAIL, "data key", str(exc), "set the key the data was written with (COMPANION_DATA_KEY or the key file)"
            )
            return
        yield Result(PASS, "data key", f"opens the data ({checked} sampled value(s) decrypted)")
    finally:
        engine.dispose()


def _keys(settings: Settings) -> list[bytes] | None:
    if settings.data_key is not None:
        return crypto.parse_keys(settings.data_key.get_secret_value())
    path = settings.sqlite_path
    if path is not None and crypto.key_file_for(path).exists():
        return crypto.parse_keys(crypto.key_file_for(path).read_text(encoding="utf-8"))
    return None


# -- platform tokens --------------------------------------------------------------------------


def _telegram(settings: Settings) -> Iterable[Result]:
    if settings.telegram_bot_token is None:
        return []
    from telegram import Bot
    from telegram.error import InvalidToken, TelegramError
    from telegram.request import HTTPXRequest

    config = settings.telegram
    timeout = config.request_timeout
    bot = Bot(
        settings.telegram_bot_token.get_secret_value(),
        base_url=config.api_base_url,
        request=HTTPXRequest(read_timeout=timeout, connect_timeout=timeout, write_timeout=timeout),
    )

    async def ask() -> tuple[Any, Any]:
        async with bot:
            return await bot.get_me(), await bot.get_webhook_info()

    try:
        me, info = asyncio.run(ask())
    except InvalidToken:
        return [
            Result(FAIL, "telegram token", "refused by Telegram (getMe)", "check TELEGRAM_BOT_TOKEN with @BotFather")
        ]
    except TelegramError as exc:
        return [Result(FAIL, "telegram token", f"getMe failed: {exc}", "check the network and telegram.api_base_url")]
    results = [Result(PASS, "telegram token", f"@{me.username} (getMe)")]
    if config.webhook_url:
        if info.url != config.webhook_url:
            results.append(
                Result(
                    WARN,
                    "telegram webhook",
                    f"Telegram has {info.url or 'no webhook'}, configured {config.webhook_url}",
                    "`companion run` sets it at start; is the service running?",
                )
            )
        else:
            results.append(Result(PASS, "telegram webhook", f"set, {info.pending_update_count} update(s) pending"))
        if info.last_error_date is not None:
            age = time.time() - info.last_error_date.timestamp()
            results.append(
                Result(
                    FAIL if age < RECENT_ERROR_SECONDS else WARN,
                    "telegram webhook",
                    f"last delivery error {int(age // 60)} min ago: {info.last_error_message}",
                    f"check that {config.webhook_url} reaches this service over valid HTTPS (proxy, certificate)",
                )
            )
    elif info.url:
        results.append(
            Result(
                WARN,
                "telegram webhook",
                f"a webhook is set ({info.url}) but this config polls",
                "`companion run` removes it",
            )
        )
    return results


def _slack(settings: Settings) -> Iterable[Result]:
    if settings.slack_bot_token is None:
        return []
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError

    client = WebClient(
        token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack.api_base_url, timeout=10
    )
    try:
        response = client.auth_test()
    except SlackApiError as exc:
        error = exc.response.get("error", "error")
        return [
            Result(FAIL, "slack token", f"auth.test: {error}", "reinstall the app and copy the Bot User OAuth Token")
        ]
    except Exception as exc:
        return [Result(FAIL, "slack token", f"auth.test failed ({type(exc).__name__})", "check the network")]
    results = [Result(PASS, "slack token", f"{response.get('user')} in {response.get('team')} (auth.test)")]
    header = next((v for k, v in response.headers.items() if k.lower() == "x-oauth-scopes"), None)
    granted = {s.strip() for s in (header[0] if isinstance(header, list) else header or "").split(",") if s.strip()}
    missing = [scope for scope in SLACK_SCOPES if scope not in granted]
    if header is None:
        results.append(
            Result(WARN, "slack scopes", "Slack did not report the token's scopes", "compare with the manifest")
        )
    elif missing:
        results.append(
            Result(
                FAIL,
                "slack scopes",
                f"missing {', '.join(missing)}",
                "add them from deploy/slack-app-manifest.yaml and reinstall the app",
            )
        )
    else:
        results.append(Result(PASS, "slack scopes", f"has the manifest's {', '.join(SLACK_SCOPES)}"))
    return results


def _twilio(settings: Settings) -> Iterable[Result]:
    config = settings.whatsapp
    if config.from_number is None or settings.twilio_account_sid is None or settings.twilio_auth_token is None:
        return []
    from twilio.base.exceptions import TwilioException, TwilioRestException
    from twilio.rest import Client as TwilioClient

    from channels.whatsapp import RedirectingHttpClient, e164

    sid = settings.twilio_account_sid.get_secret_value()
    client = TwilioClient(
        sid,
        settings.twilio_auth_token.get_secret_value(),
        http_client=RedirectingHttpClient(config.api_base_url, timeout=10),
    )
    try:
        account = client.api.v2010.accounts(sid).fetch()
    except TwilioRestException as exc:
        fix = "check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN in the Twilio console"
        return [Result(FAIL, "twilio account", f"refused ({exc.status}: {exc.msg})", fix)]
    except TwilioException as exc:
        return [Result(FAIL, "twilio account", f"fetch failed: {exc}", "check the network")]
    if account.status != "active":
        return [
            Result(FAIL, "twilio account", f"status {account.status}", "reactivate the account in the Twilio console")
        ]
    results = [Result(PASS, "twilio account", f"{account.friendly_name}, active")]
    sender = e164(config.from_number)
    if sender is None:
        results.append(Result(FAIL, "whatsapp sender", f"{config.from_number!r} is not a phone number", "use E.164"))
    elif sender == TWILIO_SANDBOX:
        results.append(Result(WARN, "whatsapp sender", "the Twilio sandbox (testing only)", "register your own sender"))
    elif client.incoming_phone_numbers.list(phone_number=sender, limit=1):
        results.append(Result(PASS, "whatsapp sender", f"{sender} belongs to this account"))
    else:
        results.append(
            Result(
                FAIL,
                "whatsapp sender",
                f"{sender} is not a number on this account",
                "set whatsapp.from_number to the account's WhatsApp-enabled number",
            )
        )
    return results


# -- public URLs ------------------------------------------------------------------------------


def _url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme != "https":
        return "is not https://"
    if not parts.hostname or parts.hostname in LOOPBACK:
        return "does not name a public host"
    if parts.query or parts.fragment:
        return "has a query or fragment (platforms sign the exact URL)"
    return None


def _urls(settings: Settings) -> Iterable[Result]:
    named = {
        "telegram.webhook_url": settings.telegram.webhook_url if settings.telegram_bot_token else None,
        "whatsapp.public_url": settings.whatsapp.public_url if settings.whatsapp.from_number else None,
        "whatsapp.status_callback_url": settings.whatsapp.status_callback_url
        if settings.whatsapp.from_number
        else None,
        "web.base_url": settings.web.base_url,
    }
    for key, url in named.items():
        if not url:
            continue
        problem = _url_problem(url)
        if problem is None:
            yield Result(PASS, key, url)
        else:
            yield Result(
                FAIL if key != "web.base_url" else WARN, key, f"{url} {problem}", "use the public https:// address"
            )
    if settings.platforms and not settings.web.base_url:
        yield Result(
            WARN,
            "web.base_url",
            f"unset: dashboard links point at {settings.web_base_url}",
            "set web.base_url to where therapists reach the service",
        )


# -- LLM, memory, crisis resources ------------------------------------------------------------


def _llm(settings: Settings, *, call: bool) -> Iterable[Result]:
    provider = settings.llm.provider
    if provider == "none":
        yield Result(PASS, "llm", "scripted mode (llm.provider: none): no model is called")
        return
    if not call:
        yield Result(SKIP, "llm", f"{provider} {settings.llm.model_name} not called (add --llm for one tiny call)")
        return
    from bot.wiring import language_model

    model = language_model(settings)
    assert model is not None
    began = time.perf_counter()
    try:
        model.chat.invoke("Reply with the single word OK.")
    except Exception as exc:
        yield Result(FAIL, "llm", f"{provider} call failed ({type(exc).__name__})", "check the key, model and base_url")
        return
    yield Result(PASS, "llm", f"{provider} {settings.llm.model_name} answered in {time.perf_counter() - began:.1f} s")


def _memory(settings: Settings) -> Iterable[Result]:
    config = settings.memory
    if settings.llm.provider == "none":
        yield Result(PASS, "memory", "not used in scripted mode")
        return
    if not config.enabled:
        yield Result(PASS, "memory", "off (memory.enabled: false)")
        return
    try:
        import chromadb  # noqa: F401
    except ImportError:
        yield Result(FAIL, "memory", "chromadb is not installed", "pip install 'homework-companion[llm]'")
        return
    if config.chroma_url:
        base = config.chroma_url.rstrip("/")
        for path in ("/api/v2/heartbeat", "/api/v1/heartbeat"):
            try:
                with urllib.request.urlopen(base + path, timeout=config.timeout_seconds) as response:
                    if response.status == 200:
                        yield Result(PASS, "memory", f"Chroma server at {base} answers")
                        return
            except OSError:
                continue
        yield Result(FAIL, "memory", f"no Chroma server answers at {base}", "start it, or unset memory.chroma_url")
        return
    directory = (settings.config_dir / config.path).resolve()
    parent = directory if directory.exists() else directory.parent
    if os.access(parent, os.W_OK):
        yield Result(PASS, "memory", f"embedded Chroma at {directory}")
    else:
        yield Result(FAIL, "memory", f"{parent} is not writable", "fix its owner or set memory.path")


def _crisis_resources(settings: Settings) -> Iterable[Result]:
    from sqlalchemy import create_engine, select

    from dialogs.timeparse import zone_country
    from storage import Client
    from storage.db import normalise_url

    resources = settings.safety.crisis_resources
    zones: list[str] = []
    path = settings.sqlite_path
    if path is None or path.exists():
        engine = create_engine(normalise_url(settings.url))
        try:
            with engine.connect() as connection:
                found = connection.execute(select(Client.__table__.c.timezone).distinct()).scalars()  # type: ignore[attr-defined]
                zones = [zone for zone in found if zone]
        except Exception:  # the database check already says why
            zones = []
        finally:
            engine.dispose()
    countries = sorted({zone_country(zone) or "??" for zone in zones})
    if not countries:
        listed = ", ".join(sorted(resources)) or "none"
        status = PASS if resources else WARN
        yield Result(
            status,
            "crisis resources",
            f"no clients with a time zone yet; configured: {listed}",
            "see the README, Safety",
        )
        return
    for country in countries:
        label = country if country != "??" else "a time zone without a country"
        if country in resources:
            yield Result(PASS, "crisis resources", f"{label}: {len(resources[country])} line(s)")
        elif "default" in resources:
            yield Result(
                WARN, "crisis resources", f"{label}: only the default lines", f"add safety.crisis_resources.{country}"
            )
        else:
            yield Result(
                FAIL,
                "crisis resources",
                f"{label}: none (clients there get only the advice to call their local emergency number)",
                f"add safety.crisis_resources.{country} with the lines that apply there",
            )
