"""Outcome measures in chat: PHQ-9 and GAD-7, one item at a time, scored with the published bands.

The therapist sets a schedule (``/measure NAME phq9 weekly``); the sweep asks
at the client's reminder time, never in quiet hours, within the daily cap,
never while a crisis hold is on, and at most one questionnaire per local
day. Answers are kept as they come (an interrupted questionnaire resumes
where it stopped); "later" postpones to the next day. PHQ-9 item 9 above 0
goes to the safety path at once (the direct question and an alert to the
therapist, :func:`dialogs.guard.ask_directly`), before the remaining items,
which resume after the client has answered it. Every free-text message
during a questionnaire is still screened first, by the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, Final

import yaml
from sqlmodel import Session, col, select

from dialogs import guard, nudges
from dialogs.clinical import require_client
from dialogs.messages import Option, Outbound, enqueue
from dialogs.timeparse import format_local, local_to_utc, utc_to_local
from dialogs.turn import IDLE, DialogSettings, Turn
from prompts import PROMPTS_DIR, Prompts, fold
from storage import (
    Client,
    ClientStatus,
    MeasureResponse,
    MeasureSchedule,
    MeasureStatus,
    Therapist,
)
from storage import queries as q

FLOW: Final = "measure"
CADENCES: Final = ("weekly", "before_session", "once")
WEEK: Final = timedelta(days=7)
BATCH: Final = 200
NOT_YET_RETRY: Final = timedelta(hours=12)  # a client who cannot be asked yet (not joined) is looked at again
# The dialog data key that marks a questionnaire waiting for its safety question's answer.
HELD: Final = "held"


@dataclass(frozen=True)
class Instrument:
    key: str
    name: str
    about: str
    source: str
    stem: str
    items: tuple[str, ...]
    bands: tuple[tuple[int, str], ...]  # (lowest total, band), ascending
    options: tuple[str, ...]  # the answer labels, 0..3
    safety_item: int | None = None  # 1-based; above 0 → the safety path at once
    # An unscored closing question with its own options (the PHQ-9's difficulty question), or None.
    difficulty: tuple[str, tuple[str, ...]] | None = None

    @property
    def max_score(self) -> int:
        return 3 * len(self.items)

    @property
    def length(self) -> int:
        """Every question asked, the unscored closing one included."""
        return len(self.items) + (1 if self.difficulty else 0)

    def question(self, index: int) -> tuple[str, tuple[str, ...]]:
        """The ``index``-th question (0-based) and its answer options."""
        if index < len(self.items):
            return self.items[index], self.options
        assert self.difficulty is not None
        return self.difficulty


@cache
def instruments(locale: str = "en") -> dict[str, Instrument]:
    """The questionnaires of one locale (prompts/measures/<locale>.yaml), with their source and bands."""
    with (PROMPTS_DIR / "measures" / f"{locale}.yaml").open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    options = tuple(str(o) for o in data["options"])
    return {
        key: Instrument(
            key=key,
            name=str(spec["name"]),
            about=str(spec["about"]),
            source=str(spec["source"]),
            stem=str(spec["stem"]),
            items=tuple(str(i) for i in spec["items"]),
            bands=tuple((int(low), str(band)) for low, band in spec["bands"]),
            options=options,
            safety_item=spec.get("safety_item"),
            difficulty=(
                (str(spec["difficulty"]["question"]), tuple(str(o) for o in spec["difficulty"]["options"]))
                if spec.get("difficulty")
                else None
            ),
        )
        for key, spec in data["instruments"].items()
    }


def score(instrument: Instrument, answers: list[int]) -> tuple[int, str]:
    """The total of the scored items' answers (each 0–3) and its published severity band.

    ``answers`` may carry the unscored closing question's answer after the
    items; it does not count.
    """
    scored = answers[: len(instrument.items)]
    if len(scored) != len(instrument.items) or any(not 0 <= a <= 3 for a in answers):
        raise ValueError(f"{instrument.name} needs {len(instrument.items)} answers from 0 to 3")
    total = sum(scored)
    band = next(name for low, name in reversed(instrument.bands) if total >= low)
    return total, band


def instrument_named(typed: str, locale: str) -> Instrument | None:
    wanted = fold(typed).replace("-", "").replace(" ", "")
    return next((i for i in instruments(locale).values() if wanted in (i.key, fold(i.name).replace("-", ""))), None)


# --- planning ------------------------------------------------------------------------


def _at_nudge_time(client: Client, settings: DialogSettings, day: Any) -> datetime | None:
    hours, minutes = (client.nudge_time or settings.default_nudge_time).split(":")
    return nudges.due_utc(client, settings, day, datetime.min.replace(hour=int(hours), minute=int(minutes)).time())


def next_due(
    client: Client, settings: DialogSettings, cadence: str, now: datetime, *, after_today: bool = False
) -> datetime | None:
    """When to ask next: the client's reminder time today (if still ahead) or tomorrow; or the day before a session.

    None when it cannot be planned yet (no time zone; no next session).
    """
    if not client.timezone:
        return None
    local = utc_to_local(now, client.timezone)
    assert local is not None
    if cadence == "before_session":
        session_at = client.next_session_at
        if session_at is None or session_at <= now:
            return None
        session_local = utc_to_local(session_at, client.timezone)
        assert session_local is not None
        due = _at_nudge_time(client, settings, session_local.date() - timedelta(days=1))
        return due if due is not None and due > now else None
    day = local.date() + timedelta(days=1 if after_today else 0)
    due = _at_nudge_time(client, settings, day)
    if due is not None and due <= now:
        due = _at_nudge_time(client, settings, day + timedelta(days=1))
    return due


def replan_sessions(session: Session, *, client: Client, settings: DialogSettings, now: datetime) -> None:
    """A new session time moves every "before each session" questionnaire of this client."""
    for schedule in session.exec(
        select(MeasureSchedule).where(
            MeasureSchedule.client_id == client.id, MeasureSchedule.cadence == "before_session"
        )
    ):
        schedule.due_at = next_due(client, settings, schedule.cadence, now)
        session.add(schedule)


def set_schedule(
    session: Session, *, client: Client, instrument: Instrument, cadence: str, settings: DialogSettings, now: datetime
) -> MeasureSchedule:
    """Create or change the client's schedule for ``instrument`` (the caller audits, with its own actor)."""
    schedule = session.exec(
        select(MeasureSchedule).where(
            MeasureSchedule.client_id == client.id, MeasureSchedule.instrument == instrument.key
        )
    ).first() or MeasureSchedule(
        client_id=client.id or 0,
        therapist_id=client.therapist_id,
        instrument=instrument.key,
        cadence=cadence,
        created_at=now,
    )
    schedule.cadence = cadence
    # Not joined yet (no time zone): due now, so the sweep plans it at their reminder time once it can.
    schedule.due_at = next_due(client, settings, cadence, now) or (now if cadence != "before_session" else None)
    session.add(schedule)
    return schedule


