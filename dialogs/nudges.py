"""Nudges: planning a homework's occasions in local time, and deciding what the scheduler sends when.

Times are agreed in the client's local time and stored twice: the local date
and "HH:MM" as agreed, and ``due_at`` in UTC for the client's current zone,
already moved out of quiet hours. A zone change recomputes ``due_at`` from
the local values, so an 18:00 nudge stays at 18:00 where the client is, across
DST and moves.

Everything here runs inside the caller's unit of work. The sweep functions
claim due rows with ``FOR UPDATE SKIP LOCKED`` (a no-op on SQLite, where one
process runs the scheduler), decide, and enqueue outbox rows in the same
transaction: a process killed before commit leaves the rows planned, and the
next sweep sends them once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, Final

from sqlalchemy import func, insert, literal, tuple_, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from dialogs.messages import Option, Outbound
from dialogs.timeparse import local_to_utc, parse_clock_time, utc_to_local
from dialogs.turn import IDLE, DialogSettings
from prompts import Prompts
from storage import (
    Client,
    ClientStatus,
    ConversationState,
    Homework,
    HomeworkStatus,
    Identity,
    Occasion,
    OutboxMessage,
)
from storage import queries as q
from storage.models import BULK, OccasionStatus

WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BATCH: Final = 1000
_DAY_WORDS: Final[dict[str, tuple[str, ...]]] = {
    **{d: (d,) for d in WEEKDAYS},
    **{full: (full[:3],) for full in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")},
    "tues": ("tue",),
    "thur": ("thu",),
    "thurs": ("thu",),
    "weekdays": WEEKDAYS[:5],
    "weekends": WEEKDAYS[5:],
    "weekend": WEEKDAYS[5:],
    "daily": WEEKDAYS,
    "everyday": WEEKDAYS,
}


# --- parsing a plan ----------------------------------------------------------------


def parse_plan(text: str) -> tuple[str | None, str] | None:
    """``"mon, wed 8am and 6pm"`` → ``("mon,wed", "08:00,18:00")``; days None means every day.

    Returns None if any part is neither a day word nor a time, or no time is given.
    """
    days: set[str] = set()
    times: set[str] = set()
    cleaned = text.casefold().replace(" and ", ",").replace(";", ",").replace("every day", "daily")
    for part in (p.strip() for p in cleaned.split(",")):
        if not part:
            continue
        # A part may be "mon wed 18:00" or "6 pm": peel day words off the front.
        words = part.split()
        while words and words[0].strip(".") in _DAY_WORDS:
            days.update(_DAY_WORDS[words.pop(0).strip(".")])
        if not words:
            continue
        at = parse_clock_time(" ".join(words))
        if at is None:
            return None
        times.add(at.strftime("%H:%M"))
    if not times:
        return None
    day_list = None if not days or days == set(WEEKDAYS) else ",".join(d for d in WEEKDAYS if d in days)
    return day_list, ",".join(sorted(times))


# --- local time and quiet hours ---------------------------------------------------------


def _hm(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def out_of_quiet(day: date, at: time, quiet_start: time, quiet_end: time) -> tuple[date, time]:
    """Move a local moment that falls in quiet hours to the end of them (never earlier).

    Quiet hours may span midnight (21:30–08:00) or not (13:00–14:00); equal
    start and end mean none.
    """
    if quiet_start == quiet_end:
        return day, at
    if quiet_start > quiet_end:  # spans midnight
        if at >= quiet_start:
            return day + timedelta(days=1), quiet_end
        if at < quiet_end:
            return day, quiet_end
    elif quiet_start <= at < quiet_end:
        return day, quiet_end
    return day, at


def in_quiet(at: time, quiet_start: time, quiet_end: time) -> bool:
    """Whether a local time of day falls in quiet hours (start included, end not)."""
    return out_of_quiet(date(2000, 1, 3), at, quiet_start, quiet_end) != (date(2000, 1, 3), at)


def nearest_allowed(at: time, quiet_start: time, quiet_end: time) -> time:
    """The allowed time of day nearest to ``at`` (a time in quiet hours), on the half hour.

    The candidates are the end of quiet hours and the last half hour before
    they start (21:00 for quiet hours from 21:30); the nearer one, going round
    the clock, wins, and the end wins a tie (a morning reminder over a late one).
    """

    def minutes(value: time) -> int:
        return value.hour * 60 + value.minute

    before_start = (minutes(quiet_start) - 1) // 30 * 30 % (24 * 60)
    late = time(before_start // 60, before_start % 60)
    candidates = [late] if not in_quiet(late, quiet_start, quiet_end) else []
    candidates.append(quiet_end)

    def distance(value: time) -> int:
        gap = abs(minutes(value) - minutes(at))
        return min(gap, 24 * 60 - gap)

    return min(reversed(candidates), key=distance)


def quiet_hours(client: Client, settings: DialogSettings) -> tuple[time, time]:
    return _hm(client.quiet_start or settings.quiet_start), _hm(client.quiet_end or settings.quiet_end)


def due_utc(client: Client, settings: DialogSettings, day: date, at: time) -> datetime | None:
    """The UTC instant of a local moment for this client, out of their quiet hours."""
    if not client.timezone:
        return None
    start, end = quiet_hours(client, settings)
    day, at = out_of_quiet(day, at, start, end)
    return local_to_utc(day, at, client.timezone)


def next_allowed(client: Client, settings: DialogSettings, instant: datetime) -> datetime:
    """``instant``, or the end of the client's quiet hours if it falls inside them."""
    local = utc_to_local(instant, client.timezone or "UTC")
    if local is None:
        return instant
    start, end = quiet_hours(client, settings)
    day, at = out_of_quiet(local.date(), local.time(), start, end)
    if (day, at) == (local.date(), local.time()):
        return instant
    return local_to_utc(day, at, client.timezone or "UTC") or instant


