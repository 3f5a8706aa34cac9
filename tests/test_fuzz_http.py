"""Fuzzing every HTTP endpoint: malformed input gets a 4xx (or a harmless 2xx), never a 5xx, a hang or a write.

Each request is authenticated as the platform would authenticate it (the
Telegram secret header, a real Slack v0 signature, a real Twilio signature
over the parsed form), so the fuzz gets past the door and reaches the
parsers and handlers behind it.

The rule checked for every request: no 5xx; a refused request (4xx) leaves
every table exactly as it was; an accepted one (2xx) may write only what any
inbound message from an unknown chat legitimately writes (the dedupe row,
the chat's state, the reply in the outbox, a failed join attempt). The
generators aim at invalid payloads, but mutating a real update sometimes
leaves a valid one (a message whose ``from.first_name`` became a number is
still a message), and the companion is right to answer it.

CI runs a fixed, derandomized sample; a longer run:
``COMPANION_FUZZ_EXAMPLES=2000 .venv/bin/pytest -q tests/test_fuzz_http.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

import pytest
from fastapi.testclient import TestClient
from hypothesis import event, example, given
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from sqlalchemy import inspect, text
from twilio.request_validator import RequestValidator

from bot.http import create_app
from bot.limits import BodyLimit
from bot.wiring import Companion
from dialogs.clock import FrozenClock
from tests.conftest import MONDAY, make_companion
from tests.fake_slack import FakeSlackAPI, block_action, sign, slash_command, view_submission
from tests.fake_telegram import FakeBotAPI, callback_update, message_update, my_chat_member_update
from tests.fake_twilio import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, inbound_message, status_callback
from tests.fuzzing import HOSTILE as BASE_HOSTILE
from tests.fuzzing import fuzz_settings, json_strategies, mutate
from tests.fuzzing import junk_bodies as _junk

FUZZ: Final = fuzz_settings(60)
MAX_BODY: Final = 64 * 1024  # small, so "over the limit" bodies stay cheap to generate
TELEGRAM_SECRET: Final = "fuzz-hook-secret"
SLACK_SECRET: Final = "fuzz-slack-signing-secret"
PUBLIC: Final = "https://companion.example.org/whatsapp/inbound"
SAM: Final = "whatsapp:+447911123456"  # a valid number, so the fuzz gets past the sender check
STATUS: Final = "https://companion.example.org/whatsapp/status"
# What an accepted inbound message from a chat nobody knows may write.
INBOUND_TABLES: Final = frozenset(
    {"processedinbound", "conversationstate", "outboxmessage", "joinfailure", "logentry", "auditentry"}
)

HOSTILE: Final = [*BASE_HOSTILE, "/start", "join ZZZZZZZZ", "whatsapp:+447700900123"]
CONTENT_TYPES: Final = [
    "application/json",
    "application/json; charset=latin-1",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "multipart/form-data",
    "text/plain",
    "text/xml",
    "application/octet-stream",
    "",
    "garbage/;;;=",
]

hostile_text, json_values = json_strategies(HOSTILE, text_size=80, max_leaves=12)


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """``base`` with one to three slots deleted or replaced by arbitrary JSON (wrong types, missing fields)."""
    return mutate(draw, base, json_values, changes=st.integers(1, 3))


def nested(depth: int) -> bytes:
    return b'{"update_id": 1, "message": ' + b"[" * depth + b"]" * depth + b"}"


# Bodies that are not even the right kind of thing, for any endpoint.
junk_bodies = _junk(json_values, nested=nested, max_body=MAX_BODY, binary=600)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Companion, TestClient]]:
    """One companion with every channel configured, started once for the module's fuzzing."""
    tmp_path: Path = tmp_path_factory.mktemp("fuzz")
    with FakeBotAPI() as telegram, FakeSlackAPI() as slack:
        companion = make_companion(
            f"sqlite:///{tmp_path / 'companion.db'}",
            FrozenClock(MONDAY),
            tmp_path,
            server={"max_body_bytes": MAX_BODY},
            telegram={"api_base_url": telegram.base_url, "webhook_url": "https://companion.example.org/telegram/hook"},
            slack={"api_base_url": slack.base_url},
            whatsapp={
                "from_number": "+14155238886",
                "public_url": PUBLIC,
                "status_callback_url": STATUS,
                "api_base_url": "http://127.0.0.1:9",  # nothing is sent: no background senders
            },
            TELEGRAM_BOT_TOKEN=telegram.token,
            TELEGRAM_WEBHOOK_SECRET=TELEGRAM_SECRET,
            SLACK_BOT_TOKEN=slack.token,
            SLACK_SIGNING_SECRET=SLACK_SECRET,
            TWILIO_ACCOUNT_SID=DEFAULT_ACCOUNT_SID,
            TWILIO_AUTH_TOKEN=DEFAULT_AUTH_TOKEN,
        )
        with TestClient(create_app(companion, background=False), raise_server_exceptions=False) as client:
            yield companion, client
        companion.db.dispose()


