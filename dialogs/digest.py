"""The therapist's digest: one model of a client's homework since the last session, and the caseload overview.

The model is built from the database once and rendered many ways
(:mod:`dialogs.digest_text` for plain text and Markdown, the Slack adapter
for Block Kit, :mod:`dialogs.digest_chart` for the adherence chart). It holds
data, not sentences: renderers take the words from prompts/.

Quality follows a transparent rubric: each criterion is shown met or missed,
never folded into a bare score. The criteria, per debrief:

- ``answered_all``: what happened, what surprised, what was hard and what was
  learned were all answered (not skipped);
- ``concrete``: "what happened" has concrete detail: at least six words and
  a when, where or how much (a number, or a word from ``rubric_cues``);
- ``surprise_or_learning``: a surprise or a learning is named (not "nothing");
- ``record_complete``: the type-specific ratings (before/after) are all there;
- ``close_to_event``: written within 24 hours of the nudge it answers (a
  debrief the client started unprompted counts as close).

Quantity: nudges planned in the period against debriefs made, the 0–4
amounts, and whether each debrief came before the follow-up (on time) or
after it (late).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from dialogs import access, history, measures, review, safety_plan
from dialogs.guard import describe_signals
from dialogs.homework import SPECIFICITY
from dialogs.messages import Outbound, about_client, enqueue, mentioning
from dialogs.nudges import SweepCounts, next_weekly
from dialogs.turn import DialogSettings
from prompts import Prompts, fold
from storage import (
    Client,
    ClientStatus,
    Debrief,
    DebriefKind,
    DebriefStatus,
    FlagLevel,
    Homework,
    HomeworkStatus,
    Occasion,
    SafetyFlag,
    Therapist,
)
from storage import queries as q
from storage.models import BULK, OccasionStatus

if TYPE_CHECKING:
    from dialogs.llm import LanguageModel
    from dialogs.measures import MeasureView
    from dialogs.review import ReviewCount

DEFAULT_PERIOD: Final = timedelta(days=7)
TREND_WEEKS: Final = 4
SILENT_DAYS: Final = 5
LOW_CONFIDENCE: Final = 7
CRITERIA: Final = ("answered_all", "concrete", "surprise_or_learning", "record_complete", "close_to_event")
ATTENTION: Final = (
    "risk",
    "no_plan",
    "unreachable",
    "opted_out",
    "not_done_twice",
    "silent",
    "low_confidence",
    "low_importance",
    "not_reviewed",
)
"""Caseload attention flags, most urgent first: the overview sorts by them."""
_TEXT_ANSWERS: Final = ("what_happened", "surprised", "hard", "learned")
_NUMBER: Final = re.compile(r"\d")


# --- the model ------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    key: str
    met: bool


@dataclass(frozen=True)
class DebriefView:
    id: int
    when: datetime
    kind: str
    quantity: int | None
    on_time: bool
    what_happened: str | None = None
    surprised: str | None = None
    hard: str | None = None
    learned: str | None = None
    obstacle: str | None = None
    would_help: str | None = None
    ratings: dict[str, int] = field(default_factory=dict)
    criteria: tuple[Criterion, ...] = ()

    @property
    def quality(self) -> float | None:
        return sum(c.met for c in self.criteria) / len(self.criteria) if self.criteria else None


@dataclass(frozen=True)
class HomeworkView:
    id: int
    title: str
    type_key: str
    status: str
    delivered: bool
    given: tuple[str, ...]
    missing: tuple[str, ...]
    own_words: str | None
    confidence: int | None
    smaller_wanted: bool
    planned: int
    debriefs: tuple[DebriefView, ...]
    obstacles: tuple[DebriefView, ...]
    nudges: dict[str, int]
    importance: int | None = None
    reviewed_at: datetime | None = None  # the therapist's review mark (dialogs.review)
    closed_at: datetime | None = None

    @property
    def attempted(self) -> int:
        return len(self.debriefs)

    @property
    def on_time(self) -> int:
        return sum(d.on_time for d in self.debriefs)

    @property
    def late(self) -> int:
        return self.attempted - self.on_time

    def criteria_totals(self) -> dict[str, tuple[int, int]]:
        """Per criterion: (debriefs that met it, debriefs judged)."""
        totals = {key: [0, 0] for key in CRITERIA}
        for debrief in self.debriefs:
            for criterion in debrief.criteria:
                totals[criterion.key][0] += criterion.met
                totals[criterion.key][1] += 1
        return {key: (met, seen) for key, (met, seen) in totals.items()}


@dataclass(frozen=True)
class WeekPoint:
    start: datetime
    debriefs: int
    quantity: float | None  # mean 0–4 amount
    quality: float | None  # mean share of rubric criteria met, 0–1


@dataclass(frozen=True)
class FlagView:
    id: int
    level: str
    reasons: tuple[str, ...]
    when: datetime
    text: str
    acknowledged_at: datetime | None


@dataclass(frozen=True)
class AgendaItem:
    """One line of the suggested session opening; ``key`` names its prompt, ``fields`` fill it."""

    key: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientDigest:
    client_id: int
    client: str
    status: str
    timezone: str  # the therapist's: every time is shown in it
    start: datetime
    end: datetime
    next_session: datetime | None
    unreachable_since: datetime | None
    homeworks: tuple[HomeworkView, ...]
    flags: tuple[FlagView, ...]
    logs: tuple[tuple[datetime, str], ...]
    trend: tuple[WeekPoint, ...]
    agenda: tuple[AgendaItem, ...]
    undeliverable: int = 0  # messages that could not be sent outside WhatsApp's 24-hour window
    undeliverable_reminders: int = 0  # of those, reminders and follow-ups (the ones a template can carry)
    # Older than the period and still open: counted in one line, not listed (dialogs.history closes
    # homework by itself, so these are homework kept open from before, and unacknowledged alerts).
    older_open_homework: int = 0
    older_open_alerts: int = 0
    # LLM mode only: a short narrative written by the model on top of (never instead of) the data.
    narrative: str | None = None
    narrative_at: datetime | None = None
    # Clinical depth (issue 20): the safety plan's last review, the questionnaires, the review count.
    has_plan: bool = False
    plan_reviewed: datetime | None = None
    measures: tuple[MeasureView, ...] = ()
    review: ReviewCount | None = None

    @property
    def opted_out(self) -> bool:
        return self.status == ClientStatus.STOPPED

    @property
    def empty(self) -> bool:
        return not any(h.debriefs or h.obstacles for h in self.homeworks) and not self.logs and not self.flags


@dataclass(frozen=True)
class CaseloadRow:
    client: str
    status: str
    homework: str | None
    quantity: float | None
    quality: float | None
    last_contact: datetime | None
    attention: tuple[str, ...]
    has_plan: bool = False
    plan_reviewed: datetime | None = None
    reviewed: tuple[int, int] | None = None  # (reviewed, of the last N closed homeworks)
    measures: tuple[tuple[str, int, str], ...] = ()  # (name, latest score, band)
    client_id: int | None = None


@dataclass(frozen=True)
class Caseload:
    therapist: str
    timezone: str
    now: datetime
    rows: tuple[CaseloadRow, ...]

    def mentions(self) -> dict[str, Any]:
        """The ``ref`` of a message showing this caseload: every client it names, so an erasure finds it."""
        return mentioning(r.client_id for r in self.rows if r.client_id is not None)


# --- building ---------------------------------------------------------------------------


def period_start(client: Client, now: datetime) -> datetime:
    """Since the last session: a recorded one, or an appointment now past; else the last 7 days."""
    candidates = [t for t in (client.last_session_at, client.next_session_at) if t is not None and t <= now]
    return max(candidates) if candidates else now - DEFAULT_PERIOD


def _meaningful(prompts: Prompts, text: str | None) -> bool:
    return bool(text) and not prompts.matches("skip", text or "") and not prompts.matches("no", text or "")


def _concrete(prompts: Prompts, text: str | None) -> bool:
    if not text:
        return False
    words = fold(text).split()
    cues = prompts.rubric_cues
    return len(words) >= 6 and (bool(_NUMBER.search(text)) or any(w.strip(".,!?") in cues for w in words))


def _criteria(
    prompts: Prompts, debrief: Debrief, extras: Sequence[str], occasion: Occasion | None
) -> tuple[Criterion, ...]:
    close = occasion is None or debrief.started_at - occasion.due_at <= timedelta(hours=24)
    return (
        Criterion("answered_all", all(getattr(debrief, a) for a in _TEXT_ANSWERS)),
        Criterion("concrete", _concrete(prompts, debrief.what_happened)),
        Criterion(
            "surprise_or_learning",
            _meaningful(prompts, debrief.surprised) or _meaningful(prompts, debrief.learned),
        ),
        Criterion("record_complete", all(key in debrief.ratings for key in extras)),
        Criterion("close_to_event", close),
    )


def judged(prompts: Prompts, debrief: Debrief, extras: Sequence[str], occasion: Occasion | None) -> list[str]:
    """The criteria a completed debrief met, to store with it (``Debrief.criteria``)."""
    return [c.key for c in _criteria(prompts, debrief, extras, occasion) if c.met]


def _debrief_view(prompts: Prompts, debrief: Debrief, extras: Sequence[str], occasion: Occasion | None) -> DebriefView:
    on_time = occasion is None or occasion.followed_up_at is None or debrief.started_at <= occasion.followed_up_at
    is_debrief = debrief.kind == DebriefKind.DEBRIEF
    return DebriefView(
        id=debrief.id or 0,
        when=debrief.started_at,
        kind=debrief.kind,
        quantity=debrief.quantity,
        on_time=on_time,
        what_happened=debrief.what_happened,
        surprised=debrief.surprised,
        hard=debrief.hard,
        learned=debrief.learned,
        obstacle=debrief.obstacle,
        would_help=debrief.would_help,
        ratings=dict(debrief.ratings),
        criteria=_criteria(prompts, debrief, extras, occasion) if is_debrief else (),
    )


def _week_points(session: Session, client: Client, now: datetime) -> tuple[WeekPoint, ...]:
    """The last :data:`TREND_WEEKS` local weeks of the client, this one last, from the stored weekly sums."""
    last = history.week_of(now, client.timezone)
    first = last - timedelta(weeks=TREND_WEEKS - 1)
    stored = q.weeks_of(session, client_id=client.id or 0, first=first, last=last)
    points = []
    for n in range(TREND_WEEKS):
        week = first + timedelta(weeks=n)
        sums = stored.get(week)
        points.append(
            WeekPoint(
                start=history.week_start(week, client.timezone),
                debriefs=sums.debriefs if sums else 0,
                quantity=sums.quantity_sum / sums.quantity_count if sums and sums.quantity_count else None,
                quality=(
                    sums.criteria_met / (sums.criteria_judged * len(CRITERIA))
                    if sums and sums.criteria_judged
                    else None
                ),
            )
        )
    return tuple(points)


def build_client_digest(
    session: Session, *, prompts: Prompts, client: Client, therapist: Therapist, now: datetime
) -> ClientDigest:
    """The digest of one client for ``therapist``; refuses another therapist's client."""
    if client.therapist_id != therapist.id:
        raise PermissionError("a digest never contains another therapist's client")
    start = period_start(client, now)
    base: dict[str, Any] = dict(
        client_id=client.id or 0,
        client=client.name,
        status=client.status,
        timezone=therapist.timezone,
        start=start,
        end=now,
        next_session=client.next_session_at if client.next_session_at and client.next_session_at > now else None,
        unreachable_since=client.unreachable_at,
    )
    if client.status == ClientStatus.STOPPED:  # opted out: the status, and no new data
        return ClientDigest(**base, homeworks=(), flags=(), logs=(), trend=(), agenda=())

    # Bounded by the period, never by the client's history: the period's debriefs whole (their
    # answers are quoted), the homework they belong to or set in the period or current, and the
    # trend from the stored weekly sums (dialogs.history). Older open items are only counted.
    debriefs = [
        d
        for d in q.debriefs_since(session, client_id=client.id or 0, since=start)
        if d.status == DebriefStatus.COMPLETE
    ]
    occasion_ids = {d.occasion_id for d in debriefs if d.occasion_id}
    occasions = (
        {o.id: o for o in session.exec(select(Occasion).where(col(Occasion.id).in_(occasion_ids)))}
        if occasion_ids
        else {}
    )
    shown = list(
        q.homework_since(session, client_id=client.id or 0, since=start, ids=sorted({d.homework_id for d in debriefs}))
    )
    by_id = {h.id or 0: h for h in shown}

    def extras(homework_id: int) -> tuple[str, ...]:
        homework = by_id.get(homework_id)
        kind = prompts.homework_types.get(homework.type if homework else "custom")
        return tuple(e.key for e in kind.extras) if kind else ()

    in_period = [
        (d.homework_id, _debrief_view(prompts, d, extras(d.homework_id), occasions.get(d.occasion_id or -1)))
        for d in debriefs
    ]
    older_open = q.open_homework_count(session, client_id=client.id or 0) - sum(
        h.status == HomeworkStatus.OPEN for h in shown
    )
    homeworks = tuple(_homework_view(session, prompts, h, in_period, start, now) for h in shown)
    flags = tuple(
        FlagView(f.id or 0, f.level, _flag_reasons(prompts, f), f.created_at, f.text, f.acknowledged_at)
        for f in q.flags_since(session, client_id=client.id or 0, since=start)
    )
    logs = tuple((e.created_at, e.text) for e in q.logs_since(session, client_id=client.id or 0, since=start))
    trend = _week_points(session, client, now)
    undeliverable, undeliverable_reminders = q.undeliverable_since(
        session, client_id=client.id or 0, since=start, reason="outside_window"
    )
    older_alerts = q.open_alerts_before(session, client_id=client.id or 0, before=start)
    plan_reviewed = safety_plan.reviewed_at(session, client.id or 0)
    digest = ClientDigest(
        **base,
        homeworks=homeworks,
        flags=flags,
        logs=logs,
        trend=trend,
        agenda=(),
        undeliverable=undeliverable,
        older_open_homework=older_open,
        older_open_alerts=older_alerts,
        has_plan=plan_reviewed is not None,
        plan_reviewed=plan_reviewed,
        measures=measures.digest_views(session, client_id=client.id or 0, locale=prompts.locale),
        review=review.count(session, client_id=client.id or 0, titles_since=start),
        undeliverable_reminders=undeliverable_reminders,
    )
    return ClientDigest(**{**digest.__dict__, "agenda": agenda(digest)})


