"""LLM mode's mechanism: the injected model, bounded calls, scrubbing, reply checks and usage records.

The scripted dialog is the default and always the fallback. When an
operator configures a provider, :mod:`bot.wiring` builds a LangChain chat
model and injects it here as a :class:`LanguageModel`; nothing in
``dialogs/`` constructs one or knows the provider. The job runner
(:mod:`dialogs.llm_jobs`, with the steps in :mod:`dialogs.llm_steps`) calls
:meth:`LanguageModel.call` after a turn's commit, never inside a
transaction; the call

- waits for one of ``max_concurrency`` slots (queueing, logged, counted
  against the client's deadline but never as provider time), then runs the
  model in a worker thread for at most ``timeout`` seconds;
- turns any exception, timeout or unparseable reply into ``None`` with a
  reason, logged (the reason only, never client text), and pauses calls
  only after several provider failures in a row;
- keeps the tokens the provider reported, whether or not the reply was
  usable, for the usage row the caller writes (:meth:`LanguageModel.record`).

What leaves the machine is minimised: :func:`scrub` removes e-mail
addresses, links, phone numbers and handles from client text, replaces the
client's name with their pseudonym ("Client 17"), the therapist's with
"the therapist" and other people's with "[name]" (:mod:`dialogs.names`),
and neutralises the delimiters that mark the text as data.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TypeVar

from sqlmodel import Session

from dialogs.names import scrub_names
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


def scrub(
    text: str,
    *,
    names: Sequence[str] = (),
    pseudonym: str = "the client",
    therapist: Sequence[str] = (),
    others: bool = True,
) -> str:
    """``text`` fit to leave the machine: no e-mail, link, phone number, handle or name; delimiters neutralised.

    The client's and therapist's names become the pseudonym and "the
    therapist"; with ``others``, other people's names become "[name]"
    (:mod:`dialogs.names`, a heuristic for English that errs towards removing).
    """
    text = _EMAIL.sub("[email]", text)
    text = _URL.sub("[link]", text)
    text = _PHONE.sub("[number]", text)
    text = _HANDLE.sub("[handle]", text)
    # Known names first, as placeholders the name finder cannot read as words; then everyone else's.
    marks = {"\ue000": "the therapist", "\ue001": pseudonym}
    for who, mark in ((therapist, "\ue000"), (names, "\ue001")):
        for name in sorted({n for n in who if n}, key=len, reverse=True):
            text = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", mark, text, flags=re.IGNORECASE)
    if others:
        text = scrub_names(text)
    for mark, replacement in marks.items():
        text = text.replace(mark, replacement)
    return text.translate(_ANGLES)


def name_parts(name: str) -> list[str]:
    """A full name and its parts of three letters or more ("Sam Lee" → "Sam Lee", "Sam", "Lee")."""
    parts = [p for p in re.split(r"\s+", name.strip()) if len(p) >= 3]
    return [name.strip(), *parts] if name.strip() else []


@dataclass(frozen=True)
class Outcome:
    """What one call produced: the value (None on any failure), why it failed, and what it cost.

    ``tokens`` are what the provider reported, kept whether or not the reply
    was usable (a reply refused by a check was still billed); ``called`` is
    False when no request was made (paused, or the deadline passed in the
    queue), and then no usage row is written.
    """

    value: Any
    reason: str | None = None  # None = ok; else timeout, error, invalid, empty, unsafe, clinical, too_long, …
    tokens: tuple[int, int] = (0, 0)  # (input, output) as the provider reported them
    called: bool = True
    queued: float = 0.0  # seconds spent waiting for a free slot (never counted against the provider)
    elapsed: float = 0.0  # seconds the provider took (or until we stopped waiting)


# A provider failure: the ones that count towards the pause. A refused or unparseable reply is the
# model's fault, not the provider's health; "deadline" and "queued" are ours.
PROVIDER_FAILURES: Final = frozenset({"timeout", "error"})


@dataclass
class LanguageModel:
    """The configured chat model and its limits, injected into the engine (None = scripted only).

    ``chat`` is a LangChain ``BaseChatModel`` (any ``Runnable`` taking a list
    of messages works); ``provider`` and ``model`` are recorded with usage.
    Thread-safe: every job runner thread of a process shares one instance.

    Concurrency: at most ``max_concurrency`` calls are in flight in this
    process; a call waits for a slot (that wait is *queueing*, logged with
    the queue's length, and never counted against ``timeout``), then the
    provider has ``timeout`` seconds. A call abandoned at its timeout keeps
    its slot until its thread ends (the HTTP client's own timeout ends it),
    so a hung provider cannot pile up threads. Only provider failures
    (timeouts and errors) count towards the pause: after
    ``pause_after_failures`` of them in a row, calls are not attempted for
    ``pause_seconds``, and one success resets the count.
    """

    chat: Any
    provider: str
    model: str
    timeout: float = 20.0
    memory_k: int = 3
    memory_timeout: float = 2.0  # each memory read or write (embeddings may be a network call too)
    prompts: LlmPrompts = field(default_factory=load_llm)
    max_concurrency: int = 4
    pause_after_failures: int = 3
    pause_seconds: float = 60.0
    # How long a client waits for a reply in LLM mode before the scripted one goes (queue + call).
    reply_deadline: float = 25.0
    # with_structured_output's method (None: LangChain's default for the provider).
    structured_method: str | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._runnables: dict[type[Any], Any] = {}
        self._paused_until = 0.0
        self._failures = 0
        self._waiting = 0
        self._slots = threading.BoundedSemaphore(max(1, self.max_concurrency))
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.max_concurrency), thread_name_prefix="llm")
        # Memory reads and writes have their own threads: hung model calls must not starve them. As many as
        # call slots: every reply in flight retrieves its context first, and a queue here would delay them all.
        self._memory_pool = ThreadPoolExecutor(
            max_workers=max(2, self.max_concurrency), thread_name_prefix="llm-memory"
        )

    @property
    def paused(self) -> bool:
        return time.monotonic() < self._paused_until

    def bounded(self, fn: Callable[[], T], timeout: float | None = None, *, memory: bool = False) -> T:
        """``fn()`` in a worker thread, waiting at most ``timeout`` (default: the model's); raises TimeoutError."""
        future = (self._memory_pool if memory else self._pool).submit(fn)
        try:
            return future.result(timeout=self.timeout if timeout is None else timeout)
        except FutureTimeout as exc:
            future.cancel()  # if it has not started; a running call is abandoned, not awaited
            raise TimeoutError from exc

    def _acquire(self, purpose: str, wait: float) -> tuple[bool, float]:
        """A call slot within ``wait`` seconds; (got it, seconds waited). Logs the queue, never client text."""
        started = time.monotonic()
        if self._slots.acquire(blocking=False):
            return True, 0.0
        with self._lock:
            self._waiting += 1
            waiting = self._waiting
        try:
            log.info("llm %s queued: %d waiting for %d slot(s)", purpose, waiting, self.max_concurrency)
            got = self._slots.acquire(timeout=max(0.0, wait))
        finally:
            with self._lock:
                self._waiting -= 1
        queued = time.monotonic() - started
        log.info("llm %s waited %.2f s in the queue%s", purpose, queued, "" if got else " and gave up (deadline)")
        return got, queued

    def _structured_runnable(self, schema: type[Any], kwargs: dict[str, Any]) -> Any:
        """The chat model bound to ``schema``'s JSON Schema, built once per schema (it costs CPU per call)."""
        with self._lock:
            cached = self._runnables.get(schema)
        if cached is None:
            cached = self.chat.with_structured_output(schema.model_json_schema(), include_raw=True, **kwargs)
            with self._lock:
                self._runnables[schema] = cached
        return cached

    def _provider_result(self, reason: str | None) -> None:
        with self._lock:
            if reason in PROVIDER_FAILURES:
                self._failures += 1
                if self._failures >= self.pause_after_failures:
                    self._paused_until = time.monotonic() + self.pause_seconds
                    log.warning(
                        "llm: %d provider failures in a row; calls paused for %.0f s (scripted replies meanwhile)",
                        self._failures,
                        self.pause_seconds,
                    )
            elif reason not in ("deadline",):
                self._failures = 0

    def call(
        self,
        *,
        purpose: str,
        messages: list[Any],
        schema: type[Any] | None = None,
        check: Callable[[Any], str | None] | None = None,
        wait: float | None = None,
    ) -> Outcome:
        """One bounded call, made with no transaction open; the parsed reply (``schema``) or the text, checked.

        ``wait`` is the most this call may take in all (queue and provider:
        the client's deadline); the provider alone has at most ``timeout``.
        The caller records the outcome (:func:`record`).
        """
        budget = self.reply_deadline if wait is None else wait
        if self.paused:
            log.info("llm %s skipped: calls are paused after provider failures", purpose)
            return Outcome(None, "paused", called=False)
        got, queued = self._acquire(purpose, budget)
        if not got:
            return Outcome(None, "queued", called=False, queued=queued)
        tokens = (0, 0)
        reason: str | None = None
        value: Any = None
        limit = min(self.timeout, max(0.0, budget - queued))
        started = time.monotonic()
        try:
            if schema is not None:
                kwargs = {"method": self.structured_method} if self.structured_method else {}
                # The schema goes as JSON Schema, not as the pydantic class, and is validated here: given
                # the class, OpenAI's client validates inside the request and a reply that fails raises
                # without its usage, so a billed call would be recorded as 0 tokens.
                runnable = self._structured_runnable(schema, kwargs)
                future = self._pool.submit(runnable.invoke, messages)
            else:
                future = self._pool.submit(self.chat.invoke, messages)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _f: self._slots.release())
        try:
            result = future.result(timeout=limit)
            if schema is not None:
                tokens = _usage(result.get("raw"))
                value = _validated(schema, _structured(result.get("raw")))
                if value is None:
                    reason = "invalid"
            else:
                tokens = _usage(result)
                value = _text(result)
                if not value.strip():
                    reason = "empty"
        except FutureTimeout:
            # The provider's own timeout, or the client's deadline cut it short (ours, not a provider failure).
            reason = "timeout" if limit >= self.timeout else "deadline"
        except Exception as exc:  # any provider or parsing failure falls back; the class name is all we log
            reason = "error"
            tokens = _usage_of_error(exc)
            log.warning("llm %s call failed: %s", purpose, exc.__class__.__name__)
        elapsed = time.monotonic() - started
        self._provider_result(reason)
        if reason is None and check is not None:
            reason = check(value)
        if reason is not None:
            log.info("llm %s fell back to the scripted step: %s", purpose, reason)
        return Outcome(None if reason else value, reason, tokens, True, queued, elapsed)

    def record(
        self,
        session: Session,
        outcome: Outcome,
        *,
        now: datetime,
        client_id: int | None,
        purpose: str,
        template: Template,
        output: str | None = None,
    ) -> LlmUsage | None:
        """The call's usage row, in ``session`` (None when no request was made)."""
        if not outcome.called:
            return None
        row = LlmUsage(
            at=now,
            client_id=client_id,
            purpose=purpose,
            provider=self.provider,
            model=self.model,
            prompt_key=template.key,
            prompt_version=template.version,
            input_tokens=outcome.tokens[0],
            output_tokens=outcome.tokens[1],
            outcome="ok" if outcome.reason is None else f"fallback:{outcome.reason}",
            output=output,
        )
        session.add(row)
        return row


def _structured(raw: Any) -> Any:
    """The structured reply in a raw message, parsed strictly: a tool call's arguments, or JSON content.

    LangChain's own parse is not used: its JSON parser accepts a reply cut
    off mid-string as a shorter value, which would show the client half a
    sentence.
    """
    calls = getattr(raw, "tool_calls", None) or []
    if calls:
        return calls[0].get("args")
    if getattr(raw, "invalid_tool_calls", None):
        return None
    content = _text(raw).strip() if raw is not None else ""
    if content.startswith("```"):  # some local models fence their JSON
        content = content.strip("`").removeprefix("json").strip()
    try:
        return json.loads(content)
    except ValueError:
        return None


def _validated(schema: type[Any], parsed: Any) -> Any:
    """``parsed`` (a dict from the provider's JSON) as an instance of ``schema``; None if it does not fit."""
    if isinstance(parsed, schema):
        return parsed
    if not isinstance(parsed, dict):
        return None
    try:
        return schema.model_validate(parsed)
    except ValueError:  # pydantic's ValidationError is a ValueError
        return None


def _usage(message: Any) -> tuple[int, int]:
    metadata = getattr(message, "usage_metadata", None) or {}
    return int(metadata.get("input_tokens") or 0), int(metadata.get("output_tokens") or 0)


def _usage_of_error(exc: BaseException) -> tuple[int, int]:
    """Tokens a failed call was still billed for, when the error carries the provider's response.

    OpenAI's structured-output parsing raises *after* the reply arrived
    (``LengthFinishReasonError``, a validation error): the completion and its
    usage ride on the exception or its cause.
    """
    for candidate in (exc, exc.__cause__, exc.__context__):
        completion = getattr(candidate, "completion", None)
        usage = getattr(completion, "usage", None) or getattr(candidate, "usage", None)
        if usage is not None:
            return int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0)
    return 0, 0


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
