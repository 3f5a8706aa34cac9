"""The Slack Block Kit digest, caseload and alert: Slack's limits, splitting, escaping and the text digest's content."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

import prompts
from channels.slack_blocks import (
    MESSAGE_CHARS,
    alert_blocks,
    caseload_blocks,
    digest_messages,
    escape,
)
from dialogs.digest import (
    CRITERIA,
    Caseload,
    CaseloadRow,
    ClientDigest,
    Criterion,
    DebriefView,
    FlagView,
    HomeworkView,
    WeekPoint,
    agenda,
)
from dialogs.digest_text import render_caseload_text, render_text

P = prompts.load("en")
TZ = "Europe/London"
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
START = NOW - timedelta(days=7)
Message = list[dict[str, Any]]


# --- building digests --------------------------------------------------------------------


def _criteria(*met: bool) -> tuple[Criterion, ...]:
    return tuple(Criterion(key, m) for key, m in zip(CRITERIA, met, strict=True))


def _debrief(id: int, days_ago: float, quantity: int = 3, **answers: Any) -> DebriefView:
    fields: dict[str, Any] = {
        "what_happened": "Walked to the corner shop at 6pm and bought milk, stayed 10 minutes",
        "surprised": "Nobody looked at me",
        "hard": "The first two minutes in the queue",
        "learned": "The anxiety peaked and then came down on its own",
        "ratings": {"distress_before": 70, "distress_after": 35},
        "criteria": _criteria(True, True, True, True, id % 2 == 0),
    }
    fields.update(answers)
    return DebriefView(
        id=id, when=NOW - timedelta(days=days_ago), kind="debrief", quantity=quantity, on_time=id % 3 != 0, **fields
    )


def _obstacle(id: int, days_ago: float) -> DebriefView:
    return DebriefView(
        id=id,
        when=NOW - timedelta(days=days_ago),
        kind="obstacle",
        quantity=None,
        on_time=True,
        obstacle="Work ran late and I was exhausted",
        would_help="Doing it at lunchtime instead",
    )


def _homework(id: int, debriefs: tuple[DebriefView, ...] = (), **overrides: Any) -> HomeworkView:
    fields: dict[str, Any] = {
        "id": id,
        "title": f"Shop visit {id}",
        "type_key": "exposure",
        "status": "open",
        "delivered": True,
        "given": ("what", "when", "where", "record"),
        "missing": ("with_whom", "rationale"),
        "own_words": "If I stay, the anxiety comes down and I learn I can cope",
        "confidence": 8,
        "smaller_wanted": False,
        "planned": 4,
        "debriefs": debriefs,
        "obstacles": (),
        "nudges": {"answered": len(debriefs), "sent": 1},
    }
    fields.update(overrides)
    return HomeworkView(**fields)


def _flag(id: int, level: str = "crisis", text: str = "I can't see a way out anymore") -> FlagView:
    return FlagView(
        id=id, level=level, reasons=("hopelessness",), when=NOW - timedelta(days=1), text=text, acknowledged_at=None
    )


def _digest(**overrides: Any) -> ClientDigest:
    fields: dict[str, Any] = {
        "client_id": 7,
        "client": "Sam",
        "status": "active",
        "timezone": TZ,
        "start": START,
        "end": NOW,
        "next_session": NOW + timedelta(days=1),
        "unreachable_since": None,
        "homeworks": (),
        "flags": (),
        "logs": (),
        "trend": (),
        "agenda": (),
    }
    fields.update(overrides)
    digest = ClientDigest(**fields)
    return dataclasses.replace(digest, agenda=agenda(digest))  # the real rules, from the model


def _trend() -> tuple[WeekPoint, ...]:
    return tuple(
        WeekPoint(
            start=NOW - timedelta(days=7 * (4 - w)),
            debriefs=w,
            quantity=2.5 + w / 4,
            quality=0.6 + w / 10 if w else None,
        )
        for w in range(4)
    )


def good_week() -> ClientDigest:
    debriefs = (_debrief(101, 5), _debrief(102, 3, quantity=4), _debrief(103, 1, quantity=2))
    return _digest(
        homeworks=(_homework(1, debriefs),), logs=((NOW - timedelta(days=2), "Slept better this week"),), trend=_trend()
    )


def crisis_week() -> ClientDigest:
    homework = _homework(2, (_debrief(201, 4),), obstacles=(_obstacle(202, 2),), confidence=5)
    return _digest(
        homeworks=(homework,), flags=(_flag(9), _flag(10, "concern", "Everything feels heavy")), trend=_trend()
    )


def huge_week() -> ClientDigest:
    long = "I went out and " + "it was a long and detailed story about the afternoon " * 40
    homeworks = tuple(
        _homework(
            h,
            tuple(
                _debrief(
                    100_000 + h * 100 + d,
                    6 - d / 2,
                    what_happened=long[:2000],
                    surprised=long[:2000],
                    hard=long[:2000],
                    learned=long[:2000],
                )
                for d in range(10)
            ),
        )
        for h in range(1, 41)
    )
    return _digest(homeworks=homeworks, flags=(_flag(9),), trend=_trend())


# --- checking shapes ---------------------------------------------------------------------


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _text_object(obj: dict[str, Any], kind: str, limit: int) -> str:
    assert obj["type"] == kind
    assert isinstance(obj["text"], str) and obj["text"].strip()
    assert _units(obj["text"]) <= limit
    return obj["text"]


def check(message: Message) -> None:
    """Slack's limits and Block Kit's shapes, as chat.postMessage enforces them."""
    json.dumps(message)  # plain JSON
    assert 1 <= len(message) <= 50
    assert message[0]["type"] == "header"
    assert message[-1]["type"] != "divider" and message[1:2] != [{"type": "divider"}]
    total = 0
    for block in message:
        kind = block["type"]
        assert kind in {"header", "section", "divider", "context", "actions"}
        if kind == "header":
            total += _units(_text_object(block["text"], "plain_text", 150))
        elif kind == "section":
            total += _units(_text_object(block["text"], "mrkdwn", 3000))
        elif kind == "context":
            assert 1 <= len(block["elements"]) <= 10
            total += sum(_units(_text_object(e, "mrkdwn", 3000)) for e in block["elements"])
        elif kind == "divider":
            assert block == {"type": "divider"}
    assert total <= MESSAGE_CHARS


def texts(messages: list[Message]) -> list[str]:
    """Every text in reading order: headers, sections, context elements."""
    out = []
    for message in messages:
        for block in message:
            if block["type"] in ("header", "section"):
                out.append(block["text"]["text"])
            elif block["type"] == "context":
                out.extend(e["text"] for e in block["elements"])
    return out


def mrkdwn(messages: list[Message]) -> str:
    return "\n".join(
        b["text"]["text"] if b["type"] == "section" else "\n".join(e["text"] for e in b["elements"])
        for m in messages
        for b in m
        if b["type"] in ("section", "context")
    )


def assert_mirrors(plain: str, messages: list[Message]) -> None:
    """Every line of the plain-text rendering appears, escaped, in the Slack one, in the same order."""
    slack = "\n".join(texts(messages)).replace("*", "")
    position = 0
    for line in plain.splitlines():
        wanted = escape(line.strip().removeprefix("• ").strip())
        if wanted:
            found = slack.find(wanted, position)
            assert found >= 0, f"missing or out of order: {wanted!r}"
            position = found + len(wanted)


# --- the client digest -------------------------------------------------------------------


def test_good_week_is_one_message_mirroring_the_text_digest() -> None:
    digest = good_week()
    messages = digest_messages(digest, P)
    assert len(messages) == 1
    check(messages[0])
    assert messages[0][0]["text"]["text"] == render_text(digest, P).splitlines()[0]
    assert_mirrors(render_text(digest, P), messages)
    kinds = [b["type"] for b in messages[0]]
    assert kinds.count("divider") == 1
    assert kinds[-1] == "context"  # the full-text hint is small print, last
    assert "/debrief Sam ID" in messages[0][-1]["elements"][0]["text"]
    body = mrkdwn(messages)
    assert "✓ all questions answered 3/3" in body and "✗ written close to the event 1/3" in body
    assert ">Ratings: distress before 70, distress after 35" in body  # labels from the homework type
    trend = next(b for b in messages[0] if b["type"] == "context" and "Trend" in b["elements"][0]["text"])
    assert trend["elements"][0]["text"] == "*" + P.text("digest.trend_header") + "*"


def test_each_debrief_is_its_own_section_with_the_clients_words_quoted() -> None:
    messages = digest_messages(good_week(), P)
    sections = [b["text"]["text"] for b in messages[0] if b["type"] == "section"]
    for id in (101, 102, 103):
        (section,) = [s for s in sections if f"(#{id})" in s]
        first, *said = section.split("\n")
        assert first.startswith("• *") and first.endswith("*")
        assert said and all(line.startswith(">") for line in said)
        assert any(line.startswith(">What happened: “Walked to the corner shop") for line in said)


def test_crisis_comes_first_in_the_first_message() -> None:
    digest = crisis_week()
    messages = digest_messages(digest, P)
    for message in messages:
        check(message)
    assert_mirrors(render_text(digest, P), messages)
    sections = [b for b in messages[0] if b["type"] == "section"]
    status, risk = sections[0]["text"]["text"], sections[1]["text"]["text"]
    assert status.startswith("Next session:")
    assert risk.startswith("*" + P.text("digest.risk_header") + "*")
    assert "*CRISIS* (#9)" in risk and "*[NOT acknowledged]*" in risk and "*concern* (#10)" in risk
    assert messages[0].index(sections[1]) < next(i for i, b in enumerate(messages[0]) if b["type"] == "divider")
    body = mrkdwn(messages)
    assert "didn't happen. Got in the way: “Work ran late and I was exhausted”" in body
    assert body.index("Check in on the") < body.index("Then: set the next homework")


def test_opted_out_client_shows_the_status_and_nothing_else() -> None:
    digest = _digest(status="stopped", next_session=None, homeworks=(_homework(3),), flags=(_flag(4),))
    messages = digest_messages(digest, P)
    assert len(messages) == 1
    check(messages[0])
    assert [b["type"] for b in messages[0]] == ["header", "section"]
    assert messages[0][1]["text"]["text"] == P.text("digest.opted_out")
    assert_mirrors(render_text(digest, P), messages)


def test_empty_week() -> None:
    digest = _digest(next_session=None)
    messages = digest_messages(digest, P)
    assert len(messages) == 1
    check(messages[0])
    assert_mirrors(render_text(digest, P), messages)
    body = mrkdwn(messages)
    assert "*" + P.text("digest.no_homework") + "*" in body
    assert P.text("digest.agenda.next") in body
    assert "Trend" not in body and "/debrief" not in body
    assert not any(b["type"] in ("divider", "context") for b in messages[0])


def test_homework_with_nothing_recorded_says_the_period_was_empty() -> None:
    digest = _digest(homeworks=(_homework(5, own_words=None), _homework(6, delivered=False)))
    messages = digest_messages(digest, P)
    check(messages[0])
    assert_mirrors(render_text(digest, P), messages)
    body = mrkdwn(messages)
    assert P.text("digest.empty_period") in body and P.text("digest.not_delivered") in body
    assert P.text("digest.own_words_missing") in body


def test_huge_digest_splits_into_several_messages_and_loses_nothing() -> None:
    digest = huge_week()
    messages = digest_messages(digest, P)
    assert len(messages) > 1
    for message in messages:
        check(message)
    assert_mirrors(render_text(digest, P), messages)
    everything = "\n".join(texts(messages))
    for homework in digest.homeworks:
        assert everything.count(f"Homework #{homework.id}:") == 1
        for debrief in homework.debriefs:
            assert everything.count(f"(#{debrief.id})") == 1
    assert len(re.findall(r"\(#1\d{5}\)", everything)) == 400
    # Answers are quoted short (the full text is one /debrief away), so no section comes near its limit.
    assert "…" in everything and "/debrief Sam ID" in everything
    # Risk in the first message; every later message is headed by the title, marked as continued.
    assert "*CRISIS* (#9)" in mrkdwn(messages[:1]) and "(#9)" not in mrkdwn(messages[1:])
    title = messages[0][0]["text"]["text"]
    parts = len(messages)
    assert all(m[0]["text"]["text"].endswith(f"(continued, {n}/{parts})") for n, m in enumerate(messages[1:], start=2))
    assert all(m[0]["text"]["text"].startswith(title[:40]) for m in messages)


def test_a_homework_heading_stays_with_its_first_debrief() -> None:
    for message in digest_messages(huge_week(), P):
        sections = [b["text"]["text"] for b in message if b["type"] == "section"]
        for n, text in enumerate(sections):
            if text.startswith("*Homework #"):
                assert n + 1 < len(sections) and "(#1" in sections[n + 1]


def test_an_overlong_text_splits_at_line_boundaries_across_consecutive_sections() -> None:
    logs = tuple((NOW - timedelta(hours=n), f"note {n:02d} " + "so much to say " * 30) for n in range(40))
    digest = _digest(logs=logs)
    messages = digest_messages(digest, P)
    for message in messages:
        check(message)
    assert_mirrors(render_text(digest, P), messages)
    sections = [b["text"]["text"] for m in messages for b in m if b["type"] == "section"]
    sections = [s for s in sections if "“note" in s]
    assert len(sections) > 1
    lines = [line for s in sections for line in s.split("\n")]
    assert all(line.startswith("• ") for line in lines[1:])  # whole lines only: none was cut
    assert [re.search(r"note (\d\d)", line).group(1) for line in lines[1:]] == [f"{n:02d}" for n in range(40)]  # type: ignore[union-attr]


def test_a_single_line_longer_than_a_section_is_cut_between_words() -> None:
    title = " ".join(f"w{n}&x" for n in range(2000))  # 11,890 characters, 14,000 once escaped
    digest = _digest(homeworks=(_homework(8, title=title),))
    messages = digest_messages(digest, P)
    for message in messages:
        check(message)
    words = " ".join(mrkdwn(messages).replace("*", "").split()).replace("&amp;", "&")
    assert " ".join(title.split()) in words
    assert "&a\n" not in mrkdwn(messages)  # never inside an entity


def test_a_long_client_name_shortens_the_header_but_keeps_the_full_title() -> None:
    digest = _digest(client="Alexandra " * 20)
    messages = digest_messages(digest, P)
    check(messages[0])
    header = messages[0][0]["text"]["text"]
    assert len(header) == 150 and header.endswith("…")
    title = render_text(digest, P).splitlines()[0]
    assert messages[0][1]["text"]["text"].split("\n")[0] == title  # in full, first thing under the header


def test_client_text_is_escaped_for_slack() -> None:
    nasty = "<script>alert(1)</script> & <!channel> <@U123>"
    debrief = _debrief(301, 2, what_happened=nasty, learned="R&D > theory")
    digest = _digest(
        client="Sam & <b>Co</b>",
        homeworks=(_homework(4, (debrief,), title=nasty),),
        flags=(_flag(11, text=nasty),),
        logs=((NOW, nasty),),
    )
    messages = digest_messages(digest, P)
    for message in messages:
        check(message)
    body = mrkdwn(messages)
    assert "<" not in body and ("&" not in body.replace("&amp;", "").replace("&lt;", "").replace("&gt;", ""))
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;!channel&gt;" in body
    assert "R&amp;D &gt; theory" in body and "&amp;amp;" not in body and "&amp;lt;" not in body
    assert "Sam &amp; &lt;b&gt;Co&lt;/b&gt;" in body
    assert messages[0][0]["text"]["text"].startswith("Digest for Sam & <b>Co</b>")  # plain_text needs no escaping
    assert all(b["text"]["verbatim"] for m in messages for b in m if b["type"] == "section")


def test_continuation_headers_use_the_prompt_when_the_catalogue_has_one() -> None:
    with (prompts.PROMPTS_DIR / "en.yaml").open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    data["digest"]["continued"] = "{title} ({part}/{parts})"
    messages = digest_messages(huge_week(), prompts.Prompts(data, "en"))
    title = messages[0][0]["text"]["text"]
    assert [m[0]["text"]["text"] for m in messages[1:]] == [
        f"{title} ({n}/{len(messages)})" for n in range(2, len(messages) + 1)
    ]


# --- the caseload ------------------------------------------------------------------------


def _row(n: int, attention: tuple[str, ...] = ()) -> CaseloadRow:
    return CaseloadRow(
        client=f"Client {n:03d}",
        status="active",
        homework=f"Homework {n}" if n % 2 else None,
        quantity=2.5,
        quality=0.8,
        last_contact=NOW - timedelta(days=n % 9),
        attention=attention,
    )


def test_caseload_keeps_the_order_and_shows_attention() -> None:
    rows = (_row(3, ("risk", "silent")), _row(1, ("opted_out",)), _row(2))
    caseload = Caseload(therapist="Dr Lee", timezone=TZ, now=NOW, rows=rows)
    messages = caseload_blocks(caseload, P)
    assert len(messages) == 1
    check(messages[0])
    assert_mirrors(render_caseload_text(caseload, P), messages)
    sections = [b["text"]["text"] for b in messages[0] if b["type"] == "section"]
    assert [s.split(":")[0] for s in sections] == ["• Client 003", "• Client 001", "• Client 002"]
    assert "Attention: *risk flag, silent for 5+ days*" in sections[0]
    assert "Attention: *opted out*" in sections[1] and "Attention" not in sections[2]


def test_a_large_caseload_splits_in_order() -> None:
    rows = tuple(_row(n, ("risk",) if n < 5 else ()) for n in range(120))
    caseload = Caseload(therapist="Dr Lee", timezone=TZ, now=NOW, rows=rows)
    messages = caseload_blocks(caseload, P)
    assert len(messages) >= 3
    for message in messages:
        check(message)
    names = re.findall(r"^• (Client \d{3}):", mrkdwn(messages), flags=re.MULTILINE)
    assert names == [row.client for row in rows]


def test_an_empty_caseload() -> None:
    messages = caseload_blocks(Caseload(therapist="Dr Lee", timezone=TZ, now=NOW, rows=()), P)
    check(messages[0])
    assert messages[0][1]["text"]["text"] == P.text("digest.no_clients")


# --- alerts ------------------------------------------------------------------------------


def test_alert_has_the_text_and_one_primary_ack_button() -> None:
    text = "URGENT: possible crisis for Sam (alert #12).\nThey wrote: “<script> & more”"
    blocks = alert_blocks(text, "12", P.text("safety.ack_button"))
    json.dumps(blocks)
    section, actions = blocks
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    escaped = "URGENT: possible crisis for Sam (alert #12).\nThey wrote: “&lt;script&gt; &amp; more”"
    assert section["text"]["text"] == escaped
    assert actions["type"] == "actions"
    (button,) = actions["elements"]
    assert button["type"] == "button" and button["style"] == "primary"
    assert button["action_id"] == "ack_alert" and button["value"] == "12"
    assert button["text"] == {"type": "plain_text", "text": "Acknowledge", "emoji": True}


def test_a_long_alert_stays_within_the_limits() -> None:
    blocks = alert_blocks("line of the alert\n" * 2000, "7", "Acknowledge " * 10)
    assert len(blocks) <= 50 and blocks[-1]["type"] == "actions"
    assert all(_units(b["text"]["text"]) <= 3000 for b in blocks[:-1])
    assert sum(_units(b["text"]["text"]) for b in blocks[:-1]) <= MESSAGE_CHARS
    assert len(blocks[-1]["elements"][0]["text"]["text"]) <= 75


@pytest.mark.parametrize(("value", "label"), [("", "Acknowledge"), ("7" * 2001, "Acknowledge"), ("7", " ")])
def test_an_alert_needs_a_value_and_a_label(value: str, label: str) -> None:
    with pytest.raises(ValueError):
        alert_blocks("URGENT", value, label)
