"""Slack Block Kit for the therapist's digest, the caseload overview and urgent alerts; every word from prompts/."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from dialogs.digest import Caseload, CaseloadRow, ClientDigest, DebriefView, FlagView, HomeworkView
from dialogs.digest_text import (
    NUDGE_STATUSES,
    _amount,
    _percent,
    _when,
    caseload_clinical,
    clinical_lines,
    measure_line,
    older_open_line,
    quantity_fields,
    quote,
    rubric,
)
from prompts import Prompts

Block = dict[str, Any]

MAX_BLOCKS: Final = 50  # blocks per message
SECTION_CHARS: Final = 3000  # a section's (or a context element's) text
HEADER_CHARS: Final = 150  # a header's plain_text
CONTEXT_ELEMENTS: Final = 10  # elements per context block
BUTTON_CHARS: Final = 75  # a button's label
VALUE_CHARS: Final = 2000  # a button's value
MESSAGE_CHARS: Final = 10_000
"""All text of one message together. Not in Slack's reference, but chat.postMessage refuses messages whose
blocks carry about 12,000–13,000 characters in total (``msg_blocks_too_long``, slackapi/bolt-js#2509), so
every message stays well below that."""
_SAID: Final = (("what_happened", "happened"), ("surprised", "surprised"), ("hard", "hard"), ("learned", "learned"))
CONTINUED_KEY: Final = "digest.continued"
"""Optional prompt (``{title}``, ``{part}``, ``{parts}``) heading the 2nd… message of a split; else the title again."""


# --- text -------------------------------------------------------------------------------


def escape(text: str) -> str:
    """``&``, ``<`` and ``>`` as Slack's entities: all mrkdwn needs so that no text becomes a link or mention."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plain_text(text: str, limit: int) -> str:
    """``text`` for a message's top-level ``text`` (which Slack reads as mrkdwn): escaped, at most ``limit``.

    Cut before ``limit`` if it must be, never inside an entity, so a client's
    ``<https://…|click>`` or ``<!channel>`` arrives as the characters typed.
    """
    escaped = escape(text)
    return escaped if _size(escaped) <= limit else escaped[: _cut(escaped, limit)]


def _size(text: str) -> int:
    """Length as Slack counts it (UTF-16 units: an emoji is two), to stay safe either way."""
    return len(text) + sum(ord(ch) > 0xFFFF for ch in text)


def _fit(text: str, limit: int) -> int:
    """How many leading characters of ``text`` fit in ``limit``."""
    total = 0
    for n, ch in enumerate(text):
        total += 2 if ord(ch) > 0xFFFF else 1
        if total > limit:
            return n
    return len(text)


def _cut(text: str, limit: int) -> int:
    """Where to cut an overlong ``text``: at the last space if it is not too early, never inside an entity."""
    cut = _fit(text, limit)
    space = text.rfind(" ", 0, cut)
    if space > cut // 2:
        cut = space
    amp = text.rfind("&", max(0, cut - 5), cut)
    if amp > 0 and ";" not in text[amp:cut]:
        cut = amp
    return max(cut, 1)


def _pieces(line: str, limit: int) -> list[str]:
    """A line as is, or an overlong one cut into pieces of at most ``limit`` (only whitespace is dropped)."""
    pieces = []
    while _size(line) > limit:
        cut = _cut(line, limit)
        head, line = line[:cut].rstrip(), line[cut:].lstrip()
        if head:
            pieces.append(head)
    if line:
        pieces.append(line)
    return pieces


def _clip(text: str, limit: int) -> str:
    """One line of at most ``limit`` (headers, button labels), with an ellipsis when shortened."""
    text = " ".join(text.split())
    return text if _size(text) <= limit else text[: _fit(text, limit - 1)].rstrip() + "…"


def _bold(text: str) -> str:
    """``text`` (already mrkdwn) in bold, when it is one line that bold can wrap."""
    stripped = text.strip()
    if not stripped or "\n" in stripped or "*" in stripped or _size(stripped) + 2 > SECTION_CHARS:
        return text
    return f"*{stripped}*"


def _fill(prompts: Prompts, key: str, marked: Mapping[str, str] | None = None, /, **fields: Any) -> str:
    """The prompt ``key`` with ``fields`` as escaped mrkdwn; ``marked`` fields are mrkdwn already (bold, say).

    The whole sentence is escaped, template and values alike, then the marked
    values go into their holes (NUL-delimited: no stored text can hold a NUL).
    """
    holes = {name: f"\x00{name}\x00" for name in marked or {}}
    text = escape(prompts.text(key, **fields, **holes))
    for name, value in (marked or {}).items():
        text = text.replace(holes[name], value)
    return text


# --- blocks ------------------------------------------------------------------------------


def _header(text: str) -> Block:
    return {"type": "header", "text": {"type": "plain_text", "text": _clip(text, HEADER_CHARS), "emoji": True}}


def _divider() -> Block:
    return {"type": "divider"}


def _mrkdwn(text: str) -> dict[str, Any]:
    # verbatim: a client's "@channel", "#room" or URL stays text, never a mention or a link.
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _section(text: str) -> Block:
    return {"type": "section", "text": _mrkdwn(text)}


def _sections(lines: Iterable[str]) -> list[Block]:
    """Lines (mrkdwn) packed into as few sections as fit in :data:`SECTION_CHARS`, cut only between lines.

    A line longer than a whole section is cut at a space (or, failing one, at
    the limit, never inside an entity) and continues in the next section.
    """
    blocks: list[Block] = []
    current: list[str] = []
    size = 0
    for line in lines:
        for piece in _pieces(line, SECTION_CHARS) or [""]:
            extra = _size(piece) + (1 if current else 0)
            if current and size + extra > SECTION_CHARS:
                blocks.append(_section("\n".join(current)))
                current, extra = [], _size(piece)
                size = 0
            current.append(piece)
            size += extra
    if current:
        blocks.append(_section("\n".join(current)))
    return [b for b in blocks if b["text"]["text"].strip()]  # Slack refuses an empty section


def _context(texts: Iterable[str]) -> list[Block]:
    """Small print: mrkdwn elements of at most :data:`SECTION_CHARS`, :data:`CONTEXT_ELEMENTS` to a block."""
    elements = [_mrkdwn(piece) for text in texts for piece in _pieces(text, SECTION_CHARS)]
    return [
        {"type": "context", "elements": elements[i : i + CONTEXT_ELEMENTS]}
        for i in range(0, len(elements), CONTEXT_ELEMENTS)
    ]


def _chars(node: Any) -> int:
    """All text a block carries (every ``text`` string in it)."""
    if isinstance(node, dict):
        return sum(_size(v) if k == "text" and isinstance(v, str) else _chars(v) for k, v in node.items())
    if isinstance(node, list):
        return sum(_chars(v) for v in node)
    return 0


# --- splitting ---------------------------------------------------------------------------


def _paginate(units: Sequence[Sequence[Block]], title: str, prompts: Prompts) -> list[list[Block]]:
    """Units of blocks into messages within Slack's limits, each opening with a header.

    Blocks are never cut. A unit (a homework's heading with its first debrief,
    say) moves whole to a fresh message when it does not fit the current one but
    would fit an empty one; a bigger unit fills block by block. A message never
    starts or ends with a divider. The first unit always starts the first
    message (the digest puts its status and risk there).
    """
    room, budget = MAX_BLOCKS - 1, MESSAGE_CHARS - HEADER_CHARS  # the header is counted at its largest
    bodies: list[list[Block]] = [[]]
    used = 0

    def fits(blocks: Sequence[Block], body: list[Block], chars: int) -> bool:
        return len(body) + len(blocks) <= room and chars + sum(_chars(b) for b in blocks) <= budget

    for unit in units:
        if not unit:
            continue
        if bodies[-1] and not fits(unit, bodies[-1], used) and fits(unit, [], 0):
            bodies.append([])
            used = 0
        for block in unit:
            if bodies[-1] and not fits([block], bodies[-1], used):
                bodies.append([])
                used = 0
            if block["type"] == "divider" and not bodies[-1]:
                continue
            bodies[-1].append(block)
            used += _chars(block)
    for body in bodies:
        while body and body[-1]["type"] == "divider":
            body.pop()
    bodies = [body for body in bodies if body] or [[]]
    messages = [[_header(title), *bodies[0]]]
    for part, body in enumerate(bodies[1:], start=2):
        heading = (
            prompts.text(CONTINUED_KEY, title=title, part=part, parts=len(bodies))
            if prompts.has(CONTINUED_KEY)
            else title
        )
        messages.append([_header(heading), *body])
    return messages


def _titled(title: str) -> list[str]:
    """The full title as a line, when the header had to shorten it (nothing is lost)."""
    return [escape(title)] if _size(" ".join(title.split())) > HEADER_CHARS else []


# --- the client digest -------------------------------------------------------------------


def digest_messages(digest: ClientDigest, prompts: Prompts) -> list[list[Block]]:
    """One client's digest as Slack messages (each a list of blocks), in :func:`dialogs.digest_text.render_text` order.

    Header; status (next session, unreachable, opted out); risk flags, which
    always start the first message; per homework a divider, its summary
    (specificity, rationale, confidence, quantity, the ✓/✗ rubric, reminders),
    a section per debrief with the client's words quoted, and the obstacles;
    notes; the trend and the full-text hint as small print; the review agenda.
    Split by :func:`_paginate` when it outgrows one message.
    """
    t, tz = prompts.text, digest.timezone
    title = t("digest.header", client=digest.client, start=_when(digest.start, tz), end=_when(digest.end, tz))
    status = _titled(title)
    if digest.next_session:
        status.append(_fill(prompts, "digest.next_session", when=_when(digest.next_session, tz)))
    if digest.unreachable_since:
        status.append(_fill(prompts, "digest.unreachable", when=_when(digest.unreachable_since, tz)))
    if digest.opted_out:
        status.append(_fill(prompts, "digest.opted_out"))
        return _paginate([_sections(status)], title, prompts)
    first = _sections(status)
    if digest.flags:  # risk first: what the therapist must see before anything else
        risk = [_bold(_fill(prompts, "digest.risk_header")), *(_risk_line(prompts, digest, f) for f in digest.flags)]
        first += _sections(risk)
    # The safety plan's status, the review count and the questionnaires (dialogs.safety_plan, review, measures).
    clinical = [escape(line) for line in clinical_lines(prompts, digest)]
    if digest.measures:
        clinical.append(_bold(_fill(prompts, "measure.digest_header")))
        clinical += ["• " + escape(measure_line(prompts, m, tz)) for m in digest.measures]
    first += _sections(clinical)
    if digest.narrative:  # LLM mode: a summary on top of the data, marked as the model's
        header = _fill(prompts, "digest.narrative_header", when=_when(digest.narrative_at, tz))
        first += _sections([_bold(header), escape(digest.narrative)])
    units: list[list[Block]] = [first]
    if not digest.homeworks:
        units.append(_sections([_bold(_fill(prompts, "digest.no_homework"))]))
    for homework in digest.homeworks:
        units += _homework(prompts, digest, homework)
    older = older_open_line(digest, prompts)
    if older:
        units.append(_context([escape(older)]))
    if digest.logs:
        lines = [_bold(_fill(prompts, "digest.logs_header", client=digest.client))]
        lines += ["• " + _fill(prompts, "digest.log_line", when=_when(m, tz), text=quote(x)) for m, x in digest.logs]
        units.append(_sections(lines))
    if digest.empty and digest.homeworks:
        units.append(_sections([_bold(_fill(prompts, "digest.empty_period"))]))
    if any(p.debriefs for p in digest.trend):
        points = " · ".join(
            t(
                "digest.trend_point",
                week=_when(p.start, tz).split(" ", 1)[-1].rsplit(" ", 2)[0],
                amount=_amount(p.quantity),
                quality=_percent(p.quality),
                count=p.debriefs,
            )
            for p in digest.trend
        )
        units.append(_context([_bold(_fill(prompts, "digest.trend_header")), escape(points)]))
    agenda = [_bold(_fill(prompts, "digest.agenda_header"))]
    for n, item in enumerate(digest.agenda, start=1):
        fields = dict(item.fields)
        if "missing" in fields:
            fields["missing"] = ", ".join(t(f"therapist.missing.{m}") for m in fields["missing"])
        if "text" in fields:
            fields["text"] = quote(fields["text"], 160)
        agenda.append(f"{n}. " + _fill(prompts, f"digest.agenda.{item.key}", client=digest.client, **fields))
    closing = _sections(agenda)
    if any(h.debriefs or h.obstacles for h in digest.homeworks):
        closing += _context([_fill(prompts, "digest.full_text_hint", client=digest.client)])
    units.append(closing)
    return _paginate(units, title, prompts)


def _risk_line(prompts: Prompts, digest: ClientDigest, flag: FlagView) -> str:
    t, tz = prompts.text, digest.timezone
    ack = ""
    if flag.level == "crisis":
        acked = flag.acknowledged_at
        ack = t("digest.risk_acked", when=_when(acked, tz)) if acked else t("digest.risk_open")
    marked = {"level": _bold(escape(t(f"digest.level.{flag.level}"))), "ack": _bold(escape(ack)) if ack else ""}
    return (
        "• "
        + _fill(
            prompts,
            "digest.risk_line",
            marked,
            when=_when(flag.when, tz),
            id=flag.id,
            reasons=", ".join(flag.reasons) or "—",
            text=quote(flag.text),
        ).rstrip()
    )


def _homework(prompts: Prompts, digest: ClientDigest, homework: HomeworkView) -> list[list[Block]]:
    """A homework's units: divider and summary together with its first debrief, then one per debrief, obstacles."""
    t, tz = prompts.text, digest.timezone
    lines = [
        _bold(
            _fill(
                prompts,
                "digest.homework",
                id=homework.id,
                title=homework.title,
                type=prompts.type_label(homework.type_key),
                status=t(f"digest.homework_status.{homework.status}"),
            )
        ),
        _fill(
            prompts,
            "digest.specificity",
            given=", ".join(t(f"therapist.missing.{f}") for f in homework.given) or "—",
            missing=", ".join(t(f"therapist.missing.{f}") for f in homework.missing) or "—",
        ),
    ]
    if not homework.delivered:
        lines.append(_fill(prompts, "digest.not_delivered"))
        return [[_divider(), *_sections(lines)]]
    if homework.own_words:
        lines.append(_fill(prompts, "digest.own_words", words=quote(homework.own_words)))
    else:
        lines.append(_fill(prompts, "digest.own_words_missing"))
    if homework.confidence is not None:
        smaller = t("digest.smaller") if homework.smaller_wanted else ""
        lines.append(_fill(prompts, "digest.confidence", confidence=homework.confidence, smaller=smaller))
    if homework.importance is not None:
        lines.append(_fill(prompts, "importance.digest", importance=homework.importance))
    if homework.reviewed_at is not None:
        lines.append(_fill(prompts, "review.digest_reviewed", when=_when(homework.reviewed_at, tz)))
    lines.append(_fill(prompts, "digest.quantity", **quantity_fields(homework)))
    if homework.debriefs:
        criteria = rubric(prompts, homework)
        lines.append(_fill(prompts, "digest.quality", count=len(homework.debriefs), criteria=criteria))
    nudged = {k: homework.nudges.get(k, 0) for k in NUDGE_STATUSES}
    if any(nudged.values()):
        lines.append(_fill(prompts, "digest.nudges", **nudged))
    follow = [_sections(_debrief(prompts, digest, homework, d)) for d in homework.debriefs]
    if homework.obstacles:
        follow.append(
            _sections(
                "• "
                + _fill(
                    prompts,
                    "digest.obstacle_line",
                    when=_when(o.when, tz),
                    obstacle=quote(o.obstacle) or "—",
                    would_help=quote(o.would_help) or "—",
                    id=o.id,
                )
                for o in homework.obstacles
            )
        )
    summary = [_divider(), *_sections(lines)]
    if homework.reviewed_at is None:  # the review loop: one tap after the session
        summary.append(review_button(prompts, digest.client, homework.id))
    return [summary + follow[0], *follow[1:]] if follow else [summary]


def review_button(prompts: Prompts, client: str, homework_id: int) -> Block:
    """The "Mark reviewed" button under a homework: a tap runs ``/reviewed NAME ID`` (action ``mark_reviewed``)."""
    value = f"/reviewed {client} {homework_id}"[:VALUE_CHARS]
    button = {
        "type": "button",
        "action_id": "mark_reviewed",
        "text": {"type": "plain_text", "text": _clip(prompts.text("review.button"), BUTTON_CHARS), "emoji": True},
        "value": value,
    }
    return {"type": "actions", "block_id": f"review-{homework_id}", "elements": [button]}


def _debrief(prompts: Prompts, digest: ClientDigest, homework: HomeworkView, debrief: DebriefView) -> list[str]:
    """A debrief's lines: when, amount and timing in bold, then the client's words as a block quote."""
    t = prompts.text
    timing = t("digest.on_time") if debrief.on_time else t("digest.late")
    when = _when(debrief.when, digest.timezone)
    line = _fill(prompts, "digest.debrief_line", when=when, quantity=debrief.quantity, timing=timing, id=debrief.id)
    lines = ["• " + _bold(line)]
    for field, key in _SAID:
        value = getattr(debrief, field)
        if value:
            lines.append(">" + _fill(prompts, f"digest.said_{key}", text=quote(value)))
    if debrief.ratings:
        kind = prompts.homework_types.get(homework.type_key)
        labels = {e.key: e.label for e in kind.extras} if kind else {}
        ratings = ", ".join(f"{labels.get(k, k)} {v}" for k, v in debrief.ratings.items())
        lines.append(">" + _fill(prompts, "digest.ratings", ratings=ratings))
    return lines


# --- the caseload ------------------------------------------------------------------------


def caseload_blocks(caseload: Caseload, prompts: Prompts) -> list[list[Block]]:
    """The caseload overview as Slack messages: a section per client, in the given order, attention flags in bold."""
    when = _when(caseload.now, caseload.timezone)
    title = prompts.text("digest.caseload_header", therapist=caseload.therapist, when=when)
    if not caseload.rows:
        return _paginate([_sections([*_titled(title), _fill(prompts, "digest.no_clients")])], title, prompts)
    units = [_sections(_titled(title))] + [_sections([_row(prompts, caseload, row)]) for row in caseload.rows]
    return _paginate(units, title, prompts)


def _row(prompts: Prompts, caseload: Caseload, row: CaseloadRow) -> str:
    t = prompts.text
    flags = ", ".join(t(f"digest.attention.{a}") for a in row.attention)
    attention = _fill(prompts, "digest.attention_line", {"flags": _bold(escape(flags))}) if flags else ""
    return (
        "• "
        + _fill(
            prompts,
            "digest.caseload_line",
            {"attention": attention},
            client=row.client,
            status=row.status,
            homework=f"“{row.homework}”" if row.homework else t("therapist.clients.no_homework"),
            amount=_amount(row.quantity),
            quality=_percent(row.quality),
            last_contact=_when(row.last_contact, caseload.timezone),
        ).rstrip()
        + " · "
        + escape(caseload_clinical(prompts, row, caseload.timezone))
    )


# --- alerts ------------------------------------------------------------------------------


def alert_blocks(text: str, ack_value: str, ack_label: str) -> list[Block]:
    """An urgent alert as one message: the text (escaped, in sections) and a primary "acknowledge" button.

    The button sends ``action_id`` ``ack_alert`` with ``ack_value``. An alert
    too long for one message (it never is: the quote in it is capped) keeps its
    beginning and ends with an ellipsis rather than be refused by Slack.
    """
    if not ack_value or _size(ack_value) > VALUE_CHARS:
        raise ValueError(f"an alert's ack value must be 1–{VALUE_CHARS} characters")
    if not ack_label.strip():
        raise ValueError("an alert's ack button needs a label")
    body = escape(text)
    budget = MESSAGE_CHARS - BUTTON_CHARS
    if _size(body) > budget:
        body = body[: _cut(body, budget - 1)].rstrip() + "…"
    sections = _sections(body.split("\n"))[: MAX_BLOCKS - 1]
    button = {
        "type": "button",
        "action_id": "ack_alert",
        "text": {"type": "plain_text", "text": _clip(ack_label, BUTTON_CHARS), "emoji": True},
        "value": ack_value,
        "style": "primary",
    }
    return [*sections, {"type": "actions", "elements": [button]}]


def acknowledged_blocks(text: str) -> list[Block]:
    """An alert after Acknowledge: the text that says who acknowledged and when, and no button left to press."""
    body = escape(text)
    if _size(body) > MESSAGE_CHARS:
        body = body[: _cut(body, MESSAGE_CHARS - 1)].rstrip() + "…"
    return _sections(body.split("\n"))[:MAX_BLOCKS]


def plan_modal(
    prompts: Prompts, clients: Sequence[Any], chosen: Any | None, current: Mapping[str, str]
) -> dict[str, Any]:
    """The safety plan modal: the client (one of the therapist's own) and the six steps, filled in with ``current``."""
    t = prompts.text
    options = [{"text": {"type": "plain_text", "text": c.name[:75]}, "value": c.name[:150]} for c in clients[:100]]
    select: dict[str, Any] = {"type": "static_select", "action_id": "value", "options": options}
    if chosen is not None:
        select["initial_option"] = next(o for o in options if o["value"] == chosen.name[:150])
    blocks: list[Block] = [
        {"type": "section", "text": _mrkdwn(t("plan.slack_intro"))},
        {
            "type": "input",
            "block_id": "client",
            "label": {"type": "plain_text", "text": t("slack.client_label")},
            "element": select,
        },
    ]
    for field in ("warning_signs", "coping", "distractions", "people", "professionals", "environment"):
        element: dict[str, Any] = {"type": "plain_text_input", "action_id": "value", "multiline": True}
        if current.get(field):
            element["initial_value"] = current[field][:3000]
        blocks.append(
            {
                "type": "input",
                "block_id": field,
                "optional": True,
                "label": {"type": "plain_text", "text": t(f"plan.field.{field}")[:2000]},
                "element": element,
            }
        )
    return {
        "type": "modal",
        "callback_id": "plan_modal",
        "title": {"type": "plain_text", "text": t("plan.slack_title")},
        "submit": {"type": "plain_text", "text": t("slack.modal_submit")},
        "blocks": blocks,
    }