def _homework_view(
    session: Session,
    prompts: Prompts,
    homework: Homework,
    views: Sequence[tuple[int, DebriefView]],
    start: datetime,
    now: datetime,
) -> HomeworkView:
    mine = [v for hid, v in views if hid == homework.id]
    nudges = q.occasion_counts(session, homework_id=homework.id or 0, since=start)
    planned = sum(n for status, n in nudges.items() if status not in (OccasionStatus.CANCELLED, OccasionStatus.PLANNED))
    # Due but not yet swept (the sweep runs every 30 s) still counts as planned.
    planned += len(
        session.exec(
            select(Occasion.id).where(
                Occasion.homework_id == homework.id,
                Occasion.status == OccasionStatus.PLANNED,
                col(Occasion.due_at) <= now,
            )
        ).all()
    )
    return HomeworkView(
        id=homework.id or 0,
        title=homework.title,
        type_key=homework.type,
        status=homework.status,
        delivered=homework.delivered_at is not None,
        given=tuple(f for f in SPECIFICITY if getattr(homework, f)),
        missing=tuple(f for f in SPECIFICITY if not getattr(homework, f)),
        own_words=homework.rationale_own_words,
        confidence=homework.confidence,
        smaller_wanted=homework.smaller_version_wanted,
        planned=planned,
        debriefs=tuple(v for v in mine if v.kind == DebriefKind.DEBRIEF),
        obstacles=tuple(v for v in mine if v.kind == DebriefKind.OBSTACLE),
        nudges=nudges,
        importance=homework.importance,
        reviewed_at=homework.reviewed_at,
        closed_at=homework.closed_at,
    )


