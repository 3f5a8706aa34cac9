"""LLM mode's mechanism: the injected model, bounded calls, scrubbing, reply checks and usage records.

The scripted dialog is the default and always the fallback. When an
operator configures a provider, :mod:`bot.wiring` builds a LangChain chat
model and injects it here as a :class:`LanguageModel`; nothing in
``dialogs/`` constructs one or knows the provider. The steps that use it
(:mod:`dialogs.llm_steps`) call :meth:`LanguageModel.call`, which

- runs the model in a worker thread and waits at most ``timeout`` seconds,
  so a hung provider cannot hold the turn's transaction (or its row lock)
  longer than that; the abandoned call finishes or fails on its own, and
  the pool is small, so a provider outage cannot pile up threads;
- turns any exception, timeout or unparseable reply into ``None`` with a
  reason, logged (the reason only, never client text);
- records one :class:`storage.LlmUsage` row per call in the caller's unit
  of work, with the tokens LangChain's ``usage_metadata`` reports.

What leaves the machine is minimised: :func:`scrub` removes e-mail
addresses, links, phone numbers and handles from client text, replaces the
client's name with their pseudonym ("Client 17") and the therapist's with
"the therapist", and neutralises the delimiters that mark the text as data.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TypeVar

from sqlmodel import Session

from dialogs.safety import assess
from prompts import LlmPrompts, Prompts, Template, load_llm
from storage import LlmUsage

log = logging.getLogger("companion.llm")

T = TypeVar("T")

_EMAIL: Final = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL: Final = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
# Seven or more digits, with the separators phone numbers are written with; ratings, times and
# counts ("80", "10:30", "2 stops") are shorter and stay.
_PHONE: Final = re.compile(r"(?<![\w])\+?\d(?:[\s().-]{0,2}\d){6,}(?![\w])")
_HANDLE: Final = re.compile(r"(?<![\w.@])@\w{2,}")
_ANGLES: Final = str.maketrans({"<": "‹", ">": "›"})


def scrub(text: str, *, names: Sequence[str] = (), pseudonym: str = "the client", therapist: Sequence[str] = ()) -> str:
    """``text`` fit to leave the machine: no e-mail, link, phone number, handle or name; delimiters neutralised."""
    text = _EMAIL.sub("[email]", text)
    text = _URL.sub("[link]", text)
    text = _PHONE.sub("[number]", text)
    text = _HANDLE.sub("[handle]", text)
    for who, replacement in ((therapist, "the therapist"), (names, pseudonym)):
        for name in sorted({n for n in who if n}, key=len, reverse=True):
            text = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", replacement, text, flags=re.IGNORECASE)
    return text.translate(_ANGLES)


def name_parts(name: str) -> list[str]:
    """A full name and its parts of three letters or more ("Sam Lee" → "Sam Lee", "Sam", "Lee")."""
    parts = [p for p in re.split(r"\s+", name.strip()) if len(p) >= 3]
    return [name.strip(), *parts] if name.strip() else []


@dataclass(frozen=True)
class Outcome:
    """What one call produced: the value (None on any failure) and why it failed."""

    value: Any
    reason: str | None = None  # None = ok; else timeout, error, invalid, empty, unsafe, clinical, too_long, …
    usage: LlmUsage | None = None  # the call's usage row (None when no call was made)


@dataclass
class LanguageModel:
    """The configured chat model and its limits, injected into the engine (None = scripted only).

    ``chat`` is a LangChain ``BaseChatModel`` (any ``Runnable`` taking a list
    of messages works); ``provider`` and ``model`` are recorded with usage.
    Thread-safe: the engine's turns share one instance.
    """

    chat: Any
    provider: str
    model: str
    timeout: float = 20.0
    memory_k: int = 3
    memory_timeout: float = 2.0  # each memory read or write (embeddings may be a network call too)
    prompts: LlmPrompts = field(default_factory=load_llm)
    workers: int = 4
    # After a timeout, calls are not attempted for this long: an outage costs one wait, not one per message.
    pause_after_timeout: float = 60.0

    def __post_init__(self) -> None:
        self._paused_until = 0.0
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="llm")
        # Memory reads and writes have their own threads: hung model calls must not starve them.
        self._memory_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="llm-memory")

    def bounded(self, fn: Callable[[], T], timeout: float | None = None, *, memory: bool = False) -> T:
        """``fn()`` in a worker thread, waiting at most ``timeout`` (default: the model's); raises TimeoutError."""
        future = (self._memory_pool if memory else self._pool).submit(fn)
        try:
            return future.result(timeout=self.timeout if timeout is None else timeout)
        except FutureTimeout as exc:
            future.cancel()  # if it has not started; a running call is abandoned, not awaited
            raise TimeoutError from exc

    def call(
        self,
        session: Session,
        *,
        now: datetime,
        client_id: int | None,
        purpose: str,
        template: Template,
        messages: list[Any],
        schema: type[Any] | None = None,
        check: Callable[[Any], str | None] | None = None,
        timeout: float | None = None,
    ) -> Outcome:
        """One bounded call; the parsed reply (``schema``) or the text, checked by ``check``; always recorded."""
        usage: dict[str, int] = {}
        reason: str | None = None
        value: Any = None
        if time.monotonic() < self._paused_until:
            log.info("llm %s skipped: the provider timed out recently", purpose)
            return Outcome(None, "paused")  # no call made, so no usage row
        try:
            if schema is not None:
                runnable = self.chat.with_structured_output(schema, include_raw=True)
                result = self.bounded(lambda: runnable.invoke(messages), timeout)
                usage = _usage(result.get("raw"))
                value = result.get("parsed")
                if value is None:
                    reason = "invalid"
            else:
                message = self.bounded(lambda: self.chat.invoke(messages), timeout)
                usage = _usage(message)
                value = _text(message)
                if not value.strip():
                    reason = "empty"
        except TimeoutError:
            reason = "timeout"
            self._paused_until = time.monotonic() + self.pause_after_timeout
        except Exception as exc:  # any provider or parsing failure falls back; the class name is all we log
            reason = "error"
            log.warning("llm %s call failed: %s", purpose, exc.__class__.__name__)
        if reason is None and check is not None:
            reason = check(value)
        if reason is not None:
            log.info("llm %s fell back to the scripted step: %s", purpose, reason)
        row = LlmUsage(
            at=now,
            client_id=client_id,
            purpose=purpose,
            provider=self.provider,
            model=self.model,
            prompt_key=template.key,
            prompt_version=template.version,
            input_tokens=usage.get("input_tokens", 0),
            output_tokens=usage.get("output_tokens", 0),
            outcome="ok" if reason is None else f"fallback:{reason}",
        )
        session.add(row)
        return Outcome(None if reason else value, reason, row)


def _usage(message: Any) -> dict[str, int]:
    metadata = getattr(message, "usage_metadata", None) or {}
    return {k: int(metadata.get(k) or 0) for k in ("input_tokens", "output_tokens")}


def _text(message: Any) -> str:
    content = getattr(message, "content", message)
    if isinstance(content, list):  # content blocks (Anthropic): the text parts
        return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return str(content)


def check_text(
    text: str,
    *,
    limit: int,
    llm_prompts: LlmPrompts,
    prompts: Prompts,
    names: Sequence[str] = (),
    max_sentences: int = 3,
    questions: int = 0,
) -> str | None:
    """Why a model's sentence may not be shown (None if it may): length, banned content, risk, names."""
    stripped = text.strip()
    if not stripped:
        return "empty"
    if len(stripped) > limit or len(re.findall(r"[.!?]+(?:\s|$)", stripped)) > max_sentences:
        return "too_long"
    if stripped.count("?") > questions:
        return "too_many_questions"
    for reason, pattern in llm_prompts.banned:
        if pattern.search(stripped):
            return reason
    if any(pattern.search(stripped) for _, pattern in prompts.scope_patterns):
        return "clinical"
    if any(re.search(rf"(?<!\w){re.escape(n)}(?!\w)", stripped, re.IGNORECASE) for n in names if n):
        return "name"
    # The safety screen runs on the model's reply too: nothing it would flag is ever said by the bot.
    if assess(stripped, locale=prompts.locale).level != "none":
        return "unsafe"
    return None


def messages(system: str, human: str) -> list[Any]:
    """The chat messages of one prompt (LangChain's types, imported only when LLM mode is used)."""
    from langchain_core.messages import HumanMessage, SystemMessage

    return [SystemMessage(content=system), HumanMessage(content=human)]


@dataclass
class UsageLine:
    """LLM usage of one client (``client_id`` None: calls about no client) over a period."""

    client_id: int | None
    calls: int = 0
    fallbacks: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None  # None: no price configured for a model used


def usage_report(
    session: Session, *, since: datetime, prices: dict[str, tuple[float, float]]
) -> tuple[list[UsageLine], UsageLine]:
    """Per client and in total: calls, fallbacks, tokens, and the cost estimated from ``prices``.

    ``prices`` maps a model name to (input, output) per million tokens; a
    line with a call to an unpriced model has no cost (shown as unknown).
    """
    from sqlmodel import col, select

    lines: dict[int | None, UsageLine] = {}
    total = UsageLine(None, cost=0.0)
    for row in session.exec(select(LlmUsage).where(col(LlmUsage.at) >= since).order_by(col(LlmUsage.id))):
        line = lines.setdefault(row.client_id, UsageLine(row.client_id, cost=0.0))
        price = prices.get(row.model)
        cost = (row.input_tokens * price[0] + row.output_tokens * price[1]) / 1_000_000 if price else None
        for target in (line, total):
            target.calls += 1
            target.fallbacks += row.outcome != "ok"
            target.input_tokens += row.input_tokens
            target.output_tokens += row.output_tokens
            target.cost = None if cost is None or target.cost is None else target.cost + cost
    return sorted(lines.values(), key=lambda x: (x.client_id is None, x.client_id or 0)), total
