"""LLM mode's steps: reflection and extraction in the debrief, number confirmation, memory, digest narrative.

Every function here is a no-op when no model is configured (``turn.llm``
is None), so the scripted dialog is unchanged byte for byte; and each one
falls back to the scripted step on any failure (see :mod:`dialogs.llm`).

- **Reflection and extraction** (:func:`reflect`): after a free-text answer
  in the debrief (or the obstacle talk), one call returns one or two
  sentences reflecting the answer, at most one follow-up question, and the
  facts the answer states (did it, amount, obstacles, emotions, ratings).
  The reflection is said before the next scripted question; a follow-up
  question is asked once per step, and its answer is added to the same
  field. The client's message is screened for risk before the call, and
  the reply after it.
- **Confirmation** (:func:`confirm_extra`, :func:`confirm_quantity`,
  :func:`confirmed`): a number the model read in the prose is never stored
  as the client's until they confirm it; a number they did not write
  themselves is shown as an estimate.
- **Memory** (:func:`remember`, :func:`_context`): completed debriefs, log
  entries and therapist notes are remembered per client; the few nearest
  to the current homework and answer ground the reflection.
- **Narrative** (:func:`with_narrative`): two to four sentences on top of
  the digest's data, at most one call per client per digest period.

Budget: at most :data:`CALLS_PER_MESSAGE` model call per client message
(``turn.llm_calls``).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel, Field
from sqlalchemy import event
from sqlmodel import Session, col, select

from dialogs.digest import ClientDigest
from dialogs.llm import LanguageModel, check_text, messages, name_parts, scrub
from dialogs.messages import Option, Outbound
from dialogs.safety import assess
from dialogs.turn import Turn
from prompts import Extra, Prompts
from storage import Client, Debrief, DebriefStatus, Homework, LlmUsage, LogEntry, Therapist, TherapistNote
from storage.memory import Memory

log = logging.getLogger("companion.llm")

CALLS_PER_MESSAGE: Final = 1
REFLECTION_LIMIT: Final = 300
FOLLOW_UP_LIMIT: Final = 200
NARRATIVE_LIMIT: Final = 600
ANSWER_LIMIT: Final = 2000  # of the client's answer sent to the model
CONTEXT_ITEM_LIMIT: Final = 300
MEMORY_SHARE: Final = 0.25  # of the call's timeout that retrieval may take


# --- what the model returns -------------------------------------------------------------


class Emotion(BaseModel):
    """An emotion the client named, with an intensity 0–100 if they gave or implied one."""

    name: str = Field(max_length=60)
    intensity: int | None = Field(default=None, ge=0, le=100)
    explicit: bool = Field(default=False, description="true only if the client wrote the intensity themselves")


class Rating(BaseModel):
    """A rating from the homework's rating keys that the client mentioned in prose."""

    key: str = Field(max_length=60)
    value: int = Field(ge=0, le=100)
    explicit: bool = Field(default=False, description="true only if the client wrote this number themselves")


class Extraction(BaseModel):
    """What the client's latest answer states; anything not stated is left out."""

    did_it: bool | None = None
    quantity: int | None = Field(default=None, ge=0, le=4, description="0 none · 1 a little · 2 half · 3 most · 4 all")
    quantity_explicit: bool = False
    obstacles: list[str] = Field(default_factory=list, max_length=5)
    emotions: list[Emotion] = Field(default_factory=list, max_length=8)
    ratings: list[Rating] = Field(default_factory=list, max_length=8)


class DebriefReply(BaseModel):
    """A reflection of the client's latest answer, at most one follow-up question, and what the answer states."""

    reflection: str = Field(max_length=2000)
    follow_up: str | None = Field(default=None, max_length=1000)
    extraction: Extraction = Field(default_factory=Extraction)


# --- the debrief ------------------------------------------------------------------------


def _say(turn: Turn, text: str, key: str, version: str, **kwargs: Any) -> None:
    message = Outbound(text, prompt_key=key, prompt_version=version, **kwargs)
    turn.sends.append((turn.inbound.channel, turn.inbound.address, message))


def text_answer(turn: Turn, debrief: Debrief, step: str) -> str | None:
    """The value to store for a free-text step: the answer, or, after a follow-up question, both answers."""
    answer = turn.free_text()
    if turn.llm is None or turn.data.get("follow_up") != step:
        return answer
    earlier = getattr(debrief, step)
    if answer is None:
        return earlier
    return f"{earlier}\n{answer}" if earlier else answer