def counts(companion: Companion) -> dict[str, int]:
    with companion.db.engine.connect() as connection:
        names = [n for n in inspect(connection).get_table_names() if n != "alembic_version"]
        return {name: connection.execute(text(f'SELECT COUNT(*) FROM "{name}"')).scalar_one() for name in names}


def check(companion: Companion, before: dict[str, int], response: Any) -> None:
    if currently_in_test_context():
        event(f"HTTP {response.status_code}")  # --hypothesis-show-statistics: how far the fuzz got
    assert response.status_code < 500, (response.status_code, response.text[:300])
    changed = {name for name, n in counts(companion).items() if before.get(name) != n}
    if response.status_code >= 300:
        assert not changed, f"a refused request ({response.status_code}) wrote to {changed}"
    else:
        assert changed <= INBOUND_TABLES, f"an accepted request wrote to {changed - INBOUND_TABLES}"


def post(
    service: tuple[Companion, TestClient], path: str, body: bytes, headers: dict[str, str]
) -> tuple[Companion, Any]:
    companion, client = service
    before = counts(companion)
    response = client.post(path, content=body, headers=headers)
    check(companion, before, response)
    return companion, response


# --- health -----------------------------------------------------------------------------------


@FUZZ
@given(
    path=st.sampled_from(["/healthz", "/readyz"]),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    body=junk_bodies,
    content_type=st.sampled_from(CONTENT_TYPES),
    query=st.dictionaries(hostile_text, hostile_text, max_size=3),
)
def test_health_endpoints_never_fail(
    service: tuple[Companion, TestClient], path: str, method: str, body: bytes, content_type: str, query: dict[str, str]
) -> None:
    companion, client = service
    before = counts(companion)
    response = client.request(method, path, content=body, params=query, headers={"Content-Type": content_type})
    check(companion, before, response)
    if method == "GET" and len(body) <= MAX_BODY:
        assert response.status_code == 200


# --- Telegram -------------------------------------------------------------------------------------

telegram_updates = st.one_of(
    mutated(message_update(1, 4242, "hello")),
    mutated(callback_update(2, 4242, "yes")),
    mutated(my_chat_member_update(3, 4242)),
    mutated(message_update(4, -4242, "hi all", chat_type="group")),
    st.builds(
        lambda u, v: {"update_id": u, **v}, st.integers(-(2**63), 2**63), st.dictionaries(hostile_text, json_values)
    ),
)
telegram_bodies = st.one_of(telegram_updates.map(lambda u: json.dumps(u).encode()), junk_bodies)


@FUZZ
@given(body=telegram_bodies, content_type=st.sampled_from(CONTENT_TYPES))
@example(body=nested(40_000), content_type="application/json")  # RecursionError in json.loads
@example(body=json.dumps({"update_id": 7, "message": "not an object"}).encode(), content_type="application/json")
@example(body=json.dumps({"update_id": 8, "message": {"chat": None}}).encode(), content_type="application/json")
@example(
    body=json.dumps(
        {**message_update(9, 4242, "x"), "message": {**message_update(9, 4242, "x")["message"], "text": 5}}
    ).encode(),
    content_type="application/json",
)
@example(
    body=json.dumps({"update_id": 10, "callback_query": {"id": [], "from": 1, "data": {}}}).encode(),
    content_type="application/json",
)
@example(body=b'{"update_id": 11, "message": {"text": "\xff\xfe"}}', content_type="application/json")
def test_telegram_webhook_refuses_malformed_updates(
    service: tuple[Companion, TestClient], body: bytes, content_type: str
) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET, "Content-Type": content_type}
    post(service, "/telegram/hook", body, headers)


# --- Slack --------------------------------------------------------------------------------------


def _form_with_payload(payload: Any) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode()


def _payload(form: bytes) -> Any:
    return json.loads(dict(parse_qsl(form.decode()))["payload"])


slack_bodies = st.one_of(
    st.builds(
        lambda fields: urlencode(fields).encode(),
        mutated(dict(parse_qsl(slash_command("/companion", "clients", user_id="UFUZZ").decode()))),
    ),
    st.builds(
        lambda command, words: slash_command(command, words, user_id="UFUZZ"),
        st.sampled_from(["/companion", "/homework", "/other"]),
        hostile_text,
    ),
    mutated(_payload(block_action("ack_alert", "/ack 1", user_id="UFUZZ"))).map(_form_with_payload),
    mutated(_payload(view_submission("homework_modal", {}, user_id="UFUZZ"))).map(_form_with_payload),
    json_values.map(_form_with_payload),
    mutated({"type": "event_callback", "event": {"type": "message", "user": "UFUZZ", "text": "hi"}}).map(
        lambda v: json.dumps(v).encode()
    ),
    junk_bodies,
)


