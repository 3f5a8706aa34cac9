"""Logging set-up: one root handler whose filter masks phone numbers, tokens and keys (and, by default, client text)."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, TextIO

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger("companion")

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_TEXT_WARNING: Final = (
    "COMPANION_LOG_TEXT is on: the logs will show client text (what clients and therapists write and are sent, "
    "in the platform libraries' DEBUG payloads), SQL statements with their parameters (stored values, decrypted "
    "text included) and the values that failed validation. Tokens, secrets, keys and phone numbers stay masked. "
    "Use it only to debug, and turn it off again"
)
# Secret values shorter than this are not masked by value (they would mask ordinary words); patterns still apply.
MIN_SECRET_LENGTH: Final = 6

# Always masked. Order matters: URLs and prefixed forms before the bare patterns they contain.
_SECRETS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # Credentials in URLs: user:password@host, and token-like query parameters.
    (re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+@"), "<credentials>@"),
    (re.compile(r"(?i)(?<=[?&])(token|secret|key|password|signature|sig|access_token)=[^&\s\"']+"), r"\1=<redacted>"),
    # Secrets by name in dict reprs, JSON and form bodies (python-telegram-bot's DEBUG line for setWebhook).
    (
        re.compile(
            r"(?i)(['\"]?\b(?:secret_token|signing_secret|client_secret|auth_token|bot_token|app_token|api_key|"
            r"password|token)['\"]?\s*[:=]\s*)(['\"]?)[^'\"\s,&}]+\2"
        ),
        r"\1\2<redacted>\2",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 <redacted>"),
    # Telegram bot tokens, on their own or in https://api.telegram.org/bot<token>/method.
    (re.compile(r"\d{5,}:[A-Za-z0-9_-]{30,}"), "<telegram-token>"),
    # Slack: bot/user/app tokens and request signatures.
    (re.compile(r"\bxox[abeoprs]-[A-Za-z0-9-]+"), "<slack-token>"),
    (re.compile(r"\bxapp-[A-Za-z0-9-]+"), "<slack-token>"),
    (re.compile(r"\bv0=[0-9a-f]{64}\b"), "v0=<signature>"),
    # Fernet: keys (32 bytes, url-safe base64) and the ciphertext that client text is stored as.
    (re.compile(r"gAAAAA[A-Za-z0-9_=-]{20,}"), "<fernet-token>"),
    (re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}="), "<key>"),
    # Twilio: SIDs keep their two-letter kind; a 32-hex auth token goes whole.
    (re.compile(r"\b(AC|SK|SM|MM|MG|HX|PN|XE|ME|CA|IS)[0-9a-fA-F]{32}\b"), r"\1<sid>"),
    (re.compile(r"\b[0-9a-fA-F]{32}\b"), "<hex-secret>"),
    # Phone numbers: channel addresses, E.164-like, URL-encoded, wa.me links, bare international digits.
    (re.compile(r"(?i)\b(whatsapp|tel|sms):\s*\+?\d(?:[\s().-]{0,2}\d){5,16}"), r"\1:<phone>"),
    (re.compile(r"(?i)%2B\d{6,16}"), "<phone>"),
    (re.compile(r"(?i)\bwa\.me/\d+"), "wa.me/<phone>"),
    (re.compile(r"(?<![\w+])\+\d(?:[\s().-]{0,2}\d){6,16}"), "<phone>"),
    (re.compile(r"(?<![\w.+:/-])\d{11,15}(?![\w.])"), "<phone>"),
)
# Masked unless log_text is on: the places libraries echo the data they were given.
_TEXT: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (re.compile(r"\[parameters: [^\n]*"), "[parameters: <redacted>]"),  # SQLAlchemy errors
    (re.compile(r"input_value=.*?(?=, input_type=)"), "input_value=<redacted>"),  # pydantic errors
)
# Loggers that write request URLs (with the bot token in the path) at INFO: quiet in any case.
_QUIET: Final = {"httpx": logging.WARNING, "httpcore": logging.WARNING, "twilio.http_client": logging.WARNING}
# Loggers that write whole payloads (client text) at DEBUG: held at INFO unless log_text is on.
_PAYLOAD: Final = {
    "telegram": logging.INFO,
    "slack_sdk": logging.INFO,
    "slack_bolt": logging.INFO,
    "urllib3": logging.INFO,
    "sqlalchemy.engine": logging.WARNING,
}


# In an exception's message (not its traceback's code lines), a quoted literal with a space in it, or a
# long one, is data someone repr()'d: a sentence, a payload. Short ones ('user_id') are kept for debugging.
_EXCEPTION_LINE: Final = re.compile(r"^(?!Traceback |During handling |The above exception )[A-Za-z_][\w.]*: .*$", re.M)
_QUOTED: Final = re.compile(r"'(?:[^'\\\n]|\\.)*'" + r'|"(?:[^"\\\n]|\\.)*"')


def _mask_quoted(match: re.Match[str]) -> str:
    literal = match.group(0)
    return "'<redacted>'" if len(literal) > 22 or any(c.isspace() for c in literal) else literal


def redact_traceback(value: str, *, text: bool = False) -> str:
    """A formatted traceback, redacted; unless ``text``, quoted data in the exception messages is masked too."""
    value = redact(value, text=text)
    if text:
        return value
    return _EXCEPTION_LINE.sub(lambda line: _QUOTED.sub(_mask_quoted, line.group(0)), value)


def redact(value: str, *, text: bool = False) -> str:
    """``value`` with secrets and phone numbers masked; SQL parameters and validation inputs too unless ``text``."""
    for pattern, replacement in _SECRETS if text else _SECRETS + _TEXT:
        value = pattern.sub(replacement, value)
    return value


class Redactor(logging.Filter):
    """Masks each record's message, traceback and stack in place, so every formatter sees the masked form."""

    def __init__(self, *, text: bool = False, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.text = text
        # The configured secrets by value, longest first, whatever shape a library prints them in.
        self.secrets = tuple(sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True))

    def _known(self, value: str) -> str:
        for secret in self.secrets:
            value = value.replace(secret, "<secret>")
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(self._known(record.getMessage()), text=self.text), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_traceback(self._known(record.exc_text), text=self.text)
        if record.stack_info:
            record.stack_info = redact(self._known(record.stack_info), text=self.text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the (masked) traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


class _CompanionHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure` installs (configuring again replaces it).

    Without a fixed stream it writes to whatever ``sys.stderr`` is at the
    time, as the standard last-resort handler does, so a CLI run under a test
    runner that swaps stderr never writes to a closed stream later.
    """

    def __init__(self, stream: TextIO | None) -> None:
        self._fixed = stream
        super().__init__(stream)

    @property
    def stream(self) -> TextIO:
        return self._fixed or sys.stderr

    @stream.setter
    def stream(self, value: TextIO | None) -> None:
        self._fixed = value


def configured_secrets(settings: Settings) -> tuple[str, ...]:
    """Every secret value the settings hold (tokens, signing secrets, data keys, the database URL's password)."""
    from pydantic import SecretStr
    from sqlalchemy.engine import make_url

    found: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            found.extend(part.strip() for part in value.get_secret_value().split(","))  # key rings: each key
    if settings.database_url:
        try:
            password = make_url(settings.database_url).password
        except Exception:  # an unparsable URL fails later, with its own message
            password = None
        if password:
            found.append(str(password))
    return tuple(found)


def configure(settings: Settings, *, stream: TextIO | None = None) -> logging.Handler:
    """Install the companion's root handler (stderr unless ``stream``), replacing one installed before.

    Other handlers on the root logger are left alone. Returns the handler so a
    caller (a test) can remove it again.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _CompanionHandler)]:
        root.removeHandler(old)
    handler = _CompanionHandler(stream)
    handler.addFilter(Redactor(text=settings.log_text, secrets=configured_secrets(settings)))
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name, level in _QUIET.items():
        logging.getLogger(name).setLevel(level)
    for name, level in _PAYLOAD.items():
        logging.getLogger(name).setLevel(logging.NOTSET if settings.log_text else level)
    if settings.log_text:
        log.warning(LOG_TEXT_WARNING)
    return handler
