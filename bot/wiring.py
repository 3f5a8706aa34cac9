"""Builds the companion's parts from settings: database, prompts, clock, engine."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from pydantic import SecretStr

import prompts
from bot.config import PROVIDER_KEYS, Settings
from channels.slack import SlackChannel
from channels.telegram import TelegramChannel
from channels.whatsapp import WhatsAppChannel
from dialogs.clock import Clock, OffsetClock, SystemClock
from dialogs.engine import Engine
from dialogs.llm import LanguageModel
from dialogs.llm_jobs import JobRunner
from storage import Database, crypto, keycheck
from storage import queries as q
from storage.memory import Embedder, Memory

log = logging.getLogger("companion")


class WiringError(Exception):
    """The configured channels cannot start safely (e.g. a webhook without its secret)."""


@dataclass
class Companion:
    settings: Settings
    db: Database
    engine: Engine
    clock: Clock
    telegram: TelegramChannel | None = None
    slack: SlackChannel | None = None
    whatsapp: WhatsAppChannel | None = None
    # LLM mode's job runner (model calls and memory writes after each turn's commit); None without a model.
    jobs: JobRunner | None = None
    memory_status: str = "off"  # for `companion usage` / status: on (how), off, or why it cannot work


def build(settings: Settings, *, clock: Clock | None = None, upgrade: bool = True) -> Companion:
    """Wire the parts; ``upgrade`` brings the schema to the latest migration first."""
    # The try-it demo may skip ahead in time (its own process only); production keeps the system clock as it is.
    refuse_blank_secrets(settings)
    clock = clock or (OffsetClock(SystemClock()) if settings.demo_enabled else SystemClock())
    db = Database(settings.url)
    crypto.use(data_keys(settings, db))
    check_data_key(settings, db, upgrade=upgrade, now=clock.now())
    # Before anything else that takes time: without its screen the companion must not answer anyone.
    safety_screen(settings)
    llm = language_model(settings)
    memory, memory_status = memory_store(settings) if llm is not None else (None, "off (LLM mode is off)")
    engine = Engine(
        prompts=prompts.load(settings.dialog.locale),
        clock=clock,
        settings=settings.dialog_settings(),
        llm=llm,
        memory=memory,
    )
    jobs = None
    if llm is not None:
        jobs = JobRunner(db=db, engine=engine)
        engine.on_job = jobs.wake
    companion = Companion(
        settings=settings,
        db=db,
        engine=engine,
        clock=clock,
        telegram=_telegram(settings, db, engine),
        slack=_slack(settings, db, engine),
        whatsapp=_whatsapp(settings, db, engine),
        jobs=jobs,
        memory_status=memory_status,
    )
    with db.unit_of_work() as session:
        username = q.instance_value(session, name=TELEGRAM_USERNAME) if companion.telegram is not None else None
    use_join_links(companion, telegram_username=username)
    return companion


TELEGRAM_USERNAME: Final = "telegram_username"


def use_join_links(companion: Companion, *, telegram_username: str | None) -> None:
    """Give the engine the tap-to-join links of the configured platforms, for every invite wherever it is made.

    WhatsApp's comes from ``whatsapp.from_number``. Telegram's needs the bot's
    username, which only getMe tells: `companion run` records it at start
    (bot.http), so a console or CLI process started later shows it too.
    """
    links = []
    if companion.telegram is not None and telegram_username:
        links.append(f"https://t.me/{telegram_username}?start={{code}}")
    if companion.whatsapp is not None:
        links.append(f"https://wa.me/{companion.whatsapp.from_number.lstrip('+')}?text=join%20{{code}}")
    companion.engine.settings = dataclasses.replace(companion.engine.settings, join_links=tuple(links))


def refuse_blank_secrets(settings: Settings) -> None:
    """Fail closed on a secret that is set but empty or only whitespace, naming its variable.

    An empty value is not a secret: Twilio's validator accepts signatures made
    with an empty key, slack-sdk raises a bare ValueError on an empty signing
    secret, and an empty DATABASE_URL would quietly fall back to SQLite. It is
    almost always a deployment mistake (``KEY=`` in an env file), so it stops
    every command instead of being read as "not configured".
    """
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        secret = value.get_secret_value() if isinstance(value, SecretStr) else value if name == "database_url" else None
        if secret is not None and not secret.strip():
            variable = field.validation_alias if isinstance(field.validation_alias, str) else name.upper()
            raise WiringError(f"{variable} is empty: set it to its value, or unset it")


def language_model(settings: Settings) -> LanguageModel | None:
    """The chat model for LLM mode, through LangChain's ``init_chat_model``; None for ``llm.provider: none``.

    No retries and the configured timeout on the client itself, on top of
    the engine's own bound (dialogs.llm), so an abandoned call ends soon.
    """
    config = settings.llm
    if config.provider == "none":
        return None
    key = PROVIDER_KEYS.get(config.provider)
    if key is not None and not os.environ.get(key):
        raise WiringError(f"llm.provider is {config.provider} but {key} is not set (environment only)")
    try:
        from langchain.chat_models import init_chat_model
    except ImportError as exc:
        raise WiringError("llm.provider needs LangChain: pip install 'homework-companion[llm]'") from exc
    from bot.metrics import llm_callbacks

    # Counts and times every call for /metrics (LangChain's callbacks see each call's start, end and error).
    kwargs: dict[str, Any] = {"temperature": config.temperature, "callbacks": llm_callbacks(config.provider)}
    if config.provider == "ollama":
        kwargs.update(num_predict=config.max_tokens, client_kwargs={"timeout": config.timeout_seconds})
    else:
        kwargs.update(max_tokens=config.max_tokens, timeout=config.timeout_seconds, max_retries=0)
    if config.base_url:
        kwargs["base_url"] = config.base_url
    try:
        chat = init_chat_model(config.model_name, model_provider=config.provider, **kwargs)
    except ImportError as exc:
        raise WiringError(f"llm.provider {config.provider} needs its LangChain package: {exc}") from exc
    log.info("LLM mode: %s %s (scripted fallback on any failure)", config.provider, config.model_name)
    return LanguageModel(
        chat=chat,
        provider=config.provider,
        model=config.model_name,
        timeout=config.timeout_seconds,
        memory_k=settings.memory.top_k,
        memory_timeout=settings.memory.timeout_seconds,
        prompts=prompts.load_llm(settings.dialog.locale),
        max_concurrency=config.max_concurrency,
        pause_after_failures=config.pause_after_failures,
        pause_seconds=config.pause_seconds,
        reply_deadline=config.reply_deadline_seconds or config.timeout_seconds + 5,
        structured_method=None if config.structured_output == "default" else config.structured_output,
    )


def memory_store(settings: Settings) -> tuple[Memory | None, str]:
    """The per-client memory for LLM mode and a one-line status: embedded Chroma, or a Chroma server.

    Checked at start-up, not at the first remember: the embedder is loaded
    (a local model) or asked for one embedding (a provider), so a memory
    that cannot work is a start-up warning that names the fix, and LLM mode
    runs on without it (the status says so in ``companion usage``). A
    missing package stays an error: that is an install mistake.
    """
    config = settings.memory
    if not config.enabled:
        return None, "off (memory.enabled: false)"
    try:
        from storage.memory import ChromaMemory

        embedder = _embedder(settings)
    except ImportError as exc:
        hint = "pip install 'homework-companion[llm]', or set memory.enabled: false"
        raise WiringError(f"the memory needs chromadb ({hint}): {exc}") from exc
    how = _embedder_label(settings)
    try:
        embedder.embed_query("warm-up")  # loads a local model now; proves a provider answers
    except Exception as exc:  # the reason's class only: the provider's message may echo configuration
        fix = (
            "check memory.embedding_model and that memory.base_url (or llm.base_url) serves embeddings,"
            " or set memory.embeddings: local"
            if config.embeddings == "provider" and settings.llm.provider in ("openai", "ollama")
            else "pip install 'homework-companion[memory-local]', or set memory.enabled: false"
        )
        log.warning("memory is OFF: %s embeddings failed at start-up (%s); fix: %s", how, exc.__class__.__name__, fix)
        return None, f"off: {how} embeddings failed at start-up ({exc.__class__.__name__}); {fix}"
    if config.chroma_url:
        store: Memory = ChromaMemory.server(config.chroma_url, embedder)
    else:
        store = ChromaMemory.persistent((settings.config_dir / config.path).resolve(), embedder)
    log.info("memory on: %s embeddings", how)
    return store, f"on ({how} embeddings, {'Chroma server' if config.chroma_url else 'embedded Chroma'})"


def _embedder_label(settings: Settings) -> str:
    config, provider = settings.memory, settings.llm.provider
    if config.embeddings == "provider" and provider in ("openai", "ollama"):
        default = "text-embedding-3-small" if provider == "openai" else "nomic-embed-text"
        return f"{provider} {config.embedding_model or default}"
    return "local all-MiniLM-L6-v2"


def _embedder(settings: Settings) -> Embedder:
    config, provider = settings.memory, settings.llm.provider
    base_url = config.base_url or settings.llm.base_url
    extra: dict[str, Any] = {"base_url": base_url} if base_url else {}
    if config.embeddings == "provider" and provider == "openai":
        from langchain_openai import OpenAIEmbeddings

        return OpenAIEmbeddings(
            model=config.embedding_model or "text-embedding-3-small",
            timeout=config.timeout_seconds,
            max_retries=0,
            # Without these, OpenAIEmbeddings first downloads a tiktoken vocabulary (an internet fetch that
            # fails offline and behind a local server) to split long texts; ours are short, sent as text.
            check_embedding_ctx_length=False,
            tiktoken_enabled=False,
            **extra,
        )
    if config.embeddings == "provider" and provider == "ollama":
        from langchain_ollama import OllamaEmbeddings

        return OllamaEmbeddings(
            model=config.embedding_model or "nomic-embed-text",
            **extra,
        )
    # "local", and Anthropic (which has no embeddings API): the packaged all-MiniLM-L6-v2 on onnxruntime,
    # the very instance the risk screen uses (loaded once, at start-up, here or in safety_screen()).
    from dialogs.safety import embedding

    try:
        return embedding.shared()  # memory.embedding_model names a provider's model: not used here
    except embedding.EmbeddingError as exc:
        raise WiringError(f"memory.embeddings: local: {exc}") from exc


def safety_screen(settings: Settings) -> None:
    """Load the risk screen's learned layer now, so a service refuses to start without it (WiringError)."""
    from dialogs import safety

    config = settings.safety
    try:
        safety.load(Path(config.learned_model) if config.learned_model else None)
    except safety.ModelError as exc:
        raise WiringError(f"the risk screen cannot start: {exc}") from exc


