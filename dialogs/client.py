"""Client flows: receiving homework, the guided debrief, obstacles, notes, pause and stop."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final

from dialogs import client_data, history, llm_steps, measures, nudges, onboarding, safety_plan
from dialogs.digest import judged
from dialogs.homework import as_fields, details
from dialogs.messages import Option
from dialogs.timeparse import format_local, parse_clock_time
from dialogs.turn import Turn, split_command
from prompts import Extra
from storage import (
    ClientStatus,
    Debrief,
    DebriefKind,
    DebriefStatus,
    Homework,
    HomeworkStatus,
    LogEntry,
    Occasion,
    Therapist,
)
from storage import queries as q
from storage.models import OccasionStatus

LOW_RATING: Final = 7  # below this confidence or importance, offer a smaller or reworked version


def _client(turn: Turn) -> tuple[int, int]:
    assert turn.client is not None and turn.client.id is not None
    return turn.client.id, turn.client.therapist_id


# Idle chat data: free text the companion offered to keep as a note (the answer comes next).
NOTE_OFFER: Final = "note_offer"


def _therapist_name(turn: Turn) -> str:
    therapist = turn.session.get(Therapist, _client(turn)[1])
    return therapist.name if therapist else ""


def resume_word(turn: Turn) -> str:
    """What this client sends to restart messages: START on WhatsApp (its opt-in word there), /resume elsewhere.

    A channel may name its own in the catalogue as ``client.resume_word.<channel>``.
    """
    own = f"client.resume_word.{turn.inbound.channel}"
    return turn.t(own if turn.prompts.has(own) else "client.resume_word.default")


def idle(turn: Turn) -> None:
    """What a client's message means when no flow is under way."""
    client = turn.client
    assert client is not None
    command, rest = split_command(turn.text)
    offered = turn.state.data.get(NOTE_OFFER)
    if offered is not None:  # the answer to "shall I keep that as a note?", or a new message
        turn.state.data = {k: v for k, v in turn.state.data.items() if k != NOTE_OFFER}
        if command is None and turn.is_("yes"):
            _save_log(turn, str(offered), None)
            return
        if command is None and turn.is_("no"):
            turn.say("client.note_not_kept")
            return
    # A stopped client can still read their own safety plan: it is for a crisis, not for homework.
    if client.status == ClientStatus.STOPPED and command not in ("resume", "help", "mydata", "delete", "plan"):
        turn.say("client.while_stopped", resume=resume_word(turn))
        return
    if command is not None:
        handler = COMMANDS.get(command)
        if handler is None:
            if command in THERAPIST_ONLY:
                turn.say("unknown.wrong_role")
            else:
                turn.say("common.unknown_command", command=f"/{command}")
            return
        handler(turn, rest)
    elif turn.is_("done"):
        start_debrief(turn, "")
    elif turn.is_("not_done"):
        start_obstacle(turn, "")
    elif turn.is_("later"):
        cmd_later(turn, "")
    elif turn.is_("acknowledgement"):
        turn.say("client.acknowledged")
    elif turn.risk_noted:
        pass  # the screen's check-in answered it, and the therapist will see it on the flag
    elif len(turn.text.split()) < 2:
        turn.say("client.not_understood")
    else:
        # Free text outside any flow is rarely nonsense: it is something the client wanted to say.
        # Offer to keep it for the therapist (one tap), and say what the companion can do. The chat
        # stays idle (reminders and new homework are not held back by an unanswered offer).
        turn.state.data = {**turn.state.data, NOTE_OFFER: turn.text}
        turn.say("client.note_offer", kind="choice", options=turn.yes_no(), therapist=_therapist_name(turn))


# --- simple commands -----------------------------------------------------------


def cmd_help(turn: Turn, _rest: str) -> None:
    turn.say("client.help")


def cmd_homework(turn: Turn, _rest: str) -> None:
    homework = q.current_homework(turn.session, client_id=_client(turn)[0])
    if homework is None:
        turn.say("client.no_homework")
        return
    turn.say("client.current_homework", title=homework.title, details=details(turn.prompts, as_fields(homework)))


