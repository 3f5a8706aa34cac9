"""Settings: config.yaml for what an operator tunes, environment variables for secrets and overrides."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from dialogs.retention import RetentionPolicy
from dialogs.timeparse import parse_clock_time
from dialogs.turn import DialogSettings

CONFIG_ENV: Final = "COMPANION_CONFIG"
SECRET_KEYS: Final = frozenset(
    {
        # The environment variables and the settings' own field names, compared case-folded:
        # pydantic-settings matches names case-insensitively, so "Telegram_Bot_Token" would load.
        "database_url",
        "telegram_bot_token",
        "telegram_webhook_secret",
        "slack_bot_token",
        "slack_signing_secret",
        "slack_app_token",
        "twilio_account_sid",
        "twilio_auth_token",
        "data_key",
        "companion_data_key",
        "metrics_token",
        "companion_metrics_token",
        "openai_api_key",
        "anthropic_api_key",
    }
)
DEFAULT_CONFIG: Final = Path("config.yaml")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the problem."""


def _clock(value: str) -> str:
    parsed = parse_clock_time(value)
    if parsed is None:
        raise ValueError("must be a time of day such as 18:00")
    return parsed.strftime("%H:%M")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseSettings(_Section):
    path: str = Field(default="data/companion.db", description="SQLite file, relative to the config file")


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # Telegram updates and Slack payloads are a few KiB; larger bodies are refused (413) unread.
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    # A body still arriving after this many seconds is refused (408): uvicorn has no body timeout of its own.
    body_timeout_seconds: float = Field(default=30, gt=0, le=600)


class InviteSettings(_Section):
    ttl_days: int = Field(default=7, ge=1, le=90)
    join_failure_limit: int = Field(default=5, ge=1, le=100)
    # Wrong codes from all chats together per hour: a guesser with many accounts or numbers
    # is slowed as well. Codes have 31^8 values, so even this many guesses find one with a
    # chance of about one in a billion per hour; real joiners are refused only during an attack.
    join_failure_global_limit: int = Field(default=200, ge=1, le=100_000)
    # A client chat silent this many days needs a new invite (see dialogs.onboarding.expire_stale_link).
    link_idle_days: int | None = Field(default=180, ge=7, le=3650)


class DialogConfig(_Section):
    locale: str = "en"
    default_nudge_time: str = "18:00"
    max_text_length: int = Field(default=4000, ge=200, le=100_000)

    @field_validator("default_nudge_time")
    @classmethod
    def _clock_time(cls, value: str) -> str:
        return _clock(value)

    @field_validator("locale")
    @classmethod
    def _known_locale(cls, value: str) -> str:
        if not (Path(__file__).resolve().parent.parent / "prompts" / f"{value}.yaml").exists():
            raise ValueError(f"no prompts/{value}.yaml")
        return value


class RetentionSettings(_Section):
    """How long things are kept (see dialogs.retention); None keeps them until a client is erased."""

    messages_days: int | None = Field(default=30, ge=1, le=3650)
    records_days: int | None = Field(default=None, ge=1, le=36500)


class SchedulerSettings(_Section):
    enabled: bool = True
    interval_seconds: float = Field(default=30, ge=1, le=3600)
    catch_up_grace_minutes: int = Field(default=120, ge=0, le=7 * 24 * 60)


class NudgeSettings(_Section):
    quiet_start: str = "21:30"
    quiet_end: str = "08:00"
    daily_cap: int = Field(default=3, ge=1, le=20)
    follow_up_hours: float = Field(default=24, gt=0, le=24 * 7)
    horizon_days: int = Field(default=7, ge=1, le=90)
    homework_grace_days: float = Field(default=2, ge=0, le=90)
    digest_lead_hours: float = Field(default=2, ge=0, le=72)

    @field_validator("quiet_start", "quiet_end")
    @classmethod
    def _clock_time(cls, value: str) -> str:
        return _clock(value)


