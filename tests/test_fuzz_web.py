"""Fuzzing every route under bot/web: hostile requests get a 4xx (or a harmless 2xx/3xx), never a 5xx or a stray write.

Every route the app serves from :mod:`bot.web` (the try-it demo at ``/`` and
``/demo/*``, the dashboard under ``/dashboard``, the ``/static`` files) is
fuzzed twice over:

* without valid credentials (no cookie, a forged or garbled one, a foreign
  Host, wrong methods and content types, junk bodies, garbage path
  parameters and query strings), and
* with a valid demo cookie (its client pane joined to the demo therapist)
  and a fresh, valid dashboard session whose CSRF secret the forms usually
  carry, so the fuzz reaches the handlers' logic with missing, extra,
  oversized and mistyped fields.

A demo cookie is "valid" whenever it is well-formed: the demo has no
accounts, any 32-hex-digit id is a browser's own demo (loopback only), so
only malformed ones count as forged here.

The rule checked for every request: no 5xx, and an answer within
``HANG_SECONDS``. A refused request (4xx) leaves every row of every table
exactly as it was (contents, not just counts: an UPDATE is a change too).
An accepted one (2xx or 3xx) may change only what its route legitimately
writes; per route (``ROUTES`` below):

* ``GET /``: the demo therapist (on the first visit) and the therapist
  pane's identity (each fresh demo id).
* ``POST /demo/send``: whatever a chat message may write through the engine
  (its dedupe row, conversation state, replies in the outbox, invites,
  clients and their identities, homework, plans, debriefs, logs, flags,
  notes, audit entries, sign-in links from ``/dashboard``), never a
  therapist.
* ``GET /demo/messages``: the outbox (fetched rows are marked sent).
* ``POST /demo/sweep`` and ``POST /demo/skip``: what a scheduler sweep writes.
* ``POST /demo/dashboard``: a sign-in link (and the demo therapist, first time).
* ``GET /dashboard/login``, ``GET /dashboard/clients/{id}/homework`` and ``/static``: nothing.
* ``POST /dashboard/login``: the link used, a session, an audit entry.
* ``POST /dashboard/logout``: the session ended, an audit entry.
* ``GET /dashboard`` and ``GET /dashboard/clients/{id}``: an audit entry.
* ``POST /dashboard/clients/{id}/homework``: the homework, its delivery
  (plan, conversation state, outbox) and an audit entry.
* ``POST /dashboard/alerts/{id}/ack``: the flag and an audit entry.

``test_every_web_route_is_fuzzed`` lists the app's routes, so a new route
without an entry here (and a fuzz test with valid credentials) fails.

CI runs a fixed, derandomized sample (about 40 examples per route and
test); a longer run:
``COMPANION_FUZZ_EXAMPLES=1000 .venv/bin/pytest -q -p no:cacheprovider tests/test_fuzz_web.py``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import quote, urlencode

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import event, example, given
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from sqlalchemy import inspect, text
from starlette.requests import cookie_parser

from bot.http import create_app
from bot.web._mount import STATIC
from bot.web.dashboard import COOKIE as SESSION_COOKIE
from bot.web.dashboard import OUTCOMES
from bot.web.demo import COOKIE as DEMO_COOKIE
from bot.wiring import Companion
from dialogs import signin
from dialogs.clock import FrozenClock
from storage import FlagLevel, Homework, SafetyFlag
from storage import queries as q
from storage.models import HOMEWORK_FIELDS
from tests.conftest import MONDAY, make_companion
from tests.fuzzing import HOSTILE as BASE_HOSTILE
from tests.fuzzing import fuzz_settings, json_strategies, mutate
from tests.fuzzing import junk_bodies as _junk
from tests.support import Chat, add_therapist, join

FUZZ: Final = fuzz_settings(40)
MAX_BODY: Final = 64 * 1024  # small, so "over the limit" bodies stay cheap to generate
HANG_SECONDS: Final = 20.0  # far beyond any honest answer on a busy machine; a hang fails instead of blocking CI
BASE: Final = "http://127.0.0.1"
METHODS: Final = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")
FORM: Final = "application/x-www-form-urlencoded"
JSON: Final = "application/json"
BOUNDARY: Final = "fuzzboundary"

# Placeholders a strategy draws and the test replaces with a live value made for that example.
OWN, OTHER, CSRF, LINK = "<own>", "<other>", "<csrf>", "<link>"

ENGINE_TABLES: Final = frozenset(
    {
        "auditentry",
        "client",
        "conversationstate",
        "debrief",
        "homework",
        "identity",
        "invite",
        "joinfailure",
        "llmusage",
        "logentry",
        "measureresponse",
        "measureschedule",
        "occasion",
        "outboxmessage",
        "processedinbound",
        "safetyflag",
        "safetyplan",
        "therapistnote",
        "webtoken",
    }
)
SWEEP_TABLES: Final = frozenset(
    {
        "auditentry",
        "conversationstate",
        "debrief",
        "homework",
        "identity",
        "occasion",
        "outboxmessage",
        "measureschedule",
        "measureresponse",
        "client",
    }
)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    writes: frozenset[str]  # what an accepted (2xx/3xx) request may change
    guarded: bool = True  # refused (4xx) without a valid cookie

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.path


def _route(method: str, path: str, *writes: str, guarded: bool = True) -> Route:
    return Route(method, path, frozenset(writes), guarded)


ROUTES: Final = (
    _route("GET", "/", "therapist", "identity", guarded=False),
    _route("POST", "/demo/send", *ENGINE_TABLES),
    _route("GET", "/demo/messages", "outboxmessage"),
    _route("POST", "/demo/sweep", *SWEEP_TABLES),
    _route("POST", "/demo/skip", *SWEEP_TABLES),
    _route("POST", "/demo/dashboard", "webtoken", "therapist"),
    _route("GET", "/dashboard/login"),  # guarded by the link token in the query
    _route("POST", "/dashboard/login", "webtoken", "auditentry"),
    _route("POST", "/dashboard/logout", "webtoken", "auditentry"),
    _route("GET", "/dashboard", "auditentry"),
    _route("GET", "/dashboard/clients/{client_id}", "auditentry"),
    _route("GET", "/dashboard/clients/{client_id}/homework"),
    _route(
        "POST",
        "/dashboard/clients/{client_id}/homework",
        "homework",
        "occasion",
        "conversationstate",
        "outboxmessage",
        "auditentry",
    ),
    _route("POST", "/dashboard/alerts/{flag_id}/ack", "safetyflag", "auditentry"),
    _route("POST", "/dashboard/clients/{client_id}/plan", "safetyplan", "outboxmessage", "auditentry"),
    _route("POST", "/dashboard/clients/{client_id}/measure", "measureschedule", "auditentry"),
    _route("POST", "/dashboard/homework/{homework_id}/reviewed", "homework", "auditentry"),
    _route("GET", "/static", guarded=False),  # the mounted files
)
BY_KEY: Final = {route.key: route for route in ROUTES}
FUZZED_WITH_AUTH: set[tuple[str, str]] = set()  # filled by @fuzzes at import time

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def fuzzes(*keys: tuple[str, str]) -> Callable[[F], F]:
    """Record that the decorated test fuzzes ``keys`` with valid credentials."""

    def register(test: F) -> F:
        assert all(key in BY_KEY for key in keys), keys
        FUZZED_WITH_AUTH.update(keys)
        return test

    return register


# --- strategies (the shapes as in tests/test_fuzz_http.py) ----------------------------------------

HOSTILE: Final = [*BASE_HOSTILE, "/invite Sam", "/dashboard", "yes", "in 5 days", "every day at 18:00"]
CONTENT_TYPES: Final = [
    JSON,
    "application/json; charset=latin-1",
    FORM,
    f"multipart/form-data; boundary={BOUNDARY}",
    "multipart/form-data",
    "text/plain",
    "application/octet-stream",
    "",
    "garbage/;;;=",
]

hostile_text, json_values = json_strategies(HOSTILE, text_size=60, max_leaves=10)
ascii_garbage = st.from_regex(r"[ -~]{0,40}", fullmatch=True)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


junk_bodies = _junk(json_values, nested=nested, max_body=MAX_BODY, binary=400)


def mostly(usual: st.SearchStrategy[T], other: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``usual`` three times in four (``st.one_of`` weighs its flattened branches equally, however nested)."""
    return st.integers(0, 3).flatmap(lambda i: other if i == 0 else usual)


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    """``base`` with slots deleted or replaced by arbitrary JSON, and sometimes extra fields (0–3 changes)."""
    return mutate(draw, base, json_values, changes=st.integers(0, 3), new_keys=hostile_text)


