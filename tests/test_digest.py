"""The digest: golden renderings of fixture weeks, the rubric, isolation, formats and the chart.

Fixture weeks are played through the real engine (console chats and the
scheduler) with a frozen clock, so the digests are deterministic. To accept
an intended change of wording, run with UPDATE_GOLDEN=1 and review the diff
of tests/golden/.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from bot.cli import app
from bot.wiring import Companion
from dialogs.clock import FrozenClock
from dialogs.digest import CRITERIA, build_caseload, build_client_digest
from dialogs.digest_text import render_markdown
from scheduler.sweep import sweep
from storage import Client, Therapist
from tests.support import Chat, add_therapist, invite_code

GOLDEN = Path(__file__).parent / "golden"
TASK = (
    "/homework {name}\ntitle: Bus experiment\ntype: behavioural experiment\n"
    "what: ride the bus two stops without holding the rail\nwhen: mornings\nwhere: the 73 from the corner\n"
    "with whom: alone\nrecord: belief I'll faint, before and after\n"
    "rationale: you predict you'll faint on the bus; this tests it\nnudges: {nudges}"
)


def golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
    assert text + "\n" == path.read_text(encoding="utf-8"), f"digest differs from {path} (UPDATE_GOLDEN=1 to accept)"


def start_week(
    companion: Companion, clock: FrozenClock, name: str = "Sam", confidence: str = "8", nudges: str = "10am"
) -> Chat:
    """Dana sets the bus experiment on Monday; the client joins and accepts it."""
    dana = Chat(companion, "therapist", "Dana")
    code = invite_code(dana.send(f"/invite {name}"))
    dana.send(TASK.format(name=name, nudges=nudges))
    client = Chat(companion, "client", name.lower())
    for message in (f"/start {code}", "yes", "London", "6pm", "To find out whether I really faint", confidence, "9"):
        client.send(message)
    if confidence.isdigit() and int(confidence) < 7:
        client.send("yes")
    return client


def at(clock: FrozenClock, companion: Companion, day: int, hour: int, minute: int = 0) -> None:
    clock.set(datetime(2026, 11, day, hour, minute, tzinfo=UTC))
    sweep(db=companion.db, engine=companion.engine)


def debrief(
    client: Chat, happened: str, amount: str, *, surprised: str = "I didn't faint", learned: str = "It passes"
) -> None:
    for message in ("done", happened, surprised, "The first minute", learned, "80", "30", amount):
        client.send(message)


def digest_for(companion: Companion, name: str = "Sam") -> str:
    dana = Chat(companion, "therapist", "Dana")
    dana.open()  # what was waiting for Dana (joins, notices) is not part of the digest
    return dana.send(f"/digest {name}").strip()


def days(clock: FrozenClock, companion: Companion, first: int, last: int, client: Chat | None = None) -> None:
    """Sweep at 10:05 on each day, as the running service would (nudges go out; nothing is 'missed')."""
    for day in range(first, last + 1):
        at(clock, companion, day, 10, 5)
        if client is not None:
            client.open()


@pytest.fixture
def dana(sqlite_companion: Companion) -> Chat:
    add_therapist(sqlite_companion)
    return Chat(sqlite_companion, "therapist", "Dana")


def test_good_week(sqlite_companion: Companion, clock: FrozenClock, dana: Chat) -> None:
    sam = start_week(sqlite_companion, clock)
    for day in (24, 25, 26, 27, 28):
        days(clock, sqlite_companion, day, day, sam)
        debrief(sam, f"Rode two stops on the 73 at 10am on the {day}th", "4" if day != 27 else "3")
    at(clock, sqlite_companion, 29, 9)
    golden("good_week", digest_for(sqlite_companion))


def test_partial_week(sqlite_companion: Companion, clock: FrozenClock, dana: Chat) -> None:
    sam = start_week(sqlite_companion, clock)
    days(clock, sqlite_companion, 24, 24, sam)
    debrief(sam, "One stop", "2", surprised="nothing", learned="skip")
    days(clock, sqlite_companion, 25, 28, sam)  # nudged daily, unanswered: followed up, then not reviewed
    at(clock, sqlite_companion, 29, 9)
    golden("partial_week", digest_for(sqlite_companion))


def test_silent_week(sqlite_companion: Companion, clock: FrozenClock, dana: Chat) -> None:
    start_week(sqlite_companion, clock)
    days(clock, sqlite_companion, 24, 29)
    golden("silent_week", digest_for(sqlite_companion))
    assert "silent for 5+ days" in dana.send("/digest")


def test_not_done_with_obstacles(sqlite_companion: Companion, clock: FrozenClock, dana: Chat) -> None:
    sam = start_week(sqlite_companion, clock, confidence="4")
    for day, obstacle, idea in (
        (24, "It rained and I stayed in", "Go on Saturday"),
        (26, "Too tired after work", "Mornings"),
    ):
        days(clock, sqlite_companion, day - 1 if day == 26 else day, day, sam)
        for message in ("didn't do it", obstacle, idea):
            sam.send(message)
    days(clock, sqlite_companion, 27, 28, sam)
    at(clock, sqlite_companion, 29, 9)
    golden("not_done_week", digest_for(sqlite_companion))
    overview = dana.send("/digest")
    assert "not done twice in a row" in overview and "low confidence" in overview


def test_risk_flag_week(sqlite_companion: Companion, clock: FrozenClock, dana: Chat) -> None:
    sam = start_week(sqlite_companion, clock)
    days(clock, sqlite_companion, 24, 24, sam)
    debrief(sam, "Rode two stops at 10am", "3")
    days(clock, sqlite_companion, 25, 25, sam)
    at(clock, sqlite_companion, 25, 21)
    sam.send("Honestly I feel like such a burden to everyone")
    sam.send("Should I stop taking my sertraline?")
    at(clock, sqlite_companion, 29, 9)
    text = digest_for(sqlite_companion)
    golden("risk_week", text)
    assert text.index("Risk and scope flags") < text.index("Homework #1")  # risk first
    assert dana.send("/digest").splitlines()[1].lstrip("• ").startswith("Sam")


def test_every_rubric_criterion_is_seen_met_and_missed(
    sqlite_companion: Companion, clock: FrozenClock, dana: Chat
) -> None:
    sam = start_week(sqlite_companion, clock, nudges="wed 10am")  # one nudge: Wednesday the 25th
    at(clock, sqlite_companion, 24, 10, 5)
    debrief(sam, "Rode two stops on the 73 at 10am", "4")  # unprompted, and meets everything
    at(clock, sqlite_companion, 25, 10, 5)
    at(clock, sqlite_companion, 26, 11)  # the nudge was followed up; answered late and thinly:
    clock.advance(minutes=30)
    for message in ("done", "ok", "skip", "skip", "nothing", "skip", "skip", "1"):
        sam.send(message)
    with sqlite_companion.db.unit_of_work() as session:
        client = session.exec(select(Client)).one()
        therapist = session.exec(select(Therapist)).one()
        model = build_client_digest(
            session, prompts=sqlite_companion.engine.prompts, client=client, therapist=therapist, now=clock.now()
        )
    (homework,) = model.homeworks
    seen = {(c.key, c.met) for d in homework.debriefs for c in d.criteria}
    assert seen == {(key, met) for key in CRITERIA for met in (True, False)}
    assert homework.on_time == 1 and homework.late == 1


def test_a_digest_never_contains_another_therapists_client(
    sqlite_companion: Companion, clock: FrozenClock, dana: Chat
) -> None:
    start_week(sqlite_companion, clock)
    add_therapist(sqlite_companion, "Eli")
    eli = Chat(sqlite_companion, "therapist", "Eli")
    assert "No client called “Sam" in eli.send("/digest Sam")
    assert "Sam" not in eli.send("/digest")
    with sqlite_companion.db.unit_of_work() as session:
        client = session.exec(select(Client)).one()
        other = session.exec(select(Therapist).where(Therapist.name == "Eli")).one()
        with pytest.raises(PermissionError):
            build_client_digest(
                session, prompts=sqlite_companion.engine.prompts, client=client, therapist=other, now=clock.now()
            )
        assert (
            build_caseload(session, prompts=sqlite_companion.engine.prompts, therapist=other, now=clock.now()).rows
            == ()
        )


def test_an_opted_out_client_shows_status_and_no_data(
    sqlite_companion: Companion, clock: FrozenClock, dana: Chat
) -> None:
    sam = start_week(sqlite_companion, clock)
    at(clock, sqlite_companion, 24, 10, 5)
    debrief(sam, "Rode two stops at 10am", "3")
    sam.send("/stop")
    text = digest_for(sqlite_companion)
    assert "Opted out" in text and "Rode two stops" not in text
    assert "opted out" in dana.send("/digest")


def test_the_full_text_is_one_command_away(sqlite_companion: Companion, clock: FrozenClock, dana: Chat) -> None:
    sam = start_week(sqlite_companion, clock)
    at(clock, sqlite_companion, 24, 10, 5)
    long_answer = "On the bus " + "and then I kept going " * 30 + "until the stop."
    debrief(sam, long_answer, "4")
    assert long_answer not in digest_for(sqlite_companion)  # trimmed for reading...
    assert long_answer in dana.send("/debrief Sam 1")  # ...and whole here
    assert "has no debrief #99" in dana.send("/debrief Sam 99")


def test_markdown_and_chart_from_the_cli(sqlite_companion: Companion, clock: FrozenClock, tmp_path: Path) -> None:
    add_therapist(sqlite_companion)
    sam = start_week(sqlite_companion, clock)
    at(clock, sqlite_companion, 24, 10, 5)
    debrief(sam, "Rode two stops at 10am", "3")
    with sqlite_companion.db.unit_of_work() as session:
        model = build_client_digest(
            session,
            prompts=sqlite_companion.engine.prompts,
            client=session.exec(select(Client)).one(),
            therapist=session.exec(select(Therapist)).one(),
            now=clock.now(),
        )
    markdown = render_markdown(model, sqlite_companion.engine.prompts)
    assert markdown.startswith("# Digest for Sam") and "\n## Homework #1: Bus experiment" in markdown
    config = tmp_path / "config.yaml"
    config.write_text(f"database:\n  path: {sqlite_companion.settings.url.removeprefix('sqlite:///')}\n")
    chart = tmp_path / "sam.png"
    result = CliRunner().invoke(
        app, ["digest", "Sam", "--format", "md", "--chart", str(chart), "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert "# Digest for Sam" in result.output
    data = chart.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") == 640
    overview = CliRunner().invoke(app, ["digest", "--config", str(config)])
    assert overview.exit_code == 0 and "Caseload for Dana" in overview.output
    wrong = CliRunner().invoke(app, ["digest", "Nobody", "--config", str(config)])
    assert wrong.exit_code == 1


def test_earlier_weeks_trend_from_stored_criteria_and_legacy_debriefs_still_count(
    sqlite_companion: Companion, clock: FrozenClock, dana: Chat
) -> None:
    """A debrief stores the criteria it met when completed; the trend's earlier weeks read those, not the answers."""
    from storage import Debrief

    sam = start_week(sqlite_companion, clock)
    days(clock, sqlite_companion, 24, 24, sam)
    debrief(sam, "Rode two stops on the 73 at 10am", "4", surprised="skip")  # no surprise or learning given
    with sqlite_companion.db.unit_of_work() as session:
        stored = session.exec(select(Debrief)).one().criteria
    assert stored is not None and "concrete" in stored and "surprise_or_learning" in stored  # "It passes" learned

    def last_week_quality() -> float | None:
        clock.set(datetime(2026, 12, 3, 9, 0, tzinfo=UTC))  # the debrief is now in the trend, before the period
        with sqlite_companion.db.unit_of_work() as session:
            client = session.exec(select(Client)).one()
            therapist = session.exec(select(Therapist)).one()
            model = build_client_digest(
                session, prompts=sqlite_companion.engine.prompts, client=client, therapist=therapist, now=clock.now()
            )
        return next(p.quality for p in model.trend if p.debriefs)

    from_stored = last_week_quality()
    assert from_stored == len(stored) / len(CRITERIA)
    with sqlite_companion.db.unit_of_work() as session:  # a debrief from before criteria were stored
        row = session.exec(select(Debrief)).one()
        row.criteria = None
        session.add(row)
    assert last_week_quality() == from_stored  # judged from its answers instead