def _set_status(turn: Turn, status: ClientStatus, *, unchanged: str, done: str, notify: str) -> None:
    client = turn.client
    assert client is not None
    if client.status == status:
        turn.say(unchanged, resume=resume_word(turn))
        return
    client.status = status
    turn.session.add(client)
    turn.say(done, resume=resume_word(turn))
    turn.notify_therapist(client.therapist_id, notify, client=client.name)


def cmd_pause(turn: Turn, _rest: str) -> None:
    _set_status(
        turn,
        ClientStatus.PAUSED,
        unchanged="client.already_paused",
        done="client.paused",
        notify="notify.client_paused",
    )


def cmd_resume(turn: Turn, _rest: str) -> None:
    """The client's own resume: lifts a pause or a stop, never a crisis hold (the therapist does that)."""
    _set_status(
        turn, ClientStatus.ACTIVE, unchanged="client.not_paused", done="client.resumed", notify="notify.client_resumed"
    )


def cmd_stop(turn: Turn, _rest: str) -> None:
    client = turn.client
    assert client is not None
    client.status = ClientStatus.STOPPED
    turn.session.add(client)
    turn.idle()
    turn.say("client.stopped", therapist=_therapist_name(turn), resume=resume_word(turn))
    turn.notify_therapist(client.therapist_id, "notify.client_stopped", client=client.name, resume=resume_word(turn))


# --- the client's own data: a copy, and erasure ------------------------------------


def cmd_mydata(turn: Turn, _rest: str) -> None:
    """A copy of everything stored about this client: a file where the channel can send one, else text in parts."""
    client = turn.client
    assert client is not None
    document = client_data.export(turn.session, prompts=turn.prompts, client=client, now=turn.now, for_client=True)
    turn.audit("client.export", client, by="client")
    turn.say("client.mydata", therapist=_therapist_name(turn))
    turn.say_text(
        json.dumps(document, ensure_ascii=False, indent=1),
        kind="file",
        ref={"filename": f"my-data-{turn.now:%Y-%m-%d}.json"},
    )


def cmd_delete(turn: Turn, _rest: str) -> None:
    turn.goto("delete", "confirm")
    turn.say("client.delete_confirm", kind="choice", options=turn.yes_no(), therapist=_therapist_name(turn))


def delete_step(turn: Turn) -> None:
    """After an explicit yes: erase everything, tell the therapist; this chat is a stranger's from now on."""
    client = turn.client
    assert client is not None and client.id is not None
    if turn.is_("no"):
        turn.idle()
        turn.say("client.delete_kept")
        return
    if not turn.is_("confirm_delete"):
        turn.say("client.delete_unclear", kind="choice", options=turn.yes_no())
        return
    therapist, name = _therapist_name(turn), client.name
    turn.audit("client.erase", client, by="client")
    client_data.erase(turn.session, client=client, keep_state_of=(turn.inbound.channel, turn.inbound.address))
    turn.forgotten.append(client.id)
    turn.client = turn.identity = None
    turn.idle()
    turn.say("client.deleted", therapist=therapist)
    turn.notify_therapist(client.therapist_id, "notify.client_deleted", client=name)


# --- receiving homework ----------------------------------------------------------


def _homework(turn: Turn) -> Homework | None:
    homework = turn.session.get(Homework, turn.data.get("homework_id"))
    if homework is None or homework.client_id != _client(turn)[0]:
        turn.idle()
        return None
    return homework


def delivery_own_words(turn: Turn) -> None:
    homework = _homework(turn)
    if homework is None:
        return
    homework.rationale_own_words = turn.free_text()
    turn.session.add(homework)
    turn.step("confidence")
    turn.say("delivery.ask_confidence", kind="scale", options=turn.scale(0, 10))


def delivery_confidence(turn: Turn) -> None:
    homework = _homework(turn)
    if homework is None:
        return
    confidence = turn.number(0, 10)
    if confidence is None:
        turn.say("delivery.bad_confidence", kind="scale", options=turn.scale(0, 10))
        return
    homework.confidence = confidence
    turn.session.add(homework)
    # Kazantzis' common language for homework: importance is rated beside confidence.
    turn.step("importance")
    turn.say("importance.ask", kind="scale", options=turn.scale(0, 10))


