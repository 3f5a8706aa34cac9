"""What happens after the safety screen: crisis reply and alert, concern check-in, scope replies, escalation.

Runs on every message that is not a therapist's, before any other dialog
logic and in every mode, with no network. Crisis handling never depends on
the dialog state: it answers at once, stops the current step, holds nudges
and alerts the therapist in the same transaction as the reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from sqlmodel import Session, col, select

from dialogs.messages import Option, Outbound, about_client, enqueue
from dialogs.safety import RiskAssessment, assess
from dialogs.timeparse import format_local, zone_country
from dialogs.turn import IDLE, DialogSettings, Turn
from prompts import Prompts
from storage import Client, Debrief, DebriefStatus, FlagLevel, Homework, Identity, SafetyFlag, Therapist
from storage import queries as q

ALERT_TEXT_LIMIT: Final = 1000  # the therapist sees this much of the message in the alert itself


def resources(prompts: Prompts, settings: DialogSettings, timezone: str | None) -> str:
    """The crisis resource lines for where the client lives, always ending with the emergency number."""
    lines = settings.crisis_resources.get(zone_country(timezone) or "", ()) or settings.crisis_resources.get(
        "default", ()
    )
    rendered = [prompts.text("safety.resource_line", line=line) for line in lines]
    rendered.append(prompts.text("safety.generic_resource"))
    return "\n".join(rendered)


def scope_reasons(prompts: Prompts, text: str) -> list[str]:
    return sorted({reason for reason, pattern in prompts.scope_patterns if pattern.search(text)})


def screen(turn: Turn) -> bool:
    """Screen a client's (or stranger's) message; True if the turn is fully handled here.

    crisis → crisis reply, the current step stopped, nudges held, the
    therapist alerted (True). concern → a gentle check-in and a flag for the
    digest, then the dialog continues (False). A question outside the
    companion's remit (checked whatever the level below crisis) → a kind
    reply pointing to the therapist and a flag, and the current question
    stays open (True).
    """
    assessment = assess(turn.text, locale=turn.prompts.locale)
    if assessment.level == "crisis":
        _crisis(turn, assessment)
        return True
    if turn.client is None:
        return False
    therapist = _therapist(turn).name
    if assessment.level == "concern":
        _flag(turn, FlagLevel.CONCERN, list(assessment.reasons))
        turn.say("safety.concern", therapist=therapist)
    # A question outside the remit may also be a concern ("can I drink on my
    # meds?"): both replies, and it is not taken as an answer.
    reasons = scope_reasons(turn.prompts, turn.text)
    if reasons:
        _flag(turn, FlagLevel.SCOPE, reasons)
        turn.say("safety.scope", therapist=therapist)
        return True
    return False


def _therapist(turn: Turn) -> Therapist:
    assert turn.client is not None
    therapist = turn.session.get(Therapist, turn.client.therapist_id)
    assert therapist is not None
    return therapist


def _context(turn: Turn) -> str:
    flow = turn.state.flow
    if flow in ("debrief", "obstacle"):
        debrief = turn.session.get(Debrief, turn.data.get("debrief_id"))
        homework = turn.session.get(Homework, debrief.homework_id) if debrief else None
        if homework is not None:
            return turn.t("safety.context_debrief", title=homework.title)
    if flow == IDLE:
        return turn.t("safety.context_idle")
    return turn.t("safety.context_flow", flow=flow)


def _flag(turn: Turn, level: FlagLevel, reasons: Sequence[str]) -> SafetyFlag:
    assert turn.client is not None and turn.client.id is not None
    flag = SafetyFlag(
        client_id=turn.client.id,
        therapist_id=turn.client.therapist_id,
        level=level,
        reasons=list(reasons),
        text=turn.text,
        context=_context(turn),
        created_at=turn.now,
    )
    turn.session.add(flag)
    turn.session.flush()
    return flag


def _crisis(turn: Turn, assessment: RiskAssessment) -> None:
    client = turn.client
    text = resources(turn.prompts, turn.settings, client.timezone if client else None)
    if client is None:  # a stranger: resources at once, but there is nobody to alert
        turn.idle()
        turn.say("safety.crisis_no_therapist", resources=text)
        return
    context = _context(turn)
    flag = _flag(turn, FlagLevel.CRISIS, list(assessment.reasons))
    flag.escalate_at = turn.now + turn.settings.alert_ack_timeout
    _stop_current_step(turn)
    client.crisis_since = client.crisis_since or turn.now
    turn.session.add_all([flag, client])
    therapist = _therapist(turn)
    turn.say("safety.crisis", resources=text, therapist=therapist.name)
    chat = q.latest_identity(turn.session, therapist_id=therapist.id)
    if chat is not None:
        turn.send(chat, alert_message(turn.prompts, turn.settings, flag, client, therapist, context=context))


def _stop_current_step(turn: Turn) -> None:
    if turn.state.flow in ("debrief", "obstacle"):
        debrief = turn.session.get(Debrief, turn.data.get("debrief_id"))
        if debrief is not None and debrief.status == DebriefStatus.IN_PROGRESS:
            debrief.status = DebriefStatus.ABANDONED
            turn.session.add(debrief)
    turn.idle()


def alert_message(
    prompts: Prompts,
    settings: DialogSettings,
    flag: SafetyFlag,
    client: Client,
    therapist: Therapist,
    *,
    context: str | None,
    again: bool = False,
) -> Outbound:
    text = flag.text if len(flag.text) <= ALERT_TEXT_LIMIT else flag.text[: ALERT_TEXT_LIMIT - 1] + "…"
    body = prompts.text(
        "safety.alert",
        client=client.name,
        id=flag.id,
        text=" ".join(text.split()),
        when=format_local(flag.created_at, therapist.timezone),
        context=prompts.text("safety.alert_context", context=context) if context else "",
        reasons=", ".join(flag.reasons) or "—",
        minutes=int(settings.alert_ack_timeout.total_seconds() // 60),
        fallback=prompts.text("safety.alert_fallback") if settings.fallback_contact else "",
    )
    if again:
        body = prompts.text("safety.alert_again") + "\n" + body
    ack = Option(f"/ack {flag.id}", prompts.text("safety.ack_button"))
    # "alert" lets the acknowledgement find every copy of this alert again and edit it (dialogs.therapist.cmd_ack).
    return Outbound(
        body,
        kind="alert",
        options=(ack,),
        ref={**(about_client(flag.client_id) or {}), "alert": flag.id},
        prompt_key="safety.alert",
        prompt_version=prompts.version,
    )


def escalate_due_alerts(session: Session, *, prompts: Prompts, settings: DialogSettings, now: datetime) -> int:
    """Send unacknowledged crisis alerts again once their time is up; returns how many.

    The re-alert goes to every chat the therapist actually reads: every
    linked platform chat (Slack, Telegram, WhatsApp, web), the first alert's
    included; the console chat (which `companion therapist add` creates for
    every therapist) only when it is the only one; and to the practice
    fallback contact when configured. Each alert is escalated once; rows are
    claimed with ``SKIP LOCKED`` so several processes never escalate the
    same alert twice.
    """
    due = session.exec(
        select(SafetyFlag)
        .where(
            SafetyFlag.level == FlagLevel.CRISIS,
            col(SafetyFlag.acknowledged_at).is_(None),
            col(SafetyFlag.escalated_at).is_(None),
            col(SafetyFlag.escalate_at) <= now,
        )
        .order_by(col(SafetyFlag.escalate_at))
        .with_for_update(skip_locked=True)
    ).all()
    for flag in due:
        client = session.get(Client, flag.client_id)
        therapist = session.get(Therapist, flag.therapist_id)
        assert client is not None and therapist is not None
        message = alert_message(prompts, settings, flag, client, therapist, context=flag.context, again=True)
        chats = list(
            session.exec(select(Identity).where(Identity.therapist_id == therapist.id).order_by(col(Identity.id)))
        )
        platforms = [(c.channel, c.address) for c in chats if c.channel != q.CONSOLE]
        targets = platforms or [(c.channel, c.address) for c in chats]
        if settings.fallback_contact and settings.fallback_contact not in targets:
            targets.append(settings.fallback_contact)
        for channel, address in targets:
            enqueue(session, channel=channel, address=address, message=message, now=now)
        flag.escalated_at = now
        session.add(flag)
    return len(due)
