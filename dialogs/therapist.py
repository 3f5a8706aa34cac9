"""Therapist commands: invite, clients, homework (with its draft flow), session, digest."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Final

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from dialogs import access, history, llm_steps, measures, review, safety_plan
from dialogs.digest import build_caseload
from dialogs.digest_text import render_caseload_text
from dialogs.homework import (
    details,
    field_name,
    missing_elements,
    normalise_field,
    set_homework,
)
from dialogs.messages import Outbound, mentioning
from dialogs.nudges import next_weekly
from dialogs.onboarding import join_links, new_code
from dialogs.timeparse import format_local, parse_clock_time, parse_when
from dialogs.turn import Turn, split_command
from storage import (
    Client,
    ClientStatus,
    CloseReason,
    Debrief,
    FlagLevel,
    Homework,
    HomeworkStatus,
    OutboxMessage,
    TherapistNote,
)
from storage import queries as q
from storage.models import HOMEWORK_FIELDS

DRAFT: Final = "homework_draft"
# Fields the conversational flow asks for; title and type cannot be skipped.
_REQUIRED: Final = ("title",)
# Platforms whose sent messages the companion can edit (an acknowledged alert loses its button there).
EDITABLE_CHANNELS: Final = ("telegram", "slack")


def idle(turn: Turn) -> None:
    command, rest = split_command(turn.text)
    if command is None:
        # Bare words work too ("clients", "invite Sam"): Slack and Telegram
        # users type commands both ways.
        head, _, tail = turn.text.partition(" ")
        if head.casefold() in COMMANDS:
            command, rest = head.casefold(), tail.strip()
    if command is None:
        turn.say("therapist.help")
        return
    handler = COMMANDS.get(command)
    if handler is None:
        turn.say("common.unknown_command", command=f"/{command}")
        return
    handler(turn, rest)


def _therapist_id(turn: Turn) -> int:
    assert turn.therapist is not None and turn.therapist.id is not None
    return turn.therapist.id


def _split_client(turn: Turn, rest: str) -> tuple[Client | None, str]:
    """The client whose name starts ``rest`` (longest match wins) and what follows it.

    Names may contain spaces ("Sam Lee"), so the split is by known names, and
    only this therapist's clients are candidates.
    """
    folded = rest.casefold()
    best: tuple[Client | None, str] = (None, rest)
    best_len = -1
    for client in access.own_clients(turn.session, therapist_id=_therapist_id(turn)):
        key = client.name_key
        starts = folded == key or folded.startswith((key + " ", key + "\n"))
        if starts and len(key) > best_len:
            best, best_len = (client, rest[len(key) :].strip()), len(key)
    return best


def _require_client(turn: Turn, rest: str, usage_key: str) -> tuple[Client, str] | None:
    if not rest.strip():
        turn.say("therapist.usage", usage=turn.t(usage_key))
        return None
    client, remainder = _split_client(turn, rest)
    if client is None:
        turn.say("therapist.no_such_client", name=rest.split("\n", 1)[0].strip()[:60])
        return None
    turn.about = client.id
    return client, remainder


def _id_arg(text: str) -> int | None:
    """``"#12"`` or ``"12"`` → 12; anything else → None."""
    match = re.fullmatch(r"#?(\d{1,9})", text.strip())
    return int(match.group(1)) if match else None


def _when(turn: Turn, value: object) -> str:
    if not isinstance(value, datetime):
        return turn.t("common.never")
    zone = turn.therapist.timezone if turn.therapist else "UTC"
    return format_local(value, zone) or value.isoformat()


# --- commands ----------------------------------------------------------------


def cmd_help(turn: Turn, _rest: str) -> None:
    turn.say("therapist.help")


def cmd_cancel(turn: Turn, _rest: str) -> None:
    turn.say("therapist.nothing_to_cancel")


def cmd_invite(turn: Turn, rest: str) -> None:
    name = " ".join(rest.split())
    if not name or len(name) > 80:
        turn.say("therapist.usage", usage=turn.t("therapist.invite.usage"))
        return
    therapist_id = _therapist_id(turn)
    client = access.own_client_named(turn.session, therapist_id=therapist_id, name=name)
    if client is not None and client.status != ClientStatus.INVITED and q.has_chat(turn.session, client_id=client.id):
        turn.say("therapist.invite.already_active", client=client.name)
        return
    if client is None:
        client = q.create_client(turn.session, therapist_id=therapist_id, name=name, now=turn.now)
    assert client.id is not None
    turn.about = client.id
    turn.audit("client.invite", client)
    for _attempt in range(5):  # a collision among 31^8 codes is rare; retry in a savepoint
        try:
            with turn.session.begin_nested():
                code = new_code()  # shown once, here; only its keyed hash is stored
                invite = q.create_invite(
                    turn.session, client_id=client.id, code=code, now=turn.now, ttl=turn.settings.invite_ttl
                )
            break
        except IntegrityError:
            continue
    else:  # pragma: no cover - astronomically unlikely
        raise RuntimeError("could not generate a unique invite code")
    turn.say(
        "therapist.invite.created",
        client=client.name,
        code=code,
        expires=_when(turn, invite.expires_at),
        links=join_links(turn.settings.join_links, code, turn.t),
    )


def cmd_clients(turn: Turn, _rest: str) -> None:
    clients = access.own_clients(turn.session, therapist_id=_therapist_id(turn))
    if not clients:
        turn.say("therapist.clients.empty")
        return
    turn.audit("caseload.read", clients=len(clients))
    lines = [turn.t("therapist.clients.header")]
    for client in clients:
        current = q.current_homework(turn.session, client_id=client.id or 0) or q.undelivered_homework(
            turn.session, client_id=client.id or 0
        )
        lines.append(
            turn.t(
                "therapist.clients.line",
                client=client.name,
                status=(
                    turn.t(
                        "therapist.clients.unreachable", status=client.status, since=_when(turn, client.unreachable_at)
                    )
                    if client.unreachable_at
                    else client.status
                ),
                homework=f"#{current.id} {current.title}" if current else turn.t("therapist.clients.no_homework"),
                last_contact=_when(turn, client.last_contact_at),
            )
        )
    turn.say_text("\n".join(lines), ref=mentioning(c.id for c in clients if c.id is not None))


def cmd_homeworks(turn: Turn, rest: str) -> None:
    found = _require_client(turn, rest, "therapist.homeworks.usage")
    if found is None:
        return
    client, _ = found
    turn.audit("homework.list", client)
    homeworks = q.homeworks_of(turn.session, client_id=client.id or 0)
    if not homeworks:
        turn.say("therapist.homeworks.empty", client=client.name)
        return
    counts = q.debrief_counts(turn.session, homework_ids=[h.id for h in homeworks if h.id is not None])
    lines = [turn.t("therapist.homeworks.header", client=client.name)]
    for hw in homeworks:
        lines.append(
            turn.t(
                "therapist.homeworks.line",
                id=hw.id,
                title=hw.title,
                type=turn.prompts.type_label(hw.type),
                status=hw.status,
                created=_when(turn, hw.created_at),
                delivered=_when(turn, hw.delivered_at),
                debriefs=counts.get(hw.id or 0, 0),
            )
        )
    turn.say_text("\n".join(lines))


def cmd_close(turn: Turn, rest: str) -> None:
    found = _require_client(turn, rest, "therapist.close.usage")
    if found is None:
        return
    client, remainder = found
    number = _id_arg(remainder)
    if number is None:
        turn.say("therapist.usage", usage=turn.t("therapist.close.usage"))
        return
    homework = turn.session.get(Homework, number)
    if homework is None or homework.client_id != client.id:
        turn.say("therapist.close.not_found", client=client.name, id=number)
        return
    if homework.status == HomeworkStatus.CLOSED:
        turn.say("therapist.close.already", id=homework.id)
        return
    history.close(turn.session, homework_ids=[homework.id or 0], reason=CloseReason.THERAPIST, now=turn.now)
    turn.audit("homework.close", client, homework_id=homework.id)
    turn.say("therapist.close.done", id=homework.id, title=homework.title, client=client.name)


def cmd_session(turn: Turn, rest: str) -> None:
    found = _require_client(turn, rest, "therapist.session.usage")
    if found is None:
        return
    client, when_text = found
    assert turn.therapist is not None
    if not when_text:
        turn.say("therapist.usage", usage=turn.t("therapist.session.usage"))
        return
    when = parse_when(when_text, now=turn.now, tz=turn.therapist.timezone)
    if when is None:
        turn.say("therapist.session.bad_when", when=when_text[:80], timezone=turn.therapist.timezone)
        return
    # The appointment that has passed becomes "the last session", which is
    # where the next digest's period starts.
    if client.next_session_at is not None and client.next_session_at <= turn.now:
        client.last_session_at = client.next_session_at
    client.next_session_at = when
    turn.session.add(client)
    measures.replan_sessions(turn.session, client=client, settings=turn.settings, now=turn.now)
    turn.audit("session.set", client)
    turn.say("therapist.session.set", client=client.name, when=_when(turn, when))


def cmd_digest(turn: Turn, rest: str) -> None:
    """``/digest NAME``: one client's digest; ``/digest``: the caseload overview, who needs attention first."""
    assert turn.therapist is not None
    if not rest.strip():
        caseload = build_caseload(turn.session, prompts=turn.prompts, therapist=turn.therapist, now=turn.now)
        turn.audit("caseload.digest.read")
        turn.say_text(render_caseload_text(caseload, turn.prompts), ref=caseload.mentions())
        return
    found = _require_client(turn, rest, "therapist.digest_usage")
    if found is None:
        return
    turn.audit("digest.read", found[0])
    # Scripted: the plain digest; LLM mode adds a short narrative on top of the data (written after the commit).
    llm_steps.digest_reply(turn, found[0], turn.therapist)


