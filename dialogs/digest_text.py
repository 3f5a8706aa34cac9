"""Plain-text and Markdown renderings of the digest model; every word comes from prompts/."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from dialogs.digest import Caseload, CaseloadRow, ClientDigest, DebriefView, HomeworkView
from dialogs.measures import MeasureView
from dialogs.timeparse import format_local, utc_to_local
from prompts import Prompts

QUOTE_LIMIT: Final = 280  # the full text stays one command away: /debrief NAME ID


class _Doc:
    """Lines of a document; subclasses decide what a heading and a bullet look like."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def heading(self, text: str) -> None:
        self.lines.append("")
        self.lines.append(text)

    def line(self, text: str, depth: int = 1) -> None:
        self.lines.append("  " * depth + text)

    def bullet(self, text: str, depth: int = 1) -> None:
        self.lines.append("  " * depth + "• " + text)

    def title(self, text: str) -> None:
        self.lines.append(text)

    def render(self) -> str:
        return "\n".join(self.lines).strip("\n")


class _Markdown(_Doc):
    def title(self, text: str) -> None:
        self.lines.append(f"# {text}")

    def heading(self, text: str) -> None:
        self.lines.extend(["", f"## {text}", ""])

    def line(self, text: str, depth: int = 1) -> None:
        self.lines.append(("  " * (depth - 1)) + text + "  ")

    def bullet(self, text: str, depth: int = 1) -> None:
        self.lines.append("  " * (depth - 1) + "- " + text)


def quote(text: str | None, limit: int = QUOTE_LIMIT) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _when(moment: datetime | None, timezone: str) -> str:
    return format_local(moment, timezone) or "—" if moment else "—"


def older_open_line(digest: ClientDigest, prompts: Prompts) -> str | None:
    """The one line that counts what is older than the period and still open, or None if nothing is."""
    items = []
    if digest.older_open_homework:
        items.append(prompts.text("history.older_homework", count=digest.older_open_homework, client=digest.client))
    if digest.older_open_alerts:
        items.append(prompts.text("history.older_alerts", count=digest.older_open_alerts))
    return prompts.text("history.older_open", items="; ".join(items)) if items else None


def _day(moment: datetime, timezone: str) -> str:
    local = utc_to_local(moment, timezone)
    return f"{local.day} {local:%b}" if local else "—"


def _percent(value: float | None) -> str:
    return f"{round(value * 100)}%" if value is not None else "—"