def _whatsapp(settings: Settings, db: Database, engine: Engine) -> WhatsAppChannel | None:
    config = settings.whatsapp
    if config.from_number is None:
        return None
    if settings.twilio_account_sid is None or settings.twilio_auth_token is None:
        raise WiringError("whatsapp.from_number is set but TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN are not")
    if not config.public_url:
        # Fail closed: signatures are computed over the URL Twilio called; without it none can be checked.
        raise WiringError("whatsapp.from_number is set but whatsapp.public_url is not")
    from twilio.rest import Client as TwilioClient

    from channels.whatsapp import RedirectingHttpClient, Template, e164

    sender = e164(config.from_number)
    if sender is None:
        raise WiringError(f"whatsapp.from_number {config.from_number!r} is not a valid phone number")
    client = TwilioClient(
        settings.twilio_account_sid.get_secret_value(),
        settings.twilio_auth_token.get_secret_value(),
        http_client=RedirectingHttpClient(config.api_base_url, timeout=10),
    )
    return WhatsAppChannel(
        client=client,
        auth_token=settings.twilio_auth_token.get_secret_value(),
        from_number=sender,
        status_callback_url=config.status_callback_url,
        templates={k: Template(t.content_sid, dict(t.variables)) for k, t in config.templates.items()},
        db=db,
        engine=engine,
    )