def cmd_note(turn: Turn, rest: str) -> None:
    """``/note NAME TEXT``: a formulation note about a client (audited); in LLM mode it grounds reflections."""
    found = _require_client(turn, rest, "therapist.note.usage")
    if found is None:
        return
    client, text = found
    if not text.strip():
        turn.say("therapist.usage", usage=turn.t("therapist.note.usage"))
        return
    note = TherapistNote(
        client_id=client.id or 0, therapist_id=_therapist_id(turn), text=text.strip(), created_at=turn.now
    )
    turn.session.add(note)
    turn.session.flush()
    # The engine adds it to the client's memory (LLM mode) with the rest of the turn.
    turn.audit("note.add", client, note_id=note.id)
    turn.say("therapist.note.saved", client=client.name, id=note.id)


def cmd_debrief(turn: Turn, rest: str) -> None:
    """``/debrief NAME ID``: the full text of one debrief, which the digest trims for reading."""
    found = _require_client(turn, rest, "digest.debrief_usage")
    if found is None:
        return
    client, remainder = found
    number = _id_arg(remainder)
    debrief = turn.session.get(Debrief, number) if number is not None else None
    if debrief is None or debrief.client_id != client.id:
        turn.say("digest.no_such_debrief", client=client.name, id=remainder.strip()[:12] or "?")
        return
    turn.audit("debrief.read", client, debrief_id=debrief.id)
    parts = [
        turn.t(f"digest.said_{key}", text=value)
        for key, value in (
            ("happened", debrief.what_happened),
            ("surprised", debrief.surprised),
            ("hard", debrief.hard),
            ("learned", debrief.learned),
        )
        if value
    ]
    if debrief.obstacle or debrief.would_help:
        parts.append(
            turn.t(
                "digest.obstacle_line",
                when="",
                obstacle=debrief.obstacle or "—",
                would_help=debrief.would_help or "—",
                id=debrief.id,
            ).lstrip(": ")
        )
    turn.say(
        "digest.full_debrief",
        client=client.name,
        id=debrief.id,
        debrief_kind=debrief.kind,
        when=_when(turn, debrief.started_at),
        body="\n".join(parts) or "—",
    )


