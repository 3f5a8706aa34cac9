"""The prompts catalogue: every key the code uses exists, and homework types are well formed."""

from __future__ import annotations

import re
from pathlib import Path

from sqlmodel import select

import prompts
from bot.wiring import Companion
from channels.base import render_plain
from dialogs.messages import Option, Outbound
from storage import OutboxMessage
from tests.support import Chat, add_therapist, join

ROOT = Path(__file__).resolve().parent.parent
KEY = re.compile(r"""(?:\bsay|\bt|\.text|notify_therapist)\((?:[^()"]*?,\s*)?f?"([a-z_]+\.[a-z_.{}]+)\"""")


def used_keys() -> set[str]:
    keys: set[str] = set()
    for folder in ("dialogs", "channels", "bot"):
        for path in (ROOT / folder).rglob("*.py"):
            keys.update(KEY.findall(path.read_text(encoding="utf-8")))
    return keys


def test_every_key_used_in_code_exists() -> None:
    catalogue = prompts.load("en")
    keys = used_keys()
    assert len(keys) > 60  # the scan really found the code's keys
    missing = []
    for key in keys:
        if "{" in key:  # an f-string key: some expansion of its prefix must exist
            prefix = key.split("{", 1)[0]
            if not any(k.startswith(prefix) for k in catalogue._flat):
                missing.append(key)
        elif not catalogue.has(key):
            missing.append(key)
    assert not missing


def test_homework_types_have_labels_and_bounded_extras() -> None:
    catalogue = prompts.load("en")
    assert {"thought_record", "behavioural_experiment", "exposure", "activity_scheduling", "custom"} <= set(
        catalogue.homework_types
    )
    for kind in catalogue.homework_types.values():
        assert kind.label and kind.aliases
        for extra in kind.extras:
            assert extra.low < extra.high and extra.question.endswith("?")
    assert catalogue.homework_type("BE").key == "behavioural_experiment"  # type: ignore[union-attr]
    assert catalogue.homework_type("3").key == "exposure"  # type: ignore[union-attr]
    assert catalogue.homework_type("tarot") is None


def test_plain_rendering_of_choices_and_scales() -> None:
    yes_no = Outbound("Go ahead?", "choice", (Option("yes", "Yes"), Option("no", "No")))
    assert render_plain(yes_no) == "Go ahead?\n(Yes · No)"
    scale = Outbound("How sure?", "scale", tuple(Option(str(n), str(n)) for n in range(11)))
    assert render_plain(scale) == "How sure?\n(0–10)"
    assert render_plain(Outbound("Hi")) == "Hi"


def test_every_reply_records_the_sentence_it_came_from(sqlite_companion: Companion) -> None:
    """Outbox rows say which prompt key (and catalogue version) produced their text, for review and audits."""
    add_therapist(sqlite_companion)
    dana = Chat(sqlite_companion, "therapist", "Dana")
    join(sqlite_companion, dana, "Sam", "sam")
    with sqlite_companion.db.unit_of_work() as session:
        rows = session.exec(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        keys = [(row.prompt_key, row.prompt_version) for row in rows]
    version = sqlite_companion.engine.prompts.version
    assert ("join.consent", version) in keys and ("join.done", version) in keys
    assert ("notify.client_joined", version) in keys


def test_reminders_alerts_and_digests_record_their_template_too(sqlite_companion: Companion) -> None:
    from datetime import UTC, datetime

    from scheduler.sweep import sweep

    add_therapist(sqlite_companion)
    dana = Chat(sqlite_companion, "therapist", "Dana")
    sam = join(sqlite_companion, dana, "Sam", "sam")
    dana.send("/homework Sam\ntitle: Walk\nwhat: a walk\nnudges: 18:00")
    dana.send("save")
    sam.open()
    sam.send("it helps")
    sam.send("8")
    sam.send("8")
    sqlite_companion.clock.set(datetime(2026, 11, 23, 18, 0, tzinfo=UTC))  # type: ignore[attr-defined]
    sweep(db=sqlite_companion.db, engine=sqlite_companion.engine)
    sam.send("I want to kill myself")
    dana.send("/digest Sam")
    with sqlite_companion.db.unit_of_work() as session:
        keys = {row.prompt_key for row in session.exec(select(OutboxMessage)).all()}
    assert {"nudge.reminder", "safety.alert", "digest.header"} <= keys
