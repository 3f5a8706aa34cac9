"""Builds the companion's parts from settings: database, prompts, clock, engine."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prompts
from bot.config import PROVIDER_KEYS, Settings
from channels.slack import SlackChannel
from channels.telegram import TelegramChannel
from channels.whatsapp import WhatsAppChannel
from dialogs.clock import Clock, OffsetClock, SystemClock
from dialogs.engine import Engine
from dialogs.llm import LanguageModel
from dialogs.llm_jobs import JobRunner
from storage import Database, crypto
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
    clock = clock or (OffsetClock(SystemClock()) if settings.demo_enabled else SystemClock())
    crypto.use(data_keys(settings))
    # Before anything else that takes time: without its screen the companion must not answer anyone.
    safety_screen(settings)
    db = Database(settings.url)
    if upgrade:
        db.upgrade()
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
    return Companion(
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
        safety.load(
            head_path=Path(config.learned_head) if config.learned_head else None,
            model_path=Path(config.embedding_model) if config.embedding_model else None,
        )
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


def data_keys(settings: Settings) -> list[bytes]:
    """The Fernet keys that protect client text at rest (newest first).

    From COMPANION_DATA_KEY; or, for the embedded SQLite default only, from a
    key file beside the database, created once (mode 0600) — it must be
    backed up with the database, and losing it loses the data. Any other
    database refuses to start without COMPANION_DATA_KEY.
    """
    try:
        if settings.data_key is not None:
            return crypto.parse_keys(settings.data_key.get_secret_value())
        path = settings.sqlite_path
        if path is None:
            raise WiringError("COMPANION_DATA_KEY is required with DATABASE_URL (client text is encrypted at rest)")
        key_file = crypto.key_file_for(path)
        keys, created = crypto.load_or_create_key_file(key_file)
    except crypto.KeyError_ as exc:
        raise WiringError(str(exc)) from exc
    if created:
        log.warning("created the data key %s: back it up with the database; without it the data is lost", key_file)
    return keys


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