def agenda(digest: ClientDigest) -> tuple[AgendaItem, ...]:
    """The suggested session opening, in review order; built by rules from the client's data.

    Risk first; then what went well, what surprised, what was hard or not
    done (with the obstacles), what was learned, and what to adjust in the
    next homework; always ending with setting the next homework together.
    """
    items: list[AgendaItem] = []
    open_risk = [f for f in digest.flags if f.level in (FlagLevel.CRISIS, FlagLevel.CONCERN)]
    if open_risk:
        levels = " and ".join(sorted({f.level for f in open_risk}))
        items.append(AgendaItem("risk", {"levels": levels, "count": len(open_risk)}))
        if not digest.has_plan:  # a client at risk without a safety plan: write one in this session
            items.append(AgendaItem("plan_none", {}))
    for m in digest.measures:
        if m.item9 and m.when >= digest.start:
            items.append(AgendaItem("measure_item9", {"name": m.name}))
        if m.change is not None and m.change >= measures.WORSE_BY and m.score is not None:
            items.append(
                AgendaItem("measure_worse", {"name": m.name, "previous": m.previous, "score": m.score, "band": m.band})
            )
    for missed in digest.review.not_reviewed if digest.review else ():
        if missed.closed_at >= digest.start:
            items.append(AgendaItem("not_reviewed", {"title": missed.title, "id": missed.id}))
    debriefs = [(h, d) for h in digest.homeworks for d in h.debriefs]
    went_well = [(h, d) for h, d in debriefs if (d.quantity or 0) >= 3]
    if went_well:
        titles = ", ".join(dict.fromkeys(f"“{h.title}”" for h, _ in went_well))
        items.append(AgendaItem("went_well", {"titles": titles, "count": len(went_well)}))
    for key, attr in (("surprised", "surprised"), ("hard", "hard")):
        said = [(h, getattr(d, attr)) for h, d in debriefs if getattr(d, attr)]
        if said:
            items.append(AgendaItem(key, {"title": said[-1][0].title, "text": said[-1][1]}))
    for h in digest.homeworks:
        for o in h.obstacles:
            items.append(
                AgendaItem("obstacle", {"title": h.title, "text": o.obstacle or "—", "help": o.would_help or "—"})
            )
    learned = [(h, d.learned) for h, d in debriefs if d.learned]
    if learned:
        items.append(AgendaItem("learned", {"title": learned[-1][0].title, "text": learned[-1][1]}))
    for h in digest.homeworks:
        if not h.delivered:
            continue
        if h.confidence is not None and h.confidence < LOW_CONFIDENCE:
            items.append(AgendaItem("low_confidence", {"title": h.title, "confidence": h.confidence}))
        elif h.smaller_wanted:
            items.append(AgendaItem("smaller", {"title": h.title}))
        if h.importance is not None and h.importance < LOW_CONFIDENCE:
            items.append(AgendaItem("low_importance", {"title": h.title, "importance": h.importance}))
        if not h.own_words:
            items.append(AgendaItem("rationale", {"title": h.title}))
        unanswered = h.nudges.get(OccasionStatus.NOT_REVIEWED, 0)
        if unanswered:
            items.append(AgendaItem("unanswered", {"title": h.title, "count": unanswered}))
        if not h.debriefs and not h.obstacles:
            items.append(AgendaItem("nothing_recorded", {"title": h.title}))
        if h.missing and h.status == HomeworkStatus.OPEN:
            items.append(AgendaItem("specificity", {"title": h.title, "missing": h.missing}))
    if digest.unreachable_since is not None:
        items.append(AgendaItem("unreachable", {}))
    if digest.undeliverable:
        counts = {"count": digest.undeliverable, "reminders": digest.undeliverable_reminders}
        items.append(AgendaItem("outside_window", counts))
    items.append(AgendaItem("next", {}))
    return tuple(items)