# --- planning -------------------------------------------------------------------------


def plan(
    session: Session,
    *,
    homework: Homework,
    client: Client,
    settings: DialogSettings,
    now: datetime,
    after: date | None = None,
) -> int:
    """(Re)plan a homework's future nudges from today to its due date (or the horizon).

    Planned occasions not yet sent are replaced; sent ones are history. With
    ``after`` the existing plan is kept and extended from the day after it.
    Returns how many were planned.
    """
    if after is None:
        cancel_planned(session, homework_id=homework.id or 0, now=now)
    if homework.status != HomeworkStatus.OPEN or not client.timezone:
        return 0
    local_now = utc_to_local(now, client.timezone)
    if local_now is None:
        return 0
    last = homework.due or local_now.date() + timedelta(days=settings.horizon_days - 1)
    times = [_hm(t) for t in (homework.nudges or client.nudge_time or settings.default_nudge_time).split(",")]
    days = set(homework.nudge_days.split(",")) if homework.nudge_days else set(WEEKDAYS)
    planned = 0
    day = max(local_now.date(), after + timedelta(days=1)) if after else local_now.date()
    while day <= last and planned < settings.max_planned:
        if WEEKDAYS[day.weekday()] in days:
            for at in times:
                due = due_utc(client, settings, day, at)
                if due is not None and due > now:
                    session.add(
                        Occasion(
                            homework_id=homework.id or 0,
                            client_id=client.id or 0,
                            local_date=day,
                            local_time=at.strftime("%H:%M"),
                            due_at=due,
                        )
                    )
                    planned += 1
        day += timedelta(days=1)
    return planned


def extend_plans(session: Session, *, settings: DialogSettings, now: datetime, limit: int = 500) -> int:
    """Keep open homework without a due date nudging: plan ahead again when fewer than half the horizon is left.

    Only active clients' delivered, open homework is extended; a due date
    already bounded its plan at delivery. Bounded by ``limit`` per sweep.
    Returns how many homework plans were extended.
    """
    soon = now + timedelta(days=settings.horizon_days / 2)
    ahead = (
        sa_select(col(Occasion.id))
        .where(col(Occasion.homework_id) == col(Homework.id), col(Occasion.due_at) > soon)
        .exists()
    )
    rows = session.exec(
        select(Homework, Client)
        .join(Client, col(Client.id) == col(Homework.client_id))
        .where(
            col(Homework.status) == HomeworkStatus.OPEN,
            col(Homework.delivered_at).is_not(None),
            col(Homework.due).is_(None),
            col(Client.status) == ClientStatus.ACTIVE,
            ~ahead,
        )
        .limit(limit)
        # Two schedulers must not extend the same plan twice (that would double its nudges).
        .with_for_update(skip_locked=True, of=Homework)
    ).all()
    # Where each plan ends now: one grouped query for the batch, not one per homework.
    last_days: dict[int, date] = (
        {
            homework_id: day
            for homework_id, day in session.execute(
                sa_select(col(Occasion.homework_id), func.max(col(Occasion.local_date)))
                .where(col(Occasion.homework_id).in_([homework.id for homework, _ in rows]))
                .group_by(col(Occasion.homework_id))
            )
        }
        if rows
        else {}
    )
    for homework, client in rows:
        plan(
            session, homework=homework, client=client, settings=settings, now=now, after=last_days.get(homework.id or 0)
        )
    return len(rows)


