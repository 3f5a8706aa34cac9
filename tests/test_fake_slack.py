"""The fake Slack Web API and the signed-request helpers, proven against the real slack_sdk and slack_bolt."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import parse_qs

import pytest
from slack_bolt import App
from slack_bolt.request import BoltRequest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from tests.fake_slack import (
    RAW_UPLOAD,
    FakeSlackAPI,
    block_action,
    message_event,
    sign,
    slash_command,
    view_submission,
)

T = TypeVar("T")
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) + b"\x00\r\n\x1a\n\xff"
BLOCKS = [
    {"type": "section", "text": {"type": "mrkdwn", "text": "*Thought record* due today"}},
    {
        "type": "actions",
        "elements": [
            {"type": "button", "action_id": "done", "value": "42", "text": {"type": "plain_text", "text": "Done"}}
        ],
    },
]
MODAL = {
    "type": "modal",
    "callback_id": "debrief",
    "title": {"type": "plain_text", "text": "Debrief"},
    "submit": {"type": "plain_text", "text": "Save"},
    "blocks": [
        {
            "type": "input",
            "block_id": "mood",
            "label": {"type": "plain_text", "text": "Mood"},
            "element": {"type": "plain_text_input", "action_id": "value"},
        }
    ],
}


@pytest.fixture
def fake() -> Iterator[FakeSlackAPI]:
    api = FakeSlackAPI().start()
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def client(fake: FakeSlackAPI) -> WebClient:
    return WebClient(token=fake.token, base_url=fake.base_url)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine to completion (pytest-asyncio is not installed)."""
    return asyncio.run(coro)


def async_client(fake: FakeSlackAPI) -> AsyncWebClient:
    return AsyncWebClient(token=fake.token, base_url=fake.base_url)


# -- Web API ----------------------------------------------------------------------------------------


def test_base_url_ends_with_slash_and_server_stops() -> None:
    with FakeSlackAPI() as api:
        assert api.base_url.startswith("http://127.0.0.1:")
        assert api.base_url.endswith("/api/")
        url = api.base_url
    with pytest.raises(RuntimeError):
        _ = api.base_url
    with pytest.raises(urllib.error.URLError):
        WebClient(token="xoxb-fake", base_url=url, retry_handlers=[]).auth_test()


def test_auth_test_sync_and_async(fake: FakeSlackAPI, client: WebClient) -> None:
    response = client.auth_test()
    assert response["ok"] is True
    assert (response["user_id"], response["team_id"], response["bot_id"]) == ("UBOT", "T0001", "B0001")

    async def go() -> dict[str, Any]:
        return (await async_client(fake).auth_test()).data  # type: ignore[return-value]

    assert run(go())["user_id"] == "UBOT"
    assert [call.method for call in fake.calls] == ["auth.test", "auth.test"]


def test_wrong_or_missing_token_and_unknown_method(fake: FakeSlackAPI) -> None:
    with pytest.raises(SlackApiError) as wrong:
        WebClient(token="xoxb-wrong", base_url=fake.base_url).auth_test()
    assert wrong.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as missing:
        WebClient(base_url=fake.base_url).chat_postMessage(channel="C1", text="hi")
    assert missing.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as unknown:
        WebClient(token=fake.token, base_url=fake.base_url).api_call("chat.teleport")
    assert unknown.value.response["error"] == "unknown_method"
    assert fake.posted() == []


def test_post_message_with_blocks_is_recorded_with_blocks_decoded(fake: FakeSlackAPI, client: WebClient) -> None:
    first = client.chat_postMessage(channel="C42", text="Homework due", blocks=BLOCKS)
    second = client.chat_postMessage(channel="C42", text="Second", thread_ts=first["ts"])
    assert first["ts"] == "1700000000.000100"
    assert float(second["ts"]) > float(first["ts"])
    assert first["channel"] == "C42"
    assert first["message"]["text"] == "Homework due"
    assert first["message"]["blocks"] == BLOCKS
    posted = fake.posted("C42")
    assert posted[0] == {"channel": "C42", "text": "Homework due", "blocks": BLOCKS}
    assert posted[1]["thread_ts"] == first["ts"]
    assert fake.texts("C42") == ["Homework due", "Second"]
    assert fake.calls_to("chat.postMessage")[0].encoding == "json"

    # The same through a form-encoded body, where blocks travel as a JSON string.
    client.api_call("chat.postMessage", data={"channel": "C7", "text": "form", "blocks": json.dumps(BLOCKS)})
    assert fake.posted("C7")[0]["blocks"] == BLOCKS
    assert fake.calls_to("chat.postMessage")[-1].encoding == "form"


