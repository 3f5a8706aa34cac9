"""What happens after the safety screen: crisis reply and alert, concern check-in, scope replies, escalation.

Runs on every message that is not a therapist's, before any other dialog
logic and in every mode, with no network. Crisis handling never depends on
the dialog state: it answers at once, stops the current step, holds nudges
and alerts the therapist in the same transaction as the reply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import or_
from sqlmodel import Session, col, select

from dialogs import safety_plan
from dialogs.messages import Option, Outbound, about_client, enqueue
from dialogs.safety import Level, RiskAssessment, Signal, assess
from dialogs.timeparse import format_local, zone_country
from dialogs.turn import IDLE, DialogSettings, Turn, split_command
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
    therapist alerted (True). The grey zone (the screen is unsure) → the
    direct safety question, and the message waits for its answer (True); a
    question already asked about the same signals within a day is not asked
    again, the message is a concern. concern → a gentle check-in and a flag
    for the digest, then the dialog continues (False). A question outside the
    companion's remit (checked whatever the level below crisis) → a kind reply
    pointing to the therapist and a flag, and the current question stays open
    (True). While a direct question waits, the next message is its answer.
    """
    assessment = assess(turn.text, locale=turn.prompts.locale)
    waiting = _pending_question(turn)
    if assessment.level == "crisis":
        if waiting is not None:
            _settle_question(turn, waiting, "crisis")
        _crisis(turn, assessment)
        return True
    if turn.client is None:
        return False
    if waiting is not None and turn.inbound.kind != "edited":
        return _answer_question(turn, waiting, assessment)
    if assessment.ask and not _asked_recently(turn, assessment):
        _ask_question(turn, assessment)
        return True
    therapist = _therapist(turn).name
    if assessment.level == "concern" or assessment.ask:
        _flag(turn, FlagLevel.CONCERN, list(assessment.reasons), assessment)
        turn.say("safety.concern", therapist=therapist)
        turn.risk_noted = True
    return _scope(turn, assessment, therapist)


def _scope(turn: Turn, assessment: RiskAssessment, therapist: str) -> bool:
    # A question outside the remit may also be a concern ("can I drink on my
    # meds?"): both replies, and it is not taken as an answer.
    reasons = scope_reasons(turn.prompts, turn.text)
    # The learned scope head's own threshold (chosen on held-out training data, in the model card screen.json).
    if not reasons and assessment.scope_question:
        reasons = ["outside the remit (learned layer)"]
    if not reasons:
        return False
    _flag(turn, FlagLevel.SCOPE, reasons, assessment)
    medication = "medication" in reasons or turn.prompts.medication.search(turn.text.casefold()) is not None
    turn.say("safety.scope_medication" if medication else "safety.scope", therapist=therapist)
    return True


# --- the direct safety question (the screen's grey zone) ---------------------------------

# The dialog data key that holds a question waiting for its answer, with the message that raised it
# (encrypted with the rest of the chat's data): after "no", that message continues the dialog.
PENDING_QUESTION: Final = "_safety_question"
# How often an unclear answer is met with the question again before the dialog goes on (the
# question stays open: unanswered, it still alerts the therapist when its time is up).
_REASKS: Final = 1
# Not asked again about the same signals within this time; a new grey signal may ask again.
SAME_SIGNALS_WINDOW: Final = timedelta(days=1)