def cmd_ack(turn: Turn, rest: str) -> None:
    """Acknowledge an urgent alert: records who and when, and stops its re-alert."""
    first, _, note = rest.strip().partition(" ")
    number = _id_arg(first)
    if number is None:
        turn.say("therapist.usage", usage=turn.t("safety.ack_usage"))
        return
    flag = access.own_flag(turn.session, therapist_id=_therapist_id(turn), flag_id=number)
    if flag is None or (flag.level != FlagLevel.CRISIS and flag.question_status != "unanswered"):
        turn.say("safety.ack_unknown", id=number)
        return
    client = turn.session.get(Client, flag.client_id)
    turn.about = flag.client_id
    if flag.acknowledged_at is not None:
        turn.say("safety.ack_already", id=flag.id, when=_when(turn, flag.acknowledged_at))
        return
    flag.acknowledged_at, flag.acknowledged_by = turn.now, _therapist_id(turn)
    flag.ack_note = note.strip() or None
    turn.session.add(flag)
    turn.audit("alert.ack", client, flag_id=flag.id)
    turn.say("safety.ack_done", id=flag.id, client=client.name if client else "", when=_when(turn, turn.now))
    _mark_alerts_acknowledged(turn, flag.id or 0)


def _mark_alerts_acknowledged(turn: Turn, flag_id: int) -> None:
    """Edit every copy of the alert on platforms that can edit: who acknowledged and when, and no button left.

    One ``edit`` outbox row per alert row (the first alert and each
    re-alert); the sender delivers it after the alert itself, in the same
    chat, and skips it if the alert never went out.
    """
    assert turn.therapist is not None
    rows = turn.session.exec(
        select(OutboxMessage)
        .where(OutboxMessage.subject == f"alert:{flag_id}", col(OutboxMessage.channel).in_(EDITABLE_CHANNELS))
        .order_by(col(OutboxMessage.id))
    ).all()
    note = turn.t("alert_ack.edited", therapist=turn.therapist.name, when=_when(turn, turn.now))
    for row in rows:
        original = Outbound.from_payload(row.payload)
        ref = {**(original.ref or {}), "edit_of": row.id}
        edit = Outbound(f"{original.text}\n\n{note}", kind="edit", ref=ref, prompt_key="alert_ack.edited")
        turn.sends.append((row.channel, row.address, edit))


