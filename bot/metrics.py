"""Prometheus metrics: events counted where they happen (combined across workers), state read from the database.

Two kinds of figure, combined across worker processes in the way that is
correct for each:

- **Events** (sends by result, retries, 429s, inbound turns and their
  latency, sweeps, LLM calls) are counters and histograms in the process
  where they happen. With several workers, `companion run --workers N` gives
  them prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``,
  a fresh directory per start): each worker writes its own file and
  whichever worker answers ``/metrics`` sums them all.
- **State** (outbox depth and the oldest unsent message per channel,
  unreachable chats, open and overdue crisis alerts, time to acknowledge,
  risk flags by level, LLM fallbacks) is read from the database at scrape
  time. The database is the truth every worker shares, so each worker
  reports the same value and nothing needs adding up (use ``max()`` across
  instances); per-process gauges of shared state would be wrong.

Labels are channels, results, levels, providers and purposes only — never a
client's name, address, chat id or text.

``/metrics`` is served only when COMPANION_METRICS_TOKEN is set, and then
only with ``Authorization: Bearer <token>``; without the token the route
does not exist. deploy/Caddyfile does not forward it to the public host.
"""

from __future__ import annotations

import hmac
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any, Final

from fastapi import FastAPI, Request, Response
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool

from channels.base import (
    AsyncOutputChannel,
    DeliveryError,
    Progress,
    Rejected,
    RetryLater,
    Transient,
    Undeliverable,
    Unreachable,
)
from dialogs.clock import Clock
from storage import Client, Database, LlmUsage, OutboxMessage, SafetyFlag
from storage.models import BULK, REPLY, URGENT, FlagLevel, LlmJob, SenderProcess

if TYPE_CHECKING:
    from bot.wiring import Companion
    from dialogs.messages import Outbound
    from scheduler.sweep import SweepReport

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
RECENT: Final = timedelta(hours=24)  # the window for flags and LLM outcomes read from the database
ACK_WINDOW: Final = timedelta(days=7)  # the window for time-to-acknowledge
HEARTBEAT_FRESH: Final = timedelta(seconds=10)  # channels.sender.STALE: a sender silent this long is gone
PRIORITIES: Final = {URGENT: "urgent", REPLY: "reply", BULK: "bulk"}
LATENCY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

SENDS: Final = Counter("companion_sends", "Outbox deliveries attempted, by channel and result", ["channel", "result"])
RETRIES: Final = Counter("companion_send_retries", "Deliveries that failed and will be tried again", ["channel"])
RATE_LIMITED: Final = Counter("companion_send_rate_limited", "Deliveries refused with 429 (retry later)", ["channel"])
INBOUND: Final = Counter(
    "companion_inbound_turns", "Inbound webhook requests, by channel and status", ["channel", "status"]
)
INBOUND_LATENCY: Final = Histogram(
    "companion_inbound_latency_seconds", "Webhook request to response, by channel", ["channel"], buckets=LATENCY_BUCKETS
)
SWEEP_DURATION: Final = Histogram("companion_sweep_duration_seconds", "One sweep of due work", buckets=LATENCY_BUCKETS)
SWEEP_DUE: Final = Counter("companion_sweep_due_rows", "Due rows a sweep acted on, by kind", ["kind"])
SWEEP_FAILURES: Final = Counter("companion_sweep_failures", "Sweeps that raised")
SWEEP_LAST: Final = Gauge(
    "companion_sweep_last_run_timestamp_seconds", "When a sweep last finished (Unix time)", multiprocess_mode="max"
)
LLM_CALLS: Final = Counter("companion_llm_calls", "Chat model calls, by provider and result", ["provider", "result"])
LLM_LATENCY: Final = Histogram(
    "companion_llm_latency_seconds", "Chat model call latency, by provider", ["provider"], buckets=LATENCY_BUCKETS
)

_RESULTS: Final[tuple[tuple[type[DeliveryError], str], ...]] = (
    (RetryLater, "rate_limited"),
    (Unreachable, "unreachable"),
    (Rejected, "rejected"),
    (Undeliverable, "undeliverable"),
    (Transient, "transient"),
)