def build_caseload(session: Session, *, prompts: Prompts, therapist: Therapist, now: datetime) -> Caseload:
    """Every client of this therapist, who needs attention first (see :data:`ATTENTION`)."""
    return build_weekly(session, prompts=prompts, therapist=therapist, now=now)[0]


def build_weekly(
    session: Session, *, prompts: Prompts, therapist: Therapist, now: datetime
) -> tuple[Caseload, tuple[ClientDigest, ...]]:
    """The caseload overview and every client's digest, each client's digest built once for both."""
    rows = []
    digests = []
    clients = access.own_clients(session, therapist_id=therapist.id or 0)
    facts = _attention_facts(session, [c.id or 0 for c in clients], now)
    for client in clients:
        digest = build_client_digest(session, prompts=prompts, client=client, therapist=therapist, now=now)
        digests.append(digest)
        attention = _attention(client, digest, now, facts.get(client.id or 0, _Facts()))
        current = next((h for h in digest.homeworks if h.status == HomeworkStatus.OPEN and h.delivered), None)
        this_week = digest.trend[-1] if digest.trend else None
        rows.append(
            CaseloadRow(
                client=client.name,
                status=client.status,
                homework=current.title if current else None,
                quantity=this_week.quantity if this_week else None,
                quality=this_week.quality if this_week else None,
                last_contact=client.last_contact_at,
                attention=attention,
                has_plan=digest.has_plan,
                plan_reviewed=digest.plan_reviewed,
                reviewed=(digest.review.reviewed, digest.review.total) if digest.review else None,
                measures=tuple((m.name, m.score, m.band or "") for m in digest.measures if m.score is not None),
                client_id=client.id,
            )
        )
    rows.sort(
        key=lambda r: (
            min((ATTENTION.index(a) for a in r.attention), default=len(ATTENTION)),
            -len(r.attention),
            r.client.casefold(),
        )
    )
    caseload = Caseload(therapist=therapist.name, timezone=therapist.timezone, now=now, rows=tuple(rows))
    return caseload, tuple(digests)