def reflect(turn: Turn, debrief: Debrief, step: str, *, question_key: str, follow_up: bool = True) -> bool:
    """Reflect the answer just given (and note what it states); True if a follow-up question was asked.

    ``question_key`` names the scripted question the client answered. Nothing
    happens without a model, for a skipped answer, for a message the safety
    screen flags, or once this message has had its call.
    """
    llm = turn.llm
    client = turn.client
    if llm is None or client is None or client.id is None or turn.llm_calls >= CALLS_PER_MESSAGE:
        return False
    if turn.is_("skip") or not turn.text:
        return False
    # The safety screen runs before the model sees the message (the engine has already answered it).
    if assess(turn.text, locale=turn.prompts.locale).level != "none":
        return False
    homework = turn.session.get(Homework, debrief.homework_id)
    if homework is None:
        return False
    turn.llm_calls += 1
    deadline = time.monotonic() + llm.timeout
    names, therapist = _names(turn.session, client)
    pseudonym = llm.prompts.pseudonym.format(id=client.id)
    kind = turn.prompts.homework_types.get(homework.type)
    extras = kind.extras if kind else ()

    def clean(text: str) -> str:
        return scrub(text, names=names, pseudonym=pseudonym, therapist=therapist)

    answer = clean(turn.text[:ANSWER_LIMIT])
    context = _context(turn.session, llm, turn.memory, client, homework, debrief, answer, clean)
    template = llm.prompts.template("reflection")
    human = llm.prompts.text(
        "reflection",
        "human",
        homework_type=turn.prompts.type_label(homework.type),
        homework=clean(" · ".join(v for v in (homework.title, homework.what) if v)),
        question=clean(turn.t(question_key, title=homework.title)),
        rating_keys=", ".join(f"{e.key} ({e.low}–{e.high}, {e.label or e.key})" for e in extras) or "none",
        context=context or "(nothing yet)",
        answer=answer,
    )
    outcome = llm.call(
        turn.session,
        now=turn.now,
        client_id=client.id,
        purpose="reflection",
        template=template,
        messages=messages(llm.prompts.text("reflection", "system"), human),
        schema=DebriefReply,
        check=lambda reply: _check_reply(turn, reply, names + therapist),
        timeout=max(0.0, deadline - time.monotonic()),
    )
    reply: DebriefReply | None = outcome.value
    if reply is None:
        return False
    _propose(turn, reply.extraction, extras)
    _keep(debrief, step, reply.extraction, turn.text)
    asks = follow_up and bool(reply.follow_up and reply.follow_up.strip()) and turn.data.get("follow_up") != step
    text = reply.reflection.strip()
    if asks and reply.follow_up:
        text = f"{text}\n\n{reply.follow_up.strip()}"
        turn.step(step, follow_up=step)
    _say(turn, text, template.key, template.version)
    return asks


def _check_reply(turn: Turn, reply: DebriefReply, names: list[str]) -> str | None:
    assert turn.llm is not None
    common: dict[str, Any] = dict(llm_prompts=turn.llm.prompts, prompts=turn.prompts, names=names)
    reason = check_text(reply.reflection, limit=REFLECTION_LIMIT, max_sentences=2, **common)
    if reason is None and reply.follow_up and reply.follow_up.strip():
        reason = check_text(reply.follow_up, limit=FOLLOW_UP_LIMIT, max_sentences=1, questions=1, **common)
    return reason


def _names(session: Session, client: Client) -> tuple[list[str], list[str]]:
    therapist = session.get(Therapist, client.therapist_id)
    return name_parts(client.name), name_parts(therapist.name) if therapist else []


def _stated(value: int, text: str) -> bool:
    return re.search(rf"(?<!\d){value}(?!\d)", text) is not None


def _propose(turn: Turn, extraction: Extraction, extras: tuple[Extra, ...]) -> None:
    """Keep the numbers the answer gave, to confirm at their step; unstated ones are marked as estimates."""
    by_key = {e.key: e for e in extras}
    proposed: dict[str, dict[str, Any]] = dict(turn.data.get("proposed", {}))
    for rating in extraction.ratings:
        extra = by_key.get(rating.key)
        if extra is None or not extra.low <= rating.value <= extra.high:
            continue  # not this homework's rating, or off its scale: dropped
        # The model's word that a number was stated is checked against the text itself.
        proposed[rating.key] = {"value": rating.value, "explicit": rating.explicit and _stated(rating.value, turn.text)}
    if extraction.quantity is not None:
        explicit = extraction.quantity_explicit and _stated(extraction.quantity, turn.text)
        proposed["quantity"] = {"value": extraction.quantity, "explicit": explicit}
    if proposed:
        turn.state.data = {**turn.state.data, "proposed": proposed}


