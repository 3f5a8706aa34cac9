"""The fake Twilio Messages API and webhook helpers, proven against the real twilio Python client."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from tests.fake_twilio import (
    DEFAULT_ACCOUNT_SID,
    DEFAULT_AUTH_TOKEN,
    FakeTwilioAPI,
    RedirectingHttpClient,
    inbound_message,
    signed_headers,
    status_callback,
)

SANDBOX = "whatsapp:+14155238886"
CLIENT = "whatsapp:+447700900123"
TEMPLATE = "HX" + "1" * 32
MESSAGES_PATH = f"/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}/Messages.json"
WEBHOOK_URL = "https://companion.example.org/whatsapp/inbound"


@pytest.fixture
def fake() -> Iterator[FakeTwilioAPI]:
    """A running fake, always stopped."""
    api = FakeTwilioAPI().start()
    try:
        yield api
    finally:
        api.stop()


def client_for(fake: FakeTwilioAPI, *, token: str = DEFAULT_AUTH_TOKEN, **http_kwargs: float | int) -> Client:
    """The real twilio Client, its HTTP redirected to the fake."""
    return Client(fake.account_sid, token, http_client=RedirectingHttpClient(fake.base_url, **http_kwargs))


# -- Messages.create -----------------------------------------------------------------------------


def test_a_body_message_is_recorded_and_answered_like_twilio(fake: FakeTwilioAPI) -> None:
    """A free-form message: 201, a queued SM… resource, and the form params recorded as sent."""
    message = client_for(fake).messages.create(from_=SANDBOX, to=CLIENT, body="hi – é")

    assert message.sid is not None and message.sid.startswith("SM") and len(message.sid) == 34
    assert message.status == "queued"
    assert (message.to, message.from_, message.body) == (CLIENT, SANDBOX, "hi – é")
    assert message.date_created is not None and message.date_created.tzinfo is not None
    assert fake.messages() == [{"To": CLIENT, "From": SANDBOX, "Body": "hi – é"}]
    assert fake.message_sids(CLIENT) == [message.sid]
    assert fake.bodies(CLIENT) == ["hi – é"]
    assert fake.bodies("whatsapp:+447700900999") == []
    [call] = fake.calls
    assert (call.method, call.path) == ("POST", MESSAGES_PATH)


def test_a_template_message_sends_content_variables_and_status_callback_verbatim(fake: FakeTwilioAPI) -> None:
    """content_variables is a JSON *string* the client passes through; StatusCallback is a plain form field."""
    variables = json.dumps({"1": "Zoë", "2": "Thursday"})
    callback = "https://companion.example.org/whatsapp/status?outbox=7&try=1"
    client_for(fake).messages.create(
        from_=SANDBOX, to=CLIENT, content_sid=TEMPLATE, content_variables=variables, status_callback=callback
    )

    [sent] = fake.messages(to=CLIENT)
    assert sent == {
        "To": CLIENT,
        "From": SANDBOX,
        "ContentSid": TEMPLATE,
        "ContentVariables": variables,
        "StatusCallback": callback,
    }
    assert json.loads(sent["ContentVariables"]) == {"1": "Zoë", "2": "Thursday"}
    assert fake.bodies(CLIENT) == [f"[template {TEMPLATE}]"]


def test_content_variables_as_a_dict_are_mangled_by_the_client(fake: FakeTwilioAPI) -> None:
    """Passing a dict is not serialised to JSON: requests form-encodes its *keys* as repeated fields."""
    with pytest.raises(TwilioRestException) as caught:
        client_for(fake).messages.create(
            from_=SANDBOX, to=CLIENT, content_sid=TEMPLATE, content_variables={"1": "Sam", "2": "x"}
        )
    assert (caught.value.status, caught.value.code) == (400, 21656)
    assert fake.calls[0].params["ContentVariables"] == "2"  # "ContentVariables=1&ContentVariables=2"
    assert fake.messages() == []


def test_a_rate_limit_raises_twilio_rest_exception_and_is_not_retried(fake: FakeTwilioAPI) -> None:
    """429/20429 surfaces as TwilioRestException; the client makes exactly one request and nothing is sent."""
    fake.fail_next(status=429, code=20429)
    client = client_for(fake)
    with pytest.raises(TwilioRestException) as caught:
        client.messages.create(from_=SANDBOX, to=CLIENT, body="hi")

    assert (caught.value.status, caught.value.code) == (429, 20429)
    assert "Too Many Requests" in caught.value.msg
    assert len(fake.calls) == 1 and fake.messages() == []
    client.messages.create(from_=SANDBOX, to=CLIENT, body="again")  # the fault was used up
    assert fake.bodies(CLIENT) == ["again"]


def test_an_error_code_in_the_json_becomes_the_exception_code(fake: FakeTwilioAPI) -> None:
    """The exception's ``code`` is Twilio's error code from the body, not the HTTP status."""
    fake.fail_next(status=400, code=63016, message="Outside the allowed window", times=2)
    client = client_for(fake)
    for _ in range(2):
        with pytest.raises(TwilioRestException) as caught:
            client.messages.create(from_=SANDBOX, to=CLIENT, body="hi")
        assert (caught.value.status, caught.value.code) == (400, 63016)
        assert caught.value.uri.endswith("/Messages.json") and caught.value.method == "POST"
    client.messages.create(from_=SANDBOX, to=CLIENT, body="third")
    assert fake.bodies(CLIENT) == ["third"]


def test_a_hang_past_the_timeout_raises_requests_read_timeout(fake: FakeTwilioAPI) -> None:
    """A read timeout is ``requests.exceptions.ReadTimeout`` (an OSError), NOT a TwilioException.

    The message was still accepted by the fake, as Twilio may have queued it: a retry could send twice.
    """
    fake.hang_next(5)
    client = client_for(fake, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout) as caught:
        client.messages.create(from_=SANDBOX, to=CLIENT, body="slow")

    assert time.monotonic() - started < 2
    assert isinstance(caught.value, requests.exceptions.Timeout | OSError)
    assert not isinstance(caught.value, TwilioException)
    assert fake.bodies(CLIENT) == ["slow"]


def test_max_retries_does_not_retry_a_timed_out_post(fake: FakeTwilioAPI) -> None:
    """urllib3 never retries a read timeout on POST, so ``max_retries`` cannot cause a duplicate send."""
    fake.hang_next(5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        client_for(fake, timeout=0.3, max_retries=3).messages.create(from_=SANDBOX, to=CLIENT, body="once")
    assert len(fake.calls) == 1


def test_wrong_credentials_get_401_code_20003(fake: FakeTwilioAPI) -> None:
    """A wrong auth token, or a wrong account SID, is 401 with Twilio's 20003 "Authenticate"."""
    with pytest.raises(TwilioRestException) as caught:
        client_for(fake, token="wrong-token").messages.create(from_=SANDBOX, to=CLIENT, body="hi")
    assert (caught.value.status, caught.value.code) == (401, 20003)

    other = Client("AC" + "1" * 32, DEFAULT_AUTH_TOKEN, http_client=RedirectingHttpClient(fake.base_url))
    with pytest.raises(TwilioRestException) as caught:
        other.messages.create(from_=SANDBOX, to=CLIENT, body="hi")
    assert (caught.value.status, caught.value.code) == (401, 20003)
    assert fake.messages() == [] and len(fake.calls) == 2