def _field(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def urlencoded(fields: Any) -> bytes:
    if not isinstance(fields, dict):
        return json.dumps(fields).encode()
    return urlencode({_field(k): _field(v) for k, v in fields.items()}).encode()


def multipart(fields: Any) -> bytes:
    """A well-formed multipart body (boundary ``BOUNDARY``), lone surrogates and all made bytes as best they go."""
    if not isinstance(fields, dict):
        fields = {"payload": fields}
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{_field(k)}"\r\n\r\n{_field(v)}\r\n'
        for k, v in fields.items()
    ]
    return ("".join(parts) + f"--{BOUNDARY}--\r\n").encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class Body:
    content: bytes
    content_type: str | None


def bodies(fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Body]:
    """``fields`` as a form or multipart (mostly); or as JSON, under a wrong type, or junk under any type."""
    return mostly(
        st.one_of(
            fields.map(lambda f: Body(urlencoded(f), FORM)),
            fields.map(lambda f: Body(urlencoded(f), FORM)),
            fields.map(lambda f: Body(multipart(f), f"multipart/form-data; boundary={BOUNDARY}")),
        ),
        st.one_of(
            st.builds(lambda f, ct: Body(json.dumps(f).encode(), ct), fields, st.sampled_from(CONTENT_TYPES)),
            st.builds(lambda f, ct: Body(urlencoded(f), ct), fields, st.sampled_from([None, *CONTENT_TYPES])),
            st.builds(Body, junk_bodies, st.sampled_from([None, *CONTENT_TYPES])),
        ),
    )


