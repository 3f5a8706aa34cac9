"""The client's safety plan (Stanley & Brown's six steps): set by the therapist, read by the client, first in a crisis.

The therapist writes it with the client in session (``/plan NAME`` step by
step, or ``field: value`` lines; the Slack modal and the dashboard send the
same lines). The client reads it with ``/plan``. In a crisis reply the
client's own coping steps and the people they named come first, before the
configured resources (:func:`crisis_reply`, called by dialogs.guard). Every
step is the client's words, stored encrypted; reading and writing are audited.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Final

from sqlmodel import Session, select

from dialogs import access
from dialogs.clinical import require_client
from dialogs.messages import Outbound
from dialogs.timeparse import format_local
from dialogs.turn import Turn
from prompts import Prompts
from storage import Client, SafetyPlan, Therapist
from storage import queries as q
from storage.models import SAFETY_PLAN_FIELDS

DRAFT: Final = "plan_draft"
# The one-message form clears a step with one of these (the step-by-step form keeps it on "skip").
_CLEAR: Final = frozenset({"-", "—", "none", "clear"})
_ITEM_SPLIT: Final = re.compile(r"\s*(?:\n|;)\s*")


def plan_of(session: Session, client_id: int) -> SafetyPlan | None:
    return session.exec(select(SafetyPlan).where(SafetyPlan.client_id == client_id)).first()


def reviewed_at(session: Session, client_id: int) -> datetime | None:
    """When the client's plan was last reviewed (None: no plan), without decrypting its steps (the digest's need)."""
    return session.exec(select(SafetyPlan.reviewed_at).where(SafetyPlan.client_id == client_id)).first()


def items(value: str | None) -> list[str]:
    """A step's text as its items: one per line, or separated by “;” (how the one-line forms join lines)."""
    return [part for part in _ITEM_SPLIT.split(value or "") if part.strip()]


def field_of(prompts: Prompts, typed: str) -> str | None:
    """The plan step a therapist meant by ``typed`` ("coping", "people", "step 4"), or None."""
    for field in SAFETY_PLAN_FIELDS:
        if field == typed.strip().casefold().replace(" ", "_") or prompts.matches(f"plan_{field}", typed):
            return field
    label = " ".join(typed.casefold().split())
    return next((f for f in SAFETY_PLAN_FIELDS if prompts.text(f"plan.field.{f}").casefold() == label), None)


def render(prompts: Prompts, plan: SafetyPlan | Mapping[str, str | None]) -> str:
    """The six steps, numbered, each item on its own line (plain text: every channel shows it as written)."""
    lines: list[str] = []
    for n, field in enumerate(SAFETY_PLAN_FIELDS, start=1):
        value = plan.get(field) if isinstance(plan, Mapping) else getattr(plan, field)
        lines.append(prompts.text("plan.step_line", n=n, label=prompts.text(f"plan.field.{field}")))
        found = items(value)
        lines.extend(prompts.text("plan.item_line", text=i) for i in found)
        if not found:
            lines.append(prompts.text("plan.empty_step"))
    return "\n".join(lines)


def crisis_reply(
    session: Session, prompts: Prompts, client: Client, *, resources: str, therapist: str
) -> Outbound | None:
    """The crisis reply with the client's own plan first, or None when they have no coping steps or people in one.

    Reads only the database (no network), so the crisis path never waits.
    """
    plan = plan_of(session, client.id or 0)
    if plan is None:
        return None
    steps: list[str] = []
    for field, header in (("coping", "plan.crisis_coping"), ("people", "plan.crisis_people")):
        found = items(getattr(plan, field))
        if found:
            steps.append(prompts.text(header))
            steps.extend(prompts.text("plan.item_line", text=i) for i in found)
    if not steps:
        return None
    text = prompts.text("plan.crisis", steps="\n".join(steps), resources=resources, therapist=therapist)
    return Outbound(text, prompt_key="plan.crisis", prompt_version=prompts.version)


# --- the client -------------------------------------------------------------------------


def client_plan(turn: Turn, _rest: str) -> None:
    """``/plan`` from a client: their plan, or how to make one."""
    client = turn.client
    assert client is not None
    therapist = turn.session.get(Therapist, client.therapist_id)
    name = therapist.name if therapist else ""
    plan = plan_of(turn.session, client.id or 0)
    if plan is None:
        turn.say("plan.none_client", therapist=name)
        return
    turn.audit("plan.read", client, by="client")
    turn.say_text(turn.t("plan.mine_header", therapist=name) + "\n" + render(turn.prompts, plan), prompt="plan.mine")


