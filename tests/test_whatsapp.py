"""WhatsApp end to end: the real twilio client against a local fake REST API; inbound signed by the SDK's validator."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlmodel import select

from bot.http import create_app
from bot.wiring import Companion
from channels.whatsapp import e164
from dialogs.clock import FrozenClock
from scheduler.sweep import sweep
from storage import Client, ClientStatus, LogEntry, OutboxMessage, ProcessedInbound, SafetyFlag
from tests.conftest import make_companion
from tests.fake_twilio import FakeTwilioAPI, inbound_message, signed_headers, status_callback
from tests.support import Chat, add_therapist, invite_code

PUBLIC = "https://companion.example.org/whatsapp/inbound"
STATUS = "https://companion.example.org/whatsapp/status"
SENDER = "+14155238886"
SAM = "+447911123456"
TO_SAM = f"whatsapp:{SAM}"


@pytest.fixture
def fake() -> Iterator[FakeTwilioAPI]:
    api = FakeTwilioAPI().start()
    yield api
    api.stop()


def whatsapp_companion(
    url: str, clock: FrozenClock, tmp_path: Path, fake: FakeTwilioAPI, **templates: Any
) -> Companion:
    return make_companion(
        url,
        clock,
        tmp_path,
        whatsapp={
            "from_number": SENDER,
            "public_url": PUBLIC,
            "status_callback_url": STATUS,
            "api_base_url": fake.base_url,
            "messages_per_second": 1000,
            "per_chat_per_second": 100,
            "templates": templates,
        },
        TWILIO_ACCOUNT_SID=fake.account_sid,
        TWILIO_AUTH_TOKEN=fake.auth_token,
    )


@pytest.fixture
def service(sqlite_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeTwilioAPI) -> Iterator[Companion]:
    companion = whatsapp_companion(sqlite_url, clock, tmp_path, fake)
    yield companion
    companion.db.dispose()


class Harness:
    def __init__(self, companion: Companion, fake: FakeTwilioAPI) -> None:
        self.companion, self.fake = companion, fake
        self.app = create_app(companion, background=False)
        self.sids = (f"SM{n:032x}" for n in itertools.count(1))

    async def __aenter__(self) -> Harness:
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://internal:8080")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self._lifespan.__aexit__(None, None, None)

    async def post(
        self, path: str, params: dict[str, str], *, signed_for: str | None, token: str | None = None
    ) -> httpx.Response:
        headers = signed_headers(signed_for, params, token or self.fake.auth_token) if signed_for else {}
        return await self.http.post(path, data=params, headers=headers)

    async def say(self, text: str, *, sid: str | None = None, media: int = 0) -> str:
        params = inbound_message(
            message_sid=sid or next(self.sids), from_=TO_SAM, to=f"whatsapp:{SENDER}", body=text, num_media=media
        )
        response = await self.post("/whatsapp/inbound", params, signed_for=PUBLIC)
        assert response.status_code == 200 and "<Response" in response.text, response.text
        return await self.new()

    async def new(self) -> str:
        before = len(self.fake.bodies(TO_SAM))
        await self.deliver()
        return "\n".join(self.fake.bodies(TO_SAM)[before:])

    async def deliver(self) -> None:
        sender = self.app.state.senders["whatsapp"]
        while await sender.drain_once():
            pass


def run(companion: Companion, fake: FakeTwilioAPI, scenario: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with Harness(companion, fake) as harness:
            await scenario(harness)

    asyncio.run(main())


async def join_sam(h: Harness, companion: Companion) -> Chat:
    add_therapist(companion)
    dana = Chat(companion, "therapist", "Dana")
    invite = dana.send("/invite Sam")
    assert f"https://wa.me/{SENDER.lstrip('+')}?text=join%20" in invite
    code = invite_code(invite)
    consent = await h.say(f"join {code}")
    assert "automated assistant, not a person" in consent and "(1 Yes · 2 No)" in consent
    assert "time zone" in await h.say("1")  # a numbered reply
    await h.say("London")
    await h.say("7pm")
    dana.open()
    return dana


def test_a_client_week_over_whatsapp(db_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeTwilioAPI) -> None:
    companion = whatsapp_companion(db_url, clock, tmp_path, fake)

    async def week(h: Harness) -> None:
        dana = await join_sam(h, companion)
        dana.send(
            "/homework Sam\ntitle: Worry time\nwhat: 15 minutes of worry time\nwhen: 6pm daily\n"
            "where: the kitchen table\nwith whom: alone\nrecord: worries postponed\n"
            "rationale: postponing shows worry can wait"
        )
        delivered = await h.new()
        assert "New homework from Dana: Worry time" in delivered and "In your own words" in delivered
        assert "(0–10)" in await h.say("it shows I can choose when to worry")
        await h.say("9")
        await h.say("9")  # importance
        clock.advance(days=1)
        assert "What happened" in await h.say("done")
        for answer in ("Sat at 6pm for 15 minutes", "Most worries had faded", "Not checking my phone", "They can wait"):
            await h.say(answer)
        assert "saved for Dana" in await h.say("4")
        assert "“Sat at 6pm for 15 minutes”" in dana.send("/digest Sam")
        assert all(m["From"] == f"whatsapp:{SENDER}" and m["StatusCallback"] == STATUS for m in fake.messages(TO_SAM))

    run(companion, fake, week)
    companion.db.dispose()


@pytest.mark.parametrize("how", ["missing", "forged", "other_url", "other_token"])
def test_unverified_requests_are_403_and_touch_nothing(service: Companion, fake: FakeTwilioAPI, how: str) -> None:
    async def scenario(h: Harness) -> None:
        params = inbound_message(message_sid="SM" + "1" * 32, from_=TO_SAM, body="join ABCDEFGH")
        signed_for = {
            "missing": None,
            "forged": PUBLIC,
            "other_url": "https://elsewhere.example/whatsapp/inbound",
            "other_token": PUBLIC,
        }[how]
        token = "not-the-token" if how in ("forged", "other_token") else None
        response = await h.post("/whatsapp/inbound", params, signed_for=signed_for, token=token)
        assert response.status_code == 403
        status = await h.post(
            "/whatsapp/status", status_callback(message_sid="SMx", status="delivered"), signed_for=None
        )
        assert status.status_code == 403

    run(service, fake, scenario)
    with service.db.unit_of_work() as session:
        assert session.exec(select(ProcessedInbound)).first() is None
    assert fake.messages() == []


def test_a_redelivered_message_sid_is_processed_once(service: Companion, fake: FakeTwilioAPI) -> None:
    async def scenario(h: Harness) -> None:
        await h.say("hello", sid="SM" + "a" * 32)
        await h.say("hello", sid="SM" + "a" * 32)
        assert len(fake.bodies(TO_SAM)) == 1

    run(service, fake, scenario)


def test_stop_mid_debrief_stops_everything_and_start_resumes(service: Companion, fake: FakeTwilioAPI) -> None:
    async def scenario(h: Harness) -> None:
        dana = await join_sam(h, service)
        dana.send("/homework Sam\ntitle: Walk\nwhat: walk")
        dana.send("save")
        await h.new()
        await h.say("fine")
        await h.say("8")
        await h.say("8")
        await h.say("done")
        assert "won't send you any more messages" in await h.say("STOP")
        assert "Sam sent /stop" in dana.open()
        assert "on again" in await h.say("Start")
        assert "What you can send me" in await h.say("HELP")

    run(service, fake, scenario)
    with service.db.unit_of_work() as session:
        assert session.exec(select(Client)).one().status == ClientStatus.ACTIVE


def _nudge_after_window(h: Harness, companion: Companion, clock: FrozenClock) -> Callable[[], Awaitable[None]]:
    async def go() -> None:
        dana = await join_sam(h, companion)
        dana.send("/homework Sam\ntitle: Walk\nwhat: a 20 minute walk\nnudges: 18:00")
        dana.send("save")
        await h.new()
        await h.say("it lifts my mood")
        await h.say("8")
        await h.say("8")
        clock.advance(days=1, hours=9)  # Tuesday 18:00: more than 24 h since Sam last wrote
        sweep(db=companion.db, engine=companion.engine)
        await h.deliver()

    return go


def test_outside_the_window_a_nudge_uses_its_template(
    sqlite_url: str, clock: FrozenClock, tmp_path: Path, fake: FakeTwilioAPI
) -> None:
    companion = whatsapp_companion(
        sqlite_url,
        clock,
        tmp_path,
        fake,
        nudge={"content_sid": "HX" + "1" * 32, "variables": {"1": "title", "2": "what"}},
    )

    async def scenario(h: Harness) -> None:
        await _nudge_after_window(h, companion, clock)()
        template = fake.messages(TO_SAM)[-1]
        assert template["ContentSid"] == "HX" + "1" * 32 and "Body" not in template
        assert '"1": "Walk"' in template["ContentVariables"] and "a 20 minute walk" in template["ContentVariables"]

    run(companion, fake, scenario)
    companion.db.dispose()


def test_outside_the_window_without_a_template_nothing_is_sent_and_the_therapist_sees_it(
    service: Companion, fake: FakeTwilioAPI, clock: FrozenClock
) -> None:
    async def scenario(h: Harness) -> None:
        await _nudge_after_window(h, service, clock)()
        assert not any("A reminder" in b for b in fake.bodies(TO_SAM))

    run(service, fake, scenario)
    with service.db.unit_of_work() as session:
        failed = session.exec(select(OutboxMessage).where(OutboxMessage.last_error == "outside_window")).all()
        assert len(failed) == 1 and failed[0].failed_at is not None
    digest = Chat(service, "therapist", "Dana").send("/digest Sam")
    assert "1 message(s) could not be sent: outside WhatsApp's 24-hour window" in digest


def test_error_63016_is_recorded_not_looped(service: Companion, fake: FakeTwilioAPI, clock: FrozenClock) -> None:
    async def scenario(h: Harness) -> None:
        await join_sam(h, service)
        fake.fail_next(status=400, code=63016, message="Failed to send freeform message outside the window")
        await h.say("/help")
        attempts = len(fake.calls)
        clock.advance(hours=1)
        await h.deliver()
        assert len(fake.calls) == attempts  # never retried

    run(service, fake, scenario)
    with service.db.unit_of_work() as session:
        assert session.exec(select(OutboxMessage).where(OutboxMessage.last_error == "outside_window")).one()


@pytest.mark.parametrize(("status", "code"), [(429, 20429), (500, 20500)])
def test_rate_limits_and_server_errors_are_retried(
    service: Companion, fake: FakeTwilioAPI, clock: FrozenClock, status: int, code: int
) -> None:
    async def scenario(h: Harness) -> None:
        await join_sam(h, service)
        fake.fail_next(status=status, code=code, message="try later")
        assert await h.say("/help") == ""
        clock.advance(seconds=5)
        assert "What you can send me" in await h.new()

    run(service, fake, scenario)


def test_status_callbacks_record_delivery_and_requeue_what_can_be_retried(
    service: Companion, fake: FakeTwilioAPI, clock: FrozenClock
) -> None:
    async def scenario(h: Harness) -> None:
        await join_sam(h, service)
        await h.say("/help")
        sid = fake.message_sids(TO_SAM)[-1]
        delivered = status_callback(message_sid=sid, status="delivered")
        assert (await h.post("/whatsapp/status", delivered, signed_for=STATUS)).status_code == 204
        with service.db.unit_of_work() as session:
            assert (
                session.exec(select(OutboxMessage).where(OutboxMessage.platform_id == sid)).one().delivery_status
                == "delivered"
            )
        await h.say("/homework")
        retry_sid = fake.message_sids(TO_SAM)[-1]
        failed = status_callback(message_sid=retry_sid, status="failed", error_code=30001)
        assert (await h.post("/whatsapp/status", failed, signed_for=STATUS)).status_code == 204
        before = len(fake.bodies(TO_SAM))
        clock.advance(minutes=1)
        await h.deliver()
        assert len(fake.bodies(TO_SAM)) == before + 1  # queue overflow: sent again

    run(service, fake, scenario)


def test_media_without_text_gets_a_clear_reply(service: Companion, fake: FakeTwilioAPI) -> None:
    async def scenario(h: Harness) -> None:
        await join_sam(h, service)
        assert "I can only read text" in await h.say("", media=1)

    run(service, fake, scenario)


@given(st.text(max_size=40))
def test_phone_numbers_normalise_or_are_refused_never_raise(raw: str) -> None:
    result = e164(raw)
    assert result is None or (result.startswith("+") and result[1:].isdigit())


def test_phone_numbers_normalise_to_e164() -> None:
    assert e164("whatsapp:+44 7911 123456") == SAM
    assert e164("+1 (415) 523-8886") == SENDER
    assert e164("07911 123456") is None  # no country: refused rather than guessed
    assert e164("+44 7700 900123") is None  # the UK drama range: not a real number


def test_63016_reported_by_a_status_callback_is_recorded_not_retried(
    service: Companion, fake: FakeTwilioAPI, clock: FrozenClock
) -> None:
    """Twilio usually accepts the message and reports the closed window afterwards."""

    async def scenario(h: Harness) -> None:
        await join_sam(h, service)
        await h.say("/help")
        sid = fake.message_sids(TO_SAM)[-1]
        closed = status_callback(message_sid=sid, status="failed", error_code=63016)
        assert (await h.post("/whatsapp/status", closed, signed_for=STATUS)).status_code == 204
        before = len(fake.calls)
        clock.advance(hours=1)
        await h.deliver()
        assert len(fake.calls) == before

    run(service, fake, scenario)
    with service.db.unit_of_work() as session:
        row = session.exec(select(OutboxMessage).where(OutboxMessage.error_code == "63016")).one()
        assert row.last_error == "outside_window" and row.failed_at is not None


def test_the_direct_safety_question_and_the_note_offer_in_numbered_replies(
    service: Companion, fake: FakeTwilioAPI
) -> None:
    async def scenario(h: Harness) -> None:
        await join_sam(h, service)
        question = await h.say("honestly some days I wish I just wouldn't wake up")
        assert "are you thinking about ending your life, or are you in danger right now?" in question
        assert "(1 Yes · 2 No)" in question
        answered = await h.say("2")  # a numbered reply: no
        assert "Thank you for answering" in answered
        assert "keep it as a note for Dana" in answered and "(1 Yes · 2 No)" in answered
        assert "Noted" in await h.say("1")

    run(service, fake, scenario)
    with service.db.unit_of_work() as session:
        assert [e.text for e in session.exec(select(LogEntry))] == ["honestly some days I wish I just wouldn't wake up"]
        assert session.exec(select(SafetyFlag)).one().question_status == "no"


def test_a_questionnaire_over_whatsapp_uses_numbered_replies(
    service: Companion, fake: FakeTwilioAPI, clock: FrozenClock
) -> None:
    from datetime import UTC, datetime

    from storage import MeasureResponse

    async def scenario(h: Harness) -> None:
        dana = await join_sam(h, service)
        assert "GAD-7 for Sam: once" in dana.send("/measure Sam gad7 once")
        clock.set(datetime(2026, 11, 23, 19, 0, tzinfo=UTC))  # Sam's reminder time, 19:00 London
        sweep(db=service.db, engine=service.engine)
        asked = await h.new()
        assert "1/7. Feeling nervous, anxious or on edge" in asked
        assert "(1 Not at all · 2 Several days · 3 More than half the days · 4 Nearly every day)" in asked
        assert "2/7" in await h.say("2")  # option 2: "Several days", scored 1
        for reply in ("1", "1", "1", "1", "1"):
            await h.say(reply)
        assert "that's all" in await h.say("4")  # option 4: "Nearly every day", scored 3

    run(service, fake, scenario)
    with service.db.unit_of_work() as session:
        response = session.exec(select(MeasureResponse)).one()
        assert response.answers == [1, 0, 0, 0, 0, 0, 3] and response.score == 4 and response.band == "minimal"