@dataclass
class _Facts:
    """What the caseload's attention rules read about one client beyond the digest (no client text)."""

    recent_risk: set[str] = field(default_factory=set)  # flag levels of the last 7 days
    last_two_kinds: list[str] = field(default_factory=list)  # the latest completed debriefs' kinds
    last_two_outcomes: list[str] = field(default_factory=list)  # the latest settled nudges' statuses


def _attention_facts(session: Session, client_ids: list[int], now: datetime) -> dict[int, _Facts]:
    """The attention rules' facts for a whole caseload in three queries (not three per client).

    "The last two" debriefs and settled nudges are looked for within the
    trend's weeks only: two obstacles from a year ago say nothing about now,
    and the window keeps the caseload's cost independent of its history.
    """
    facts: dict[int, _Facts] = {cid: _Facts() for cid in client_ids}
    if not client_ids:
        return facts
    recent = now - DEFAULT_PERIOD * TREND_WEEKS
    for client_id, level in session.exec(
        select(SafetyFlag.client_id, SafetyFlag.level)
        .where(col(SafetyFlag.client_id).in_(client_ids), col(SafetyFlag.created_at) >= now - DEFAULT_PERIOD)
        .distinct()
    ):
        facts[client_id].recent_risk.add(level)
    newest = func.row_number().over(partition_by=col(Debrief.client_id), order_by=col(Debrief.started_at).desc())
    kinds = (
        select(col(Debrief.client_id).label("cid"), col(Debrief.kind).label("value"), newest.label("n"))
        .where(
            col(Debrief.client_id).in_(client_ids),
            col(Debrief.started_at) >= recent,
            Debrief.status == DebriefStatus.COMPLETE,
        )
        .subquery()
    )
    settled = (OccasionStatus.NOT_REVIEWED, OccasionStatus.ANSWERED, OccasionStatus.MISSED)
    latest = func.row_number().over(partition_by=col(Occasion.client_id), order_by=col(Occasion.due_at).desc())
    outcomes = (
        select(col(Occasion.client_id).label("cid"), col(Occasion.status).label("value"), latest.label("n"))
        .where(
            col(Occasion.client_id).in_(client_ids),
            col(Occasion.status).in_(settled),
            col(Occasion.due_at) >= recent,
        )
        .subquery()
    )
    for table, attribute in ((kinds, "last_two_kinds"), (outcomes, "last_two_outcomes")):
        for client_id, value in session.execute(
            select(table.c.cid, table.c.value).where(table.c.n <= 2).order_by(table.c.cid, table.c.n)
        ):
            getattr(facts[client_id], attribute).append(value)
    return facts