def cmd_resume(turn: Turn, rest: str) -> None:
    """Lift a crisis hold: nudges resume only when the therapist says so."""
    found = _require_client(turn, rest, "safety.resume_usage")
    if found is None:
        return
    client, _ = found
    if client.crisis_since is None:
        turn.say("safety.not_on_hold", client=client.name)
        return
    client.crisis_since = None
    turn.session.add(client)
    turn.audit("hold.resume", client)
    turn.say("safety.resumed_client", client=client.name)


def cmd_weekly(turn: Turn, rest: str) -> None:
    """A weekly digest of every client at the therapist's chosen local time (``/weekly off`` to stop)."""
    assert turn.therapist is not None
    spec = " ".join(rest.casefold().split())
    if spec == "off":
        turn.therapist.weekly_digest = turn.therapist.weekly_digest_due = None
        turn.session.add(turn.therapist)
        turn.say("nudge.weekly_off")
        return
    day, _, at = spec.partition(" ")
    parsed = parse_clock_time(at)
    due = next_weekly(f"{day} {parsed.strftime('%H:%M')}", turn.therapist.timezone, turn.now) if parsed else None
    if due is None or parsed is None:
        turn.say("therapist.usage", usage=turn.t("nudge.weekly_usage"))
        return
    turn.therapist.weekly_digest = f"{day[:3]} {parsed.strftime('%H:%M')}"
    turn.therapist.weekly_digest_due = due
    turn.session.add(turn.therapist)
    turn.say(
        "nudge.weekly_set", when=turn.therapist.weekly_digest, timezone=turn.therapist.timezone, next=_when(turn, due)
    )