def json_bodies(fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Body]:
    """``fields`` as JSON (mostly), lone surrogates and all; or under a wrong type, as a form, or junk."""
    return mostly(
        st.one_of(
            fields.map(lambda f: Body(json.dumps(f).encode(), JSON)),
            fields.map(lambda f: Body(json.dumps(f).encode(), "application/json; charset=utf-8")),
        ),
        st.one_of(
            st.builds(lambda f, ct: Body(json.dumps(f).encode(), ct), fields, st.sampled_from(CONTENT_TYPES)),
            fields.map(lambda f: Body(urlencoded(f), FORM)),
            st.builds(Body, junk_bodies, st.sampled_from([JSON, *CONTENT_TYPES])),
        ),
    )


# A path parameter: our ids, other people's, missing ones, huge and negative ints, and not ids at all.
path_values = st.one_of(
    st.sampled_from([OWN, OWN, OTHER]),
    st.integers(-(2**80), 2**80).map(str),
    st.sampled_from(["0", "-1", "000001", "1e3", "0x10", "1.0", " 1", "١", "%00", "..", "9" * 400]),
    hostile_text.map(lambda s: quote(s, safe="")),
)
# A query string: a form-encoded dict, or raw text with broken %-escapes.
query_strings = st.one_of(
    st.just(""),
    st.dictionaries(hostile_text, hostile_text, max_size=3).map(lambda d: urlencode(d)),
    ascii_garbage.map(lambda s: quote(s, safe="=&%+;")),
    st.sampled_from(["%ff%fe=%c3%28", "a=1&a=2&a=3", "=", "&&&", "x=" + "%" * 20]),
)


def _a_demo_id(value: str) -> bool:
    """Whether the demo would read ``value`` as a demo id: any well-formed one is a browser's own demo, by design."""
    return re.fullmatch(r"[0-9a-f]{32}", cookie_parser(f"{DEMO_COOKIE}={value}").get(DEMO_COOKIE, "")) is not None


garbage_cookies = st.one_of(
    st.none(),
    ascii_garbage.filter(lambda v: not _a_demo_id(v)),
    st.sampled_from(["0" * 31, "0" * 33, "A" * 32, "g" * 32, '"' + "0" * 31 + '"', "x; companion_demo=1", "\\"]),
)


# --- the service ------------------------------------------------------------------------------------


class Web:
    """The service under fuzz and the ids it was set up with (a plain class: hypothesis prints its repr)."""

    def __init__(
        self, companion: Companion, client: TestClient, pool: ThreadPoolExecutor, tables: list[str], **ids: Any
    ) -> None:
        self.companion, self.client, self.pool, self.tables = companion, client, pool, tables
        self.demo: str = ids["demo"]  # a valid demo cookie
        self.dana: int = ids["dana"]  # the signed-in therapist
        self.sam: int = ids["sam"]  # Dana's client
        self.lee: int = ids["lee"]  # Other's client
        self.lee_flag: int = ids["lee_flag"]  # a safety flag of Other's client
        self.sam_homework: int = ids["sam_homework"]  # a homework of Dana's client
        self.lee_homework: int = ids["lee_homework"]  # a homework of Other's client
        self.session: tuple[str, str] | None = None  # Dana's live dashboard session: (cookie, CSRF secret)

    def now(self) -> Any:
        return self.companion.clock.now()

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example
        return f"Web(dana={self.dana}, sam={self.sam}, lee={self.lee})"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    """The demo (no platform configured) and a dashboard with Dana (client Sam) and Other (client Lee)."""
    tmp_path: Path = tmp_path_factory.mktemp("fuzzweb")
    companion = make_companion(
        f"sqlite:///{tmp_path / 'companion.db'}", FrozenClock(MONDAY), tmp_path, server={"max_body_bytes": MAX_BODY}
    )
    add_therapist(companion, "Dana")
    add_therapist(companion, "Other")
    join(companion, Chat(companion, "therapist", "Dana"), "Sam", "sam-phone")
    Chat(companion, "therapist", "Other").send("/invite Lee Private")
    with companion.db.unit_of_work() as session:
        dana, other = q.therapist_by_name(session, name="Dana"), q.therapist_by_name(session, name="Other")
        assert dana is not None and other is not None and dana.id is not None and other.id is not None
        sam = q.client_by_name(session, therapist_id=dana.id, name="Sam")
        lee = q.client_by_name(session, therapist_id=other.id, name="Lee Private")
        assert sam is not None and lee is not None and sam.id is not None and lee.id is not None
        ids = {"dana": dana.id, "sam": sam.id, "lee": lee.id}
        other_id = other.id
    ids["lee_flag"] = _flag(companion, client_id=ids["lee"], therapist_id=other_id)
    ids["sam_homework"] = _homework(companion, client_id=ids["sam"], therapist_id=ids["dana"])
    ids["lee_homework"] = _homework(companion, client_id=ids["lee"], therapist_id=other_id)
    app = create_app(companion, background=False)
    pool = ThreadPoolExecutor(max_workers=1)  # requests run here, so that one that hangs fails the test
    with TestClient(app, base_url=BASE, raise_server_exceptions=False, follow_redirects=False) as client:
        page = client.get("/")
        demo = page.cookies.get(DEMO_COOKIE)
        assert page.status_code == 200 and demo
        _join_demo(client, demo)
        with companion.db.engine.connect() as connection:
            tables = [n for n in inspect(connection).get_table_names() if n != "alembic_version"]
        yield Web(companion, client, pool, tables, demo=demo, **ids)
    pool.shutdown(wait=False, cancel_futures=True)
    companion.db.dispose()


