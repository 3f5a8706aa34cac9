"""The plain-text digest: a client's homework, their own words and a review agenda since the last session."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import or_
from sqlmodel import Session, col, select

from dialogs.homework import SPECIFICITY, missing_elements
from dialogs.messages import Outbound
from dialogs.nudges import SweepCounts, next_weekly
from dialogs.timeparse import format_local
from dialogs.turn import DialogSettings
from prompts import Prompts
from storage import Client, ClientStatus, DebriefKind, DebriefStatus, FlagLevel, HomeworkStatus, Therapist
from storage import queries as q

DEFAULT_PERIOD: Final = timedelta(days=7)
_SAID: Final = (("what_happened", "happened"), ("surprised", "surprised"), ("hard", "hard"), ("learned", "learned"))
QUOTE_LIMIT: Final = 280
_NUDGE_STATES: Final = (
    "sent",
    "followed_up",
    "answered",
    "not_reviewed",
    "skipped",
    "missed",
)  # the full text stays in the database; the digest trims for reading


def period_start(client: Client, now: datetime) -> datetime:
    """Since the last session: a recorded one, or an appointment now past; else the last 7 days."""
    candidates = [t for t in (client.last_session_at, client.next_session_at) if t is not None and t <= now]
    return max(candidates) if candidates else now - DEFAULT_PERIOD


def _quote(text: str | None) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= QUOTE_LIMIT else text[: QUOTE_LIMIT - 1].rstrip() + "…"


def plain_digest(session: Session, *, prompts: Prompts, client: Client, therapist: Therapist, now: datetime) -> str:
    t, tz = prompts.text, therapist.timezone
    start = period_start(client, now)
    lines = [t("digest.header", client=client.name, start=format_local(start, tz), end=format_local(now, tz))]
    if client.next_session_at and client.next_session_at > now:
        lines.append(t("digest.next_session", when=format_local(client.next_session_at, tz)))
    if client.unreachable_at:
        lines.append(t("digest.unreachable", when=format_local(client.unreachable_at, tz)))

    agenda: list[str] = []
    flags = q.flags_since(session, client_id=client.id or 0, since=start)
    if flags:
        # Risk comes first: it is what the therapist must see before anything else.
        lines.append(t("digest.risk_header"))
        for flag in flags:
            ack = ""
            if flag.level == FlagLevel.CRISIS:
                ack = (
                    t("digest.risk_acked", when=format_local(flag.acknowledged_at, tz))
                    if flag.acknowledged_at
                    else t("digest.risk_open")
                )
            lines.append(
                t(
                    "digest.risk_line",
                    when=format_local(flag.created_at, tz),
                    level=flag.level,
                    id=flag.id,
                    reasons=", ".join(flag.reasons),
                    text=_quote(flag.text),
                    ack=ack,
                ).rstrip()
            )
        levels = sorted({f.level for f in flags if f.level != FlagLevel.SCOPE})
        if levels:
            agenda.append(t("digest.agenda_risk", level=" and ".join(levels)))
    debriefs = q.debriefs_since(session, client_id=client.id or 0, since=start)
    by_homework: dict[int, list] = {}
    for debrief in debriefs:
        if debrief.status == DebriefStatus.COMPLETE:
            by_homework.setdefault(debrief.homework_id, []).append(debrief)
    homeworks = [
        h
        for h in q.homeworks_of(session, client_id=client.id or 0)
        if h.status == HomeworkStatus.OPEN or h.id in by_homework or h.created_at >= start
    ]
    if not homeworks:
        lines.append(t("digest.no_homework"))
    for hw in homeworks:
        lines.append("")
        lines.append(t("digest.homework", id=hw.id, title=hw.title, type=prompts.type_label(hw.type), status=hw.status))
        fields = {f: getattr(hw, f) for f in SPECIFICITY}
        given = [t(f"therapist.missing.{f}") for f in SPECIFICITY if fields.get(f)]
        missing = [t(f"therapist.missing.{f}") for f in missing_elements(fields)]
        lines.append(t("digest.specificity", given=", ".join(given) or "—", missing=", ".join(missing) or "—"))
        if hw.delivered_at is None:
            lines.append(t("digest.not_delivered"))
            continue
        if hw.rationale_own_words:
            lines.append(t("digest.own_words", words=_quote(hw.rationale_own_words)))
        else:
            lines.append(t("digest.own_words_missing"))
            agenda.append(t("digest.agenda_rationale", title=hw.title))
        if hw.confidence is not None:
            smaller = t("digest.smaller") if hw.smaller_version_wanted else ""
            lines.append(t("digest.confidence", confidence=hw.confidence, smaller=smaller))
        if hw.smaller_version_wanted:
            agenda.append(t("digest.agenda_smaller", client=client.name, title=hw.title))
        done = [d for d in by_homework.get(hw.id or 0, []) if d.kind == DebriefKind.DEBRIEF]
        blocked = [d for d in by_homework.get(hw.id or 0, []) if d.kind == DebriefKind.OBSTACLE]
        ratings = ", ".join(str(d.quantity) for d in done) or "—"
        lines.append(t("digest.quantity", count=len(done), ratings=ratings))
        nudged = q.occasion_counts(session, homework_id=hw.id or 0, since=start)
        if any(nudged.get(s, 0) for s in _NUDGE_STATES):
            lines.append(t("digest.nudges", **{s: nudged.get(s, 0) for s in _NUDGE_STATES}))
        for d in done:
            lines.append(t("digest.debrief_line", when=format_local(d.started_at, tz), quantity=d.quantity))
            for field, key in _SAID:
                if getattr(d, field):
                    lines.append(t(f"digest.said_{key}", text=_quote(getattr(d, field))))
            if d.ratings:
                lines.append(t("digest.ratings", ratings=", ".join(f"{k} {v}" for k, v in d.ratings.items())))
        for d in blocked:
            lines.append(
                t(
                    "digest.obstacle_line",
                    when=format_local(d.started_at, tz),
                    obstacle=_quote(d.obstacle) or "—",
                    would_help=_quote(d.would_help) or "—",
                )
            )
        if done:
            agenda.append(t("digest.agenda_review", title=hw.title))
        if blocked:
            agenda.append(t("digest.agenda_obstacles"))

    logs = q.logs_since(session, client_id=client.id or 0, since=start)
    if logs:
        lines.append("")
        lines.append(t("digest.logs_header", client=client.name))
        lines.extend(t("digest.log_line", when=format_local(e.created_at, tz), text=_quote(e.text)) for e in logs)

    lines.append("")
    lines.append(t("digest.agenda_header"))
    items = [*dict.fromkeys(agenda), t("digest.agenda_next")]  # keep order, drop repeats
    lines.extend(f"  {n}. {item}" for n, item in enumerate(items, start=1))
    return "\n".join(lines)


def send_due_digests(
    session: Session, *, prompts: Prompts, settings: DialogSettings, now: datetime, counts: SweepCounts
) -> None:
    """Pre-session digests (``digest_lead`` before the appointment) and weekly ones, each sent once."""
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
            text = plain_digest(session, prompts=prompts, client=client, therapist=therapist, now=now)
            q.enqueue(session, channel=chat.channel, address=chat.address, payload=Outbound(text).to_payload(), now=now)
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
        for client in q.clients_of(session, therapist_id=therapist.id or 0):
            if chat is not None and client.status != ClientStatus.INVITED:
                text = plain_digest(session, prompts=prompts, client=client, therapist=therapist, now=now)
                q.enqueue(
                    session, channel=chat.channel, address=chat.address, payload=Outbound(text).to_payload(), now=now
                )
                counts.digests += 1
        therapist.weekly_digest_due = next_weekly(therapist.weekly_digest or "", therapist.timezone, now)
        session.add(therapist)