class TelegramSettings(_Section):
    """Telegram is enabled when TELEGRAM_BOT_TOKEN is set; webhook mode when ``webhook_url`` is."""

    webhook_url: str | None = Field(default=None, description="public HTTPS URL Telegram posts updates to")
    api_base_url: str = "https://api.telegram.org/bot"
    polling_timeout: int = Field(default=25, ge=0, le=50)
    messages_per_second: float = Field(default=30, gt=0, le=1000)
    per_chat_per_second: float = Field(default=1, gt=0, le=100)
    request_timeout: float = Field(default=10, gt=0, le=120, description="seconds for one Bot API call")

    @field_validator("webhook_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise ValueError("must be an https:// URL (Telegram only calls HTTPS webhooks)")
        return value

    @property
    def webhook_path(self) -> str:
        return urlparse(self.webhook_url).path or "/" if self.webhook_url else "/telegram/webhook"


class SlackSettings(_Section):
    """Slack is enabled when SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET are set; Socket Mode with SLACK_APP_TOKEN."""

    api_base_url: str = "https://slack.com/api/"
    messages_per_second: float = Field(default=20, gt=0, le=1000)
    per_chat_per_second: float = Field(default=1, gt=0, le=100)


class TemplateSettings(_Section):
    content_sid: str
    variables: dict[str, str] = Field(default_factory=dict, description="template placeholder → message field")


class WhatsAppSettings(_Section):
    """WhatsApp via Twilio: enabled when ``from_number`` is set and TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN are."""

    from_number: str | None = None
    public_url: str | None = Field(default=None, description="the full URL Twilio calls for inbound messages")
    status_callback_url: str | None = None
    api_base_url: str = "https://api.twilio.com"
    messages_per_second: float = Field(default=10, gt=0, le=1000)
    per_chat_per_second: float = Field(default=1, gt=0, le=100)
    # Content templates for messages outside the 24-hour window, by message type (nudge, follow_up).
    templates: dict[str, TemplateSettings] = Field(default_factory=dict)

    @property
    def inbound_path(self) -> str:
        return urlparse(self.public_url).path or "/" if self.public_url else "/whatsapp/inbound"

    @property
    def status_path(self) -> str:
        return urlparse(self.status_callback_url).path or "/" if self.status_callback_url else "/whatsapp/status"


class PriceSettings(_Section):
    """What a model costs, in the operator's currency per million tokens (for ``companion usage``)."""

    input_per_million: float = Field(default=0, ge=0)
    output_per_million: float = Field(default=0, ge=0)


LLM_PROVIDERS: Final = ("none", "openai", "anthropic", "ollama")
DEFAULT_MODELS: Final = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest", "ollama": "llama3.1"}
PROVIDER_KEYS: Final = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


class LlmSettings(_Section):
    """LLM mode (README, "LLM mode"). ``none``, the default, makes no network call at all.

    API keys come from the environment only (OPENAI_API_KEY, ANTHROPIC_API_KEY),
    read by the provider's LangChain client; a local Ollama needs none.
    """

    provider: Literal["none", "openai", "anthropic", "ollama"] = "none"
    model: str | None = Field(default=None, description="the provider's model name; a small default per provider")
    temperature: float = Field(default=0.3, ge=0, le=2)
    timeout_seconds: float = Field(default=20, gt=0, le=120, description="a call's limit; then the scripted step")
    max_tokens: int = Field(default=400, ge=50, le=4000)
    base_url: str | None = Field(default=None, description="Ollama's address, or an OpenAI-compatible endpoint")
    # Calls in flight at once, per process; more wait for a slot (queueing is not counted against the timeout).
    max_concurrency: int = Field(default=4, ge=1, le=256)
    # The longest a client waits for a reply in LLM mode (queue + call); then the scripted reply goes.
    reply_deadline_seconds: float | None = Field(default=None, gt=0, le=300, description="default: timeout + 5 s")
    # Provider failures (timeouts, errors) in a row before calls pause, and for how long.
    pause_after_failures: int = Field(default=3, ge=1, le=100)
    pause_seconds: float = Field(default=60, ge=0, le=3600)
    # How structured replies are asked for: LangChain's default for the provider, or json_schema /
    # function_calling / json_mode (a local OpenAI-compatible server may support only one).
    structured_output: Literal["default", "json_schema", "function_calling", "json_mode"] = "default"
    # Model name → price per million tokens, for the estimate in `companion usage`.
    prices: dict[str, PriceSettings] = Field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return self.model or DEFAULT_MODELS.get(self.provider, "")


class MemorySettings(_Section):
    """The per-client memory (LLM mode only): embedded Chroma under ``path``, or a Chroma server."""

    enabled: bool = True
    path: str = Field(default="data/memory", description="embedded Chroma directory, relative to the config file")
    chroma_url: str | None = Field(default=None, description="a Chroma server (http://host:8000) shared by processes")
    # Where embeddings come from: the provider's ("provider": OpenAI or Ollama embeddings), or the
    # all-MiniLM-L6-v2 of the default install, on onnxruntime ("local", also the choice with Anthropic;
    # the risk screen's own model, so it costs no extra memory).
    embeddings: Literal["provider", "local"] = "provider"
    embedding_model: str | None = Field(default=None, description="e.g. text-embedding-3-small, nomic-embed-text")
    # Where provider embeddings are served, when not at llm.base_url (llama.cpp and vLLM serve one model
    # per process: the embedding model runs as a second server).
    base_url: str | None = Field(default=None, description="an OpenAI-compatible or Ollama embeddings endpoint")
    top_k: int = Field(default=3, ge=1, le=10)
    timeout_seconds: float = Field(default=2, gt=0, le=30)


class SafetySettings(_Section):
    """Crisis resources by ISO 3166 country code (taken from the client's time zone).

    There is deliberately no built-in list: numbers differ by country and the
    operator must choose the ones that apply to their clients. A client whose
    country is not listed gets ``default`` if set, and in any case the plain
    advice to call the local emergency number.
    """

    crisis_resources: dict[str, list[str]] = Field(default_factory=dict)
    alert_ack_minutes: int = Field(default=15, ge=1, le=24 * 60)
    # The direct safety question (grey zone): unanswered this long, the therapist gets an urgent alert.
    question_minutes: int = Field(default=10, ge=1, le=24 * 60)
    fallback_contact: str | None = Field(default=None, description="CHANNEL:ADDRESS of a practice contact")
    # The learned risk layer, for an operator who trained their own (`companion safety train --output`):
    # its model card screen.json, which names the model file beside it and pins it by sha256.
    # By default the packaged one; checked at start, never downloaded.
    learned_model: str | None = Field(default=None, description="model card screen.json (default: the packaged one)")

    @field_validator("crisis_resources")
    @classmethod
    def _country_codes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for key in value:
            if key != "default" and not (len(key) == 2 and key.isalpha() and key.isupper()):
                raise ValueError(f"{key!r} is not an ISO country code like GB or US (or 'default')")
        return value

    @field_validator("fallback_contact")
    @classmethod
    def _contact(cls, value: str | None) -> str | None:
        if value is not None and ":" not in value:
            raise ValueError("must be CHANNEL:ADDRESS, e.g. console:therapist:Practice Lead")
        return value


class WebSettings(_Section):
    """The browser pages: the local try-it chat (``/``) and the therapist dashboard (``/dashboard``).

    The try-it chat lets anyone who can open it chat as the demo therapist, so
    it is served only on a loopback ``server.host`` unless ``demo_public``.
    """

    demo: bool | None = Field(default=None, description="serve the try-it chat; default: when no platform is set up")
    demo_public: bool = False
    base_url: str | None = Field(default=None, description="where therapists reach this service, for sign-in links")
    link_ttl_minutes: int = Field(default=15, ge=1, le=60)
    session_ttl_hours: float = Field(default=12, gt=0, le=24 * 30)
    secure_cookies: bool | None = Field(default=None, description="default: when base_url is https")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value


class Settings(BaseSettings):
    """Everything configurable. Precedence: environment, then config.yaml, then defaults.

    Secrets never live in config.yaml: they come from environment variables
    only (``DATABASE_URL``, and later the platform tokens).
    """

    model_config = SettingsConfigDict(env_prefix="COMPANION_", env_nested_delimiter="__", extra="forbid")

    database_url: str | None = Field(None, validation_alias="DATABASE_URL")
    database: DatabaseSettings = DatabaseSettings()
    server: ServerSettings = ServerSettings()
    invites: InviteSettings = InviteSettings()
    dialog: DialogConfig = DialogConfig()
    safety: SafetySettings = SafetySettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    retention: RetentionSettings = RetentionSettings()
    nudges: NudgeSettings = NudgeSettings()
    telegram: TelegramSettings = TelegramSettings()
    slack: SlackSettings = SlackSettings()
    whatsapp: WhatsAppSettings = WhatsAppSettings()
    web: WebSettings = WebSettings()
    llm: LlmSettings = LlmSettings()
    memory: MemorySettings = MemorySettings()
    # Secrets: environment only (load_settings refuses them in the file).
    telegram_bot_token: SecretStr | None = Field(default=None, validation_alias="TELEGRAM_BOT_TOKEN")
    telegram_webhook_secret: SecretStr | None = Field(default=None, validation_alias="TELEGRAM_WEBHOOK_SECRET")
    slack_bot_token: SecretStr | None = Field(default=None, validation_alias="SLACK_BOT_TOKEN")
    slack_signing_secret: SecretStr | None = Field(default=None, validation_alias="SLACK_SIGNING_SECRET")
    slack_app_token: SecretStr | None = Field(default=None, validation_alias="SLACK_APP_TOKEN")
    twilio_account_sid: SecretStr | None = Field(default=None, validation_alias="TWILIO_ACCOUNT_SID")
    twilio_auth_token: SecretStr | None = Field(default=None, validation_alias="TWILIO_AUTH_TOKEN")
    data_key: SecretStr | None = Field(default=None, validation_alias="COMPANION_DATA_KEY")
    # /metrics answers only with this bearer token; unset, there is no /metrics at all (bot.metrics).
    metrics_token: SecretStr | None = Field(default=None, validation_alias="COMPANION_METRICS_TOKEN")
    log_level: str = "INFO"
    # Debug only: let client text reach the logs (SQL parameters, validation inputs). Announced at start.
    log_text: bool = False
    log_format: Literal["text", "json"] = "text"

    # Where relative paths in the file are resolved from (not a setting).
    config_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init kwargs; the environment must win.
        return (env_settings, init_settings)

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file in use (the embedded default, or DATABASE_URL naming one); None for a server database."""
        url = self.url
        if not url.startswith("sqlite:///") or url.endswith(":memory:"):
            return None
        return Path(url.removeprefix("sqlite:///")).resolve()

    @property
    def url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.config_dir / self.database.path).resolve()}"

    @property
    def platforms(self) -> tuple[str, ...]:
        """The messaging platforms configured (by their credentials or number), by name."""
        configured = {
            "telegram": self.telegram_bot_token is not None,
            "slack": self.slack_bot_token is not None,
            "whatsapp": self.whatsapp.from_number is not None,
        }
        return tuple(name for name, on in configured.items() if on)

    @property
    def demo_enabled(self) -> bool:
        """Whether the try-it chat is served: as configured, else only while no platform is set up."""
        return self.web.demo if self.web.demo is not None else not self.platforms

    @property
    def web_base_url(self) -> str:
        """The dashboard's public address: ``web.base_url``, else this host and port (loopback for 0.0.0.0)."""
        if self.web.base_url:
            return self.web.base_url
        host = self.server.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)
        return f"http://{host}:{self.server.port}"

    def retention_policy(self) -> RetentionPolicy:
        days = self.retention.messages_days, self.retention.records_days
        return RetentionPolicy(*(timedelta(days=d) if d is not None else None for d in days))

    def dialog_settings(self) -> DialogSettings:
        return DialogSettings(
            invite_ttl=timedelta(days=self.invites.ttl_days),
            join_failure_limit=self.invites.join_failure_limit,
            join_failure_global_limit=self.invites.join_failure_global_limit,
            link_idle=timedelta(days=self.invites.link_idle_days) if self.invites.link_idle_days else None,
            max_text_length=self.dialog.max_text_length,
            default_nudge_time=self.dialog.default_nudge_time,
            crisis_resources={k: tuple(v) for k, v in self.safety.crisis_resources.items()},
            alert_ack_timeout=timedelta(minutes=self.safety.alert_ack_minutes),
            question_timeout=timedelta(minutes=self.safety.question_minutes),
            fallback_contact=_channel_address(self.safety.fallback_contact),
            quiet_start=self.nudges.quiet_start,
            quiet_end=self.nudges.quiet_end,
            daily_cap=self.nudges.daily_cap,
            follow_up_after=timedelta(hours=self.nudges.follow_up_hours),
            catch_up_grace=timedelta(minutes=self.scheduler.catch_up_grace_minutes),
            horizon_days=self.nudges.horizon_days,
            homework_grace=timedelta(days=self.nudges.homework_grace_days),
            digest_lead=timedelta(hours=self.nudges.digest_lead_hours),
            dashboard_url=f"{self.web_base_url}/dashboard",
            dashboard_link_ttl=timedelta(minutes=self.web.link_ttl_minutes),
        )


def _channel_address(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    channel, _, address = value.partition(":")
    return channel, address


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        problems.append(f"{key}: {message}")
    return "; ".join(problems)


def load_settings(path: Path | None = None) -> Settings:
    """Read settings from ``path`` (or $COMPANION_CONFIG, or ./config.yaml if present).

    Raises :class:`ConfigError` naming the file, the key and what is wrong.
    """
    explicit = path or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    source = explicit or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    data: dict[str, Any] = {}
    if source is not None:
        if not source.is_file():
            raise ConfigError(f"config file {source} does not exist")
        try:
            loaded = yaml.safe_load(source.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        data = loaded or {}
        secrets = [key for key in data if isinstance(key, str) and key.casefold().replace("-", "_") in SECRET_KEYS]
        if secrets:
            raise ConfigError(f"{source}: {', '.join(secrets)} must come from the environment, not the config file")
    try:
        return Settings(**data, config_dir=(source.resolve().parent if source else Path.cwd()))
    except ValidationError as exc:
        raise ConfigError(f"config error in {source or 'defaults'}: {_describe(exc)}") from exc