def _join_demo(client: TestClient, demo: str) -> None:
    """The demo's client pane joins the demo therapist as Kim, so the fuzz reaches a client's dialogs too."""
    cookie = {"Cookie": f"{DEMO_COOKIE}={demo}"}

    def say(pane: str, words: str) -> None:
        message = {"pane": pane, "text": words, "id": f"setup-{pane}-{words}"}
        assert client.post("/demo/send", json=message, headers=cookie).status_code == 200

    say("therapist", "/invite Kim")
    shown = client.get("/demo/messages", params={"pane": "therapist"}, headers=cookie).json()["messages"]
    code = re.search(r"/start ([A-Z0-9]{8})", shown[-1]["text"])
    assert code
    for words in (f"/start {code.group(1)}", "yes", "London", "18:00"):
        say("client", words)


def _flag(companion: Companion, *, client_id: int, therapist_id: int) -> int:
    with companion.db.unit_of_work() as session:
        flag = SafetyFlag(
            client_id=client_id,
            therapist_id=therapist_id,
            level=FlagLevel.CRISIS,
            text="…",
            created_at=companion.clock.now(),
            reasons=["fuzz"],
        )
        session.add(flag)
        session.flush()
        assert flag.id is not None
        return flag.id


def _homework(companion: Companion, *, client_id: int, therapist_id: int) -> int:
    with companion.db.unit_of_work() as session:
        homework = Homework(
            client_id=client_id, therapist_id=therapist_id, title="Walk", created_at=companion.clock.now()
        )
        session.add(homework)
        session.flush()
        assert homework.id is not None
        return homework.id


def fresh_session(web: Web) -> tuple[str, str]:
    """A new dashboard session for Dana, as a sign-in link redeemed now: (cookie value, CSRF secret)."""
    with web.companion.db.unit_of_work() as session:
        link = fresh_link(web, session)
        started = signin.redeem_link(session, token=link, now=web.now(), session_ttl=timedelta(hours=12))
        assert started is not None and started[1].csrf_secret is not None
        return started[0], started[1].csrf_secret


def fresh_link(web: Web, session: Any = None) -> str:
    """A new, unused sign-in link token for Dana."""
    if session is None:
        with web.companion.db.unit_of_work() as own:
            return fresh_link(web, own)
    return signin.issue_link(session, therapist_id=web.dana, now=web.now(), ttl=timedelta(minutes=15))


def snapshot(web: Web) -> dict[str, int]:
    """Every table's full contents, hashed: an UPDATE shows as a change, not only an INSERT or a DELETE."""
    with web.companion.db.engine.connect() as connection:
        return {
            name: hash(tuple(tuple(row) for row in connection.execute(text(f'SELECT * FROM "{name}"'))))
            for name in web.tables
        }


def fill(path_value: str, values: dict[str, str]) -> str:
    """A placeholder path value replaced by its live value (anything else as drawn)."""
    return values.get(path_value, path_value)


def send(
    web: Web,
    route: Route,
    method: str,
    url: str,
    *,
    body: Body | None = None,
    cookies: dict[str, str | None] | None = None,
    host: str | None = None,
) -> Any:
    """One request, checked: no 5xx, no hang, a refusal writes nothing, an acceptance only what ``route`` may."""
    headers: dict[str, str] = {}
    if body is not None and body.content_type is not None:
        headers["Content-Type"] = body.content_type
    cookie = "; ".join(f"{name}={value}" for name, value in (cookies or {}).items() if value is not None)
    if cookie:
        headers["Cookie"] = cookie
    if host is not None:
        headers["Host"] = host
    web.client.cookies.clear()  # only the cookies this example chose
    before = snapshot(web)
    future = web.pool.submit(web.client.request, method, url, content=body.content if body else None, headers=headers)
    response = future.result(timeout=HANG_SECONDS)
    if currently_in_test_context():
        event(f"HTTP {response.status_code}")  # --hypothesis-show-statistics: how far the fuzz got
    assert response.status_code < 500, (method, url, response.status_code, response.text[:300])
    changed = {name for name, digest in snapshot(web).items() if before.get(name) != digest}
    if response.status_code >= 400:
        assert not changed, f"a refused request ({response.status_code}) changed {changed}"
    else:
        # Where the request really landed: a wrong method can reach the path's other route (GET and POST
        # /dashboard/login), and the client resolves dot segments ("/static/.." is "/").
        allowed = frozenset().union(*(r.writes for r in landed(method, response.request.url.path)))
        assert changed <= allowed, f"{method} {url} ({response.status_code}) changed {changed - allowed}"
    return response