def cmd_dashboard(turn: Turn, _rest: str) -> None:
    """A single-use sign-in link to the web dashboard, valid for a few minutes (see dialogs.signin)."""
    from dialogs.signin import issue_link

    ttl = turn.settings.dashboard_link_ttl
    token = issue_link(turn.session, therapist_id=_therapist_id(turn), now=turn.now, ttl=ttl)
    access.audit(
        turn.session,
        actor=access.therapist_actor(_therapist_id(turn)),
        action="dashboard.link",
        now=turn.now,
        therapist_id=_therapist_id(turn),
    )
    link = f"{turn.settings.dashboard_url}/login?token={token}"
    turn.say("therapist.dashboard", link=link, minutes=int(ttl.total_seconds() // 60))


def cmd_therapists(turn: Turn, _rest: str) -> None:
    """Admins only: every therapist with their status and caseload size (names and numbers, no client data)."""
    assert turn.therapist is not None
    if turn.therapist.role != "admin":
        turn.say("therapist.admin_only")
        return
    lines = [turn.t("therapist.therapists_header")]
    for other in q.therapists(turn.session):
        lines.append(
            turn.t(
                "therapist.therapists_line",
                name=other.name,
                role=other.role,
                status=turn.t("therapist.disabled") if other.disabled_at else turn.t("therapist.active"),
                clients=len(access.own_clients(turn.session, therapist_id=other.id or 0)),
            )
        )
    turn.audit("therapists.read")
    turn.say_text("\n".join(lines))


# --- the homework draft --------------------------------------------------------


def cmd_homework(turn: Turn, rest: str) -> None:
    name_line, _, field_lines = rest.partition("\n")
    found = _require_client(turn, name_line, "therapist.usage")
    if found is None:
        return
    client, _ = found
    if not field_lines.strip():
        turn.goto(DRAFT, "title", client_id=client.id, draft={})
        turn.say("therapist.homework.ask_title", client=client.name)
        return
    # Power users: all fields at once as "field: value" lines.
    draft: dict[str, str] = {}
    for line in field_lines.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        field = field_name(key) if sep else None
        if field is None:
            turn.say("therapist.homework.bad_field", field=key.strip()[:40], fields=", ".join(HOMEWORK_FIELDS))
            return
        normalised = _normalise(turn, field, value)
        if normalised is None and value.strip():
            _bad_value(turn, field, client)
            return
        if normalised:
            draft[field] = normalised
    if not draft.get("title"):
        turn.goto(DRAFT, "title", client_id=client.id, draft=draft)
        turn.say("therapist.homework.ask_title", client=client.name)
        return
    turn.goto(DRAFT, "review", client_id=client.id, draft=draft)
    if missing_elements(draft):
        _review(turn, client)
    else:
        _save(turn, client)


_VALIDATED: Final = ("type", "due", "nudges")


def _normalise(turn: Turn, field: str, value: str) -> str | None:
    assert turn.therapist is not None
    return normalise_field(field, value, prompts=turn.prompts, now=turn.now, timezone=turn.therapist.timezone)


def _bad_value(turn: Turn, field: str, client: Client) -> None:
    """Say why a value was not taken: the field's own error, or its question again."""
    if field in _VALIDATED:
        turn.say(f"therapist.homework.bad_{field}", types=_types(turn))
    else:
        _ask(turn, field, client)


def _types(turn: Turn) -> str:
    return " · ".join(f"{i} {t.label}" for i, t in enumerate(turn.prompts.homework_types.values(), start=1))


def _ask(turn: Turn, field: str, client: Client) -> None:
    turn.say(
        f"therapist.homework.ask_{field}",
        client=client.name,
        skip=turn.t("common.skip_hint"),
        types=_types(turn),
        default=client.nudge_time or turn.settings.default_nudge_time,
    )


def _draft_client(turn: Turn) -> Client | None:
    client_id = turn.data.get("client_id")
    client = access.own_client(turn.session, therapist_id=_therapist_id(turn), client_id=client_id or 0)
    if client is None:
        turn.idle()
        turn.say("therapist.cancelled")
        return None
    turn.about = client.id
    return client


def draft_field(turn: Turn) -> None:
    """An answer to one field's question (step name = field), then the next field or review."""
    client = _draft_client(turn)
    if client is None:
        return
    field = turn.state.step.removeprefix("edit:")
    editing = turn.state.step.startswith("edit:")
    draft = dict(turn.data.get("draft", {}))
    if turn.is_("skip"):
        if field in _REQUIRED:
            _ask(turn, field, client)
            return
        draft.pop(field, None)
    else:
        value = _normalise(turn, field, turn.text)
        if not value:
            _bad_value(turn, field, client)
            return
        draft[field] = value
    order = list(HOMEWORK_FIELDS)
    nxt = None if editing or field == order[-1] else order[order.index(field) + 1]
    if nxt is None:
        turn.step("review", draft=draft)
        _review(turn, client)
    else:
        turn.step(nxt, draft=draft)
        _ask(turn, nxt, client)


def _review(turn: Turn, client: Client) -> None:
    draft = turn.data.get("draft", {})
    missing = missing_elements(draft)
    text = turn.t(
        "therapist.homework.review",
        client=client.name,
        summary=details(turn.prompts, draft, keys=HOMEWORK_FIELDS),
    )
    if missing:
        text += "\n" + turn.t(
            "therapist.homework.missing", missing=", ".join(turn.t(f"therapist.missing.{m}") for m in missing)
        )
    else:
        text += "\n" + turn.t("therapist.homework.complete")
    text += "\n" + turn.t(
        "therapist.homework.review_options",
        anyway=turn.t("therapist.homework.save_anyway") if missing else "",
        fields=", ".join(HOMEWORK_FIELDS),
    )
    turn.say_text(text)


def draft_review(turn: Turn) -> None:
    client = _draft_client(turn)
    if client is None:
        return
    if turn.is_("save"):
        _save(turn, client)
        return
    head, _, rest = turn.text.partition(" ")
    if head.casefold() == "edit":
        field = field_name(rest)
        if field is None:
            turn.say("therapist.homework.bad_field", field=rest[:40], fields=", ".join(HOMEWORK_FIELDS))
            return
        turn.step(f"edit:{field}")
        _ask(turn, field, client)
        return
    _review(turn, client)


def _save(turn: Turn, client: Client) -> None:
    homework, outcome, messages = set_homework(
        turn.session,
        prompts=turn.prompts,
        settings=turn.settings,
        client=client,
        draft=turn.data.get("draft", {}),
        now=turn.now,
    )
    turn.audit("homework.set", client, homework_id=homework.id)
    turn.idle()
    turn.sends.extend(messages)
    turn.say(f"therapist.homework.{outcome}", id=homework.id, client=client.name, status=client.status)


def draft_step(turn: Turn) -> None:
    if turn.state.step == "review":
        draft_review(turn)
    else:
        draft_field(turn)


COMMANDS: Final[dict[str, Callable[[Turn, str], None]]] = {
    "help": cmd_help,
    "start": cmd_help,
    "cancel": cmd_cancel,
    "invite": cmd_invite,
    "clients": cmd_clients,
    "homework": cmd_homework,
    "homeworks": cmd_homeworks,
    "close": cmd_close,
    "session": cmd_session,
    "digest": cmd_digest,
    "ack": cmd_ack,
    "resume": cmd_resume,
    "weekly": cmd_weekly,
    "debrief": cmd_debrief,
    "dashboard": cmd_dashboard,
    "therapists": cmd_therapists,
    "note": cmd_note,
    "plan": safety_plan.therapist_plan,
    "measure": measures.cmd_measure,
    "reviewed": review.cmd_reviewed,
}