def test_faults_wait_for_an_authenticated_request(fake: FakeTwilioAPI) -> None:
    """An unauthenticated request gets its 401 and leaves the queued fault for the next real create."""
    fake.fail_next(status=503, code=20503, message="Service Unavailable")
    with pytest.raises(TwilioRestException) as caught:
        client_for(fake, token="wrong-token").messages.create(from_=SANDBOX, to=CLIENT, body="hi")
    assert caught.value.status == 401
    with pytest.raises(TwilioRestException) as caught:
        client_for(fake).messages.create(from_=SANDBOX, to=CLIENT, body="hi")
    assert (caught.value.status, caught.value.code) == (503, 20503)


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"from_": SANDBOX, "to": CLIENT}, 21619),  # neither Body nor ContentSid
        ({"to": CLIENT, "body": "hi"}, 21603),  # no From
        ({"from_": "+14155238886", "to": CLIENT, "body": "hi"}, 21910),  # SMS From, WhatsApp To
        ({"from_": SANDBOX, "to": "+447700900123", "body": "hi"}, 21910),  # WhatsApp From, SMS To
        ({"from_": SANDBOX, "to": "whatsapp:07700900123", "body": "hi"}, 21211),  # not E.164
        ({"from_": SANDBOX, "to": CLIENT, "body": "x" * 1601}, 21617),
        ({"from_": SANDBOX, "to": CLIENT, "content_sid": TEMPLATE, "content_variables": "{not json"}, 21656),
        ({"from_": SANDBOX, "to": CLIENT, "body": "hi", "status_callback": "/relative"}, 21609),
    ],
)
def test_requests_twilio_would_refuse_get_400(fake: FakeTwilioAPI, kwargs: dict[str, str], code: int) -> None:
    """Cheap validation, with Twilio's error codes."""
    with pytest.raises(TwilioRestException) as caught:
        client_for(fake).messages.create(**kwargs)
    assert (caught.value.status, caught.value.code) == (400, code)
    assert fake.messages() == []


def test_other_paths_are_404_with_twilio_error_json(fake: FakeTwilioAPI) -> None:
    """Any other endpoint is a 404 whose body is Twilio's error JSON."""
    client = client_for(fake)
    response = client.request("GET", f"https://api.twilio.com/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}/Calls.json")
    assert response.status_code == 404
    assert json.loads(response.text)["code"] == 20404
    assert fake.calls[0].method == "GET"