def landed(method: str, path: str) -> list[Route]:
    """The routes serving ``method`` that match ``path``."""
    found = []
    for route in ROUTES:
        pattern = "/static/.*" if route.path == "/static" else re.sub(r"\{[a-z_]+\}", "[^/]+", route.path)
        if route.method == method and re.fullmatch(pattern, path):
            found.append(route)
    return found


def slash_redirect(response: Any) -> bool:
    """Starlette's redirect from a path with a trailing slash to the same path without it: no handler ran."""
    location = response.headers.get("location", "")
    return response.status_code == 307 and location.endswith(response.request.url.path.rstrip("/"))


def url(route: Route, path_value: str, query: str) -> str:
    path = route.path
    if route.path == "/static":
        path = f"/static/{path_value}"
    path = re.sub(r"\{[a-z_]+\}", lambda _: path_value, path)
    return f"{path}?{query}" if query else path


# --- the routes are all fuzzed ------------------------------------------------------------------------


def served_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves from bot.web; ("GET", prefix) for a mount."""
    try:  # newer FastAPI keeps included routers as such; this flattens them
        from fastapi.routing import iter_route_contexts

        routes: list[Any] = list(iter_route_contexts(app.routes))
    except ImportError:
        routes = list(app.routes)
    found: set[tuple[str, str]] = set()
    for route in routes:
        endpoint = getattr(route, "endpoint", None)
        if endpoint is None:  # a mount: only /static is one, and it is bot.web's
            found.add(("GET", route.path))
        elif endpoint.__module__.startswith("bot.web."):
            found.update((method, route.path) for method in route.methods)
    return found


def test_every_web_route_is_fuzzed(web: Web) -> None:
    served = served_routes(web.client.app)  # type: ignore[arg-type]
    assert served == set(BY_KEY), f"not fuzzed: {served - set(BY_KEY)}; gone: {set(BY_KEY) - served}"
    assert set(BY_KEY) == FUZZED_WITH_AUTH, f"no fuzz with valid credentials: {set(BY_KEY) - FUZZED_WITH_AUTH}"


# --- without valid credentials ------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
@FUZZ
@given(
    method=mostly(st.none(), st.sampled_from(METHODS)),  # None: the route's own method
    path_value=path_values,
    query=query_strings,
    body=bodies(mutated({"csrf": "x", "token": "x", "pane": "client", "text": "hi", "id": "x"})),
    demo_cookie=garbage_cookies,
    session_cookie=st.one_of(garbage_cookies, st.just("A" * 43)),
    host=st.one_of(st.none(), st.sampled_from(["evil.example", "127.0.0.1.evil.example", "", "[::1", "::::"])),
)
@example(  # "/dashboard/clients/0/": a 307 to "/dashboard/clients/0", not a handler
    method=None, path_value="0%2F", query="", body=None, demo_cookie=None, session_cookie=None, host=None
)
@example(  # "/static/..": the client resolves it to "/", the demo page
    method=None, path_value="..", query="", body=None, demo_cookie=None, session_cookie=None, host=None
)
def test_hostile_requests_without_valid_credentials_are_refused(
    web: Web,
    route: Route,
    method: str | None,
    path_value: str,
    query: str,
    body: Body | None,
    demo_cookie: str | None,
    session_cookie: str | None,
    host: str | None,
) -> None:
    """No cookie or a forged one, a foreign Host, any method and body: refused and nothing written."""
    path_value = fill(path_value, {OWN: str(web.sam), OTHER: str(web.lee)})
    cookies = {DEMO_COOKIE: demo_cookie, SESSION_COOKIE: session_cookie}
    response = send(
        web, route, method or route.method, url(route, path_value, query), body=body, cookies=cookies, host=host
    )
    if route.guarded:
        assert response.status_code >= 400 or slash_redirect(response)


# --- with a valid demo cookie ---------------------------------------------------------------------


@fuzzes(("POST", "/demo/send"))
@FUZZ
@given(
    fields=st.builds(
        lambda pane, text_, mid, rest: {"pane": pane, "text": text_, "id": mid, **rest},
        st.sampled_from(["therapist", "client", "therapist", "client", "nobody"]),
        hostile_text,
        st.one_of(st.uuids().map(str), st.uuids().map(str), hostile_text),
        st.dictionaries(hostile_text, json_values, max_size=2),
    ).flatmap(lambda f: st.one_of(st.just(f), mutated(f))),
    encoding=st.sampled_from(["json", "json", "json", "other"]),
    junk=mostly(st.none(), st.builds(Body, junk_bodies, st.sampled_from([JSON, *CONTENT_TYPES]))),
)
@example(fields={}, encoding="json", junk=Body(nested(20_000), JSON)).via("regression: RecursionError")
@example(fields={"pane": "client", "text": "/log \ud800", "id": "s1"}, encoding="json", junk=None).via(
    "regression: UnicodeEncodeError storing a joined client's log"
)
@example(fields={"pane": "therapist", "text": "/note Kim \ud800", "id": "s2"}, encoding="json", junk=None).via(
    "regression: UnicodeEncodeError storing a note"
)
@example(fields={"pane": "therapist", "text": "hi", "id": "\udfff"}, encoding="json", junk=None)
@example(fields={"pane": "therapist", "text": "hi", "id": "i" * 65}, encoding="json", junk=None)
def test_demo_send_with_a_valid_cookie(web: Web, fields: Any, encoding: str, junk: Body | None) -> None:
    if junk is not None:
        body = junk
    elif encoding == "json":
        body = Body(json.dumps(fields).encode(), JSON)
    else:
        body = Body(urlencoded(fields), FORM)
    send(web, BY_KEY["POST", "/demo/send"], "POST", "/demo/send", body=body, cookies={DEMO_COOKIE: web.demo})


@fuzzes(("GET", "/demo/messages"))
@FUZZ
@given(
    query=mostly(
        st.builds(
            lambda pane, after: urlencode({k: v for k, v in (("pane", pane), ("after", after)) if v is not None}),
            mostly(st.sampled_from(["therapist", "client"]), st.one_of(st.none(), hostile_text)),
            mostly(
                st.one_of(st.none(), st.integers(-5, 10_000).map(str)),
                st.one_of(st.integers(-(2**80), 2**80).map(str), hostile_text),
            ),
        ),
        query_strings,
    )
)
@example(query=f"pane=client&after={2**63}").via("regression: OverflowError")
@example(query=f"pane=therapist&after={-(2**70)}").via("regression: OverflowError")
@example(query=f"pane=therapist&after={2**63 - 1}")
def test_demo_messages_with_a_valid_cookie(web: Web, query: str) -> None:
    send(web, BY_KEY["GET", "/demo/messages"], "GET", f"/demo/messages?{query}", cookies={DEMO_COOKIE: web.demo})


@fuzzes(("GET", "/"), ("POST", "/demo/sweep"), ("POST", "/demo/skip"), ("POST", "/demo/dashboard"))
@pytest.mark.parametrize(
    "key", [("GET", "/"), ("POST", "/demo/sweep"), ("POST", "/demo/skip"), ("POST", "/demo/dashboard")]
)
@FUZZ
@given(
    body=json_bodies(json_values),
    query=query_strings,
    cookie=st.one_of(st.just("valid"), st.just("new")),
)
def test_demo_actions_with_a_valid_cookie(web: Web, key: tuple[str, str], body: Body, query: str, cookie: str) -> None:
    """The page, a sweep, a skip ahead and the sign-in hand-off, with any body; ``new`` is another browser's id."""
    route = BY_KEY[key]
    demo = web.demo if cookie == "valid" else os.urandom(16).hex()
    send(web, route, route.method, url(route, "", query), body=body, cookies={DEMO_COOKIE: demo})