def _low(homework: Homework) -> tuple[str, ...]:
    """Which of the two ratings is below 7/10 (CBT_HOMEWORK.md: calibrate, make it matter)."""
    return tuple(
        name
        for name, value in (("confidence", homework.confidence), ("importance", homework.importance))
        if value is not None and value < LOW_RATING
    )


def delivery_importance(turn: Turn) -> None:
    homework = _homework(turn)
    if homework is None:
        return
    importance = turn.number(0, 10)
    if importance is None:
        turn.say("importance.bad", kind="scale", options=turn.scale(0, 10))
        return
    homework.importance = importance
    turn.session.add(homework)
    low = _low(homework)
    if low:
        # Below 7 on either: offer the smaller (low confidence) or reworked (low importance) version.
        offer = "importance.offer_both" if len(low) == 2 else f"importance.offer_low_{low[0]}"
        turn.step("smaller")
        turn.say(offer, kind="choice", options=turn.yes_no(), therapist=_therapist_name(turn))
        return
    turn.idle()
    turn.say("delivery.ready")


def delivery_smaller(turn: Turn) -> None:
    homework = _homework(turn)
    if homework is None:
        return
    if turn.is_("yes"):
        homework.smaller_version_wanted = True
        turn.session.add(homework)
        turn.idle()
        name = _therapist_name(turn)
        turn.say("delivery.noted_smaller", therapist=name)
        assert turn.client is not None
        low = " and ".join(turn.t(f"importance.low_{which}") for which in _low(homework)) or "—"
        turn.notify_therapist(
            homework.therapist_id,
            "importance.notify",
            client=turn.client.name,
            title=homework.title,
            confidence=homework.confidence if homework.confidence is not None else "—",
            importance=homework.importance if homework.importance is not None else "—",
            low=low,
        )
    elif turn.is_("no"):
        turn.idle()
        turn.say("delivery.ready")
    else:
        turn.say("join.consent_unclear", kind="choice", options=turn.yes_no())


# --- debrief -------------------------------------------------------------------

TEXT_STEPS: Final = ("what_happened", "surprised", "hard", "learned")
_ASK: Final = {
    "what_happened": "debrief.ask_happened",
    "surprised": "debrief.ask_surprised",
    "hard": "debrief.ask_hard",
    "learned": "debrief.ask_learned",
}


def _which_homework(turn: Turn, kind: DebriefKind) -> Homework | None:
    """The homework "done" or "didn't do it" is about, or None after asking which (or saying there is none).

    The one a reminder is waiting on, if any; else the only open one; with
    several open and no reminder pending, the client is asked which, rather
    than the newest being assumed.
    """
    client_id, _ = _client(turn)
    nudged = nudges.last_nudged(turn.session, client_id=client_id)
    if nudged is not None:
        homework = turn.session.get(Homework, nudged.homework_id)
        if homework is not None and homework.status == HomeworkStatus.OPEN:
            return homework
    open_ = q.open_delivered_homework(turn.session, client_id=client_id)
    if not open_:
        turn.say("debrief.no_homework")
        return None
    if len(open_) == 1:
        return open_[0]
    turn.goto("pick", "homework", kind=str(kind), homework_ids=[h.id for h in open_])
    options = [Option(str(n), h.title) for n, h in enumerate(open_, start=1)]
    turn.say("debrief.which_homework", kind="choice", options=options)
    return None


def pick_step(turn: Turn) -> None:
    """The answer to "which homework?": its number (or its title), then the debrief or obstacle talk starts."""
    ids = [i for i in turn.data.get("homework_ids", []) if isinstance(i, int)]
    kind = DebriefKind(turn.data.get("kind", DebriefKind.DEBRIEF))
    chosen = None
    number = turn.number(1, len(ids)) if ids else None
    if number is not None:
        chosen = turn.session.get(Homework, ids[number - 1])
    else:
        typed = " ".join(turn.text.casefold().split())
        titled = [h for h in (turn.session.get(Homework, i) for i in ids) if h and h.title.casefold() == typed]
        chosen = titled[0] if len(titled) == 1 else None
    if chosen is None or chosen.client_id != _client(turn)[0] or chosen.status != HomeworkStatus.OPEN:
        options = [Option(str(n), h.title) for n, h in enumerate(_homeworks(turn, ids), start=1)]
        turn.say("debrief.which_homework", kind="choice", options=options)
        return
    turn.idle()
    _begin(turn, chosen, kind)