def prepare_multiprocess() -> Path:
    """Give the worker processes about to start a fresh multiprocess directory (before they import us).

    An operator's PROMETHEUS_MULTIPROC_DIR is used (and emptied: files from an
    earlier run would be added to this one's); otherwise a new temporary
    directory. Call in the parent, before the workers are spawned.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    else:
        path = Path(tempfile.mkdtemp(prefix="companion-metrics-"))
        os.environ[MULTIPROC_ENV] = str(path)
    return path


class InstrumentedChannel:
    """An outbound channel that counts each delivery's result; everything else is the wrapped channel's."""

    def __init__(self, channel: AsyncOutputChannel) -> None:
        self._channel = channel

    @property
    def name(self) -> str:
        return self._channel.name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._channel, attribute)

    async def send(self, address: str, message: Outbound, progress: Progress | None = None) -> str | None:
        name = self._channel.name
        try:
            platform_id = await self._channel.send(address, message, progress)
        except Exception as exc:
            result = next((label for kind, label in _RESULTS if isinstance(exc, kind)), "error")
            SENDS.labels(name, result).inc()
            if result == "rate_limited":
                RATE_LIMITED.labels(name).inc()
            if result in ("rate_limited", "transient", "error"):  # what the sender tries again
                RETRIES.labels(name).inc()
            raise
        SENDS.labels(name, "sent").inc()
        return platform_id


def instrumented(channel: AsyncOutputChannel) -> AsyncOutputChannel:
    return InstrumentedChannel(channel)


def record_sweep(report: SweepReport | None, seconds: float) -> None:
    """Count one sweep (``report`` None: it raised)."""
    SWEEP_DURATION.observe(seconds)
    if report is None:
        SWEEP_FAILURES.inc()
        return
    SWEEP_LAST.set(time.time())
    n = report.nudges
    for kind, count in (
        ("nudge", n.sent),
        ("follow_up", n.followed_up),
        ("not_reviewed", n.not_reviewed),
        ("missed", n.missed),
        ("skipped", n.skipped),
        ("deferred", n.deferred),
        ("digest", n.digests),
        ("alert_resent", report.alerts_escalated),
    ):
        SWEEP_DUE.labels(kind).inc(count)


def llm_callbacks(provider: str) -> list[Any]:
    """A LangChain callback handler that counts the chat model's calls and times them."""
    from langchain_core.callbacks import BaseCallbackHandler

    class _LlmMetrics(BaseCallbackHandler):
        def __init__(self) -> None:
            self.started: dict[Any, float] = {}

        def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: Any, **kwargs: Any) -> None:
            self.started[run_id] = time.perf_counter()

        def _done(self, run_id: Any, result: str) -> None:
            began = self.started.pop(run_id, None)
            LLM_CALLS.labels(provider, result).inc()
            if began is not None:
                LLM_LATENCY.labels(provider).observe(time.perf_counter() - began)

        def on_llm_end(self, response: Any, *, run_id: Any, **kwargs: Any) -> None:
            self._done(run_id, "ok")

        def on_llm_error(self, error: BaseException, *, run_id: Any, **kwargs: Any) -> None:
            self._done(run_id, "timeout" if isinstance(error, TimeoutError) else "error")

    return [_LlmMetrics()]