def _attention(client: Client, digest: ClientDigest, now: datetime, facts: _Facts) -> tuple[str, ...]:
    flags: list[str] = []
    if any(level in (FlagLevel.CRISIS, FlagLevel.CONCERN) for level in facts.recent_risk) or any(
        f.level == FlagLevel.CRISIS and f.acknowledged_at is None for f in digest.flags
    ):
        flags.append("risk")
        if not digest.has_plan:
            flags.append("no_plan")
    if client.unreachable_at is not None:
        flags.append("unreachable")
    if client.status == ClientStatus.STOPPED:
        flags.append("opted_out")
        return tuple(flags)
    last_two, missed = facts.last_two_kinds, facts.last_two_outcomes
    if (len(last_two) == 2 and all(kind == DebriefKind.OBSTACLE for kind in last_two)) or (
        len(missed) == 2 and all(s != OccasionStatus.ANSWERED for s in missed)
    ):
        flags.append("not_done_twice")
    if client.status == ClientStatus.ACTIVE and (
        client.last_contact_at is None or now - client.last_contact_at >= timedelta(days=SILENT_DAYS)
    ):
        flags.append("silent")
    if any(h.confidence is not None and h.confidence < LOW_CONFIDENCE for h in digest.homeworks if h.status == "open"):
        flags.append("low_confidence")
    if any(h.importance is not None and h.importance < LOW_CONFIDENCE for h in digest.homeworks if h.status == "open"):
        flags.append("low_importance")
    if digest.review is not None and any(m.closed_at >= digest.start for m in digest.review.not_reviewed):
        flags.append("not_reviewed")
    return tuple(flags)