def _keep(debrief: Debrief, step: str, extraction: Extraction, text: str) -> None:
    """Keep what the model read in this answer on the debrief, each value marked explicit or inferred.

    The model's word that the client stated an intensity is checked against
    the text itself, as for ratings. Numbers for the record are confirmed
    with the client first (:func:`_propose`); these are for the digest reader.
    """
    entry: dict[str, Any] = {}
    if extraction.did_it is not None:
        entry["did_it"] = extraction.did_it
    if extraction.obstacles:
        entry["obstacles"] = [o.strip()[:200] for o in extraction.obstacles if o.strip()]
    if extraction.emotions:
        entry["emotions"] = [
            {
                "name": e.name.strip()[:60],
                "intensity": e.intensity,
                "source": "explicit"
                if e.intensity is not None and e.explicit and _stated(e.intensity, text)
                else "inferred",
            }
            for e in extraction.emotions
        ]
    if entry:
        debrief.extracted = {**(debrief.extracted or {}), step: entry}


def _proposal(turn: Turn, key: str) -> dict[str, Any] | None:
    if turn.llm is None:
        return None
    found = turn.data.get("proposed", {}).get(key)
    return found if isinstance(found, dict) and isinstance(found.get("value"), int) else None


def _source(turn: Turn, proposal: dict[str, Any]) -> str:
    assert turn.llm is not None
    key = "client.source_explicit" if proposal.get("explicit") else "client.source_inferred"
    return turn.llm.prompts.text(key)


def confirm_extra(turn: Turn, extra: Extra) -> bool:
    """Ask to confirm a rating read in the prose instead of asking for it; False when there is none."""
    proposal = _proposal(turn, extra.key)
    if proposal is None:
        return False
    assert turn.llm is not None
    template = turn.llm.prompts.template("client.confirm_rating")
    text = turn.llm.prompts.text(
        "client.confirm_rating", value=proposal["value"], label=extra.label or extra.key, source=_source(turn, proposal)
    )
    options = (Option("yes", turn.t("common.yes")), *(turn.scale(extra.low, extra.high) if extra.high <= 10 else ()))
    _say(turn, text, template.key, template.version, kind="choice", options=options)
    return True


def confirm_quantity(turn: Turn) -> bool:
    """Ask to confirm the amount read in the prose instead of asking for it; False when there is none."""
    proposal = _proposal(turn, "quantity")
    if proposal is None:
        return False
    assert turn.llm is not None
    template = turn.llm.prompts.template("client.confirm_quantity")
    value = proposal["value"]
    text = turn.llm.prompts.text(
        "client.confirm_quantity",
        value=value,
        label=turn.t(f"quantity.{value}").split(" ", 1)[-1],
        source=_source(turn, proposal),
    )
    labels = {n: turn.t(f"quantity.{n}") for n in range(5)}
    options = (Option("yes", turn.t("common.yes")), *turn.scale(0, 4, labels))
    _say(turn, text, template.key, template.version, kind="choice", options=options)
    return True


def confirmed(turn: Turn, key: str) -> int | None:
    """The proposed number for ``key`` if the client just confirmed it ("yes"); else None."""
    proposal = _proposal(turn, key)
    return int(proposal["value"]) if proposal is not None and turn.is_("yes") else None


# --- memory -----------------------------------------------------------------------------


def _debrief_text(debrief: Debrief, title: str) -> str:
    parts = [title]
    for label, value in (
        ("happened", debrief.what_happened),
        ("surprised", debrief.surprised),
        ("hard", debrief.hard),
        ("learned", debrief.learned),
        ("obstacle", debrief.obstacle),
        ("would help", debrief.would_help),
    ):
        if value:
            parts.append(f"{label}: {value}")
    return "\n".join(parts)