@FUZZ
@given(body=slack_bodies, content_type=st.sampled_from([None, *CONTENT_TYPES]))
@example(body=nested(40_000), content_type="application/json")
@example(body=b"payload=%7B%22type%22%3A+5%7D", content_type=None)
@example(body=b"payload=%FF%FE", content_type=None)
@example(body=b"command=%2Fcompanion&user_id=&text=link+x", content_type=None)
@example(body=b'{"":"","event":null}', content_type=None)  # bolt's own middleware calls event.get()
@example(  # two response_urls: bolt's context builder raises KeyError('logger') while logging that
    body=_form_with_payload({"type": "view_submission", "response_urls": [None, None]}), content_type=None
)
@example(  # bolt's workflow-step check indexes view["type"]
    body=_form_with_payload(
        {"type": "view_submission", "user": {"id": "U1"}, "view": {"callback_id": "x", "state": {"values": {}}}}
    ),
    content_type=None,
)
def test_slack_events_refuse_malformed_payloads(
    service: tuple[Companion, TestClient], body: bytes, content_type: str | None
) -> None:
    post(service, "/slack/events", body, sign(body, SLACK_SECRET, int(time.time()), content_type=content_type))


@FUZZ
@given(
    path=st.sampled_from(["/telegram/hook", "/slack/events", "/whatsapp/inbound", "/whatsapp/status"]),
    headers=st.dictionaries(
        st.sampled_from(
            [
                "X-Telegram-Bot-Api-Secret-Token",
                "X-Slack-Request-Timestamp",
                "X-Slack-Signature",
                "X-Twilio-Signature",
                "Content-Type",
                "Content-Encoding",
            ]
        ),
        st.one_of(
            st.sampled_from(["", "abc", "v0=", "-1", "1e99", "99999999999999999999"]),
            st.from_regex(r"[ -~]{0,40}", fullmatch=True),
        ),
        max_size=6,
    ),
    body=junk_bodies,
)
@example(path="/slack/events", headers={"X-Slack-Request-Timestamp": "abc", "X-Slack-Signature": "v0=00"}, body=b"x")
def test_forged_or_garbled_authentication_is_refused(
    service: tuple[Companion, TestClient], path: str, headers: dict[str, str], body: bytes
) -> None:
    """Garbage where the secret, the signature or the timestamp should be: refused, never an error."""
    _, response = post(service, path, body, headers)
    assert response.status_code >= 400


# --- WhatsApp -------------------------------------------------------------------------------------


def twilio_headers(url: str, body: bytes, content_type: str) -> dict[str, str]:
    """Twilio's signature over the form as the service will parse it (latin-1 bytes, then %-decoding)."""
    params = dict(parse_qsl(body.decode("latin-1"), keep_blank_values=True))
    signature = RequestValidator(DEFAULT_AUTH_TOKEN).compute_signature(url, params)
    return {"X-Twilio-Signature": signature, "Content-Type": content_type}


def _form(fields: Any) -> bytes:
    if not isinstance(fields, dict):
        return json.dumps(fields).encode()
    return urlencode({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}).encode()


whatsapp_inbound = st.one_of(
    mutated(inbound_message(message_sid="SM" + "f" * 32, from_=SAM, body="hello")).map(_form),
    st.builds(
        lambda sid, sender, body, media: _form(
            {**inbound_message(message_sid="SM" + "e" * 32, from_=SAM, body="x"), "MessageSid": sid, "From": sender}
            | {"Body": body, "NumMedia": media}
        ),
        hostile_text,
        st.one_of(st.just(SAM), hostile_text),
        hostile_text,
        hostile_text,
    ),
    junk_bodies,
)
whatsapp_status = st.one_of(
    mutated(status_callback(message_sid="SM" + "d" * 32, status="failed", error_code=30001)).map(_form),
    junk_bodies,
)
FORM: Final = "application/x-www-form-urlencoded"


@FUZZ
@given(body=whatsapp_inbound, content_type=st.sampled_from([FORM, FORM, *CONTENT_TYPES]))
@example(
    body=_form({**inbound_message(message_sid="SM" + "c" * 32, from_=SAM, body="x"), "NumMedia": "many"}),
    content_type=FORM,
)
@example(body=b"Body=%FF%FE&From=whatsapp%3A%2B447911123456&MessageSid=SMx", content_type=FORM)
@example(body=b"Body=\xff\xfe&MessageSid=SMy", content_type=FORM)
@example(body=b"--xyz\r\nContent-Disposition: form-data\r\n\r\n\xff\r\n--xyz--", content_type="multipart/form-data")
def test_whatsapp_inbound_refuses_malformed_forms(
    service: tuple[Companion, TestClient], body: bytes, content_type: str
) -> None:
    post(service, "/whatsapp/inbound", body, twilio_headers(PUBLIC, body, content_type))