# --- with a valid dashboard session ---------------------------------------------------------------


def signed(web: Web, *, link: bool = False) -> tuple[dict[str, str | None], dict[str, str]]:
    """A live session's cookies (a new one when the last was signed out or expired) and this example's values.

    With ``link``, a fresh unused sign-in link too. Reusing the session keeps the database, which every
    request snapshots twice, small in a long run.
    """
    with web.companion.db.unit_of_work() as session:
        live = web.session and signin.current_session(session, token=web.session[0], now=web.now())
    if not live:
        web.session = fresh_session(web)
    cookie, csrf = web.session
    values = {OWN: str(web.sam), OTHER: str(web.lee), CSRF: csrf}
    if link:
        values[LINK] = fresh_link(web)
    return {SESSION_COOKIE: cookie, DEMO_COOKIE: web.demo}, values


@fuzzes(
    ("GET", "/dashboard"), ("GET", "/dashboard/clients/{client_id}"), ("GET", "/dashboard/clients/{client_id}/homework")
)
@pytest.mark.parametrize(
    "key",
    [
        ("GET", "/dashboard"),
        ("GET", "/dashboard/clients/{client_id}"),
        ("GET", "/dashboard/clients/{client_id}/homework"),
    ],
)
@FUZZ
@given(
    path_value=mostly(st.just(OWN), path_values),
    query=st.one_of(
        query_strings,
        st.builds(
            lambda saved, outcome: urlencode({"saved": saved, "outcome": outcome}),
            st.one_of(st.integers(-(2**80), 2**80).map(str), hostile_text),
            st.one_of(st.sampled_from(OUTCOMES), hostile_text),
        ),
    ),
)
@example(path_value=str(2**63), query="").via("regression: OverflowError")
@example(path_value=str(-(2**70)), query="").via("regression: OverflowError")
@example(path_value="<own>", query=f"saved={2**70}&outcome=delivered")
def test_dashboard_pages_with_a_valid_session(web: Web, key: tuple[str, str], path_value: str, query: str) -> None:
    route = BY_KEY[key]
    cookies, values = signed(web)
    send(web, route, "GET", url(route, fill(path_value, values), query), cookies=cookies)