# --- delivery -------------------------------------------------------------------------------


def digest_ref(client: Client) -> dict[str, Any]:
    """What an outbox message carries so an adapter can render the digest natively (Slack: Block Kit + chart)."""
    return {"type": "digest", "client_id": client.id, "therapist_id": client.therapist_id}


def plain_digest(session: Session, *, prompts: Prompts, client: Client, therapist: Therapist, now: datetime) -> str:
    """Build and render one client's digest as plain text (console, Telegram, scheduled delivery)."""
    from dialogs.digest_text import render_text

    return render_text(
        build_client_digest(session, prompts=prompts, client=client, therapist=therapist, now=now), prompts
    )


def due_digest_clients(session: Session, *, settings: DialogSettings, now: datetime) -> list[int]:
    """The clients whose digest :func:`send_due_digests` would send now (read only, nothing locked).

    LLM mode writes their narratives before that sweep, outside any
    transaction (:func:`dialogs.llm_steps.narrate`); the sweep then only reuses them.
    """
    pre_session = session.exec(
        select(Client.id).where(
            col(Client.next_session_at).is_not(None),
            col(Client.next_session_at) > now,
            col(Client.next_session_at) <= now + settings.digest_lead,
            or_(col(Client.digest_sent_for).is_(None), col(Client.digest_sent_for) != col(Client.next_session_at)),
        )
    ).all()
    weekly = session.exec(
        select(Client.id)
        .join(Therapist, col(Therapist.id) == col(Client.therapist_id))
        .where(
            col(Therapist.weekly_digest_due).is_not(None),
            col(Therapist.weekly_digest_due) <= now,
            Client.status != ClientStatus.INVITED,
        )
    ).all()
    return sorted({i for i in [*pre_session, *weekly] if i is not None})