def _homeworks(turn: Turn, ids: list[int]) -> list[Homework]:
    return [h for h in (turn.session.get(Homework, i) for i in ids) if h is not None]


def _begin(turn: Turn, homework: Homework, kind: DebriefKind) -> None:
    debrief = _new_debrief(turn, homework, kind)
    if kind == DebriefKind.OBSTACLE:
        debrief.quantity = 0
        turn.goto("obstacle", "what", debrief_id=debrief.id)
        turn.say("obstacle.ask_what")
        return
    turn.goto("debrief", "what_happened", debrief_id=debrief.id)
    turn.say("debrief.ask_happened", title=homework.title)


def start_debrief(turn: Turn, _rest: str) -> None:
    homework = _which_homework(turn, DebriefKind.DEBRIEF)
    if homework is not None:
        _begin(turn, homework, DebriefKind.DEBRIEF)


def _new_debrief(turn: Turn, homework: Homework, kind: DebriefKind) -> Debrief:
    client_id, _ = _client(turn)
    assert turn.client is not None
    # Answering settles the nudge it answers (and today's, so none nags after).
    occasion_id = nudges.mark_answered(turn.session, homework_id=homework.id or 0, client=turn.client, now=turn.now)
    debrief = Debrief(
        homework_id=homework.id or 0, client_id=client_id, occasion_id=occasion_id, kind=kind, started_at=turn.now
    )
    turn.session.add(debrief)
    turn.session.flush()
    return debrief


def _debrief(turn: Turn) -> Debrief | None:
    debrief = turn.session.get(Debrief, turn.data.get("debrief_id"))
    if debrief is None or debrief.client_id != _client(turn)[0]:
        turn.idle()
        turn.say("client.not_understood")
        return None
    return debrief


def _extras(turn: Turn, debrief: Debrief) -> tuple[Extra, ...]:
    homework = turn.session.get(Homework, debrief.homework_id)
    kind = turn.prompts.homework_types.get(homework.type if homework else "custom")
    return kind.extras if kind else ()


def _ask_quantity(turn: Turn) -> None:
    if llm_steps.confirm_quantity(turn):
        return
    labels = {n: turn.t(f"quantity.{n}") for n in range(5)}
    turn.say("debrief.ask_quantity", kind="scale", options=turn.scale(0, 4, labels))


def _ask_extra(turn: Turn, extra: Extra) -> None:
    if llm_steps.confirm_extra(turn, extra):
        return
    options = turn.scale(extra.low, extra.high) if extra.high <= 10 else ()
    turn.say_text(extra.question, kind="scale" if options else "text", options=options)


def _after(turn: Turn, debrief: Debrief, step: str) -> None:
    """Ask whatever comes after ``step``: the text questions, the type's extras, then the amount."""
    extras = _extras(turn, debrief)
    sequence = [*TEXT_STEPS, *(f"extra:{e.key}" for e in extras), "quantity"]
    nxt = sequence[sequence.index(step) + 1]
    turn.step(nxt)
    if nxt in _ASK:
        turn.say(_ASK[nxt])
    elif nxt.startswith("extra:"):
        _ask_extra(turn, next(e for e in extras if f"extra:{e.key}" == nxt))
    else:
        _ask_quantity(turn)


