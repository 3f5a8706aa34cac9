"""Homework as both sides see it: fields, specificity, and delivery to the client."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, Final

from sqlmodel import Session

from dialogs.history import supersede
from dialogs.messages import Outbound
from dialogs.nudges import parse_plan, plan
from dialogs.timeparse import parse_when, utc_to_local
from dialogs.turn import IDLE, DialogSettings
from prompts import Prompts
from storage import Client, ClientStatus, Homework, Therapist
from storage import queries as q
from storage.models import HOMEWORK_FIELDS

SPECIFICITY: Final = ("what", "when", "where", "with_whom", "record", "rationale")
"""The elements LeBeau et al. tie to compliance; the therapist is told which are missing."""

DETAIL_FIELDS: Final = ("what", "when", "where", "with_whom", "record", "due")

FIELD_ALIASES: Final[dict[str, str]] = {
    "title": "title",
    "name": "title",
    "type": "type",
    "kind": "type",
    "what": "what",
    "what exactly": "what",
    "task": "what",
    "when": "when",
    "where": "where",
    "with whom": "with_whom",
    "with_whom": "with_whom",
    "who": "with_whom",
    "with": "with_whom",
    "record": "record",
    "what to record": "record",
    "record how": "record",
    "how": "record",
    "rationale": "rationale",
    "why": "rationale",
    "due": "due",
    "due date": "due",
    "by": "due",
    "nudges": "nudges",
    "nudge times": "nudges",
    "reminders": "nudges",
    "reminder": "nudges",
    "reminder times": "nudges",
}


def field_name(typed: str) -> str | None:
    return FIELD_ALIASES.get(" ".join(typed.replace("_", " ").split()).casefold()) or (
        typed if typed in HOMEWORK_FIELDS else None
    )


def parse_due(text: str, *, now: datetime, timezone: str) -> date | None:
    """A due date typed by the therapist: the end of that day, in their time zone."""
    when = parse_when(f"{text} 23:59", now=now, tz=timezone)
    local = utc_to_local(when, timezone) if when is not None else None
    return local.date() if local is not None else None


def parse_nudges(text: str) -> str | None:
    """``"mon, wed 8am and 18:30"`` → ``"mon,wed 08:00,18:30"`` (days first, if any); None if unreadable."""
    parsed = parse_plan(text)
    if parsed is None:
        return None
    days, times = parsed
    return f"{days} {times}" if days else times


def split_nudges(value: str | None) -> tuple[str | None, str | None]:
    """The stored draft form back into (days, times)."""
    if not value:
        return None, None
    days, _, times = value.rpartition(" ")
    return days or None, times


def normalise_field(field: str, value: str, *, prompts: Prompts, now: datetime, timezone: str) -> str | None:
    """The stored form of a typed value, or None if it cannot be read.

    Dates and times are validated here so the draft only ever holds values
    that :func:`build_homework` can store.
    """
    if field == "type":
        found = prompts.homework_type(value)
        return found.key if found else None
    if field == "due":
        due = parse_due(value, now=now, timezone=timezone)
        return due.isoformat() if due else None
    if field == "nudges":
        return parse_nudges(value)
    return " ".join(value.split()) if field == "title" else value.strip()


def missing_elements(draft: Mapping[str, Any]) -> list[str]:
    return [f for f in SPECIFICITY if not draft.get(f)]


def details(prompts: Prompts, fields: Mapping[str, Any], *, keys: tuple[str, ...] = DETAIL_FIELDS) -> str:
    """The homework's given fields as "Label: value" lines."""
    lines = []
    for key in keys:
        value = fields.get(key)
        if value:
            if key == "type":
                value = prompts.type_label(str(value))
            lines.append(f"{prompts.text(f'field.{key}')}: {value}")
    return "\n".join(lines)