def cancel_planned(session: Session, *, homework_id: int, now: datetime) -> None:
    for occasion in session.exec(
        select(Occasion).where(Occasion.homework_id == homework_id, Occasion.status == OccasionStatus.PLANNED)
    ):
        occasion.status, occasion.closed_at = OccasionStatus.CANCELLED, now
        session.add(occasion)


def replan_zone(session: Session, *, client: Client, settings: DialogSettings) -> int:
    """After a zone change: each planned nudge keeps its local date and time, at the new zone's instant."""
    changed = 0
    for occasion in session.exec(
        select(Occasion).where(Occasion.client_id == client.id, Occasion.status == OccasionStatus.PLANNED)
    ):
        due = due_utc(client, settings, occasion.local_date, _hm(occasion.local_time))
        if due is not None:
            occasion.due_at = due
            session.add(occasion)
            changed += 1
    return changed


def snooze(
    session: Session, *, client: Client, homework: Homework, settings: DialogSettings, now: datetime, choice: str
) -> datetime | None:
    """Plan one more nudge after "later": in 1 h, in 3 h, or tonight (20:00 local, else in 1 h)."""
    if not client.timezone:
        return None
    if choice == "tonight":
        local_now = utc_to_local(now, client.timezone)
        tonight = local_to_utc(local_now.date(), settings.tonight, client.timezone) if local_now else None
        instant = tonight if tonight is not None and tonight > now else now + timedelta(hours=1)
    else:
        instant = now + timedelta(hours=3 if choice == "3h" else 1)
    instant = next_allowed(client, settings, instant)
    local = utc_to_local(instant, client.timezone)
    assert local is not None
    session.add(
        Occasion(
            homework_id=homework.id or 0,
            client_id=client.id or 0,
            kind="snooze",
            local_date=local.date(),
            local_time=local.strftime("%H:%M"),
            due_at=instant,
        )
    )
    return instant


def mark_answered(session: Session, *, homework_id: int, client: Client, now: datetime) -> int | None:
    """A debrief started: the latest nudge it answers, and today's still-planned ones, are settled.

    Returns the id of the answered occasion (for the debrief), if any. A
    client who reports before the nudge is not nudged about it afterwards.
    """
    answered = session.exec(
        select(Occasion)
        .where(
            Occasion.homework_id == homework_id,
            col(Occasion.status).in_((OccasionStatus.SENT, OccasionStatus.FOLLOWED_UP)),
        )
        .order_by(col(Occasion.sent_at).desc())
        .limit(1)
    ).first()
    local_now = utc_to_local(now, client.timezone or "UTC")
    today = local_now.date() if local_now else None
    settled = [answered] if answered else []
    settled += session.exec(
        select(Occasion).where(
            Occasion.homework_id == homework_id,
            Occasion.status == OccasionStatus.PLANNED,
            Occasion.local_date == today,
        )
    ).all()
    for occasion in settled:
        occasion.status, occasion.closed_at = OccasionStatus.ANSWERED, now
        session.add(occasion)
    return answered.id if answered else None


def last_nudged(session: Session, *, client_id: int) -> Occasion | None:
    """The most recent nudge still waiting for an answer: what "later" refers to."""
    return session.exec(
        select(Occasion)
        .where(
            Occasion.client_id == client_id,
            col(Occasion.status).in_((OccasionStatus.SENT, OccasionStatus.FOLLOWED_UP)),
        )
        .order_by(col(Occasion.sent_at).desc())
        .limit(1)
    ).first()


# --- the sweep --------------------------------------------------------------------------


@dataclass
class SweepCounts:
    sent: int = 0
    followed_up: int = 0
    not_reviewed: int = 0
    missed: int = 0
    skipped: int = 0
    deferred: int = 0
    digests: int = 0


@dataclass(frozen=True)
class _Context:
    """What a batch of due occasions needs, loaded in four queries instead of four per row."""

    clients: dict[int, Client]
    homeworks: dict[int, Homework]
    chats: dict[int, Identity]
    states: dict[tuple[str, str], ConversationState]