def _key_source(settings: Settings) -> str:
    if settings.data_key is not None:
        return "COMPANION_DATA_KEY"
    return str(crypto.key_file_for(settings.sqlite_path or Path()))


def data_keys(settings: Settings, db: Database | None = None) -> list[bytes]:
    """The Fernet keys that protect client text at rest (newest first).

    From COMPANION_DATA_KEY; or, for the embedded SQLite default only, from a
    key file beside the database. The key file is created (mode 0600) only
    for a database that holds no encrypted data yet: a missing key file
    beside a populated database is a lost or misplaced key, and a new key
    would write rows the old one cannot read, so that refuses to start. Any
    other database refuses to start without COMPANION_DATA_KEY.
    """
    try:
        if settings.data_key is not None:
            return crypto.parse_keys(settings.data_key.get_secret_value())
        path = settings.sqlite_path
        if path is None:
            raise WiringError("COMPANION_DATA_KEY is required with DATABASE_URL (client text is encrypted at rest)")
        key_file = crypto.key_file_for(path)
        if not key_file.exists() and path.exists() and _holds_encrypted_data(settings, db):
            raise WiringError(
                f"the data key file {key_file} is missing, but {path} holds encrypted data: restore the key "
                "file from your backup (or set COMPANION_DATA_KEY to the key). No new key was made: rows written "
                "under a new key could not be read together with the old ones."
            )
        keys, created = crypto.load_or_create_key_file(key_file)
    except crypto.KeyError_ as exc:
        raise WiringError(str(exc)) from exc
    if created:
        log.warning(
            "created a new data key %s for %s, which holds no encrypted data yet: back it up with the database "
            "(not in the same place); without it the data is lost",
            key_file,
            path,
        )
    return keys