def send_due_digests(
    session: Session,
    *,
    prompts: Prompts,
    settings: DialogSettings,
    now: datetime,
    counts: SweepCounts,
    llm: LanguageModel | None = None,
) -> None:
    """Pre-session digests (``digest_lead`` before the appointment) and weekly ones, each sent once.

    With ``llm`` (LLM mode) each client's digest gets the short narrative written for it beforehand
    (never a model call here, inside the transaction: see :func:`due_digest_clients`).
    """
    from dialogs.llm_steps import digest_message, with_narrative

    clients = session.exec(
        select(Client)
        .where(
            col(Client.next_session_at).is_not(None),
            col(Client.next_session_at) > now,
            col(Client.next_session_at) <= now + settings.digest_lead,
            or_(col(Client.digest_sent_for).is_(None), col(Client.digest_sent_for) != col(Client.next_session_at)),
        )
        .with_for_update(skip_locked=True)
    ).all()
    for client in clients:
        therapist = session.get(Therapist, client.therapist_id)
        chat = q.latest_identity(session, therapist_id=client.therapist_id)
        if therapist is not None and chat is not None:
            message = digest_message(session, llm=llm, prompts=prompts, client=client, therapist=therapist, now=now)
            enqueue(session, channel=chat.channel, address=chat.address, message=message, now=now, priority=BULK)
            access.audit(session, actor=access.SYSTEM, action="digest.sent", now=now, client=client)
            counts.digests += 1
        client.digest_sent_for = client.next_session_at
        session.add(client)

    therapists = session.exec(
        select(Therapist)
        .where(col(Therapist.weekly_digest_due).is_not(None), col(Therapist.weekly_digest_due) <= now)
        .with_for_update(skip_locked=True)
    ).all()
    for therapist in therapists:
        chat = q.latest_identity(session, therapist_id=therapist.id)
        if chat is not None:
            from dialogs.digest_text import render_caseload_text, render_text

            caseload, digests = build_weekly(session, prompts=prompts, therapist=therapist, now=now)
            if llm is not None:
                digests = tuple(with_narrative(session, llm=llm, digest=d, prompts=prompts, now=now) for d in digests)
            version = prompts.version
            messages = [
                Outbound(
                    render_caseload_text(caseload, prompts),
                    ref=caseload.mentions(),
                    prompt_key="digest.caseload_header",
                    prompt_version=version,
                )
            ]
            messages += [
                Outbound(
                    render_text(d, prompts),
                    ref=about_client(d.client_id),
                    prompt_key="llm.narrative" if d.narrative else "digest.header",
                    prompt_version=version,
                )
                for d in digests
                if d.status != ClientStatus.INVITED
            ]
            for message in messages:
                enqueue(session, channel=chat.channel, address=chat.address, message=message, now=now, priority=BULK)
                counts.digests += 1
            access.audit(
                session,
                actor=access.SYSTEM,
                action="weekly_digest.sent",
                now=now,
                therapist_id=therapist.id,
                clients=len(messages) - 1,
            )
        therapist.weekly_digest_due = next_weekly(therapist.weekly_digest or "", therapist.timezone, now)
        session.add(therapist)


def _flag_reasons(prompts: Prompts, flag: SafetyFlag) -> tuple[str, ...]:
    """The flag's reasons, then which layer of the screen said what (and the direct question's answer)."""
    # The word rules' findings are the reasons themselves: the layers are worth a line when another said something.
    if not any(row.get("layer") != "lexicon" for row in flag.signals or ()):
        return tuple(flag.reasons)
    return (*flag.reasons, f"[{describe_signals(prompts, flag.signals)}]")