def cmd_measure(turn: Turn, rest: str) -> None:
    """``/measure NAME phq9|gad7 [weekly|before-session|once|off]`` (weekly when no cadence is given)."""
    usage = turn.t("measure.usage")
    found = require_client(turn, rest, usage)
    if found is None:
        return
    client, remainder = found
    words = remainder.split()
    instrument = instrument_named(words[0], turn.prompts.locale) if words else None
    if instrument is None:
        turn.say("measure.unknown", usage=usage)
        return
    cadence = words[1].casefold().replace("-", "_") if len(words) > 1 else "weekly"
    existing = turn.session.exec(
        select(MeasureSchedule).where(
            MeasureSchedule.client_id == client.id, MeasureSchedule.instrument == instrument.key
        )
    ).first()
    if cadence == "off":
        if existing is None:
            turn.say("measure.not_set", name=instrument.name, client=client.name)
            return
        turn.session.delete(existing)
        turn.audit("measure.off", client, instrument=instrument.key)
        turn.say("measure.off", name=instrument.name, client=client.name)
        return
    if cadence not in CADENCES:
        turn.say("therapist.usage", usage=usage)
        return
    schedule = set_schedule(
        turn.session, client=client, instrument=instrument, cadence=cadence, settings=turn.settings, now=turn.now
    )
    turn.audit("measure.set", client, instrument=instrument.key, cadence=cadence)
    label = turn.t(f"measure.cadence.{cadence}")
    if schedule.due_at is not None and client.timezone:
        zone = turn.therapist.timezone if turn.therapist else "UTC"
        when = format_local(schedule.due_at, zone) or schedule.due_at.isoformat()
        turn.say("measure.set", name=instrument.name, client=client.name, cadence=label, when=when)
    elif cadence == "before_session" and client.timezone:
        turn.say("measure.set_no_session", name=instrument.name, client=client.name)
    else:
        turn.say("measure.set_no_zone", name=instrument.name, client=client.name, cadence=label)


# --- asking ----------------------------------------------------------------------------


def _item_message(prompts: Prompts, instrument: Instrument, index: int) -> Outbound:
    question, labels = instrument.question(index)
    text = prompts.text("measure.item", n=index + 1, count=instrument.length, item=question)
    options = tuple(Option(str(n), label) for n, label in enumerate(labels))
    return Outbound(text, kind="choice", options=options, prompt_key="measure.item", prompt_version=prompts.version)


