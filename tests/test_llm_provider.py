"""LLM mode through the real provider client: langchain-openai against the local OpenAI-compatible server.

As an operator runs it with a local model (llama.cpp's server, vLLM):
``llm.provider: openai`` with ``llm.base_url`` pointing at
tests/fake_openai.py, which answers with real latency, usage, and faults on
cue. Model calls run after each turn's commit (dialogs.llm_jobs); the
console runs them before printing a line's reply, the service in the
background. No sleeps: waits are bounded, the companion's clock is the
test's.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select
from typer.testing import CliRunner

from bot.cli import app
from bot.http import create_app
from bot.wiring import Companion
from dialogs.clock import FrozenClock
from storage import Debrief, FlagLevel, LlmJob, LlmUsage, OutboxMessage, SafetyFlag
from tests.conftest import make_companion
from tests.fake_openai import FakeOpenAI, default_answer
from tests.fake_telegram import FakeBotAPI, message_update
from tests.support import Chat, add_therapist, invite_code, join
from tests.test_llm import EXPERIMENT

REFLECTION = "It sounds like it took real effort, and you stayed with it."
SURPRISED = "What surprised you, if anything?"
HARD = "What was hard about it?"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-server-needs-none")


def provider_companion(
    url: str, clock: FrozenClock, tmp_path: Path, fake: FakeOpenAI, *, method: str = "json_schema", **llm: Any
) -> Companion:
    extra = llm.pop("extra", {})
    config = {
        "provider": "openai",
        "base_url": fake.base_url,
        "model": "local-model",
        "timeout_seconds": 5,
        "structured_output": method,
        **llm,
    }
    memory = {"embeddings": "provider", "embedding_model": "local-embed", "timeout_seconds": 5}
    return make_companion(url, clock, tmp_path, llm=config, memory=memory, **extra)


def debrief_ready(companion: Companion, handle: str = "sam", name: str = "Sam") -> tuple[Chat, Chat]:
    add_therapist(companion)
    dana = Chat(companion, "therapist", "Dana")
    sam = join(companion, dana, name, handle)
    dana.send(EXPERIMENT.replace("/homework Sam", f"/homework {name}"))
    sam.open()
    sam.send("so I find out if I really faint")
    sam.send("9")
    sam.send("9")  # importance
    sam.send("done")
    return dana, sam


def usage(companion: Companion) -> list[LlmUsage]:
    with companion.db.unit_of_work() as session:
        return list(session.exec(select(LlmUsage).order_by(LlmUsage.id)))  # type: ignore[arg-type]


def jobs(companion: Companion) -> list[LlmJob]:
    with companion.db.unit_of_work() as session:
        return list(session.exec(select(LlmJob).where(LlmJob.kind == "reply").order_by(LlmJob.id)))  # type: ignore[arg-type]


# --- the provider client ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_a_reflection_through_the_real_client_with_json_schema_or_tool_calls(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeOpenAI, method: str
) -> None:
    companion = provider_companion(sqlite_url, clock, tmp_path, fake, method=method)
    _, sam = debrief_ready(companion)
    answer = sam.send("Rode two stops on the 73 with my sister Maria, the first minute was awful")
    assert answer == f"{REFLECTION}\n\n{SURPRISED}\n\n"  # one reply: the reflection, then the next question
    request = fake.chat_requests()[-1]
    if method == "json_schema":
        assert request["response_format"]["type"] == "json_schema"
    else:
        assert request["tools"][0]["function"]["name"] == "DebriefReply"
    sent = " ".join(str(m["content"]) for m in request["messages"])
    assert "Maria" not in sent and "Sam" not in sent and "[name]" in sent  # other people's names too
    [row] = usage(companion)
    assert (row.outcome, row.input_tokens, row.output_tokens) == ("ok", 120, 30)
    assert [j.status for j in jobs(companion)] == ["done"]
    companion.db.dispose()


@pytest.mark.parametrize(
    ("fault", "outcome", "tokens"),
    [("500", "fallback:error", (0, 0)), ("malformed", "fallback:invalid", (120, 30))],
)
def test_provider_failures_fall_back_once_and_keep_the_tokens_reported(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeOpenAI, fault: str, outcome: str, tokens: Any
) -> None:
    companion = provider_companion(sqlite_url, clock, tmp_path, fake)
    _, sam = debrief_ready(companion)
    fake.fail_next() if fault == "500" else fake.malformed_next()
    assert sam.send("Rode two stops on the 73") == f"{SURPRISED}\n\n"  # the scripted reply, once
    [row] = usage(companion)
    assert (row.outcome, (row.input_tokens, row.output_tokens)) == (outcome, tokens)
    companion.db.dispose()


def test_a_hung_provider_costs_one_timeout_then_the_scripted_reply(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeOpenAI
) -> None:
    companion = provider_companion(sqlite_url, clock, tmp_path, fake, timeout_seconds=0.5)
    _, sam = debrief_ready(companion)
    fake.hang_next()
    started = time.monotonic()
    try:
        assert sam.send("Rode two stops on the 73") == f"{SURPRISED}\n\n"
        assert time.monotonic() - started < 3
    finally:
        fake.release()
    assert [u.outcome for u in usage(companion)] == ["fallback:timeout"]
    assert companion.engine.llm is not None and not companion.engine.llm.paused  # one timeout is not an outage
    companion.db.dispose()


def test_the_models_risk_opinion_raises_the_level_to_a_crisis_alert(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeOpenAI
) -> None:
    fake.answer = lambda body: {**default_answer(body), "risk": "crisis"}
    companion = provider_companion(sqlite_url, clock, tmp_path, fake)
    dana, sam = debrief_ready(companion)
    out = sam.send("I finished everything I needed to finish today")
    assert REFLECTION not in out and SURPRISED not in out  # the crisis path replaces the step
    assert "emergency" in out.casefold()
    assert "llm_opinion" in dana.open()  # the therapist's alert, with the layer that fired
    with companion.db.unit_of_work() as session:
        flag = session.exec(select(SafetyFlag)).one()
        assert (flag.level, flag.reasons) == (FlagLevel.CRISIS, ["llm_opinion"])
    companion.db.dispose()


# --- memory through the provider's embeddings ---------------------------------------------------


def test_memory_uses_the_local_servers_embeddings_without_tiktoken(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeOpenAI
) -> None:
    companion = provider_companion(sqlite_url, clock, tmp_path, fake)
    assert companion.memory_status.startswith("on (openai local-embed")
    dana, sam = debrief_ready(companion)
    dana.send("/note Sam the bus is where the first panic attack happened")
    sam.send("Rode two stops on the 73 bus")
    embedded = [r["input"] for r in fake.embedding_requests()]
    assert all(isinstance(text, str) for batch in embedded for text in batch)  # text, not tiktoken ids
    assert any("first panic attack" in text for batch in embedded for text in batch)
    human = fake.chat_requests()[-1]["messages"][-1]["content"]
    assert "therapist's formulation note: the bus is where the first panic attack happened" in human
    companion.db.dispose()


def test_a_memory_that_cannot_work_is_a_start_up_warning_and_shown_in_usage(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail_next("/embeddings", 500)
    with caplog.at_level(logging.WARNING, logger="companion"):
        companion = provider_companion(sqlite_url, clock, tmp_path, fake)
    assert companion.engine.memory is None
    warning = next(r.getMessage() for r in caplog.records if "memory is OFF" in r.getMessage())
    assert "memory.base_url (or llm.base_url) serves embeddings" in warning and "memory.embeddings: local" in warning
    config = tmp_path / "c.yaml"
    config.write_text(
        f"llm: {{provider: openai, base_url: '{fake.base_url}', model: local-model}}\n"
        "memory: {embeddings: provider, embedding_model: local-embed}\n"
    )
    fake.fail_next("/embeddings", 500)
    try:
        result = CliRunner().invoke(app, ["usage", "--config", str(config)], env={"DATABASE_URL": sqlite_url})
    finally:  # the CLI installs its log handler on a stream CliRunner closes
        root = logging.getLogger()
        for handler in [h for h in root.handlers if type(h).__name__ == "_CompanionHandler"]:
            root.removeHandler(handler)
    assert result.exit_code == 0, result.output
    assert "Memory: off: openai local-embed embeddings failed at start-up" in result.output
    assert "LLM mode: on (openai local-model" in result.output
    companion.db.dispose()


# --- two transactions: crash, supersede, apply once ---------------------------------------------


def test_a_crash_between_the_transactions_completes_after_restart(
    db_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeOpenAI
) -> None:
    first = provider_companion(db_url, clock, tmp_path, fake)
    _, sam = debrief_ready(first)
    sam.channel.jobs = None  # this process "dies" after the turn's commit: nobody runs the job
    assert sam.send("Rode two stops on the 73") == ""  # nothing yet: the reply waits in the job
    assert first.jobs is not None
    assert [j.id for j in first.jobs.claim()]  # ... and it had even leased it before dying
    [pending] = jobs(first)
    assert pending.status == "pending" and pending.fallback  # visible in the database, fallback included
    first.db.dispose()

    restarted = provider_companion(db_url, clock, tmp_path, fake)
    assert restarted.jobs is not None
    assert restarted.jobs.run_pending() == 0  # the dead process's lease still holds
    clock.advance(seconds=40)  # past the lease (and the deadline: the scripted reply, no call)
    calls = len(fake.chat_requests())
    assert restarted.jobs.run_pending() == 1
    assert len(fake.chat_requests()) == calls
    assert Chat(restarted, "client", "sam").open() == f"{SURPRISED}\n\n"
    assert [(j.status, j.outcome) for j in jobs(restarted)] == [("fallback", "fallback:deadline")]
    restarted.db.dispose()


def test_a_job_leased_by_a_dead_process_is_completed_within_its_deadline(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeOpenAI
) -> None:
    companion = provider_companion(sqlite_url, clock, tmp_path, fake, reply_deadline_seconds=60)
    _, sam = debrief_ready(companion)
    sam.channel.jobs = None
    sam.send("Rode two stops on the 73")
    assert companion.jobs is not None
    companion.jobs.claim()
    assert companion.jobs.run_pending() == 0
    clock.advance(seconds=11)  # the lease (the call's timeout + 5 s) is over; the 60 s deadline is not
    assert companion.jobs.run_pending() == 1
    assert sam.channel.flush() == 1  # one reply: the reflection with the next question
    assert sam.out.getvalue().endswith(f"{REFLECTION}\n\n{SURPRISED}\n\n")
    companion.db.dispose()


def test_the_next_message_supersedes_a_pending_reply(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeOpenAI
) -> None:
    companion = provider_companion(sqlite_url, clock, tmp_path, fake)
    _, sam = debrief_ready(companion)
    runner = companion.jobs
    assert runner is not None
    sam.channel.jobs = None
    sam.send("Rode two stops on the 73")
    [late] = runner.claim()  # in flight when the client writes again
    sam.channel.jobs = runner
    second = sam.send("the first minute")
    assert second.startswith(f"{SURPRISED}\n\n")  # the first message's scripted reply, first
    assert second.endswith(f"{REFLECTION}\n\n{HARD}\n\n")
    runner.work(late)  # its result arrives: recorded, never shown
    assert sam.channel.flush() == 0
    assert [j.status for j in jobs(companion)] == ["superseded", "done"]
    assert len(usage(companion)) == 2
    companion.db.dispose()


def test_two_processes_never_apply_the_same_result_twice(
    db_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeOpenAI
) -> None:
    """Two runners (two Database engines, as two processes) work one job at once: one reply reaches the chat."""
    one = provider_companion(db_url, clock, tmp_path, fake)
    _, sam = debrief_ready(one)
    sam.channel.jobs = None
    sam.send("Rode two stops on the 73")
    two = provider_companion(db_url, clock, tmp_path, fake)
    assert one.jobs is not None and two.jobs is not None
    [job] = one.jobs.claim()
    assert two.jobs.claim() == []  # leased: the other process cannot claim it
    threads = [threading.Thread(target=runner.work, args=(job,)) for runner in (one.jobs, two.jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert sam.channel.flush() == 1
    assert sam.out.getvalue().count(REFLECTION) == 1 and sam.out.getvalue().count(SURPRISED) == 1
    with one.db.unit_of_work() as session:
        rows = session.exec(select(OutboxMessage).where(OutboxMessage.address == "client:sam")).all()
        assert sum(REFLECTION in r.payload["text"] for r in rows) == 1
    one.db.dispose()
    two.db.dispose()


def test_companion_digest_on_the_command_line_shows_the_narrative(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeOpenAI
) -> None:
    narrative = "The client rode the bus twice and found the first minute hardest."
    fake.answer = lambda body: {"text": narrative, **default_answer(body)} if not body.get("tools") else {}
    # The CLI runs on the system clock: the week happens now, not on the fixture's Monday.
    clock.advance(seconds=(datetime.now(UTC) - clock.now()).total_seconds() - 3600)
    companion = provider_companion(sqlite_url, clock, tmp_path, fake)
    _, sam = debrief_ready(companion)
    for answer in ("Rode two stops on the 73 at 10am", "no faint", "the first minute", "it passes", "80", "35", "4"):
        sam.send(answer)
    fake.answer = lambda body: {"text": narrative}
    config = tmp_path / "c.yaml"
    config.write_text(
        f"llm: {{provider: openai, base_url: '{fake.base_url}', model: local-model}}\nmemory: {{enabled: false}}\n"
    )
    try:
        result = CliRunner().invoke(app, ["digest", "Sam", "--config", str(config)], env={"DATABASE_URL": sqlite_url})
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if type(h).__name__ == "_CompanionHandler"]:
            root.removeHandler(handler)
    assert result.exit_code == 0, result.output
    assert narrative in result.output
    companion.db.dispose()


# --- the concurrency scenario, through the Telegram webhook ----------------------------------


CLIENTS = 5
LATENCY = 0.3
SECRET = "hook-secret-for-tests"


def test_concurrent_replies_wait_only_for_their_own_call_and_crisis_and_commands_for_none(
    db_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeOpenAI
) -> None:
    """Five clients answer a debrief question at once, then a crisis and a therapist command arrive.

    The model takes a real 300 ms and two calls may run at once: every
    client gets one reply with its reflection, the crisis reply and the
    therapist's list come before any model reply could, no request fails,
    and calls are never paused.
    """
    fake.latency = LATENCY
    telegram = FakeBotAPI().start()
    companion = provider_companion(
        db_url,
        clock,
        tmp_path,
        fake,
        max_concurrency=2,
        extra={
            "telegram": {
                "api_base_url": telegram.base_url,
                "webhook_url": "https://companion.example.org/telegram/hook",
                "messages_per_second": 1000,
                "per_chat_per_second": 100,
                "request_timeout": 2,
            },
            "TELEGRAM_BOT_TOKEN": telegram.token,
            "TELEGRAM_WEBHOOK_SECRET": SECRET,
        },
    )
    add_therapist(companion)
    dana = Chat(companion, "therapist", "Dana")
    ids = itertools.count(1)
    chats = [2001 + i for i in range(CLIENTS + 1)]

    async def scenario() -> dict[str, Any]:
        service = create_app(companion, background=True)
        transport = httpx.ASGITransport(app=service)
        async with (
            service.router.lifespan_context(service),
            httpx.AsyncClient(transport=transport, base_url="http://service") as http,
        ):

            async def post(chat: int, text: str) -> int:
                update = message_update(next(ids), chat, text)
                response = await http.post(
                    "/telegram/hook", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}
                )
                return response.status_code

            async def said(chat: int, count: int) -> None:
                assert await asyncio.to_thread(telegram.wait_for, lambda: len(telegram.texts(chat)) >= count, 10)

            for n, chat in enumerate(chats):
                name = f"Client{n}"
                code = invite_code(dana.send(f"/invite {name}"))
                dana.send(EXPERIMENT.replace("/homework Sam", f"/homework {name}"))
                for text in (f"/start {code}", "yes", "London", "6pm", "so I find out", "9", "9", "done"):
                    before = len(telegram.texts(chat))
                    assert await post(chat, text) == 200
                    await said(chat, before + 1)
            seen = {chat: len(telegram.texts(chat)) for chat in chats}
            started = time.monotonic()
            answers = [post(chat, "Rode two stops on the 73") for chat in chats[:CLIENTS]]
            crisis = post(chats[CLIENTS], "I want to kill myself tonight")
            statuses = await asyncio.gather(*answers, crisis)
            therapist = asyncio.ensure_future(asyncio.to_thread(dana.send, "/clients"))
            arrived: dict[int, float] = {}
            therapist_at: float | None = None
            while len(arrived) < len(chats) and time.monotonic() - started < 10:  # bounded
                for chat in chats:
                    if chat not in arrived and len(telegram.texts(chat)) > seen[chat]:
                        arrived[chat] = time.monotonic() - started
                if therapist_at is None and therapist.done():
                    therapist_at = time.monotonic() - started
                await asyncio.sleep(0.01)  # polling the fake's record
            clients_list = await therapist
            return {
                "statuses": statuses,
                "crisis_at": arrived.get(chats[CLIENTS]),
                "replies_at": [arrived.get(chat) for chat in chats[:CLIENTS]],
                "therapist_at": therapist_at,
                "clients_list": clients_list,
                "seen": seen,
            }

    try:
        result = asyncio.run(scenario())
    finally:
        telegram.stop()
    assert result["statuses"] == [200] * (CLIENTS + 1)  # no 5xx, nothing locked
    replies = result["replies_at"]
    assert None not in replies and result["crisis_at"] is not None and result["therapist_at"] is not None
    # The crisis reply came before any reply that waited for the model; the therapist's, while calls still ran.
    assert result["crisis_at"] < min(replies) and min(replies) >= LATENCY
    assert result["therapist_at"] < max(replies) and "Client0" in result["clients_list"]
    for chat in chats[:CLIENTS]:
        fresh = telegram.texts(chat)[result["seen"][chat] :]
        assert fresh == [f"{REFLECTION}\n\n{SURPRISED}"]  # one coherent reply each, one message
    assert fake.max_in_flight <= 2  # llm.max_concurrency
    # Five calls two at a time: three rounds of the model's latency; queueing never cut a call.
    assert max(replies) >= 3 * LATENCY and max(replies) < 3 * LATENCY + 3
    assert [u.outcome for u in usage(companion)] == ["ok"] * CLIENTS
    assert companion.engine.llm is not None and not companion.engine.llm.paused
    with companion.db.unit_of_work() as session:
        assert session.exec(select(Debrief)).all()
    companion.db.dispose()


def test_time_in_the_queue_is_not_provider_time(fake: FakeOpenAI) -> None:
    """One slot, a 0.5 s timeout, a 0.3 s model, three calls at once: the third queues 0.6 s and still succeeds."""
    from bot.config import Settings
    from bot.wiring import language_model
    from dialogs.llm import messages

    fake.latency = 0.3
    settings = Settings(
        llm={"provider": "openai", "base_url": fake.base_url, "model": "local-model", "timeout_seconds": 0.5}
    )
    llm = language_model(settings)
    assert llm is not None
    llm.max_concurrency = 1
    llm.__post_init__()  # one slot
    outcomes: list[Any] = []
    threads = [
        threading.Thread(
            target=lambda: outcomes.append(llm.call(purpose="test", messages=messages("system", "hello"), wait=5))
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(o.reason or "ok" for o in outcomes) == ["ok", "ok", "ok"]
    assert max(o.queued for o in outcomes) > 0.5  # longer than the timeout, spent waiting, not calling
    assert fake.max_in_flight == 1 and not llm.paused


def test_the_sweeps_digest_carries_a_narrative_written_outside_its_transaction(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeOpenAI
) -> None:
    from scheduler.sweep import sweep

    narrative = "The client rode the bus and found the first minute hardest."
    companion = provider_companion(sqlite_url, clock, tmp_path, fake)
    dana, sam = debrief_ready(companion)
    for answer in ("Rode two stops on the 73 at 10am", "no faint", "the first minute", "it passes", "80", "35", "4"):
        sam.send(answer)
    dana.open()
    dana.send("/session Sam tomorrow 10:00")
    fake.answer = lambda body: {"text": narrative}
    clock.advance(hours=23)
    sweep(db=companion.db, engine=companion.engine)
    digest = dana.open()
    assert "Digest for Sam" in digest and narrative in digest
    assert [u.purpose for u in usage(companion)].count("narrative") == 1
    companion.db.dispose()