def as_fields(homework: Homework) -> dict[str, Any]:
    values = {f: getattr(homework, f) for f in HOMEWORK_FIELDS}
    values["due"] = homework.due.isoformat() if homework.due else None
    if homework.nudge_days and homework.nudges:
        values["nudges"] = f"{homework.nudge_days} {homework.nudges}"
    return values


def build_homework(*, draft: Mapping[str, Any], client: Client, now: datetime) -> Homework:
    assert client.id is not None
    return Homework(
        client_id=client.id,
        therapist_id=client.therapist_id,
        title=draft["title"],
        type=draft.get("type") or "custom",
        what=draft.get("what"),
        when=draft.get("when"),
        where=draft.get("where"),
        with_whom=draft.get("with_whom"),
        record=draft.get("record"),
        rationale=draft.get("rationale"),
        due=date.fromisoformat(draft["due"]) if draft.get("due") else None,
        nudge_days=split_nudges(draft.get("nudges"))[0],
        nudges=split_nudges(draft.get("nudges"))[1],
        created_at=now,
    )


def deliver_pending(
    session: Session, *, prompts: Prompts, settings: DialogSettings, client: Client, now: datetime
) -> tuple[str, list[tuple[str, str, Outbound]]]:
    """Send the client their oldest undelivered homework if their chat is free.

    Returns an outcome key (``delivered``, ``pending_join``, ``pending_busy``,
    ``pending_inactive`` or ``none``) and the messages to enqueue. Delivery
    starts the client's delivery flow (own words → confidence), so it only
    happens when that chat is idle: a homework set mid-debrief waits until
    the debrief ends, when the engine calls this again. Delivery plans the
    homework's nudges.
    """
    homework = q.undelivered_homework(session, client_id=client.id or 0)
    if homework is None:
        return "none", []
    if client.status == ClientStatus.INVITED:
        return "pending_join", []
    if client.status != ClientStatus.ACTIVE:
        return "pending_inactive", []
    identity = q.latest_identity(session, client_id=client.id)
    if identity is None:
        return "pending_join", []
    state = q.conversation(session, channel=identity.channel, address=identity.address, now=now)
    if state.flow != IDLE:
        return "pending_busy", []
    therapist = session.get(Therapist, client.therapist_id)
    assert therapist is not None
    intro = prompts.text(
        "delivery.intro", therapist=therapist.name, title=homework.title, details=details(prompts, as_fields(homework))
    )
    if homework.rationale:
        intro += "\n\n" + prompts.text("delivery.rationale", rationale=homework.rationale)
    homework.delivered_at = now
    session.add(homework)
    # The client's earlier homework is over: "done" now means this one (dialogs.history).
    supersede(session, client_id=client.id or 0, delivered=homework.id or 0, now=now)
    plan(session, homework=homework, client=client, settings=settings, now=now)
    state.flow, state.step, state.data = "delivery", "own_words", {"homework_id": homework.id}
    state.updated_at = now
    session.add(state)
    to = (identity.channel, identity.address)
    return "delivered", [
        (*to, Outbound(intro)),
        (*to, Outbound(prompts.text("delivery.ask_own_words"))),
    ]


def set_homework(
    session: Session,
    *,
    prompts: Prompts,
    settings: DialogSettings,
    client: Client,
    draft: Mapping[str, Any],
    now: datetime,
) -> tuple[Homework, str, list[tuple[str, str, Outbound]]]:
    """Save a homework from a therapist's draft (chat or dashboard) and deliver it if the client is free.

    Returns it, the outcome key for the therapist (``therapist.homework.<key>``:
    an older undelivered homework ahead of this one counts as ``pending_busy``)
    and the messages to enqueue. The caller audits, with its own actor.
    """
    homework = build_homework(draft=draft, client=client, now=now)
    session.add(homework)
    session.flush()
    outcome, messages = deliver_pending(session, prompts=prompts, settings=settings, client=client, now=now)
    return homework, "pending_busy" if outcome == "none" else outcome, messages