def test_a_regional_edge_host_is_redirected_too(fake: FakeTwilioAPI) -> None:
    """``edge``/``region`` give api.dublin.ie1.twilio.com, still a twilio.com host."""
    client = Client(
        fake.account_sid,
        fake.auth_token,
        region="ie1",
        edge="dublin",
        http_client=RedirectingHttpClient(fake.base_url),
    )
    client.messages.create(from_=SANDBOX, to=CLIENT, body="from Dublin")
    assert fake.bodies(CLIENT) == ["from Dublin"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.twilio.com/2010-04-01/A.json?x=1", "http://127.0.0.1:9/base/2010-04-01/A.json?x=1"),
        ("https://messaging.twilio.com/v1/Services", "http://127.0.0.1:9/base/v1/Services"),
        ("https://api.dublin.ie1.twilio.com/2010-04-01", "http://127.0.0.1:9/base/2010-04-01"),
        ("https://API.Twilio.com:443/x", "http://127.0.0.1:9/base/x"),
        ("https://eviltwilio.com/x", "https://eviltwilio.com/x"),
        ("https://twilio.com.example.org/x", "https://twilio.com.example.org/x"),
        ("https://example.org/media/1.jpg", "https://example.org/media/1.jpg"),
    ],
)
def test_rewrite_touches_only_twilio_hosts(url: str, expected: str) -> None:
    """Exactly twilio.com and its subdomains move to base_url (whose path is kept as a prefix)."""
    assert RedirectingHttpClient("http://127.0.0.1:9/base/").rewrite(url) == expected


def test_redirecting_client_rejects_a_relative_base_url() -> None:
    """A base URL without scheme and host is a mistake, caught at construction."""
    with pytest.raises(ValueError):
        RedirectingHttpClient("127.0.0.1:8080")


# -- lifecycle -----------------------------------------------------------------------------------


def test_stop_cuts_a_hang_short_and_closes_the_port() -> None:
    """``stop()`` answers a hung request at once; afterwards nothing listens."""
    with FakeTwilioAPI() as fake:
        fake.hang_next(30)
        client = client_for(fake, timeout=5)
        outcome: list[object] = []
        worker = threading.Thread(
            target=lambda: outcome.append(client.messages.create(from_=SANDBOX, to=CLIENT, body="late").sid)
        )
        worker.start()
        deadline = time.monotonic() + 2
        while not fake.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        base_url = fake.base_url
    worker.join(timeout=2)
    assert not worker.is_alive() and len(outcome) == 1
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(base_url + MESSAGES_PATH, timeout=0.5)


# -- what Twilio sends to the app ----------------------------------------------------------------


def test_signed_headers_validate_only_for_the_same_url_params_and_token() -> None:
    """The signature is Twilio's HMAC-SHA1 over URL + sorted params, keyed by the auth token."""
    params = inbound_message(message_sid="SM" + "a" * 32, body="done: 7/10")
    headers = signed_headers(WEBHOOK_URL, params, DEFAULT_AUTH_TOKEN)
    signature = headers["X-Twilio-Signature"]
    validator = RequestValidator(DEFAULT_AUTH_TOKEN)

    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert validator.validate(WEBHOOK_URL, params, signature) is True
    assert validator.validate(WEBHOOK_URL + "?x=1", params, signature) is False
    assert validator.validate("http://companion.example.org/whatsapp/inbound", params, signature) is False
    assert validator.validate(WEBHOOK_URL, {**params, "Body": "done: 8/10"}, signature) is False
    assert validator.validate(WEBHOOK_URL, {**params, "Extra": ""}, signature) is False
    assert RequestValidator("another-token").validate(WEBHOOK_URL, params, signature) is False


def test_inbound_message_has_the_whatsapp_webhook_fields() -> None:
    """An incoming WhatsApp message, with media fields when asked for."""
    sid = "MM" + "b" * 32
    params = inbound_message(message_sid=sid, body="", num_media=2)
    assert params["MessageSid"] == params["SmsMessageSid"] == params["SmsSid"] == sid
    assert (params["From"], params["To"], params["WaId"]) == (CLIENT, SANDBOX, "447700900123")
    assert (params["AccountSid"], params["NumMedia"], params["MessageType"]) == (DEFAULT_ACCOUNT_SID, "2", "image")
    assert params["MediaContentType1"] == "image/jpeg" and params["MediaUrl1"].startswith("https://api.twilio.com/")
    assert all(isinstance(value, str) for value in params.values())
    assert "MediaUrl0" not in inbound_message(message_sid=sid, body="hi")


def test_status_callback_fields() -> None:
    """A delivery report: ErrorCode is a string and present only for failures."""
    sid = "SM" + "c" * 32
    delivered = status_callback(message_sid=sid, status="delivered")
    assert (delivered["MessageSid"], delivered["MessageStatus"], delivered["To"]) == (sid, "delivered", CLIENT)
    assert delivered["From"] == SANDBOX and "ErrorCode" not in delivered
    failed = status_callback(message_sid=sid, status="undelivered", error_code=63016)
    assert failed["ErrorCode"] == "63016"
    headers = signed_headers(WEBHOOK_URL, failed, "tok")
    assert RequestValidator("tok").validate(WEBHOOK_URL, failed, headers["X-Twilio-Signature"])