def _amount(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "—"


NUDGE_STATUSES: Final = ("answered", "sent", "followed_up", "not_reviewed", "skipped", "missed")


def quantity_fields(homework: HomeworkView) -> dict[str, object]:
    """The fields of the ``digest.quantity`` line: debriefs against planned reminders, timing, amounts."""
    amounts = ", ".join(str(d.quantity) for d in homework.debriefs if d.quantity is not None) or "—"
    return {
        "attempted": homework.attempted,
        "planned": homework.planned,
        "on_time": homework.on_time,
        "late": homework.late,
        "amounts": amounts,
    }


def rubric(prompts: Prompts, homework: HomeworkView) -> str:
    """Every rubric criterion with its mark and count ("✓ concrete detail 3/3 · ✗ …"), never a bare score."""
    t = prompts.text
    parts = []
    for key, (met, seen) in homework.criteria_totals().items():
        mark = t("digest.criterion_met") if met == seen else t("digest.criterion_missed")
        parts.append(t("digest.criterion", mark=mark, label=t(f"digest.criteria.{key}"), met=met, seen=seen))
    return " · ".join(parts)


def render_text(digest: ClientDigest, prompts: Prompts) -> str:
    return _render(digest, prompts, _Doc())


def render_markdown(digest: ClientDigest, prompts: Prompts) -> str:
    return _render(digest, prompts, _Markdown())


def _render(digest: ClientDigest, prompts: Prompts, doc: _Doc) -> str:
    t, tz = prompts.text, digest.timezone
    doc.title(t("digest.header", client=digest.client, start=_when(digest.start, tz), end=_when(digest.end, tz)))
    if digest.next_session:
        doc.line(t("digest.next_session", when=_when(digest.next_session, tz)), 0)
    if digest.unreachable_since:
        doc.line(t("digest.unreachable", when=_when(digest.unreachable_since, tz)), 0)
    if digest.undeliverable:
        doc.line(
            t(
                "digest.undeliverable",
                count=digest.undeliverable,
                reminders=digest.undeliverable_reminders,
                other=digest.undeliverable - digest.undeliverable_reminders,
            ),
            0,
        )
    if digest.opted_out:
        doc.line(t("digest.opted_out"), 0)
        return doc.render()
    if digest.flags:
        # Risk comes first: it is what the therapist must see before anything else.
        doc.heading(t("digest.risk_header"))
        for flag in digest.flags:
            ack = ""
            if flag.level == "crisis":
                ack = (
                    t("digest.risk_acked", when=_when(flag.acknowledged_at, tz))
                    if flag.acknowledged_at
                    else t("digest.risk_open")
                )
            doc.bullet(
                t(
                    "digest.risk_line",
                    when=_when(flag.when, tz),
                    level=t(f"digest.level.{flag.level}"),
                    id=flag.id,
                    reasons=", ".join(flag.reasons) or "—",
                    text=quote(flag.text),
                    ack=ack,
                ).rstrip()
            )
    _clinical(doc, prompts, digest)
    if digest.narrative:
        # LLM mode: a summary on top of the data (never instead of it), marked as the model's.
        doc.heading(t("digest.narrative_header", when=_when(digest.narrative_at, tz)))
        doc.line(digest.narrative)
    if not digest.homeworks:
        doc.heading(t("digest.no_homework"))
    for homework in digest.homeworks:
        _homework(doc, prompts, digest, homework)
    older = older_open_line(digest, prompts)
    if older:
        doc.line(older)
    if digest.logs:
        doc.heading(t("digest.logs_header", client=digest.client))
        for moment, text in digest.logs:
            doc.bullet(t("digest.log_line", when=_when(moment, tz), text=quote(text)))
    if digest.empty and digest.homeworks:
        doc.heading(t("digest.empty_period"))
    if any(p.debriefs for p in digest.trend):
        doc.heading(t("digest.trend_header"))
        doc.line(
            " · ".join(
                t(
                    "digest.trend_point",
                    week=_day(p.start, tz),
                    amount=_amount(p.quantity),
                    quality=_percent(p.quality),
                    count=p.debriefs,
                )
                for p in digest.trend
            )
        )
    doc.heading(t("digest.agenda_header"))
    for n, item in enumerate(digest.agenda, start=1):
        fields = dict(item.fields)
        if "missing" in fields:
            fields["missing"] = ", ".join(t(f"therapist.missing.{m}") for m in fields["missing"])
        if "text" in fields:
            fields["text"] = quote(fields["text"], 160)
        doc.line(f"{n}. " + t(f"digest.agenda.{item.key}", client=digest.client, **fields))
    if any(h.debriefs or h.obstacles for h in digest.homeworks):
        doc.line(t("digest.full_text_hint", client=digest.client), 0)
    return doc.render()


def _homework(doc: _Doc, prompts: Prompts, digest: ClientDigest, homework: HomeworkView) -> None:
    t, tz = prompts.text, digest.timezone
    doc.heading(
        t(
            "digest.homework",
            id=homework.id,
            title=homework.title,
            type=prompts.type_label(homework.type_key),
            status=t(f"digest.homework_status.{homework.status}"),
        )
    )
    doc.line(
        t(
            "digest.specificity",
            given=", ".join(t(f"therapist.missing.{f}") for f in homework.given) or "—",
            missing=", ".join(t(f"therapist.missing.{f}") for f in homework.missing) or "—",
        )
    )
    if not homework.delivered:
        doc.line(t("digest.not_delivered"))
        return
    if homework.own_words:
        doc.line(t("digest.own_words", words=quote(homework.own_words)))
    else:
        doc.line(t("digest.own_words_missing"))
    if homework.confidence is not None:
        smaller = t("digest.smaller") if homework.smaller_wanted else ""
        doc.line(t("digest.confidence", confidence=homework.confidence, smaller=smaller))
    if homework.importance is not None:
        doc.line(t("importance.digest", importance=homework.importance))
    if homework.reviewed_at is not None:
        doc.line(t("review.digest_reviewed", when=_when(homework.reviewed_at, tz)))
    doc.line(t("digest.quantity", **quantity_fields(homework)))
    if homework.debriefs:
        doc.line(t("digest.quality", count=len(homework.debriefs), criteria=rubric(prompts, homework)))
    nudged = {k: homework.nudges.get(k, 0) for k in NUDGE_STATUSES}
    if any(nudged.values()):
        doc.line(t("digest.nudges", **nudged))
    for debrief in homework.debriefs:
        _debrief(doc, prompts, digest, homework, debrief)
    for obstacle in homework.obstacles:
        doc.bullet(
            t(
                "digest.obstacle_line",
                when=_when(obstacle.when, tz),
                obstacle=quote(obstacle.obstacle) or "—",
                would_help=quote(obstacle.would_help) or "—",
                id=obstacle.id,
            )
        )


def _debrief(doc: _Doc, prompts: Prompts, digest: ClientDigest, homework: HomeworkView, debrief: DebriefView) -> None:
    t = prompts.text
    timing = t("digest.on_time") if debrief.on_time else t("digest.late")
    doc.bullet(
        t(
            "digest.debrief_line",
            when=_when(debrief.when, digest.timezone),
            quantity=debrief.quantity,
            timing=timing,
            id=debrief.id,
        )
    )
    for field, key in (
        ("what_happened", "happened"),
        ("surprised", "surprised"),
        ("hard", "hard"),
        ("learned", "learned"),
    ):
        value = getattr(debrief, field)
        if value:
            doc.line(t(f"digest.said_{key}", text=quote(value)), 2)
    if debrief.ratings:
        kind = prompts.homework_types.get(homework.type_key)
        labels = {e.key: e.label for e in kind.extras} if kind else {}
        doc.line(
            t("digest.ratings", ratings=", ".join(f"{labels.get(k, k)} {v}" for k, v in debrief.ratings.items())), 2
        )


def measure_line(prompts: Prompts, view: MeasureView, timezone: str) -> str:
    """One questionnaire's digest line: score, band, change since the one before, and the trend."""
    t = prompts.text
    if view.score is None:
        return t(
            "measure.digest_unfinished",
            name=view.name,
            when=_when(view.when, timezone),
            n=view.answered,
            count=view.count,
        )
    change = ""
    if view.change is not None and view.previous_when is not None:
        change = t("measure.digest_change", delta=view.change, previous=_day(view.previous_when, timezone))
    if view.item9:
        change += t("measure.digest_item9", value=view.item9)
    return t(
        "measure.digest_line",
        name=view.name,
        score=view.score,
        max=view.max_score,
        band=t(f"measure.band.{view.band}"),
        when=_when(view.when, timezone),
        change=change,
        trend=" → ".join(str(score) for _, score in view.trend),
    )


def clinical_lines(prompts: Prompts, digest: ClientDigest) -> list[str]:
    """The safety plan's status, the questionnaires and the review count: the lines every rendering shows."""
    t, tz = prompts.text, digest.timezone
    lines = [t("plan.digest_has", when=_when(digest.plan_reviewed, tz)) if digest.has_plan else t("plan.digest_none")]
    if digest.review is not None:
        if digest.review.total:
            lines.append(t("review.digest_count", reviewed=digest.review.reviewed, total=digest.review.total))
        else:
            lines.append(t("review.digest_none"))
        # By name: what closed without a review since the last session (older ones are in the count).
        for missed in (m for m in digest.review.not_reviewed if m.closed_at >= digest.start):
            lines.append(
                t("review.digest_not_reviewed", id=missed.id, title=missed.title, when=_when(missed.closed_at, tz))
            )
    return lines


def _clinical(doc: _Doc, prompts: Prompts, digest: ClientDigest) -> None:
    for line in clinical_lines(prompts, digest):
        doc.line(line, 0)
    if digest.measures:
        doc.heading(prompts.text("measure.digest_header"))
        for view in digest.measures:
            doc.bullet(measure_line(prompts, view, digest.timezone))


def caseload_clinical(prompts: Prompts, row: CaseloadRow, timezone: str) -> str:
    """The caseload line's clinical part: the plan, the review count, the latest scores."""
    t = prompts.text
    parts = [
        t("plan.caseload_has", when=_day(row.plan_reviewed, timezone))
        if row.has_plan and row.plan_reviewed
        else t("plan.caseload_none")
    ]
    if row.reviewed and row.reviewed[1]:
        parts.append(t("review.caseload", reviewed=row.reviewed[0], total=row.reviewed[1]))
    parts.extend(
        t("measure.caseload_line", name=name, score=score, band=t(f"measure.band.{band}"))
        for name, score, band in row.measures
    )
    return "; ".join(parts)


def render_caseload_text(caseload: Caseload, prompts: Prompts) -> str:
    t, tz = prompts.text, caseload.timezone
    doc = _Doc()
    doc.title(t("digest.caseload_header", therapist=caseload.therapist, when=_when(caseload.now, tz)))
    if not caseload.rows:
        doc.line(t("digest.no_clients"), 0)
        return doc.render()
    for row in caseload.rows:
        attention = ", ".join(t(f"digest.attention.{a}") for a in row.attention)
        doc.bullet(
            t(
                "digest.caseload_line",
                client=row.client,
                status=row.status,
                homework=f"“{row.homework}”" if row.homework else t("therapist.clients.no_homework"),
                amount=_amount(row.quantity),
                quality=_percent(row.quality),
                last_contact=_when(row.last_contact, tz),
                attention=t("digest.attention_line", flags=attention) if attention else "",
            ).rstrip()
            + " · "
            + caseload_clinical(prompts, row, tz)
        )
    return doc.render()