def test_post_message_to_a_user_lands_in_their_dm(fake: FakeSlackAPI, client: WebClient) -> None:
    opened = client.conversations_open(users="U123")
    assert opened["channel"]["id"] == "DU123"
    response = client.chat_postMessage(channel="U123", text="Hi Sam")
    assert response["channel"] == "DU123"
    assert fake.texts("U123") == fake.texts("DU123") == ["Hi Sam"]


def test_async_post_message(fake: FakeSlackAPI) -> None:
    async def go() -> None:
        web = async_client(fake)
        await web.chat_postMessage(channel="D1", text="one", blocks=BLOCKS)
        await web.chat_postMessage(channel="D1", text="two")

    run(go())
    assert fake.texts("D1") == ["one", "two"]
    assert fake.posted("D1")[0]["blocks"] == BLOCKS


def test_post_message_validation(fake: FakeSlackAPI, client: WebClient) -> None:
    with pytest.raises(SlackApiError) as no_text, pytest.warns(UserWarning):
        client.chat_postMessage(channel="C1", text="")
    assert no_text.value.response["error"] == "no_text"
    with pytest.raises(SlackApiError) as no_channel:
        client.chat_postMessage(channel="", text="hi")
    assert no_channel.value.response["error"] == "channel_not_found"
    divider = {"type": "divider"}
    client.chat_postMessage(channel="C1", text="fifty", blocks=[divider] * 50)
    with pytest.raises(SlackApiError) as too_many:
        client.chat_postMessage(channel="C1", text="fifty-one", blocks=[divider] * 51)
    assert too_many.value.response["error"] == "invalid_blocks"
    assert "no more than 50 items" in too_many.value.response["response_metadata"]["messages"][0]
    assert fake.texts("C1") == ["fifty"]


def test_chat_update_and_ephemeral(fake: FakeSlackAPI, client: WebClient) -> None:
    ts = client.chat_postMessage(channel="D9", text="Did you do it?", blocks=BLOCKS)["ts"]
    updated = client.chat_update(channel="D9", ts=ts, text="Thanks!", blocks=[])
    assert updated["ts"] == ts
    assert fake.message("D9", ts)["text"] == "Thanks!"  # type: ignore[index]
    with pytest.raises(SlackApiError) as missing:
        client.chat_update(channel="D9", ts="1.000001", text="x")
    assert missing.value.response["error"] == "message_not_found"
    ephemeral = client.chat_postEphemeral(channel="C1", user="U123", text="Only you can see this")
    assert ephemeral["message_ts"]
    assert fake.posted() == [{"channel": "D9", "text": "Did you do it?", "blocks": BLOCKS}]


def test_rate_limited_429_carries_retry_after_and_is_not_retried(fake: FakeSlackAPI, client: WebClient) -> None:
    fake.fail_next("chat.postMessage", retry_after=7)
    with pytest.raises(SlackApiError) as caught:
        client.chat_postMessage(channel="C1", text="hi")
    response = caught.value.response
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response["error"] == "ratelimited"
    assert len(fake.calls_to("chat.postMessage")) == 1  # slack_sdk does not retry 429s by default
    assert fake.posted() == []
    client.chat_postMessage(channel="C1", text="hi")  # the fault was used up
    assert fake.texts("C1") == ["hi"]


def test_rate_limited_429_async(fake: FakeSlackAPI) -> None:
    fake.fail_next("chat.postMessage", retry_after=3)

    async def go() -> SlackApiError:
        with pytest.raises(SlackApiError) as caught:
            await async_client(fake).chat_postMessage(channel="C1", text="hi")
        return caught.value

    error = run(go())
    assert error.response.status_code == 429
    assert error.response.headers["Retry-After"] == "3"
    assert len(fake.calls_to("chat.postMessage")) == 1


def test_ok_false_error(fake: FakeSlackAPI, client: WebClient) -> None:
    fake.fail_next("chat.postMessage", error="channel_not_found", times=2)
    with pytest.raises(SlackApiError) as caught:
        client.chat_postMessage(channel="C404", text="hi")
    assert caught.value.response.status_code == 200
    assert caught.value.response["error"] == "channel_not_found"

    async def go() -> str:
        with pytest.raises(SlackApiError) as caught:
            await async_client(fake).chat_postMessage(channel="C404", text="hi")
        return str(caught.value.response["error"])

    assert run(go()) == "channel_not_found"
    assert fake.posted() == []