class Changes:
    """What a turn adds or changes, collected at every flush (handlers flush mid-turn)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.objects: list[Any] = []
        event.listen(session, "before_flush", self._collect)

    def _collect(self, session: Session, _context: Any, _instances: Any) -> None:
        self.objects.extend(session.new)
        self.objects.extend(session.dirty)

    def close(self) -> list[Any]:
        """Flush, stop watching, and return every object added or changed, once each."""
        self.session.flush()
        event.remove(self.session, "before_flush", self._collect)
        return list({id(o): o for o in self.objects}.values())


def watch(turn: Turn) -> Changes | None:
    """Start collecting what this turn writes, for :func:`remember` (LLM mode only)."""
    return Changes(turn.session) if turn.llm is not None and turn.memory is not None else None


def remember(turn: Turn, changes: Changes | None) -> None:
    """Add what this turn completed (a debrief, a log entry, a therapist note) to the client's memory.

    Runs after the turn's handlers, in its unit of work; bounded by the
    memory timeout, and a failing memory never fails the turn. Scrubbed like
    a prompt, since a provider's embeddings leave the machine too.
    """
    llm, memory = turn.llm, turn.memory
    if changes is None:
        return
    objects = changes.close()
    if llm is None or memory is None:
        return
    items: list[tuple[int, str, int, str]] = []
    for obj in objects:
        if isinstance(obj, Debrief) and obj.status == DebriefStatus.COMPLETE and obj.completed_at == turn.now:
            homework = turn.session.get(Homework, obj.homework_id)
            items.append(
                (obj.client_id, "debrief", obj.id or 0, _debrief_text(obj, homework.title if homework else ""))
            )
        elif isinstance(obj, LogEntry):
            items.append((obj.client_id, "log", obj.id or 0, obj.text))
        elif isinstance(obj, TherapistNote):
            items.append((obj.client_id, "note", obj.id or 0, obj.text))
    for client_id, kind, ref_id, text in items:
        client = turn.session.get(Client, client_id)
        if client is None:
            continue
        names, therapist = _names(turn.session, client)
        clean = scrub(text, names=names, pseudonym=llm.prompts.pseudonym.format(id=client_id), therapist=therapist)
        try:
            llm.bounded(
                lambda c=client_id, k=kind, r=ref_id, t=clean: memory.add(c, k, r, t),  # type: ignore[misc]
                llm.memory_timeout,
                memory=True,
            )
        except Exception as exc:  # the memory is a help, never a dependency
            log.warning("memory: could not remember a %s: %s", kind, exc.__class__.__name__)


def _context(
    session: Session,
    llm: LanguageModel,
    memory: Memory | None,
    client: Client,
    homework: Homework,
    debrief: Debrief,
    answer: str,
    clean: Any,
) -> str:
    """The few remembered items nearest to this homework and answer, as prompt lines (resolved from the DB)."""
    if memory is None or client.id is None:
        return ""
    client_id = client.id
    query = clean(f"{homework.title}\n{answer}")
    try:
        hits = llm.bounded(
            lambda: memory.query(client_id, query, llm.memory_k),
            min(llm.memory_timeout, llm.timeout * MEMORY_SHARE),
            memory=True,
        )
    except Exception as exc:
        log.warning("memory: retrieval failed: %s", exc.__class__.__name__)
        return ""
    lines = []
    for hit in hits:
        text: str | None = None
        if hit.kind == "debrief":
            row = session.get(Debrief, hit.ref_id)
            if row is not None and row.client_id == client_id and row.id != debrief.id:
                past = session.get(Homework, row.homework_id)
                text = "past debrief: " + _debrief_text(row, past.title if past else "").replace("\n", "; ")
        elif hit.kind == "log":
            log_row = session.get(LogEntry, hit.ref_id)
            text = f"client's note: {log_row.text}" if log_row and log_row.client_id == client_id else None
        elif hit.kind == "note":
            note = session.get(TherapistNote, hit.ref_id)
            text = f"therapist's formulation note: {note.text}" if note and note.client_id == client_id else None
        if text:
            lines.append("- " + clean(" ".join(text.split()))[:CONTEXT_ITEM_LIMIT])
    return "\n".join(lines)


# --- the digest narrative ----------------------------------------------------------------


def _record(digest: ClientDigest, prompts: Prompts, clean: Any) -> str:
    """The digest's data as plain lines for the narrative prompt: counts, ratings and the client's words."""
    lines = [f"period: {digest.start:%Y-%m-%d} to {digest.end:%Y-%m-%d}"]
    for h in digest.homeworks:
        amounts = ", ".join(str(d.quantity) for d in h.debriefs if d.quantity is not None) or "none"
        lines.append(
            f"homework “{clean(h.title)}” ({prompts.type_label(h.type_key)}): {h.attempted} debrief(s) for "
            f"{h.planned} planned reminder(s); amounts 0–4: {amounts}; confidence {h.confidence}"
        )
        for criterion, (met, seen) in h.criteria_totals().items():
            if seen:
                lines.append(f"  quality {criterion}: {met}/{seen}")
        for d in h.debriefs:
            said = "; ".join(
                f"{k}: {clean(v)[:200]}"
                for k, v in (("happened", d.what_happened), ("hard", d.hard), ("learned", d.learned))
                if v
            )
            ratings = ", ".join(f"{k} {v}" for k, v in d.ratings.items())
            lines.append(f"  debrief {d.when:%a}: did {d.quantity}/4; {said}; {ratings}".rstrip("; "))
        for o in h.obstacles:
            lines.append(
                f"  not done: {clean(o.obstacle or '—')[:200]}; would help: {clean(o.would_help or '—')[:200]}"
            )
    for _, text in digest.logs:
        lines.append(f"client's note: {clean(text)[:200]}")
    return "\n".join(lines)


def with_narrative(
    session: Session,
    *,
    llm: LanguageModel | None,
    digest: ClientDigest,
    prompts: Prompts,
    now: datetime,
    call: bool = True,
) -> ClientDigest:
    """``digest`` with a short narrative on top of its data, when a model is configured.

    At most one call per client per digest period: the narrative is kept
    (encrypted) on the call's LlmUsage row, so a call already made since the
    period began, by any process or before a restart, is reused; a call
    that failed is not repeated, and the digest goes without a narrative.
    ``call=False`` only reuses (adapters re-rendering a digest already sent).
    """
    if llm is None or digest.opted_out or digest.empty:
        return digest
    earlier = _narrated_since(session, digest.client_id, digest.start)
    if earlier is not None:
        if earlier.output:
            return dataclasses.replace(digest, narrative=earlier.output, narrative_at=earlier.at)
        return digest
    if not call:
        return digest
    client = session.get(Client, digest.client_id)
    if client is None:
        return digest
    names, therapist = _names(session, client)
    pseudonym = llm.prompts.pseudonym.format(id=digest.client_id)

    def clean(text: str) -> str:
        return scrub(text, names=names, pseudonym=pseudonym, therapist=therapist)

    template = llm.prompts.template("narrative")
    outcome = llm.call(
        session,
        now=now,
        client_id=digest.client_id,
        purpose="narrative",
        template=template,
        messages=messages(
            llm.prompts.text("narrative", "system"),
            llm.prompts.text("narrative", "human", record=_record(digest, prompts, clean)),
        ),
        check=lambda text: check_text(
            str(text),
            limit=NARRATIVE_LIMIT,
            llm_prompts=llm.prompts,
            prompts=prompts,
            names=names + therapist,
            max_sentences=5,
        ),
    )
    if outcome.value is None:
        return digest
    text = " ".join(str(outcome.value).split())
    if outcome.usage is not None:
        outcome.usage.output = text
    return dataclasses.replace(digest, narrative=text, narrative_at=now)


def _narrated_since(session: Session, client_id: int, since: datetime) -> LlmUsage | None:
    """The latest narrative call for this client since ``since`` (its ``output`` is the narrative, if it worked)."""
    return session.exec(
        select(LlmUsage)
        .where(LlmUsage.client_id == client_id, LlmUsage.purpose == "narrative", col(LlmUsage.at) >= since)
        .order_by(col(LlmUsage.id).desc())
    ).first()


def digest_message(
    session: Session,
    *,
    llm: LanguageModel | None,
    prompts: Prompts,
    client: Client,
    therapist: Therapist,
    now: datetime,
) -> Outbound:
    """One client's digest as a message: the plain text (with a narrative in LLM mode) and its ref."""
    from dialogs.digest import build_client_digest, digest_ref
    from dialogs.digest_text import render_text

    model = build_client_digest(session, prompts=prompts, client=client, therapist=therapist, now=now)
    model = with_narrative(session, llm=llm, digest=model, prompts=prompts, now=now)
    if model.narrative and llm is not None:
        template = llm.prompts.template("narrative")
        return Outbound(
            render_text(model, prompts),
            ref=digest_ref(client),
            prompt_key=template.key,
            prompt_version=template.version,
        )
    return Outbound(
        render_text(model, prompts), ref=digest_ref(client), prompt_key="digest.header", prompt_version=prompts.version
    )