HOMEWORK: Final = {
    "csrf": CSRF,
    "title": "Bus ride",
    "what": "ride two stops",
    "type": "exposure",
    "when": "after school",
    "where": "the 38",
    "with_whom": "alone",
    "record": "a note",
    "rationale": "to learn",
    "due": "in 5 days",
    "nudges": "mon, wed 8am and 18:30",
    "warned": "1",
}
homework_fields = mostly(st.one_of(st.just(HOMEWORK), mutated(HOMEWORK)), mutated(HOMEWORK))


@fuzzes(("POST", "/dashboard/clients/{client_id}/homework"))
@FUZZ
@given(
    path_value=mostly(st.just(OWN), path_values),
    body=bodies(
        mostly(
            homework_fields,
            st.dictionaries(st.sampled_from([*HOMEWORK_FIELDS, "warned"]), hostile_text).map(
                lambda f: {"csrf": CSRF, **f}
            ),
        )
    ),
)
@example(path_value=str(2**63), body=Body(urlencode({"csrf": CSRF, "title": "x"}).encode(), FORM)).via(
    "regression: OverflowError"
)
@example(
    path_value=OWN, body=Body(multipart({**HOMEWORK, "csrf": "é"}), f"multipart/form-data; boundary={BOUNDARY}")
).via("regression: TypeError from hmac.compare_digest on a non-ASCII CSRF field")
def test_homework_form_with_a_valid_session(web: Web, path_value: str, body: Body) -> None:
    route = BY_KEY["POST", "/dashboard/clients/{client_id}/homework"]
    cookies, values = signed(web)
    body = Body(_fill_bytes(body.content, values), body.content_type)
    send(web, route, "POST", url(route, fill(path_value, values), ""), body=body, cookies=cookies)


def _fill_bytes(content: bytes, values: dict[str, str]) -> bytes:
    """Placeholders replaced in an encoded body (as they were encoded: raw, %-quoted or +-quoted)."""
    for placeholder, value in values.items():
        for encoded in (placeholder, quote(placeholder, safe=""), quote(placeholder, safe="").replace("%20", "+")):
            content = content.replace(encoded.encode(), value.encode())
    return content


@fuzzes(("POST", "/dashboard/alerts/{flag_id}/ack"))
@FUZZ
@given(
    path_value=mostly(st.just(OWN), path_values),
    body=bodies(mostly(st.just({"csrf": CSRF, "note": "called them"}), mutated({"csrf": CSRF, "note": "x"}))),
)
@example(path_value=str(2**63), body=Body(urlencode({"csrf": CSRF}).encode(), FORM)).via("regression: OverflowError")
@example(path_value=OWN, body=Body(urlencode({"csrf": "\x80", "note": "x"}).encode(), FORM)).via(
    "regression: TypeError from hmac.compare_digest on a non-ASCII CSRF field"
)
def test_alert_ack_with_a_valid_session(web: Web, path_value: str, body: Body) -> None:
    """``OWN`` is a new unacknowledged flag of Dana's client, ``OTHER`` one of another therapist's client."""
    route = BY_KEY["POST", "/dashboard/alerts/{flag_id}/ack"]
    cookies, values = signed(web)
    values |= {OWN: str(_flag(web.companion, client_id=web.sam, therapist_id=web.dana)), OTHER: str(web.lee_flag)}
    body = Body(_fill_bytes(body.content, values), body.content_type)
    send(web, route, "POST", url(route, fill(path_value, values), ""), body=body, cookies=cookies)


PLAN: Final = {"csrf": CSRF, "coping": "a walk", "people": "Alex: 07700 900123", "environment": "—"}
MEASURE: Final = {"csrf": CSRF, "instrument": "phq9", "cadence": "weekly"}
REVIEW: Final = {"csrf": CSRF, "note": "went well"}


@fuzzes(
    ("POST", "/dashboard/clients/{client_id}/plan"),
    ("POST", "/dashboard/clients/{client_id}/measure"),
    ("POST", "/dashboard/homework/{homework_id}/reviewed"),
)
@pytest.mark.parametrize(
    ("key", "fields"),
    [
        (("POST", "/dashboard/clients/{client_id}/plan"), PLAN),
        (("POST", "/dashboard/clients/{client_id}/measure"), MEASURE),
        (("POST", "/dashboard/homework/{homework_id}/reviewed"), REVIEW),
    ],
    ids=["plan", "measure", "reviewed"],
)
@FUZZ
@given(path_value=mostly(st.just(OWN), path_values), data=st.data())
def test_clinical_forms_with_a_valid_session(
    web: Web, key: tuple[str, str], fields: dict[str, str], path_value: str, data: st.DataObject
) -> None:
    """The safety plan, questionnaire and review forms; ``OWN``/``OTHER`` are Dana's and Other's client (homework)."""
    route = BY_KEY[key]
    body = data.draw(bodies(mostly(st.just(fields), mutated(fields))))
    cookies, values = signed(web)
    if "homework_id" in route.path:
        values |= {OWN: str(web.sam_homework), OTHER: str(web.lee_homework)}
    body = Body(_fill_bytes(body.content, values), body.content_type)
    send(web, route, "POST", url(route, fill(path_value, values), ""), body=body, cookies=cookies)


