"""/metrics in Prometheus format during a client week over Telegram: sends, 429s, turns, alerts, sweeps."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.http import create_app
from bot.metrics import llm_callbacks, record_sweep
from dialogs.clock import FrozenClock
from scheduler.runner import start
from tests.conftest import make_companion
from tests.fake_telegram import FakeBotAPI, message_update
from tests.support import Chat, add_therapist, invite_code
from tests.test_telegram import SAM, Harness, run, telegram_companion

TOKEN = "scrape-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CRISIS = "I can't do this anymore, I'm going to kill myself tonight"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def fake() -> Iterator[FakeBotAPI]:
    api = FakeBotAPI().start()
    yield api
    api.stop()


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every other label (e.g. the outbox's priorities)."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def largest(samples: Samples, name: str, **labels: str) -> float:
    return max([v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls)], default=0.0)


async def scrape(h: Harness) -> tuple[Samples, str]:
    response = await h.http.get("/metrics", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text), response.text


def test_metrics_show_a_client_week(db_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeBotAPI) -> None:
    companion = telegram_companion(db_url, clock, tmp_path, fake, webhook=True)
    companion.settings = companion.settings.model_copy(update={"metrics_token": _secret(TOKEN)})
    add_therapist(companion)
    dana = Chat(companion, "therapist", "Dana")

    async def week(h: Harness) -> None:
        # The job `companion run` schedules, paused: the test runs it when the clock says so.
        scheduler = start(db=companion.db, engine=companion.engine, interval_seconds=3600, on_sweep=record_sweep)
        scheduler.pause()
        try:
            await scenario(h, scheduler.get_job("sweep"))
        finally:
            scheduler.shutdown(wait=False)

    async def scenario(h: Harness, sweep_job: Any) -> None:
        assert (await h.http.get("/metrics")).status_code == 401
        assert (await h.http.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
        before, _ = await scrape(h)

        code = invite_code(dana.send("/invite Sam"))
        dana.send("/homework Sam\ntitle: Thought record\nwhat: columns 1-3\nrationale: to catch the hot thought")
        for step in (f"/start {code}", "yes", "London", "6pm"):
            await h.say(SAM, step)
        # Telegram says 429 once: the message waits in the outbox, counted, then goes.
        fake.fail_next("sendMessage", status=429, retry_after=5)
        await h.receive(message_update(900, SAM, "/homework"))
        await h.deliver()
        clock.advance(seconds=3)
        waiting, _ = await scrape(h)
        assert total(waiting, "companion_outbox_depth", channel="telegram") >= 1
        assert value(waiting, "companion_outbox_depth", channel="telegram", priority="reply") >= 1
        assert largest(waiting, "companion_outbox_oldest_unsent_age_seconds", channel="telegram") >= 3
        clock.advance(seconds=5)
        await h.deliver()

        # A crisis message: an alert for Dana, open; unacknowledged past its re-alert, overdue and re-sent.
        await h.say(SAM, CRISIS)
        clock.advance(minutes=16)
        sweep_job.func()
        during, _ = await scrape(h)
        assert value(during, "companion_alerts_open") == 1
        assert value(during, "companion_alerts_overdue") == 1
        assert value(during, "companion_safety_flags_recent", level="crisis") == 1
        alert_id = re.search(r"/ack (\d+)", dana.open()).group(1)  # type: ignore[union-attr]
        clock.advance(minutes=4)
        assert "acknowledged" in dana.send(f"/ack {alert_id}")
        after, _ = await scrape(h)

        def grew(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert grew("companion_sends_total", channel="telegram", result="sent") >= 6
        assert grew("companion_sends_total", channel="telegram", result="rate_limited") == 1
        assert grew("companion_send_rate_limited_total", channel="telegram") == 1
        assert grew("companion_send_retries_total", channel="telegram") == 1
        assert grew("companion_inbound_turns_total", channel="telegram", status="200") >= 6
        assert grew("companion_inbound_latency_seconds_count", channel="telegram") >= 6
        assert grew("companion_sweep_due_rows_total", kind="alert_resent") == 1
        assert grew("companion_sweep_duration_seconds_count") == 1
        assert value(after, "companion_sweep_last_run_timestamp_seconds") > 0
        assert total(after, "companion_outbox_depth", channel="telegram") == 0
        assert value(after, "companion_llm_jobs_pending") == 0  # scripted mode: no jobs
        assert value(after, "companion_alerts_open") == 0 and value(after, "companion_alerts_overdue") == 0
        assert value(after, "companion_alert_ack_seconds", stat="count") == 1
        assert value(after, "companion_alert_ack_seconds", stat="max") == 20 * 60
        assert value(after, "companion_unreachable_chats") == 0
        # No client's name, chat id or words in any label or value name.
        labels = " ".join(str(k) for k in after)
        for secret in ("Sam", str(SAM), "kill", "Thought record", "London"):
            assert secret not in labels

    try:
        run(companion, fake, True, week)
    finally:
        companion.db.dispose()


def test_no_metrics_route_without_a_token(sqlite_url: str, clock: FrozenClock, tmp_path: Path) -> None:
    companion = make_companion(sqlite_url, clock, tmp_path)
    from fastapi.testclient import TestClient

    with TestClient(create_app(companion, background=False)) as client:
        assert client.get("/metrics", headers=AUTH).status_code == 404
    companion.db.dispose()


def test_llm_calls_are_counted_and_timed_through_langchain_callbacks() -> None:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    from bot.metrics import LLM_CALLS, LLM_LATENCY

    def count() -> float:
        return LLM_CALLS.labels("openai", "ok")._value.get()

    before = count()
    chat = GenericFakeChatModel(messages=iter([AIMessage("That sounds hard.")]), callbacks=llm_callbacks("openai"))
    assert chat.invoke("hello").content == "That sounds hard."
    assert count() == before + 1
    assert any(s.name.endswith("_count") and s.value >= 1 for m in LLM_LATENCY.collect() for s in m.samples)


def _secret(value: str):  # type: ignore[no-untyped-def]
    from pydantic import SecretStr

    return SecretStr(value)


def test_metrics_token_comes_from_the_environment_only(tmp_path: Path) -> None:
    from bot.config import ConfigError, load_settings

    config = tmp_path / "config.yaml"
    config.write_text("metrics_token: x\n")
    with pytest.raises(ConfigError, match="environment"):
        load_settings(config)
    assert httpx  # used by the harness