def test_views_open_update_push(fake: FakeSlackAPI, client: WebClient) -> None:
    opened = client.views_open(trigger_id="T.1", view=MODAL)
    view_id = opened["view"]["id"]
    assert view_id.startswith("V")
    assert opened["view"]["callback_id"] == "debrief"
    client.views_update(view_id=view_id, view={**MODAL, "private_metadata": "task=7"})
    client.views_push(trigger_id="T.2", view=MODAL)
    assert fake.views == [MODAL, {**MODAL, "private_metadata": "task=7"}, MODAL]
    with pytest.raises(SlackApiError) as no_trigger:
        client.api_call("views.open", json={"view": MODAL})
    assert no_trigger.value.response["error"] == "invalid_arguments"
    with pytest.raises(SlackApiError) as long_title:
        client.views_open(trigger_id="T.3", view={**MODAL, "title": {"type": "plain_text", "text": "x" * 25}})
    assert long_title.value.response["error"] == "invalid_arguments"
    assert len(fake.views) == 3


def test_views_open_async(fake: FakeSlackAPI) -> None:
    async def go() -> str:
        return str((await async_client(fake).views_open(trigger_id="T.1", view=MODAL))["view"]["id"])

    assert run(go()).startswith("V")
    assert fake.views == [MODAL]


def test_files_upload_v2_lands_bytes_intact(fake: FakeSlackAPI, client: WebClient) -> None:
    response = client.files_upload_v2(
        channel="D123", file=PNG, filename="week.png", title="Your week", initial_comment="Here it is"
    )
    assert response["file"]["name"] == "week.png"
    assert response["file"]["mimetype"] == "image/png"
    assert [call.method for call in fake.calls] == [
        "files.getUploadURLExternal",
        RAW_UPLOAD,
        "files.completeUploadExternal",
    ]
    assert fake.calls_to("files.getUploadURLExternal")[0].params == {"filename": "week.png", "length": str(len(PNG))}
    (upload,) = fake.uploads
    assert upload["bytes"] == PNG
    assert (upload["filename"], upload["title"], upload["channel_id"]) == ("week.png", "Your week", "D123")
    assert upload["initial_comment"] == "Here it is"


def test_files_upload_v2_async(fake: FakeSlackAPI) -> None:
    async def go() -> None:
        await async_client(fake).files_upload_v2(channel="D5", file=PNG, filename="chart.png")

    run(go())
    (upload,) = fake.uploads
    assert upload["bytes"] == PNG
    assert (upload["title"], upload["channel_id"]) == ("chart.png", "D5")  # title defaults to the filename
    # The async client sends ``params=`` calls in the query string, not the body.
    assert fake.calls_to("files.completeUploadExternal")[0].encoding == "query"


def test_failed_raw_upload_surfaces_differently_sync_and_async(fake: FakeSlackAPI, client: WebClient) -> None:
    fake.fail_next(RAW_UPLOAD, error="upload failed", status=500)
    with pytest.raises(urllib.error.HTTPError):  # the sync client lets urllib's HTTPError escape
        client.files_upload_v2(channel="D1", file=PNG, filename="a.png")
    fake.fail_next(RAW_UPLOAD, error="upload failed", status=500)

    async def go() -> None:
        with pytest.raises(SlackRequestError):
            await async_client(fake).files_upload_v2(channel="D1", file=PNG, filename="a.png")

    run(go())
    assert fake.uploads == []
    assert fake.calls_to("files.completeUploadExternal") == []


def test_users_info_has_a_timezone(fake: FakeSlackAPI, client: WebClient) -> None:
    user = client.users_info(user="U123")["user"]
    assert user["id"] == "U123"
    assert user["tz"] == "Europe/London"
    assert user["tz_offset"] in (0, 3600)
    fake.set_user("U9", tz="America/New_York")

    async def go() -> dict[str, Any]:
        return (await async_client(fake).users_info(user="U9"))["user"]  # type: ignore[no-any-return]

    assert run(go())["tz"] == "America/New_York"


def test_wait_for(fake: FakeSlackAPI, client: WebClient) -> None:
    assert fake.wait_for(lambda: False, timeout=0.05) is False
    client.chat_postMessage(channel="C1", text="hi")
    assert fake.wait_for(lambda: fake.texts("C1") == ["hi"], timeout=1)


# -- What Slack sends to an app --------------------------------------------------------------------