def debrief_step(turn: Turn) -> None:
    debrief = _debrief(turn)
    if debrief is None:
        return
    step = turn.state.step
    if step in TEXT_STEPS:
        setattr(debrief, step, llm_steps.text_answer(turn, debrief, step))
        if llm_steps.reflect(turn, debrief, step, question_key=_ASK[step]):
            turn.session.add(debrief)  # a follow-up question: its answer joins this one
            return
    elif step.startswith("extra:"):
        extra = next((e for e in _extras(turn, debrief) if f"extra:{e.key}" == step), None)
        if extra is not None and not turn.is_("skip"):
            value = llm_steps.confirmed(turn, extra.key)
            if value is None:
                value = turn.number(extra.low, extra.high)
            if value is None:
                turn.say("debrief.bad_rating", low=extra.low, high=extra.high)
                return
            debrief.ratings = {**debrief.ratings, extra.key: value}
    elif step == "quantity":
        quantity = llm_steps.confirmed(turn, "quantity")
        if quantity is None:
            quantity = turn.number(0, 4)
        if quantity is None:
            turn.say("debrief.bad_quantity")
            return
        debrief.quantity = quantity
        debrief.status, debrief.completed_at = DebriefStatus.COMPLETE, turn.now
        occasion = turn.session.get(Occasion, debrief.occasion_id) if debrief.occasion_id else None
        debrief.criteria = judged(turn.prompts, debrief, [e.key for e in _extras(turn, debrief)], occasion)
        turn.session.add(debrief)
        assert turn.client is not None
        history.count_debrief(  # the trend reads weekly sums, not every debrief (dialogs.history)
            turn.session,
            client_id=debrief.client_id,
            timezone=turn.client.timezone,
            started_at=debrief.started_at,
            quantity=quantity,
            met=len(debrief.criteria),
        )
        turn.idle()
        turn.say("debrief.done", therapist=_therapist_name(turn))
        return
    turn.session.add(debrief)
    _after(turn, debrief, step)


# --- non-completion: problem-solving, never scolding ------------------------------


def start_obstacle(turn: Turn, _rest: str) -> None:
    homework = _which_homework(turn, DebriefKind.OBSTACLE)
    if homework is not None:
        _begin(turn, homework, DebriefKind.OBSTACLE)


def obstacle_step(turn: Turn) -> None:
    debrief = _debrief(turn)
    if debrief is None:
        return
    if turn.state.step == "what":
        debrief.obstacle = turn.free_text()
        turn.session.add(debrief)
        llm_steps.reflect(turn, debrief, "what", question_key="obstacle.ask_what", follow_up=False)
        turn.step("would_help")
        turn.say("obstacle.ask_would_help")
        return
    debrief.would_help = turn.free_text()
    debrief.status, debrief.completed_at = DebriefStatus.COMPLETE, turn.now
    turn.session.add(debrief)
    turn.idle()
    turn.say("obstacle.done", therapist=_therapist_name(turn))


# --- reminders: snooze, time zone, quiet hours ------------------------------------


_SNOOZE: Final = {
    "1h": "1h",
    "1": "1h",
    "1 hour": "1h",
    "an hour": "1h",
    "in an hour": "1h",
    "in 1 hour": "1h",
    "3h": "3h",
    "3": "3h",
    "3 hours": "3h",
    "in 3 hours": "3h",
    "tonight": "tonight",
}


def cmd_later(turn: Turn, rest: str) -> None:
    nudged = nudges.last_nudged(turn.session, client_id=_client(turn)[0])
    if nudged is None:
        turn.say("nudge.nothing_to_snooze")
        return
    if rest:
        turn.goto("snooze", "when", occasion_id=nudged.id)
        snooze_step(turn, rest)
        return
    turn.goto("snooze", "when", occasion_id=nudged.id)
    turn.say("nudge.ask_snooze", kind="choice", options=_snooze_options(turn))


def _snooze_options(turn: Turn) -> tuple[Option, ...]:
    return tuple(Option(v, turn.t(f"nudge.snooze_{v}")) for v in ("1h", "3h", "tonight"))


def snooze_step(turn: Turn, text: str | None = None) -> None:
    choice = _SNOOZE.get(" ".join((text or turn.text).casefold().split()))
    if choice is None:
        turn.say("nudge.bad_snooze", kind="choice", options=_snooze_options(turn))
        return
    client = turn.client
    occasion = turn.session.get(Occasion, turn.data.get("occasion_id"))
    homework = turn.session.get(Homework, occasion.homework_id) if occasion else None
    turn.idle()
    if client is None or occasion is None or homework is None:
        turn.say("nudge.nothing_to_snooze")
        return
    when = nudges.snooze(
        turn.session, client=client, homework=homework, settings=turn.settings, now=turn.now, choice=choice
    )
    occasion.status, occasion.closed_at = OccasionStatus.CANCELLED, turn.now  # superseded by the snoozed one
    turn.session.add(occasion)
    turn.say("nudge.snoozed", when=format_local(when, client.timezone or "UTC") if when else "—")