def _in_progress(session: Session, client_id: int, instrument: str | None = None) -> MeasureResponse | None:
    statement = select(MeasureResponse).where(
        MeasureResponse.client_id == client_id, MeasureResponse.status == MeasureStatus.IN_PROGRESS
    )
    if instrument is not None:
        statement = statement.where(MeasureResponse.instrument == instrument)
    return session.exec(statement.order_by(col(MeasureResponse.started_at).desc())).first()


def begin(
    session: Session, *, prompts: Prompts, client: Client, instrument: Instrument, now: datetime
) -> list[Outbound]:
    """Start (or resume) a questionnaire in the client's chat state; returns the messages to send there.

    The caller has checked that the chat is idle; the state, the response row
    and the messages land in its unit of work.
    """
    response = _in_progress(session, client.id or 0, instrument.key)
    therapist = session.get(Therapist, client.therapist_id)
    messages: list[Outbound] = []
    if response is None:
        response = MeasureResponse(client_id=client.id or 0, instrument=instrument.key, started_at=now, answers=[])
        session.add(response)
        session.flush()
        intro = prompts.text(
            "measure.intro",
            therapist=therapist.name if therapist else "",
            name=instrument.name,
            count=instrument.length,
            stem=instrument.stem,
        )
        messages.append(Outbound(intro, prompt_key="measure.intro", prompt_version=prompts.version))
    else:
        resume = prompts.text("measure.resume", name=instrument.name, n=len(response.answers), count=instrument.length)
        messages.append(Outbound(resume, prompt_key="measure.resume", prompt_version=prompts.version))
    messages.append(_item_message(prompts, instrument, len(response.answers)))
    identity = q.latest_identity(session, client_id=client.id)
    if identity is not None:
        state = q.conversation(session, channel=identity.channel, address=identity.address, now=now)
        state.flow, state.step, state.data = FLOW, "item", {"response_id": response.id}
        state.updated_at = now
        session.add(state)
    return messages


def _response(turn: Turn) -> tuple[MeasureResponse, Instrument] | None:
    response = turn.session.get(MeasureResponse, turn.data.get("response_id"))
    if response is None or turn.client is None or response.client_id != turn.client.id:
        return None
    instrument = instruments(turn.prompts.locale).get(response.instrument)
    return (response, instrument) if instrument is not None else None


def _answer(turn: Turn, instrument: Instrument, index: int) -> int | None:
    number = turn.number(0, 3)
    if number is not None:
        return number
    typed = fold(turn.text)
    return next((n for n, label in enumerate(instrument.question(index)[1]) if fold(label) == typed), None)


def _postpone(turn: Turn, response: MeasureResponse) -> None:
    """ "later": the answers so far are kept; asked again from the next day (one questionnaire a day)."""
    assert turn.client is not None
    schedule = turn.session.exec(
        select(MeasureSchedule).where(
            MeasureSchedule.client_id == turn.client.id, MeasureSchedule.instrument == response.instrument
        )
    ).first()
    if schedule is not None:
        schedule.due_at = next_due(turn.client, turn.settings, "weekly", turn.now, after_today=True)
        turn.session.add(schedule)
    turn.idle()
    turn.say("measure.later")


def step(turn: Turn) -> None:
    """One answer (a number 0–3 or the option's words), "later", or anything else (the item again)."""
    found = _response(turn)
    if found is None:
        turn.idle()
        turn.say("measure.nothing")
        return
    response, instrument = found
    if turn.is_("later"):
        _postpone(turn, response)
        return
    if turn.data.get(HELD):
        # The safety question went unanswered twice and the dialog goes on: show where we are
        # rather than read this message as the next item's answer.
        turn.step("item", **{HELD: False})
        _send_next(turn, response, instrument, resumed=True)
        return
    value = _answer(turn, instrument, len(response.answers))
    if value is None:
        if turn.data.get("unclear"):
            # Twice not an answer: the client is somewhere else. Postpone rather than hold the chat (a
            # questionnaire left open would keep every reminder waiting).
            _postpone(turn, response)
            return
        current = _item_message(turn.prompts, instrument, len(response.answers)).options
        labels = {f"o{n}": option.label for n, option in enumerate(current)}
        turn.step("item", unclear=True)
        turn.say("measure.bad_answer", kind="choice", options=current, **labels)
        return
    turn.step("item", unclear=False)
    response.answers = [*response.answers, value]
    turn.session.add(response)
    index = len(response.answers)
    if instrument.safety_item is not None and index == instrument.safety_item and value > 0:
        # Item 9 above 0: the safety path now, before the remaining items (never at the end).
        turn.step("item", **{HELD: True})
        # The flag (and the therapist's alert) quotes what was answered, not a bare "1" from a button.
        typed, turn.text = turn.text, turn.t(
            "measure.item9_quote", item=instrument.items[index - 1], answer=instrument.options[value]
        )
        guard.ask_directly(turn, turn.t("measure.item9_reason", value=value), score=value / 3, alert=True)
        turn.text = typed
        return
    if index < instrument.length:
        turn.sends.append((turn.inbound.channel, turn.inbound.address, _item_message(turn.prompts, instrument, index)))
        return
    response.score, response.band = score(instrument, response.answers)
    response.status, response.completed_at = MeasureStatus.COMPLETE, turn.now
    turn.session.add(response)
    turn.audit("measure.complete", turn.client, instrument=instrument.key)
    turn.idle()
    therapist = turn.session.get(Therapist, turn.client.therapist_id) if turn.client else None
    turn.say("measure.done", therapist=therapist.name if therapist else "")