@fuzzes(("POST", "/dashboard/logout"), ("GET", "/dashboard/login"), ("POST", "/dashboard/login"))
@pytest.mark.parametrize(
    "key", [("POST", "/dashboard/logout"), ("GET", "/dashboard/login"), ("POST", "/dashboard/login")]
)
@FUZZ
@given(
    body=bodies(mutated({"csrf": CSRF, "token": LINK})),
    query=st.sampled_from(["token=" + quote(LINK)] * 3)
    | query_strings
    | st.builds(lambda t: "token=" + quote(t), hostile_text),
)
def test_sign_in_and_out_with_valid_credentials(web: Web, key: tuple[str, str], body: Body, query: str) -> None:
    """A live session and a fresh, unused sign-in link are on offer in every example; the fuzz garbles them."""
    route = BY_KEY[key]
    cookies, values = signed(web, link=True)
    body = Body(_fill_bytes(body.content, values), body.content_type)
    query = _fill_bytes(query.encode(), values).decode()
    send(web, route, route.method, url(route, "", query), body=body, cookies=cookies)


@fuzzes(("GET", "/static"))
@FUZZ
@given(
    path_value=st.one_of(
        st.sampled_from(sorted(p.name for p in STATIC.iterdir())),
        st.sampled_from(["", "..", "../_mount.py", "%2e%2e/_mount.py", "..%2f_mount.py", "%00", "style.css/.."]),
        path_values,
    ),
    query=query_strings,
)
def test_static_files_with_valid_credentials(web: Web, path_value: str, query: str) -> None:
    route = BY_KEY["GET", "/static"]
    cookies, _ = signed(web)
    response = send(web, route, "GET", url(route, path_value, query), cookies=cookies)
    assert "def mount" not in response.text  # nothing outside the static folder is served


# --- the fuzz gets past the door ------------------------------------------------------------------


def test_the_fuzz_gets_past_the_door(web: Web) -> None:
    """The credentials the fuzz uses are the real thing: a valid request is accepted on every route."""
    demo = {DEMO_COOKIE: web.demo}

    def ok(key: tuple[str, str], target: str, body: Body | None = None, **extra: Any) -> Any:
        response = send(web, BY_KEY[key], key[0], target, body=body, **extra)
        assert response.status_code in (200, 303), (target, response.status_code, response.text[:300])
        return response

    ok(("GET", "/"), "/", cookies=demo)
    ok(
        ("POST", "/demo/send"),
        "/demo/send",
        Body(b'{"pane":"therapist","text":"/invite Kim","id":"door"}', JSON),
        cookies=demo,
    )
    assert "Kim" in ok(("GET", "/demo/messages"), "/demo/messages?pane=therapist", cookies=demo).text
    ok(("POST", "/demo/sweep"), "/demo/sweep", Body(b"{}", JSON), cookies=demo)
    ok(("POST", "/demo/skip"), "/demo/skip", Body(b"{}", JSON), cookies=demo)
    assert (
        ok(("POST", "/demo/dashboard"), "/demo/dashboard", cookies=demo)
        .headers["location"]
        .startswith("/dashboard/login?token=")
    )
    ok(("GET", "/static"), "/static/style.css")
    link = fresh_link(web)
    ok(("GET", "/dashboard/login"), f"/dashboard/login?token={link}")
    signed_in = ok(("POST", "/dashboard/login"), "/dashboard/login", Body(urlencode({"token": link}).encode(), FORM))
    assert signed_in.headers["location"] == "/dashboard"
    cookies, values = signed(web)
    ok(("GET", "/dashboard"), "/dashboard", cookies=cookies)
    ok(("GET", "/dashboard/clients/{client_id}"), f"/dashboard/clients/{web.sam}", cookies=cookies)
    ok(("GET", "/dashboard/clients/{client_id}/homework"), f"/dashboard/clients/{web.sam}/homework", cookies=cookies)
    form = {"csrf": values[CSRF], "title": "Door", "what": "open it", "warned": "1"}
    saved = ok(
        ("POST", "/dashboard/clients/{client_id}/homework"),
        f"/dashboard/clients/{web.sam}/homework",
        Body(urlencode(form).encode(), FORM),
        cookies=cookies,
    )
    assert saved.status_code == 303
    flag = _flag(web.companion, client_id=web.sam, therapist_id=web.dana)
    ack = Body(urlencode({"csrf": values[CSRF], "note": "ok"}).encode(), FORM)
    assert (
        ok(
            ("POST", "/dashboard/alerts/{flag_id}/ack"), f"/dashboard/alerts/{flag}/ack", ack, cookies=cookies
        ).status_code
        == 303
    )
    with web.companion.db.unit_of_work() as session:
        acked = session.get(SafetyFlag, flag)
        assert acked is not None and acked.acknowledged_at is not None
    out = Body(urlencode({"csrf": values[CSRF]}).encode(), FORM)
    ok(("POST", "/dashboard/logout"), "/dashboard/logout", out, cookies=cookies)