def _load(session: Session, occasions: Sequence[Occasion]) -> _Context:
    client_ids = {o.client_id for o in occasions}
    clients = {c.id or 0: c for c in session.exec(select(Client).where(col(Client.id).in_(client_ids)))}
    homework_ids = {o.homework_id for o in occasions}
    homeworks = {h.id or 0: h for h in session.exec(select(Homework).where(col(Homework.id).in_(homework_ids)))}
    chats: dict[int, Identity] = {}
    for identity in session.exec(
        select(Identity).where(col(Identity.client_id).in_(client_ids)).order_by(col(Identity.id))
    ):
        chats[identity.client_id or 0] = identity  # the latest linked chat wins
    keys = [(i.channel, i.address) for i in chats.values()]
    states = (
        {
            (s.channel, s.address): s
            for s in session.exec(
                select(ConversationState).where(
                    tuple_(col(ConversationState.channel), col(ConversationState.address)).in_(keys)
                )
            )
        }
        if keys
        else {}
    )
    return _Context(clients, homeworks, chats, states)


def _claim(session: Session, *, statuses: Iterable[str], column: object, before: datetime) -> Sequence[Occasion]:
    return session.exec(
        select(Occasion)
        .where(col(Occasion.status).in_(tuple(statuses)), column <= before)  # type: ignore[operator]
        .order_by(col(Occasion.id))
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    ).all()


def _reachable(client: Client | None) -> bool:
    return (
        client is not None
        and client.status == ClientStatus.ACTIVE
        and client.crisis_since is None
        and client.unreachable_at is None
    )


def _local_today(zone: str | None, now: datetime) -> date:
    local = utc_to_local(now, zone or "UTC")
    return local.date() if local else now.date()


def _count_against_cap(day: date | None, sent: int, today: date, cap: int) -> tuple[date, int] | None:
    """The daily cap, in one place: the client's (day, count) after one more scheduler message, or None if full.

    The count belongs to the client's local day and starts again each day.
    """
    if day != today:
        sent = 0
    return None if sent >= cap else (today, sent + 1)


def _within_cap(client: Client, settings: DialogSettings, now: datetime) -> bool:
    """Count one scheduler message against the client's local-day cap, if there is room."""
    counted = _count_against_cap(
        client.scheduled_day, client.scheduled_count, _local_today(client.timezone, now), settings.daily_cap
    )
    if counted is None:
        return False
    client.scheduled_day, client.scheduled_count = counted
    return True


def reminder_payload(prompts: Prompts, homework_id: int, *, follow_up: bool) -> dict[str, Any]:
    """A reminder as the outbox stores it: by reference, with no client text.

    The sweep queues thousands at a time; decrypting each homework's title
    and encrypting it again into the payload was half its cost. The text is
    rendered when the row is read for delivery (:func:`outbound`), from the
    homework as it is then.
    """
    kind = "follow_up" if follow_up else "nudge"
    reference = Outbound("", kind="choice", options=_answers(prompts), ref={"type": kind, "homework_id": homework_id})
    return reference.to_payload()


def outbound(session: Session, prompts: Prompts, payload: dict[str, Any]) -> Outbound:
    """An outbox row's message, ready to deliver: a reminder stored by reference is rendered now."""
    ref = payload.get("ref") or {}
    homework_id = ref.get("homework_id")
    if ref.get("type") not in ("nudge", "follow_up") or not isinstance(homework_id, int) or payload.get("text"):
        return Outbound.from_payload(payload)
    homework = session.get(Homework, homework_id)
    title = homework.title if homework is not None else prompts.text("nudge.homework_gone")
    return _nudge(prompts, title, homework.what if homework else None, follow_up=ref["type"] == "follow_up")


def _nudge(prompts: Prompts, title: str, what: str | None, *, follow_up: bool) -> Outbound:
    """The reminder (or the follow-up), with a ``ref`` so adapters can use a template where they must."""
    key = "nudge.follow_up" if follow_up else "nudge.reminder"
    text = prompts.text(key, title=title, what=what or title)
    ref = {"type": "follow_up" if follow_up else "nudge", "title": title, "what": what or title}
    return Outbound(text, kind="choice", options=_answers(prompts), ref=ref)


def _answers(prompts: Prompts) -> tuple[Option, ...]:
    """What a reminder offers: done, didn't do it, later."""
    return (
        Option("done", prompts.text("nudge.done")),
        Option("didn't do it", prompts.text("nudge.not_done")),
        Option("later", prompts.text("nudge.later")),
    )


Cursor = tuple[datetime, int]