def _send_next(turn: Turn, response: MeasureResponse, instrument: Instrument, *, resumed: bool) -> None:
    if resumed:
        turn.say("measure.resume", name=instrument.name, n=len(response.answers), count=instrument.length)
    index = len(response.answers)
    if index < instrument.length:
        turn.sends.append((turn.inbound.channel, turn.inbound.address, _item_message(turn.prompts, instrument, index)))


def after_screen(turn: Turn) -> None:
    """After the screen handled a message: a questionnaire whose safety question was answered "no" goes on.

    (A "yes" took the crisis path, which ends the flow: the answers so far are
    kept, and the questionnaire resumes when it is next asked or with
    /questionnaire.)
    """
    if turn.state.flow != FLOW or not turn.data.get(HELD) or guard.PENDING_QUESTION in turn.data:
        return
    found = _response(turn)
    turn.step("item", **{HELD: False})
    if found is not None:
        _send_next(turn, *found, resumed=True)


def cmd_questionnaire(turn: Turn, _rest: str) -> None:
    """``/questionnaire`` from a client: carry on with a half-finished one."""
    assert turn.client is not None
    response = _in_progress(turn.session, turn.client.id or 0)
    instrument = instruments(turn.prompts.locale).get(response.instrument) if response else None
    if instrument is None:
        turn.say("measure.nothing")
        return
    turn.sends.extend(
        (turn.inbound.channel, turn.inbound.address, m)
        for m in begin(turn.session, prompts=turn.prompts, client=turn.client, instrument=instrument, now=turn.now)
    )


# --- the sweep -------------------------------------------------------------------------


def send_due_measures(session: Session, *, prompts: Prompts, settings: DialogSettings, now: datetime) -> int:
    """Ask the questionnaires that are due; returns how many were started (or resumed).

    Claims due schedules with ``SKIP LOCKED``; a client who cannot be asked
    now (chat busy, quiet hours, the daily cap, already asked one today) is
    deferred, one who is paused, stopped, on a crisis hold or unreachable is
    tried again the next day. The schedule moves on in the same transaction
    as the messages, so each is asked once.
    """
    due = session.exec(
        select(MeasureSchedule)
        .where(col(MeasureSchedule.due_at) <= now)
        .order_by(col(MeasureSchedule.due_at))
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    ).all()
    started = 0
    catalogue = instruments(prompts.locale)
    for schedule in due:
        client = session.get(Client, schedule.client_id)
        instrument = catalogue.get(schedule.instrument)
        if client is None or instrument is None:
            schedule.due_at = None
            session.add(schedule)
            continue
        tomorrow = next_due(client, settings, "weekly", now, after_today=True) or now + NOT_YET_RETRY
        chat = q.latest_identity(session, client_id=client.id)
        if (
            chat is None
            or client.status != ClientStatus.ACTIVE
            or client.crisis_since is not None
            or client.unreachable_at is not None
        ):
            schedule.due_at = tomorrow
            session.add(schedule)
            continue
        # Only at the client's reminder time (within the catch-up grace): a schedule set before they
        # joined, deferred while busy, or planned before their zone or quiet hours changed moves to it.
        slot = next_due(client, settings, "weekly", now - settings.catch_up_grace)
        if slot is not None and slot > now:
            schedule.due_at = slot
            session.add(schedule)
            continue
        state = q.conversation(session, channel=chat.channel, address=chat.address, now=now)
        if state.flow != IDLE:
            schedule.due_at = now + settings.busy_retry
            session.add(schedule)
            continue
        # One questionnaire a local day, and the daily cap every scheduler message counts against.
        if _asked_today(session, client, now) or not nudges._within_cap(client, settings, now):
            schedule.due_at = tomorrow
            session.add(schedule)
            continue
        for message in begin(session, prompts=prompts, client=client, instrument=instrument, now=now):
            enqueue(session, channel=chat.channel, address=chat.address, message=message, now=now)
        session.add(client)
        started += 1
        if schedule.cadence == "weekly":
            schedule.due_at = next_due(client, settings, "weekly", now + WEEK - timedelta(hours=12))
        elif schedule.cadence == "before_session":
            schedule.due_at = None  # planned again when the next session is set (replan_sessions)
        else:
            schedule.due_at = None
        session.add(schedule)
    return started