# --- the therapist ----------------------------------------------------------------------


def therapist_plan(turn: Turn, rest: str) -> None:
    """``/plan NAME``: the plan so far, then each step in turn; with ``step: value`` lines after it: saved at once."""
    name_line, _, field_lines = rest.partition("\n")
    found = require_client(turn, name_line, turn.t("plan.usage"))
    if found is None:
        return
    client, _ = found
    plan = plan_of(turn.session, client.id or 0)
    if not field_lines.strip():
        if plan is not None:
            turn.audit("plan.read", client)
            header = turn.t("plan.show_header", client=client.name, when=_when(turn, plan.reviewed_at))
            turn.say_text(header + "\n" + render(turn.prompts, plan), prompt="plan.show")
        turn.goto(DRAFT, SAFETY_PLAN_FIELDS[0], client_id=client.id, draft={})
        _ask(turn, client, SAFETY_PLAN_FIELDS[0], plan)
        return
    draft: dict[str, str | None] = {}
    for line in field_lines.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        field = field_of(turn.prompts, key) if sep else None
        if field is None:
            _bad_field(turn, key)
            return
        value = value.strip()
        draft[field] = None if value.casefold() in _CLEAR else value
    save(turn, client, draft)


def _bad_field(turn: Turn, key: str) -> None:
    fields = ", ".join(turn.t(f"plan.field.{f}") for f in SAFETY_PLAN_FIELDS)
    turn.say("plan.bad_field", field=key.strip()[:40], fields=fields)


def _when(turn: Turn, moment: datetime) -> str:
    zone = turn.therapist.timezone if turn.therapist else "UTC"
    return format_local(moment, zone) or moment.isoformat()


def _ask(turn: Turn, client: Client, field: str, plan: SafetyPlan | None) -> None:
    value = getattr(plan, field) if plan is not None else None
    current = turn.t("plan.current", value="; ".join(items(value))) if value else ""
    turn.say(f"plan.ask.{field}", client=client.name, current=current, skip=turn.t("plan.skip_hint"))


def draft_step(turn: Turn) -> None:
    """One step's answer in the step-by-step form; "skip" keeps the step as it is. Saved after step 6."""
    assert turn.therapist is not None
    client = access.own_client(
        turn.session, therapist_id=turn.therapist.id or 0, client_id=int(turn.data.get("client_id") or 0)
    )
    field = turn.state.step
    if client is None or field not in SAFETY_PLAN_FIELDS:
        turn.idle()
        turn.say("therapist.cancelled")
        return
    turn.about = client.id
    draft = dict(turn.data.get("draft", {}))
    if not turn.is_("skip"):
        draft[field] = turn.text
    position = SAFETY_PLAN_FIELDS.index(field)
    if position + 1 < len(SAFETY_PLAN_FIELDS):
        nxt = SAFETY_PLAN_FIELDS[position + 1]
        turn.step(nxt, draft=draft)
        _ask(turn, client, nxt, plan_of(turn.session, client.id or 0))
        return
    turn.idle()
    save(turn, client, draft)


def save(turn: Turn, client: Client, draft: Mapping[str, str | None]) -> SafetyPlan:
    """Apply ``draft`` to the client's plan (creating it), mark it reviewed now, audit, tell both."""
    plan = store(turn.session, client=client, draft=draft, now=turn.now)
    turn.audit("plan.set", client, steps=len(draft))
    turn.say_text(turn.t("plan.saved", client=client.name) + "\n" + render(turn.prompts, plan), prompt="plan.saved")
    chat = q.latest_identity(turn.session, client_id=client.id)
    therapist = turn.session.get(Therapist, client.therapist_id)
    if chat is not None and therapist is not None:
        turn.send(chat, Outbound(turn.t("plan.told_client", therapist=therapist.name), prompt_key="plan.told_client"))
    return plan


def store(session: Session, *, client: Client, draft: Mapping[str, str | None], now: datetime) -> SafetyPlan:
    """Write ``draft``'s steps into the client's plan (the caller audits, with its own actor)."""
    plan = plan_of(session, client.id or 0)
    if plan is None:
        plan = SafetyPlan(client_id=client.id or 0, therapist_id=client.therapist_id, created_at=now, reviewed_at=now)
    for field, value in draft.items():
        if field in SAFETY_PLAN_FIELDS:
            setattr(plan, field, (value or "").strip() or None)
    plan.reviewed_at = now
    session.add(plan)
    session.flush()
    return plan