def _signal_rows(assessment: RiskAssessment) -> list[dict[str, Any]]:
    def score(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    signals = assessment.signals
    return [{"layer": s.layer, "level": s.level, "score": score(s.score), "reason": s.reason} for s in signals]


def _signal_key(rows: Sequence[dict[str, Any]] | None) -> frozenset[str]:
    # What the screen saw, not what the answer added: the same message asks the same question.
    return frozenset(f"{r.get('layer')}:{r.get('reason')}" for r in rows or () if r.get("layer") != "question")


def _pending_question(turn: Turn) -> dict[str, Any] | None:
    waiting = turn.state.data.get(PENDING_QUESTION)
    return waiting if isinstance(waiting, dict) and turn.client is not None else None


def _asked_recently(turn: Turn, assessment: RiskAssessment) -> bool:
    assert turn.client is not None
    key = _signal_key(_signal_rows(assessment))
    recent = turn.session.exec(
        select(SafetyFlag).where(
            SafetyFlag.client_id == turn.client.id,
            col(SafetyFlag.question_asked_at).is_not(None),
            col(SafetyFlag.question_asked_at) >= turn.now - SAME_SIGNALS_WINDOW,
        )
    ).all()
    return any(_signal_key(flag.signals) == key for flag in recent)


def _ask_question(turn: Turn, assessment: RiskAssessment) -> None:
    flag = _flag(turn, FlagLevel.CONCERN, list(assessment.reasons), assessment)
    flag.question_asked_at = turn.now
    flag.question_due_at = turn.now + turn.settings.question_timeout
    flag.question_status = "asked"
    turn.session.add(flag)
    turn.state.data = {**turn.state.data, PENDING_QUESTION: {"flag": flag.id, "text": turn.text, "asked": 0}}
    turn.say("checkin.question", kind="choice", options=_question_options(turn))


def ask_directly(turn: Turn, reason: str, *, score: float | None = None, alert: bool = True) -> SafetyFlag:
    """Ask the direct safety question because of something other than a message (a questionnaire answer).

    E.g. PHQ-9 item 9 above 0: the flag records ``reason`` as a signal of the
    "measure" layer; with ``alert`` the therapist is told at once (not only
    when the question goes unanswered). The answer is handled like any other
    direct question's: the next message is read as it.
    """
    signal = Signal("measure", "concern", score, reason)
    flag = _flag(turn, FlagLevel.CONCERN, [reason], RiskAssessment("concern", (reason,), ask=True, signals=(signal,)))
    flag.question_asked_at = turn.now
    flag.question_due_at = turn.now + turn.settings.question_timeout
    flag.question_status = "asked"
    turn.session.add(flag)
    turn.state.data = {**turn.state.data, PENDING_QUESTION: {"flag": flag.id, "text": "", "asked": 0}}
    turn.say("checkin.question", kind="choice", options=_question_options(turn))
    if alert and turn.client is not None:
        therapist = _therapist(turn)
        chat = q.latest_identity(turn.session, therapist_id=therapist.id)
        if chat is not None:
            message = alert_message(turn.prompts, turn.settings, flag, turn.client, therapist, context=flag.context)
            turn.send(chat, message)
    return flag


def _question_options(turn: Turn) -> tuple[Option, ...]:
    return (Option("yes", turn.t("checkin.yes")), Option("no", turn.t("checkin.no")))


def _answer_question(turn: Turn, waiting: dict[str, Any], assessment: RiskAssessment) -> bool:
    answer = parse_answer(turn.prompts, turn.text)
    if answer == "yes":
        flag = _settle_question(turn, waiting, "yes")
        _crisis(turn, assessment, flag=flag)
        return True
    therapist = _therapist(turn).name
    if answer == "no":
        _settle_question(turn, waiting, "no")
        if assessment.level == "concern":
            _flag(turn, FlagLevel.CONCERN, list(assessment.reasons), assessment)
        turn.say("checkin.thanks_no", therapist=therapist)
        # The message that raised the question goes on as the dialog would have taken it (its own
        # screen ran when it arrived; its remit check, the lexicon's part, runs now).
        turn.text = str(waiting.get("text", ""))
        return _scope(turn, RiskAssessment("none"), therapist) if turn.text else True
    if int(waiting.get("asked", 0)) < _REASKS and not split_command(turn.text)[0]:
        turn.state.data = {**turn.state.data, PENDING_QUESTION: {**waiting, "asked": int(waiting.get("asked", 0)) + 1}}
        turn.say("checkin.unclear", kind="choice", options=_question_options(turn))
        return True
    # Still no answer: the dialog goes on; the open question alerts the therapist when its time is up.
    turn.state.data = {k: v for k, v in turn.state.data.items() if k != PENDING_QUESTION}
    if assessment.level == "concern":
        _flag(turn, FlagLevel.CONCERN, list(assessment.reasons), assessment)
    return _scope(turn, assessment, therapist)


def _settle_question(turn: Turn, waiting: dict[str, Any], outcome: str) -> SafetyFlag | None:
    turn.state.data = {k: v for k, v in turn.state.data.items() if k != PENDING_QUESTION}
    flag = turn.session.get(SafetyFlag, waiting.get("flag"))
    if flag is None or flag.question_status not in ("asked", "unanswered"):
        return None
    flag.question_status = outcome
    flag.question_due_at = None
    answered = {"layer": "question", "level": "concern", "score": None, "reason": f"answered {outcome}"}
    flag.signals = [*(flag.signals or []), answered]
    turn.session.add(flag)
    return flag


def parse_answer(prompts: Prompts, text: str) -> str | None:
    """ "yes", "no" or None for the direct question; a hesitant answer ("maybe", "kind of") is a yes.

    The first word decides a longer answer ("no, I'm safe, just tired"); the
    rest of it has been screened like any message, so a crisis in it has
    already taken the crisis path.
    """
    if prompts.matches("safety_yes", text):
        return "yes"
    if prompts.matches("safety_no", text):
        return "no"
    first = re.split(r"[\s,.;:!?-]+", text.strip(), maxsplit=1)[0] if text.strip() else ""
    if first and prompts.matches("safety_yes", first):
        return "yes"
    if first and prompts.matches("safety_no", first):
        return "no"
    return None


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


def _flag(turn: Turn, level: FlagLevel, reasons: Sequence[str], assessment: RiskAssessment | None = None) -> SafetyFlag:
    assert turn.client is not None and turn.client.id is not None
    flag = SafetyFlag(
        client_id=turn.client.id,
        therapist_id=turn.client.therapist_id,
        level=level,
        reasons=list(reasons),
        text=turn.text,
        context=_context(turn),
        created_at=turn.now,
        signals=_signal_rows(assessment) if assessment is not None else None,
    )
    turn.session.add(flag)
    turn.session.flush()
    return flag


def _crisis(turn: Turn, assessment: RiskAssessment, *, flag: SafetyFlag | None = None) -> None:
    """The crisis path; ``flag`` is the direct question's flag when the client answered yes to it."""
    client = turn.client
    text = resources(turn.prompts, turn.settings, client.timezone if client else None)
    if client is None:  # a stranger: resources at once, but there is nobody to alert
        turn.idle()
        turn.say("safety.crisis_no_therapist", resources=text)
        return
    context = _context(turn)
    if flag is None:
        flag = _flag(turn, FlagLevel.CRISIS, list(assessment.reasons), assessment)
    else:  # the grey-zone flag becomes the crisis alert, with the answer as its newest reason
        flag.level = FlagLevel.CRISIS
        flag.reasons = [turn.t("checkin.reason_yes"), *flag.reasons]
    flag.escalate_at = turn.now + turn.settings.alert_ack_timeout
    _stop_current_step(turn)
    client.crisis_since = client.crisis_since or turn.now
    turn.session.add_all([flag, client])
    therapist = _therapist(turn)
    # The client's own safety plan first (their coping steps, the people they named), when they have one.
    own = safety_plan.crisis_reply(turn.session, turn.prompts, client, resources=text, therapist=therapist.name)
    if own is not None:
        turn.say_text(own.text, prompt=own.prompt_key)
    else:
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
    unanswered = flag.question_status == "unanswered" and flag.level != FlagLevel.CRISIS
    body = prompts.text(
        "checkin.alert_unanswered" if unanswered else "safety.alert",
        client=client.name,
        id=flag.id,
        text=" ".join(text.split()),
        when=format_local(flag.created_at, therapist.timezone),
        context=prompts.text("safety.alert_context", context=context) if context else "",
        reasons=", ".join(flag.reasons) or "—",
        minutes=int(settings.alert_ack_timeout.total_seconds() // 60),
        fallback=prompts.text("safety.alert_fallback") if settings.fallback_contact else "",
        question=int(settings.question_timeout.total_seconds() // 60),
    )
    layers = describe_signals(prompts, flag.signals)
    if layers:
        body += "\n" + prompts.text("checkin.alert_layers", layers=layers)
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
            or_(col(SafetyFlag.level) == FlagLevel.CRISIS, col(SafetyFlag.question_status) == "unanswered"),
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


def alert_unanswered_questions(session: Session, *, prompts: Prompts, settings: DialogSettings, now: datetime) -> int:
    """Alert the therapist about direct safety questions left unanswered past their time; returns how many.

    The alert is urgent and must be acknowledged like a crisis alert (and is
    sent again like one). Rows are claimed with ``SKIP LOCKED``, and the due
    time is cleared in the same transaction, so each question alerts once.
    """
    due = session.exec(
        select(SafetyFlag)
        .where(col(SafetyFlag.question_due_at) <= now, SafetyFlag.question_status == "asked")
        .order_by(col(SafetyFlag.question_due_at))
        .with_for_update(skip_locked=True)
    ).all()
    for flag in due:
        client = session.get(Client, flag.client_id)
        therapist = session.get(Therapist, flag.therapist_id)
        flag.question_due_at = None
        flag.question_status = "unanswered"
        flag.escalate_at = now + settings.alert_ack_timeout
        session.add(flag)
        if client is None or therapist is None:
            continue
        chat = q.latest_identity(session, therapist_id=therapist.id)
        if chat is None:
            continue
        message = alert_message(prompts, settings, flag, client, therapist, context=flag.context)
        enqueue(session, channel=chat.channel, address=chat.address, message=message, now=now)
    return len(due)


def describe_signals(prompts: Prompts, rows: Sequence[dict[str, Any]] | None) -> str:
    """Which layer noticed what, for the therapist: "lexicon: suicide method or plan; learned layer: crisis 0.91"."""
    parts: list[str] = []
    for row in rows or ():
        key = f"checkin.layer_{row.get('layer')}"
        layer = prompts.text(key) if prompts.has(key) else str(row.get("layer"))
        score = row.get("score")
        detail = str(row.get("reason") or row.get("level") or "")
        if isinstance(score, int | float):
            detail = f"{detail} {score:.2f}".strip()
        parts.append(f"{layer}: {detail}")
    return "; ".join(parts)


def escalate(turn: Turn, level: Level, reasons: Sequence[str]) -> None:
    """A later layer (LLM mode's risk opinion) rates this message higher than the screen did: act on it.

    Called in the second, short transaction of a model job, after the
    screen's own (instant) reply went or was decided; it only raises:
    ``crisis`` takes the screen's crisis path (reply, step stopped, nudges
    held, therapist alerted), ``concern`` flags and checks in. Any other
    level does nothing.
    """
    if level == "none":
        return
    # Recorded as the "llm" layer's verdict, so the therapist sees which layer fired (no score: an opinion).
    signal = Signal(layer="llm", level=level, score=None, reason=reasons[0] if reasons else "opinion")
    assessment = RiskAssessment(level, tuple(reasons), signals=(signal,))
    if level == "crisis":
        _crisis(turn, assessment)
    elif turn.client is not None:
        _flag(turn, FlagLevel.CONCERN, list(reasons), assessment)
        turn.say("safety.concern", therapist=_therapist(turn).name)