def send_due_nudges(
    session: Session,
    *,
    prompts: Prompts,
    settings: DialogSettings,
    now: datetime,
    counts: SweepCounts,
    after: Cursor | None = None,
) -> Cursor | None:
    """Claim one batch of due nudges and send, skip, defer or mark them.

    Returns the cursor to pass as ``after`` for the next batch of the same
    sweep, or None when nothing is left. This is the scheduler's hot path
    (100,000 due nudges must sweep in seconds), so it works on columns, not
    ORM objects: one claiming SELECT that continues from the cursor along the
    (status, due_at, id) index, four lookups for the whole batch, one UPDATE
    per outcome and one multi-row INSERT into the outbox.
    """
    conditions = [col(Occasion.status) == OccasionStatus.PLANNED, col(Occasion.due_at) <= now]
    if after is not None:
        conditions.append(tuple_(col(Occasion.due_at), col(Occasion.id)) > tuple_(literal(after[0]), literal(after[1])))
    due = session.execute(
        sa_select(
            col(Occasion.id),
            col(Occasion.client_id),
            col(Occasion.homework_id),
            col(Occasion.due_at),
            col(Client.status).label("client_status"),
            col(Client.crisis_since),
            col(Client.unreachable_at),
            col(Client.timezone),
            col(Client.scheduled_day),
            col(Client.scheduled_count),
            col(Homework.status).label("homework_status"),
        )
        .join(Client, col(Client.id) == col(Occasion.client_id))
        .join(Homework, col(Homework.id) == col(Occasion.homework_id))
        .where(*conditions)
        .order_by(col(Occasion.due_at), col(Occasion.id))
        .limit(BATCH)
        # Only the occasion rows are locked: clients and homework are read, not claimed.
        .with_for_update(skip_locked=True, of=Occasion)
    ).all()
    if not due:
        return None
    client_ids = {row.client_id for row in due}
    chats = {
        i.client_id: (i.channel, i.address)  # ordered by id: the latest linked chat wins
        for i in session.execute(
            sa_select(col(Identity.client_id), col(Identity.channel), col(Identity.address))
            .where(col(Identity.client_id).in_(client_ids))
            .order_by(col(Identity.id))
        )
    }
    # One-column IN (a tuple IN of a thousand pairs plans slowly); the channel is checked here.
    busy = (
        {
            (s.channel, s.address)
            for s in session.execute(
                sa_select(col(ConversationState.channel), col(ConversationState.address)).where(
                    col(ConversationState.address).in_({address for _, address in chats.values()}),
                    col(ConversationState.flow) != IDLE,
                )
            )
        }
        if chats
        else set()
    )

    outcome: dict[str, list[int]] = {
        status: []
        for status in (OccasionStatus.SENT, OccasionStatus.MISSED, OccasionStatus.CANCELLED, OccasionStatus.SKIPPED)
    }
    deferred: list[int] = []
    caps: dict[int, tuple[date, int]] = {}  # client → (local day, messages that day)
    outbox: list[dict[str, object]] = []
    payloads: dict[int, dict[str, object]] = {}
    today_in: dict[str, date] = {}
    for row in due:
        chat = chats.get(row.client_id)
        if row.due_at < now - settings.catch_up_grace:
            # Down for longer than the grace period: recorded, never sent in a burst.
            outcome[OccasionStatus.MISSED].append(row.id)
        elif row.homework_status != HomeworkStatus.OPEN:
            outcome[OccasionStatus.CANCELLED].append(row.id)
        elif (
            chat is None
            or row.client_status != ClientStatus.ACTIVE
            or row.crisis_since is not None
            or row.unreachable_at is not None
        ):
            outcome[OccasionStatus.SKIPPED].append(row.id)
        elif chat in busy:
            deferred.append(row.id)  # mid-conversation: a nudge now would be read as an answer
        else:
            zone = row.timezone or "UTC"
            if zone not in today_in:  # one zone conversion per zone per batch, not per row
                today_in[zone] = _local_today(zone, now)
            day, sent_today = caps.get(row.client_id) or (row.scheduled_day, row.scheduled_count)
            counted = _count_against_cap(day, sent_today, today_in[zone], settings.daily_cap)
            if counted is None:
                outcome[OccasionStatus.SKIPPED].append(row.id)
                continue
            caps[row.client_id] = counted
            if row.homework_id not in payloads:
                payloads[row.homework_id] = reminder_payload(prompts, row.homework_id, follow_up=False)
            outbox.append(
                {
                    "channel": chat[0],
                    "address": chat[1],
                    "payload": payloads[row.homework_id],
                    "created_at": now,
                    "attempts": 0,
                    "prompt_key": "nudge.reminder",
                    "prompt_version": prompts.version,
                    "priority": BULK,
                    "parts_sent": 0,
                }
            )
            outcome[OccasionStatus.SENT].append(row.id)

    _settle(session, outcome, deferred, caps, now=now, retry_at=now + settings.busy_retry)
    if outbox:
        session.execute(insert(OutboxMessage), outbox)
    counts.sent += len(outcome[OccasionStatus.SENT])
    counts.missed += len(outcome[OccasionStatus.MISSED])
    counts.skipped += len(outcome[OccasionStatus.SKIPPED])
    counts.deferred += len(deferred)
    return due[-1].due_at, due[-1].id