def _asked_today(session: Session, client: Client, now: datetime) -> bool:
    local = utc_to_local(now, client.timezone or "UTC")
    assert local is not None
    start = local_to_utc(local.date(), datetime.min.time(), client.timezone or "UTC") or now
    return (
        session.exec(
            select(MeasureResponse.id).where(
                MeasureResponse.client_id == client.id, col(MeasureResponse.started_at) >= start
            )
        ).first()
        is not None
    )


# --- the digest --------------------------------------------------------------------------

TREND_POINTS: Final = 6
# A rise this large between two administrations is worth asking about (about the reliable-change
# size of both scales; the therapist judges what it means).
WORSE_BY: Final = 5


@dataclass(frozen=True)
class MeasureView:
    """One questionnaire in the digest: the latest score and band, the change since the one before, the trend."""

    instrument: str
    name: str
    score: int | None  # None: only a half-finished administration so far
    max_score: int
    band: str | None
    when: datetime
    previous: int | None
    previous_when: datetime | None
    trend: tuple[tuple[datetime, int], ...]  # oldest first
    item9: int | None  # PHQ-9 item 9 of the latest administration that reached it
    answered: int  # items answered in an unfinished administration (0 when none is open)
    count: int

    @property
    def change(self) -> int | None:
        return None if self.score is None or self.previous is None else self.score - self.previous


def digest_views(session: Session, *, client_id: int, locale: str) -> tuple[MeasureView, ...]:
    """Each questionnaire this client has answered (or started), latest first by instrument order."""
    catalogue = instruments(locale)
    views: list[MeasureView] = []
    responses = session.exec(
        select(MeasureResponse)
        .where(MeasureResponse.client_id == client_id)
        .order_by(col(MeasureResponse.started_at).desc())
        .limit(50)
    ).all()
    for key, instrument in catalogue.items():
        mine = [r for r in responses if r.instrument == key]
        if not mine:
            continue
        done = [r for r in mine if r.status == MeasureStatus.COMPLETE and r.score is not None]
        open_ = next((r for r in mine if r.status == MeasureStatus.IN_PROGRESS), None)
        latest = done[0] if done else None
        item9 = None
        if instrument.safety_item is not None:
            reached = next((r for r in mine if len(r.answers) >= instrument.safety_item), None)
            item9 = reached.answers[instrument.safety_item - 1] if reached else None
        views.append(
            MeasureView(
                instrument=key,
                name=instrument.name,
                score=latest.score if latest else None,
                max_score=instrument.max_score,
                band=latest.band if latest else None,
                when=(latest.completed_at or latest.started_at) if latest else mine[0].started_at,
                previous=done[1].score if len(done) > 1 else None,
                previous_when=(done[1].completed_at or done[1].started_at) if len(done) > 1 else None,
                trend=tuple(((r.completed_at or r.started_at), r.score or 0) for r in reversed(done[:TREND_POINTS])),
                item9=item9,
                answered=len(open_.answers) if open_ else 0,
                count=instrument.length,
            )
        )
    return tuple(views)


@dataclass(frozen=True)
class ChartPoint:
    x: float
    y: float
    score: int
    when: datetime


def chart_points(views: tuple[MeasureView, ...], *, width: float = 600, height: float = 160) -> list[dict[str, Any]]:
    """Per questionnaire, its scores as points of a small line chart scaled to its maximum (the dashboard's SVG)."""
    charts = []
    for view in views:
        if not view.trend:
            continue
        step = width / max(len(view.trend) - 1, 1)
        points = [
            ChartPoint(round(i * step, 1), round(height - height * score / view.max_score, 1), score, when)
            for i, (when, score) in enumerate(view.trend)
        ]
        charts.append({"view": view, "points": points, "path": " ".join(f"{p.x},{p.y}" for p in points)})
    return charts