class DatabaseCollector(Collector):
    """The state figures, read from the database at each scrape (short read-only queries, no network)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db, self.clock = db, clock

    def collect(self) -> Iterable[Metric]:
        now = self.clock.now()
        depth = GaugeMetricFamily(
            "companion_outbox_depth",
            "Outbox messages not yet sent, by channel and priority",
            labels=["channel", "priority"],
        )
        oldest = GaugeMetricFamily(
            "companion_outbox_oldest_unsent_age_seconds",
            "Age of the oldest unsent message, by channel and priority",
            labels=["channel", "priority"],
        )
        failed = GaugeMetricFamily("companion_outbox_failed", "Messages given up on, by channel", labels=["channel"])
        flags = GaugeMetricFamily(
            "companion_safety_flags_recent", "Risk-screen flags raised in the last 24 hours, by level", labels=["level"]
        )
        llm = GaugeMetricFamily(
            "companion_llm_outcomes_recent",
            "LLM steps in the last 24 hours, by purpose and outcome (fallback:<reason> fell back to the script)",
            labels=["purpose", "outcome"],
        )
        with self.db.unit_of_work() as session:
            unsent = session.exec(
                select(OutboxMessage.channel, OutboxMessage.priority, func.count(), func.min(OutboxMessage.created_at))
                .where(col(OutboxMessage.sent_at).is_(None), col(OutboxMessage.failed_at).is_(None))
                .group_by(OutboxMessage.channel, col(OutboxMessage.priority))
            ).all()
            # Heartbeats are wall-clock times (channels.sender), whatever clock the dialogs use.
            senders = session.exec(
                select(func.count())
                .select_from(SenderProcess)
                .where(col(SenderProcess.heartbeat_at) >= datetime.now(UTC) - HEARTBEAT_FRESH)
            ).one()
            jobs = session.exec(
                select(LlmJob.kind, func.count()).where(LlmJob.status == "pending").group_by(LlmJob.kind)
            ).all()
            given_up = session.exec(
                select(OutboxMessage.channel, func.count())
                .where(col(OutboxMessage.failed_at).is_not(None))
                .group_by(OutboxMessage.channel)
            ).all()
            unreachable = session.exec(
                select(func.count()).select_from(Client).where(col(Client.unreachable_at).is_not(None))
            ).one()
            open_alerts = session.exec(
                select(SafetyFlag.escalate_at, SafetyFlag.escalated_at).where(
                    SafetyFlag.level == FlagLevel.CRISIS, col(SafetyFlag.acknowledged_at).is_(None)
                )
            ).all()
            acked = session.exec(
                select(SafetyFlag.created_at, SafetyFlag.acknowledged_at).where(
                    SafetyFlag.level == FlagLevel.CRISIS, col(SafetyFlag.acknowledged_at) >= now - ACK_WINDOW
                )
            ).all()
            by_level = session.exec(
                select(SafetyFlag.level, func.count())
                .where(col(SafetyFlag.created_at) >= now - RECENT)
                .group_by(SafetyFlag.level)
            ).all()
            outcomes = session.exec(
                select(LlmUsage.purpose, LlmUsage.outcome, func.count())
                .where(col(LlmUsage.at) >= now - RECENT)
                .group_by(LlmUsage.purpose, LlmUsage.outcome)
            ).all()
        for channel, priority, count, first in unsent:
            label = PRIORITIES.get(priority, str(priority))
            depth.add_metric([channel, label], count)
            oldest.add_metric([channel, label], max(0.0, (now - _utc(first)).total_seconds()))
        pending = GaugeMetricFamily("companion_llm_jobs_pending", "LLM jobs waiting to run, by kind", labels=["kind"])
        for kind, count in jobs:
            pending.add_metric([kind], count)
        for channel, count in given_up:
            failed.add_metric([channel], count)
        for level in FlagLevel:
            flags.add_metric([level.value], dict(by_level).get(level.value, 0))
        for purpose, outcome, count in outcomes:
            llm.add_metric([purpose, outcome], count)
        overdue = sum(
            1 for due, escalated in open_alerts if escalated is not None or (due is not None and _utc(due) <= now)
        )
        waits = [(_utc(at) - _utc(made)).total_seconds() for made, at in acked if at is not None]
        yield depth
        yield oldest
        yield failed
        yield GaugeMetricFamily("companion_unreachable_chats", "Clients whose platform refuses delivery", unreachable)
        yield GaugeMetricFamily("companion_alerts_open", "Crisis alerts not yet acknowledged", len(open_alerts))
        yield GaugeMetricFamily(
            "companion_alerts_overdue", "Crisis alerts unacknowledged past their re-alert time", overdue
        )
        ack = GaugeMetricFamily(
            "companion_alert_ack_seconds",
            "Time from crisis alert to acknowledgement, over alerts acknowledged in the last 7 days",
            labels=["stat"],
        )
        ack.add_metric(["median"], median(waits) if waits else 0)
        ack.add_metric(["max"], max(waits) if waits else 0)
        ack.add_metric(["count"], len(waits))
        yield ack
        yield flags
        yield llm
        yield pending
        yield GaugeMetricFamily(
            "companion_sender_processes", "Processes sending from the outbox (fresh heartbeat)", senders
        )


def _utc(value: Any) -> Any:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class _Default(Collector):
    """This process's own metrics (single-process mode): the default registry's collectors."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def registry(db: Database, clock: Clock) -> CollectorRegistry:
    """What ``/metrics`` exposes: every worker's events (multiprocess mode) or this process's, and the state."""
    exposed = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(exposed)
    else:
        exposed.register(_Default())
    exposed.register(DatabaseCollector(db, clock))
    return exposed


def mount(app: FastAPI, companion: Companion) -> None:
    """``GET /metrics`` behind the bearer token (COMPANION_METRICS_TOKEN); no route at all without it."""
    token = companion.settings.metrics_token
    if token is None:
        return
    expected = f"Bearer {token.get_secret_value()}".encode()
    exposed = registry(companion.db, companion.clock)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return Response("unauthorized\n", status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return Response(await run_in_threadpool(generate_latest, exposed), media_type=CONTENT_TYPE)


Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class InboundMetrics:
    """ASGI middleware: counts and times the webhook requests (inbound turns) by channel and status."""

    def __init__(self, app: Any, paths: dict[str, str]) -> None:
        self.app, self.paths = app, paths

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        channel = self.paths.get(scope.get("path", "")) if scope["type"] == "http" else None
        if channel is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def observed(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            INBOUND.labels(channel, str(status)).inc()
            INBOUND_LATENCY.labels(channel).observe(time.perf_counter() - began)


def webhook_paths(companion: Companion) -> dict[str, str]:
    """The inbound webhook paths served, by channel (delivery-status callbacks are not turns)."""
    settings, paths = companion.settings, {}
    if companion.telegram is not None and settings.telegram.webhook_url:
        paths[settings.telegram.webhook_path] = "telegram"
    if companion.slack is not None:
        paths["/slack/events"] = "slack"
    if companion.whatsapp is not None:
        paths[settings.whatsapp.inbound_path] = "whatsapp"
    return paths