def test_sign_verifies_with_slack_sdk() -> None:
    body = slash_command("/homework", "today")
    headers = sign(body, SECRET)
    verifier = SignatureVerifier(SECRET)
    timestamp, signature = headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"]
    assert signature.startswith("v0=")
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert verifier.is_valid(body, timestamp, signature) is True
    assert verifier.is_valid_request(body, headers) is True
    assert verifier.is_valid(body + b"&text=tampered", timestamp, signature) is False
    assert SignatureVerifier("another-secret").is_valid(body, timestamp, signature) is False
    stale = sign(body, SECRET, timestamp=int(time.time()) - 600)
    assert verifier.is_valid_request(body, stale) is False  # slack_sdk allows 5 minutes of skew
    assert sign(message_event("hi"), SECRET)["Content-Type"] == "application/json"


def test_request_bodies_have_slacks_shape() -> None:
    command = {k: v[0] for k, v in parse_qs(slash_command("homework", "list", user_id="U9").decode()).items()}
    assert (command["command"], command["text"], command["user_id"], command["trigger_id"]) == (
        "/homework",
        "list",
        "U9",
        "T.1",
    )
    action = json.loads(parse_qs(block_action("done", "42").decode())["payload"][0])
    assert action["type"] == "block_actions"
    assert action["actions"][0]["action_id"] == "done"
    assert action["actions"][0]["value"] == "42"
    values = {"mood": {"value": {"type": "plain_text_input", "value": "calmer"}}}
    submission = json.loads(parse_qs(view_submission("debrief", values, private_metadata="7").decode())["payload"][0])
    assert submission["view"]["state"]["values"] == values
    assert submission["view"]["private_metadata"] == "7"


def test_bolt_app_routes_the_signed_requests(fake: FakeSlackAPI, client: WebClient) -> None:
    """Bolt verifies the signatures, parses the bodies and calls back into the fake."""
    app = App(client=client, signing_secret=SECRET, process_before_response=True)  # calls auth.test
    seen: dict[str, Any] = {}

    @app.command("/homework")
    def on_command(ack: Any, command: dict[str, Any], client: WebClient) -> None:
        ack()
        client.views_open(trigger_id=command["trigger_id"], view=MODAL)

    @app.action("done")
    def on_done(ack: Any, body: dict[str, Any], action: dict[str, Any], client: WebClient) -> None:
        ack()
        client.chat_postMessage(channel=body["user"]["id"], text=f"Marked {action['value']} done")

    @app.view("debrief")
    def on_debrief(ack: Any, view: dict[str, Any], body: dict[str, Any]) -> None:
        seen["mood"] = view["state"]["values"]["mood"]["value"]["value"]
        seen["metadata"] = view["private_metadata"]
        seen["user"] = body["user"]["id"]
        ack()

    @app.event("message")
    def on_message(event: dict[str, Any], say: Any) -> None:
        say(f"You said: {event['text']}")

    def dispatch(body: bytes) -> int:
        return app.dispatch(BoltRequest(body=body.decode(), headers=sign(body, SECRET))).status

    assert fake.calls_to("auth.test")
    assert dispatch(slash_command("/homework", "", trigger_id="T.9")) == 200
    assert fake.calls_to("views.open")[0].params["trigger_id"] == "T.9"
    assert dispatch(block_action("done", "42", user_id="U77")) == 200
    assert fake.texts("U77") == ["Marked 42 done"]
    values = {"mood": {"value": {"type": "plain_text_input", "value": "calmer"}}}
    assert dispatch(view_submission("debrief", values, user_id="U77", private_metadata="task=7")) == 200
    assert seen == {"mood": "calmer", "metadata": "task=7", "user": "U77"}
    assert dispatch(message_event("I did it", channel_id="D55")) == 200
    assert fake.texts("D55") == ["You said: I did it"]
    forged = slash_command("/homework", "")
    assert app.dispatch(BoltRequest(body=forged.decode(), headers=sign(forged, "wrong"))).status == 401


def test_response_url_captures_respond(fake: FakeSlackAPI, client: WebClient) -> None:
    app = App(client=client, signing_secret=SECRET, process_before_response=True)

    @app.command("/homework")
    def on_command(ack: Any, respond: Any) -> None:
        ack()
        respond("Nothing due today")

    url = fake.response_url()
    body = slash_command("/homework", "", response_url=url)
    assert app.dispatch(BoltRequest(body=body.decode(), headers=sign(body, SECRET))).status == 200
    assert [r["payload"]["text"] for r in fake.responses] == ["Nothing due today"]
    assert fake.responses[0]["url"] == url