def cmd_timezone(turn: Turn, rest: str) -> None:
    client = turn.client
    if not rest or client is None:
        turn.say("nudge.timezone_usage")
        return
    zone = onboarding.zone_reply(turn, rest, command="/timezone ")
    if zone is None:
        return
    client.timezone = zone
    turn.session.add(client)
    nudges.replan_zone(turn.session, client=client, settings=turn.settings)
    turn.say("nudge.timezone_set", timezone=zone, local_now=onboarding.local_now(turn, zone))


def cmd_quiet(turn: Turn, rest: str) -> None:
    start_text, _, end_text = rest.replace("–", "-").replace(" to ", "-").partition("-")
    start, end = parse_clock_time(start_text), parse_clock_time(end_text)
    client = turn.client
    if start is None or end is None or client is None:
        turn.say("nudge.quiet_usage")
        return
    client.quiet_start, client.quiet_end = start.strftime("%H:%M"), end.strftime("%H:%M")
    turn.session.add(client)
    nudges.replan_zone(turn.session, client=client, settings=turn.settings)
    turn.say("nudge.quiet_set", start=client.quiet_start, end=client.quiet_end)


# --- free notes ------------------------------------------------------------------


def cmd_log(turn: Turn, rest: str) -> None:
    if rest:
        _log_text(turn, rest)
    else:
        turn.goto("log", "text")
        turn.say("log.ask")


def _log_text(turn: Turn, text: str) -> None:
    homework = q.current_homework(turn.session, client_id=_client(turn)[0])
    if homework is None:
        _save_log(turn, text, None)
        return
    turn.goto("log", "attach", text=text, homework_id=homework.id)
    turn.say("log.ask_attach", kind="choice", options=turn.yes_no(), title=homework.title)


def _save_log(turn: Turn, text: str, homework_id: int | None) -> None:
    turn.session.add(LogEntry(client_id=_client(turn)[0], homework_id=homework_id, text=text, created_at=turn.now))
    turn.idle()
    turn.say("log.saved")


def log_step(turn: Turn) -> None:
    if turn.state.step == "text":
        _log_text(turn, turn.text)
        return
    if turn.is_("yes") or turn.is_("no"):
        _save_log(turn, str(turn.data.get("text", "")), turn.data.get("homework_id") if turn.is_("yes") else None)
    else:
        turn.say("join.consent_unclear", kind="choice", options=turn.yes_no())


COMMANDS: Final[dict[str, Callable[[Turn, str], None]]] = {
    "help": cmd_help,
    "homework": cmd_homework,
    "done": start_debrief,
    "debrief": start_debrief,
    "didnt": start_obstacle,
    "notdone": start_obstacle,
    "log": cmd_log,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "stop": cmd_stop,
    "later": cmd_later,
    "snooze": cmd_later,
    "timezone": cmd_timezone,
    "quiet": cmd_quiet,
    "mydata": cmd_mydata,
    "delete": cmd_delete,
    "plan": safety_plan.client_plan,
    "questionnaire": measures.cmd_questionnaire,
}
THERAPIST_ONLY: Final = frozenset(
    {"invite", "clients", "homeworks", "close", "session", "digest", "ack", "note", "measure", "reviewed"}
)

FLOWS: Final[dict[str, Callable[[Turn], None]]] = {
    "delivery": lambda turn: {
        "own_words": delivery_own_words,
        "confidence": delivery_confidence,
        "importance": delivery_importance,
        "smaller": delivery_smaller,
    }[turn.state.step](turn),
    "debrief": debrief_step,
    "obstacle": obstacle_step,
    "pick": pick_step,
    "log": log_step,
    "delete": delete_step,
    "snooze": lambda turn: snooze_step(turn),
    measures.FLOW: measures.step,
}