def _settle(
    session: Session,
    outcome: dict[str, list[int]],
    deferred: list[int],
    caps: dict[int, tuple[date, int]],
    *,
    now: datetime,
    retry_at: datetime,
) -> None:
    """Write a batch's decisions: one UPDATE per outcome, one per distinct daily-cap value."""
    for status, ids in outcome.items():
        if ids:
            values: dict[str, object] = {"status": status}
            values["sent_at" if status == OccasionStatus.SENT else "closed_at"] = now
            session.execute(update(Occasion).where(col(Occasion.id).in_(ids)).values(**values))
    if deferred:
        session.execute(update(Occasion).where(col(Occasion.id).in_(deferred)).values(due_at=retry_at))
    by_value: dict[tuple[date, int], list[int]] = {}
    for client_id, value in caps.items():
        by_value.setdefault(value, []).append(client_id)
    for (day, count), ids in by_value.items():
        session.execute(update(Client).where(col(Client.id).in_(ids)).values(scheduled_day=day, scheduled_count=count))


def follow_up(
    session: Session, *, prompts: Prompts, settings: DialogSettings, now: datetime, counts: SweepCounts
) -> int:
    """One gentle follow-up for a nudge unanswered after the follow-up delay; then "not reviewed"."""
    late = _claim(
        session,
        statuses=(OccasionStatus.FOLLOWED_UP,),
        column=Occasion.followed_up_at,
        before=now - settings.follow_up_after,
    )
    for occasion in late:
        occasion.status, occasion.closed_at = OccasionStatus.NOT_REVIEWED, now
        counts.not_reviewed += 1
        session.add(occasion)
    due = _claim(
        session, statuses=(OccasionStatus.SENT,), column=Occasion.sent_at, before=now - settings.follow_up_after
    )
    if not due:
        return len(late)
    context = _load(session, due)
    for occasion in due:
        client, homework = context.clients.get(occasion.client_id), context.homeworks.get(occasion.homework_id)
        chat = context.chats.get(occasion.client_id)
        state = context.states.get((chat.channel, chat.address)) if chat else None
        sendable = (
            client is not None
            and homework is not None
            and chat is not None
            and _reachable(client)
            and (state is None or state.flow == IDLE)
            and _within_cap(client, settings, now)
        )
        if sendable:
            assert chat is not None and homework is not None
            payload = reminder_payload(prompts, homework.id or 0, follow_up=True)
            q.enqueue(
                session,
                channel=chat.channel,
                address=chat.address,
                payload=payload,
                now=now,
                prompt_key="nudge.follow_up",
                prompt_version=prompts.version,
            ).priority = BULK
            occasion.status, occasion.followed_up_at = OccasionStatus.FOLLOWED_UP, now
            counts.followed_up += 1
        else:
            occasion.status, occasion.closed_at = OccasionStatus.NOT_REVIEWED, now
            counts.not_reviewed += 1
        session.add(occasion)
    return len(late) + len(due)


def next_weekly(spec: str, timezone: str, now: datetime) -> datetime | None:
    """The next ``"mon 08:00"`` in ``timezone`` strictly after ``now`` (None if ``spec`` is not one)."""
    words = spec.split()
    if len(words) != 2 or words[0] not in _DAY_WORDS or len(_DAY_WORDS[words[0]]) != 1:
        return None
    at = parse_clock_time(words[1])
    local_now = utc_to_local(now, timezone)
    if at is None or local_now is None:
        return None
    target = WEEKDAYS.index(_DAY_WORDS[words[0]][0])
    for offset in range(8):
        day = local_now.date() + timedelta(days=offset)
        if day.weekday() == target:
            instant = local_to_utc(day, at, timezone)
            if instant is not None and instant > now:
                return instant
    return None