@FUZZ
@given(body=whatsapp_status, content_type=st.sampled_from([FORM, FORM, *CONTENT_TYPES]))
@example(body=b"MessageSid=%FF&MessageStatus=failed&ErrorCode=%00", content_type=FORM)
def test_whatsapp_status_refuses_malformed_forms(
    service: tuple[Companion, TestClient], body: bytes, content_type: str
) -> None:
    post(service, "/whatsapp/status", body, twilio_headers(STATUS, body, content_type))


def test_the_fuzz_gets_past_the_door(service: tuple[Companion, TestClient]) -> None:
    """The authentication the fuzz uses is the real thing: a valid request is accepted on every endpoint."""
    _, hook = post(
        service,
        "/telegram/hook",
        json.dumps(message_update(100, 4242, "hello")).encode(),
        {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET, "Content-Type": "application/json"},
    )
    assert hook.status_code == 200
    body = slash_command("/companion", "clients", user_id="UFUZZ")
    _, slack = post(service, "/slack/events", body, sign(body, SLACK_SECRET, int(time.time())))
    assert slack.status_code == 200 and "isn't linked" in slack.text
    form = _form(inbound_message(message_sid="SM" + "b" * 32, from_=SAM, body="\u00e9t\u00e9"))
    _, whatsapp = post(service, "/whatsapp/inbound", form, twilio_headers(PUBLIC, form, FORM))
    assert whatsapp.status_code == 200
    status = _form(status_callback(message_sid="SM" + "a" * 32, status="read"))
    _, delivered = post(service, "/whatsapp/status", status, twilio_headers(STATUS, status, FORM))
    assert delivered.status_code == 204


# --- the body limit itself ----------------------------------------------------------------------


async def _echo(scope: Any, receive: Any, send: Any) -> None:
    """A tiny ASGI app that reads the whole body, then answers 200 with its length."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def _call(
    app: BodyLimit, chunks: list[bytes], headers: list[tuple[bytes, bytes]], *, stall: bool = False
) -> tuple[int, int]:
    """Drive ``app`` with a chunked body; returns (status, chunks the client supplied).

    With ``stall`` the client announces more body after the last chunk and then sends nothing.
    """
    supplied = 0

    async def receive() -> dict[str, Any]:
        nonlocal supplied
        if supplied == len(chunks):
            await asyncio.Event().wait()  # never set: a client that has gone quiet
        supplied += 1
        return {"type": "http.request", "body": chunks[supplied - 1], "more_body": stall or supplied < len(chunks)}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def main() -> None:
        await app({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive, send)

    asyncio.run(main())
    return sent[0]["status"], supplied


def test_a_declared_length_over_the_limit_is_refused_unread() -> None:
    status, supplied = _call(BodyLimit(_echo, max_bytes=10), [b"x" * 11], [(b"content-length", b"11")])
    assert (status, supplied) == (413, 0)
    assert _call(BodyLimit(_echo, max_bytes=10), [b"x"], [(b"content-length", b"1x")])[0] == 400
    assert _call(BodyLimit(_echo, max_bytes=10), [b"x" * 10], [(b"content-length", b"10")]) == (200, 1)


def test_a_chunked_body_stops_being_read_at_the_limit() -> None:
    status, supplied = _call(BodyLimit(_echo, max_bytes=10), [b"xxxx"] * 100, [])
    assert (status, supplied) == (413, 3)
    assert _call(BodyLimit(_echo, max_bytes=10), [b"xxxxx", b"xxxxx"], []) == (200, 2)


def test_a_body_that_takes_too_long_is_refused() -> None:
    """A slow-loris body, timed by an injected clock (calls: start, then one per read)."""
    trickle = iter([0.0, 0.0, 5.0, 31.0])  # the third chunk would arrive after the 30 s deadline
    assert _call(BodyLimit(_echo, timeout=30, clock=lambda: next(trickle)), [b"x"] * 3, []) == (408, 2)
    # A client that goes quiet is not waited for past the deadline: here 1 ms of it is left.
    quiet = iter([0.0, 0.0, 29.999])
    assert _call(BodyLimit(_echo, timeout=30, clock=lambda: next(quiet)), [b"x"], [], stall=True) == (408, 1)
    in_time = iter([0.0, 0.0, 29.0])
    assert _call(BodyLimit(_echo, timeout=30, clock=lambda: next(in_time)), [b"x", b"x"], []) == (200, 2)