def _holds_encrypted_data(settings: Settings, db: Database | None) -> bool:
    if db is not None:
        return keycheck.holds_encrypted_data(db.engine)
    probe = Database(settings.url)
    try:
        return keycheck.holds_encrypted_data(probe.engine)
    finally:
        probe.dispose()


def check_data_key(settings: Settings, db: Database, *, upgrade: bool, now: datetime) -> None:
    """Refuse a key that cannot read this database, before anything is written with it; then record the check.

    The check runs before the migrations (which may encrypt existing values)
    and before any turn; a database that has none yet gets one (a known
    value encrypted with the key), so the next start can tell a wrong key
    from a right one even on PostgreSQL, where the key only comes from the
    environment.
    """
    try:
        checked = keycheck.verify(db.engine)
    except keycheck.KeyMismatch as exc:
        source = _key_source(settings)
        raise WiringError(
            f"the data key ({source}) cannot decrypt the data in this database: it is not the key the data was "
            f"written with. Restore the right key ({source}); the service did not start, so nothing was written "
            "under the wrong one."
        ) from exc
    if upgrade:
        db.upgrade()
    if keycheck.record(db.engine, now=now) and checked:
        log.info("recorded a data-key check in the database (the key in use reads its data)")


def _slack(settings: Settings, db: Database, engine: Engine) -> SlackChannel | None:
    if settings.slack_bot_token is None:
        return None
    if settings.slack_signing_secret is None:
        # Fail closed: without the signing secret nobody's requests can be verified.
        raise WiringError("SLACK_BOT_TOKEN is set but SLACK_SIGNING_SECRET is not")
    from slack_sdk.web.async_client import AsyncWebClient

    client = AsyncWebClient(token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack.api_base_url)
    return SlackChannel(
        client=client, signing_secret=settings.slack_signing_secret.get_secret_value(), db=db, engine=engine
    )


def _telegram(settings: Settings, db: Database, engine: Engine) -> TelegramChannel | None:
    if settings.telegram_bot_token is None:
        return None
    if settings.telegram.webhook_url and settings.telegram_webhook_secret is None:
        # Fail closed: a webhook nobody can authenticate would accept anyone's updates.
        raise WiringError("telegram.webhook_url is set but TELEGRAM_WEBHOOK_SECRET is not")
    from telegram import Bot
    from telegram.request import HTTPXRequest

    bot = Bot(
        settings.telegram_bot_token.get_secret_value(),
        base_url=settings.telegram.api_base_url,
        request=HTTPXRequest(
            connection_pool_size=8,
            read_timeout=settings.telegram.request_timeout,
            write_timeout=settings.telegram.request_timeout,
            connect_timeout=settings.telegram.request_timeout,
        ),
        get_updates_request=HTTPXRequest(read_timeout=settings.telegram.polling_timeout + 10),
    )
    return TelegramChannel(bot=bot, db=db, engine=engine)
