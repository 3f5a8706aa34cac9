"""LLM mode's steps: reflection and extraction in the debrief, number confirmation, memory, digest narrative.

Every function here is a no-op when no model is configured (``turn.llm``
is None), so the scripted dialog is unchanged byte for byte; and each one
falls back to the scripted step on any failure (see :mod:`dialogs.llm`).

- **Reflection and extraction** (:func:`reflect`, then :func:`run_reply`
  after the turn's commit): after a free-text answer in the debrief (or
  the obstacle talk), one call returns one or two sentences reflecting the
  answer, at most one follow-up question, the facts the answer states (did
  it, amount, obstacles, emotions, ratings) and the model's opinion of the
  risk (which can only raise the screen's level: :func:`dialogs.guard.escalate`).
  The reflection goes out with the next scripted question, as one message;
  a follow-up question is asked once per step, and its answer is added to
  the same field. The client's message is screened for risk before the
  call, and the reply after it.
- **Confirmation** (:func:`confirm_extra`, :func:`confirm_quantity`,
  :func:`confirmed`): a number the model read in the prose is never stored
  as the client's until they confirm it; a number they did not write
  themselves is shown as an estimate.
- **Memory** (:func:`remember`, :func:`_context`): completed debriefs, log
  entries and therapist notes are remembered per client; the few nearest
  to the current homework and answer ground the reflection.
- **Narrative** (:func:`narrate`, outside any transaction; reused by
  :func:`with_narrative` inside one): two to four sentences on top of the
  digest's data, at most one call per client per digest period.

No function here calls a model or the memory inside the turn's
transaction: the turn records a job (:mod:`dialogs.llm_jobs`), and the
``run_*`` functions do the calls after its commit.

Budget: at most :data:`CALLS_PER_MESSAGE` model call per client message
(``turn.llm_calls``).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, Field
from sqlalchemy import event
from sqlmodel import Session, col, select

from dialogs.digest import ClientDigest
from dialogs.llm import LanguageModel, check_text, messages, name_parts, scrub
from dialogs.llm_jobs import BACKGROUND_DEADLINE, Claimed, JobRunner, new_job, stored_rows
from dialogs.messages import Inbound, Option, Outbound, outbox_row
from dialogs.safety import assess
from dialogs.turn import Turn
from prompts import Extra, Prompts
from storage import (
    Client,
    ConversationState,
    Database,
    Debrief,
    DebriefStatus,
    Homework,
    LlmUsage,
    LogEntry,
    Therapist,
    TherapistNote,
)

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
    # The model's opinion of the risk in the answer: it may raise the screen's level, never lower it.
    risk: Literal["none", "concern", "crisis"] = Field(
        default="none", description="crisis: may harm self or others or in danger now; concern: distress; else none"
    )


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
    """Ask the model to reflect the answer just given; the reply comes after this turn commits.

    No call is made here (the turn holds the chat's row lock): the turn
    records a reply job (:attr:`Turn.job`), keeps its scripted messages as
    the job's fallback, and the runner (:mod:`dialogs.llm_jobs`) sends the
    reflection before them, or them alone, after the call (:func:`run_reply`).
    ``question_key`` names the scripted question the client answered.
    Nothing happens without a model, for a skipped answer, for a message the
    safety screen flags, or once this message has had its call. Always False
    (a follow-up question is decided when the reply arrives).
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
    names, therapist = _names(turn.session, client)
    pseudonym = llm.prompts.pseudonym.format(id=client.id)
    kind = turn.prompts.homework_types.get(homework.type)
    extras = kind.extras if kind else ()

    def clean(text: str) -> str:
        return scrub(text, names=names, pseudonym=pseudonym, therapist=therapist)

    answer = clean(turn.text[:ANSWER_LIMIT])
    parts = {
        "homework_type": turn.prompts.type_label(homework.type),
        "homework": clean(" · ".join(v for v in (homework.title, homework.what) if v)),
        "question": clean(turn.t(question_key, title=homework.title)),
        "rating_keys": ", ".join(f"{e.key} ({e.low}–{e.high}, {e.label or e.key})" for e in extras) or "none",
        "answer": answer,
    }
    turn.job = {
        "kind": "reply",
        "client_id": client.id,
        "request": {
            "purpose": "reflection",
            "parts": parts,
            "query": clean(f"{homework.title}\n{answer}"),
            "text": turn.text,
            "names": names + therapist,
            "clean": {"names": names, "pseudonym": pseudonym, "therapist": therapist},
            "debrief_id": debrief.id,
            "homework_id": homework.id,
            "step": step,
            "follow_up": follow_up and turn.data.get("follow_up") != step,
            "at": len(turn.sends),  # where the reflection goes among the turn's messages
        },
    }
    return False


def _cleaner(request: dict[str, Any]) -> Any:
    spec = request.get("clean") or {}
    names, pseudonym, therapist = spec.get("names", []), spec.get("pseudonym", "the client"), spec.get("therapist", [])
    return lambda text: scrub(text, names=names, pseudonym=pseudonym, therapist=therapist)


def run_reply(runner: JobRunner, job: Claimed) -> None:
    """A reply job, after the turn's commit: memory, then the model (no transaction open), then apply."""
    engine = runner.engine
    llm = engine.llm
    request = job.request
    if llm is None or runner.seconds_left(job) <= 0:
        # No model any more (a restart without one), or the deadline passed (a crash, a long queue).
        runner.apply(job, lambda session, state: (job.fallback, "fallback", "fallback:deadline"))
        return
    started = time.monotonic()
    clean = _cleaner(request)
    context = _context(runner, job, clean)
    parts = {**request["parts"], "context": context or "(nothing yet)"}
    template = llm.prompts.template("reflection")
    names = list(request.get("names", []))
    outcome = llm.call(
        purpose="reflection",
        messages=messages(llm.prompts.text("reflection", "system"), llm.prompts.text("reflection", "human", **parts)),
        schema=DebriefReply,
        check=lambda reply: _check_reply(llm, engine.prompts, reply, names),
        wait=max(0.0, runner.seconds_left(job) - (time.monotonic() - started)),
    )

    def record(session: Session) -> None:
        llm.record(
            session, outcome, now=engine.clock.now(), client_id=job.client_id, purpose="reflection", template=template
        )

    def decide(session: Session, state: ConversationState | None) -> tuple[list[dict[str, Any]], str, str]:
        if state is None or (state.flow, state.step) != (job.flow, job.step):
            return job.fallback, "superseded", "fallback:moved_on"
        reply: DebriefReply | None = outcome.value
        if reply is None:
            return job.fallback, "fallback", f"fallback:{outcome.reason}"
        return _apply_reply(runner, job, session, state, reply, template), "done", "ok"

    runner.apply(job, decide, record=record)


def _turn(runner: JobRunner, job: Claimed, session: Session, state: ConversationState) -> Turn:
    """The turn a job's result is applied in: the same chat and client, the original message, this transaction."""
    engine = runner.engine
    client = session.get(Client, job.client_id) if job.client_id is not None else None
    text = str(job.request.get("text", ""))
    return Turn(
        session=session,
        now=engine.clock.now(),
        prompts=engine.prompts,
        settings=engine.settings,
        inbound=Inbound(channel=job.channel, address=job.address, text=text, message_id=f"llmjob:{job.id}"),
        text=text,
        state=state,
        identity=None,
        client=client,
        llm=engine.llm,
    )


def _apply_reply(
    runner: JobRunner, job: Claimed, session: Session, state: ConversationState, reply: DebriefReply, template: Any
) -> list[dict[str, Any]]:
    """The outbox rows for a usable reply: the turn's messages with the reflection in place (stored form)."""
    from dialogs import guard

    request = job.request
    turn = _turn(runner, job, session, state)
    at = int(request.get("at", 0))
    before, after = job.fallback[:at], job.fallback[at:]
    mine = (job.channel, job.address)
    # The model's risk opinion can only raise the screen's verdict (which was "none", or no call was made).
    if reply.risk == "crisis":
        guard.escalate(turn, "crisis", ("llm_opinion",))
        return before + _rows(turn, after=[r for r in after if (r["channel"], r["address"]) != mine])
    if reply.risk == "concern":
        guard.escalate(turn, "concern", ("llm_opinion",))
    debrief = session.get(Debrief, request.get("debrief_id"))
    homework = session.get(Homework, request.get("homework_id"))
    kind = turn.prompts.homework_types.get(homework.type) if homework is not None else None
    extras = kind.extras if kind else ()
    step = str(request.get("step", ""))
    _propose(turn, reply.extraction, extras)
    if debrief is not None:
        _keep(debrief, step, reply.extraction, turn.text)
        session.add(debrief)
    text = reply.reflection.strip()
    asks = bool(request.get("follow_up")) and bool(reply.follow_up and reply.follow_up.strip())
    if asks and reply.follow_up:
        # The follow-up question replaces the next scripted question: the chat stays on this step.
        text = f"{text}\n\n{reply.follow_up.strip()}"
        state.step = step
        state.data = {**state.data, "follow_up": step}
        after = [r for r in after if (r["channel"], r["address"]) != mine]
    _say(turn, text, template.key, template.version)
    reflection = list(turn.sends)
    turn.sends.clear()
    if not asks and _confirm_instead(turn):
        # The reply read a number for the step now asked: confirm it instead of asking for it.
        last = max((i for i, r in enumerate(after) if (r["channel"], r["address"]) == mine), default=None)
        if last is not None:
            after = after[:last] + _rows(turn) + after[last + 1 :]
        turn.sends.clear()
    session.add(state)
    turn.sends[:0] = reflection
    return _merged(before + _rows(turn, after=after), len(before) + len(reflection) - 1)


def _merged(rows: list[dict[str, Any]], at: int) -> list[dict[str, Any]]:
    """The reflection (row ``at``) and the question after it, to the same chat, as one message.

    One reply is one message: platforms pace messages per chat (Telegram
    about one a second), so two would reach the client a second apart. The
    question keeps its kind and buttons; the row records the reflection's
    template, the part the model wrote.
    """
    if at + 1 >= len(rows):
        return rows
    mine, nxt = rows[at], rows[at + 1]
    ref = nxt["payload"].get("ref") or {}
    if (nxt["channel"], nxt["address"]) != (mine["channel"], mine["address"]) or set(ref) - {"about_client"}:
        return rows  # another chat, or a message rendered by reference at send time (a reminder, a digest)
    if nxt["payload"].get("kind", "text") not in ("text", "choice", "scale"):
        return rows
    payload = {**nxt["payload"], "text": f"{mine['payload']['text']}\n\n{nxt['payload']['text']}"}
    return [*rows[:at], {**mine, "payload": payload}, *rows[at + 2 :]]


def _confirm_instead(turn: Turn) -> bool:
    step = turn.state.step
    if step == "quantity":
        return confirm_quantity(turn)
    if step.startswith("extra:"):
        homework_types = turn.prompts.homework_types
        debrief = turn.session.get(Debrief, turn.data.get("debrief_id"))
        homework = turn.session.get(Homework, debrief.homework_id) if debrief else None
        kind = homework_types.get(homework.type) if homework else None
        extra = next((e for e in (kind.extras if kind else ()) if f"extra:{e.key}" == step), None)
        return extra is not None and confirm_extra(turn, extra)
    return False


def _rows(turn: Turn, *, after: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """``turn.sends`` as stored outbox rows, followed by ``after``."""
    rows = stored_rows(outbox_row(channel, address, message, turn.now) for channel, address, message in turn.sends)
    return rows + list(after or [])


def _check_reply(llm: LanguageModel, prompts: Prompts, reply: DebriefReply, names: list[str]) -> str | None:
    common: dict[str, Any] = dict(llm_prompts=llm.prompts, prompts=prompts, names=names)
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
    """Queue what this turn completed (a debrief, a log entry, a therapist note) for the client's memory.

    Runs after the turn's handlers, in its unit of work, and only writes job
    rows: the embedding (a network call with a provider's embeddings) and
    the Chroma write happen after the commit (:func:`run_remember`). No text
    is copied into the job; it is read from its row, then scrubbed like a
    prompt, since a provider's embeddings leave the machine too.
    """
    llm, memory = turn.llm, turn.memory
    if changes is None:
        return
    objects = changes.close()
    if llm is None or memory is None:
        return
    for obj in objects:
        item: tuple[int, str, int] | None = None
        if isinstance(obj, Debrief) and obj.status == DebriefStatus.COMPLETE and obj.completed_at == turn.now:
            item = (obj.client_id, "debrief", obj.id or 0)
        elif isinstance(obj, LogEntry):
            item = (obj.client_id, "log", obj.id or 0)
        elif isinstance(obj, TherapistNote):
            item = (obj.client_id, "note", obj.id or 0)
        if item is not None:
            new_job(
                turn.session,
                kind="remember",
                now=turn.now,
                deadline=BACKGROUND_DEADLINE,
                client_id=item[0],
                request={"kind": item[1], "ref_id": item[2]},
            )
            turn.jobs_written += 1


def _memory_text(session: Session, kind: str, ref_id: int) -> tuple[int, str] | None:
    """(client id, text) of a remembered row, read back from the database."""
    if kind == "debrief":
        debrief = session.get(Debrief, ref_id)
        if debrief is None or debrief.status != DebriefStatus.COMPLETE:
            return None
        homework = session.get(Homework, debrief.homework_id)
        return debrief.client_id, _debrief_text(debrief, homework.title if homework else "")
    row = session.get(LogEntry, ref_id) if kind == "log" else session.get(TherapistNote, ref_id)
    return (row.client_id, row.text) if row is not None else None


def run_remember(runner: JobRunner, job: Claimed) -> None:
    """Embed and store one remembered item, with no transaction open; bounded by the memory timeout."""
    llm, memory = runner.engine.llm, runner.engine.memory
    kind, ref_id = str(job.request.get("kind")), int(job.request.get("ref_id", 0))
    with runner.db.unit_of_work() as session:
        found = _memory_text(session, kind, ref_id)
        client = session.get(Client, found[0]) if found else None
        names = _names(session, client) if client is not None else ([], [])
    if llm is None or memory is None or found is None or client is None:
        runner.finish(job, status="done", outcome="skipped")
        return
    pseudonym = llm.prompts.pseudonym.format(id=client.id)
    clean = scrub(found[1], names=names[0], pseudonym=pseudonym, therapist=names[1])
    outcome = "ok"
    try:
        llm.bounded(lambda: memory.add(found[0], kind, ref_id, clean), llm.memory_timeout, memory=True)
    except Exception as exc:  # the memory is a help, never a dependency
        log.warning("memory: could not remember a %s: %s", kind, exc.__class__.__name__)
        outcome = f"fallback:{exc.__class__.__name__}"
    runner.finish(job, status="done" if outcome == "ok" else "fallback", outcome=outcome)


def run_forget(runner: JobRunner, job: Claimed) -> None:
    """Drop an erased client's vectors (the erasure itself committed before this runs)."""
    memory = runner.engine.memory
    client_id = int(job.request.get("client_id", 0))
    if memory is not None:
        memory.forget(client_id)
    runner.finish(job, status="done", outcome="ok")


def _context(runner: JobRunner, job: Claimed, clean: Any) -> str:
    """The few remembered items nearest to this homework and answer, as prompt lines.

    The memory is queried with no transaction open (bounded: at most a
    share of the call's timeout); the hits are resolved to their rows in a
    short read, each checked to be this client's.
    """
    llm, memory = runner.engine.llm, runner.engine.memory
    client_id = job.client_id
    if memory is None or llm is None or client_id is None:
        return ""
    query = str(job.request.get("query", ""))
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
    with runner.db.unit_of_work() as session:
        for hit in hits:
            text: str | None = None
            if hit.kind == "debrief":
                row = session.get(Debrief, hit.ref_id)
                if row is not None and row.client_id == client_id and row.id != job.request.get("debrief_id"):
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
    call: bool = False,
) -> ClientDigest:
    """``digest`` with the narrative already written for its period, if there is one (never a call).

    Runs inside a unit of work, so it never calls the model: the narrative
    is written beforehand by :func:`narrate` (outside any transaction) and
    kept, encrypted, on that call's LlmUsage row, which every process and
    every later render reuses. ``call`` is accepted for older callers and
    ignored.
    """
    if llm is None or digest.opted_out or digest.empty:
        return digest
    earlier = _narrated_since(session, digest.client_id, digest.start)
    if earlier is not None and earlier.output:
        return dataclasses.replace(digest, narrative=earlier.output, narrative_at=earlier.at)
    return digest


def narrate(db: Database, *, llm: LanguageModel, prompts: Prompts, client_id: int, now: datetime) -> str | None:
    """Write this period's narrative for one client's digest, with no transaction open; returns it (or None).

    At most one call per client per digest period: a call already made since
    the period began (by any process, before a restart, successful or not)
    is not repeated. Reads the record in one short transaction, calls the
    model outside it, and records the call (and the narrative) in another.
    """
    from dialogs.digest import build_client_digest

    with db.unit_of_work() as session:
        client = session.get(Client, client_id)
        therapist = session.get(Therapist, client.therapist_id) if client is not None else None
        if client is None or therapist is None:
            return None
        digest = build_client_digest(session, prompts=prompts, client=client, therapist=therapist, now=now)
        if digest.opted_out or digest.empty:
            return None
        earlier = _narrated_since(session, client_id, digest.start)
        if earlier is not None:
            return earlier.output
        names, therapist_names = _names(session, client)
        pseudonym = llm.prompts.pseudonym.format(id=client_id)

        def clean(text: str) -> str:
            return scrub(text, names=names, pseudonym=pseudonym, therapist=therapist_names)

        record = _record(digest, prompts, clean)
    template = llm.prompts.template("narrative")
    outcome = llm.call(
        purpose="narrative",
        messages=messages(
            llm.prompts.text("narrative", "system"), llm.prompts.text("narrative", "human", record=record)
        ),
        check=lambda text: check_text(
            str(text),
            limit=NARRATIVE_LIMIT,
            llm_prompts=llm.prompts,
            prompts=prompts,
            names=names + therapist_names,
            max_sentences=5,
        ),
        wait=llm.timeout,
    )
    text = " ".join(str(outcome.value).split()) if outcome.value is not None else None
    with db.unit_of_work() as session:
        llm.record(session, outcome, now=now, client_id=client_id, purpose="narrative", template=template, output=text)
    return text


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
    """One client's digest as a message: the plain text (with this period's narrative, if written) and its ref."""
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


def needs_narrative(
    session: Session,
    *,
    llm: LanguageModel | None,
    prompts: Prompts,
    client: Client,
    therapist: Therapist,
    now: datetime,
) -> bool:
    """Whether a digest of ``client`` now would want a narrative not yet attempted this period."""
    from dialogs.digest import build_client_digest

    if llm is None or client.id is None:
        return False
    digest = build_client_digest(session, prompts=prompts, client=client, therapist=therapist, now=now)
    return not (digest.opted_out or digest.empty) and _narrated_since(session, client.id, digest.start) is None


def digest_reply(turn: Turn, client: Client, therapist: Therapist) -> None:
    """``/digest NAME``'s reply: with this period's narrative; in LLM mode without one yet, after a job writes it.

    The plain digest is the job's fallback, so the therapist gets the digest
    either way, once, within the model's deadline.
    """
    message = digest_message(
        turn.session, llm=turn.llm, prompts=turn.prompts, client=client, therapist=therapist, now=turn.now
    )
    if turn.job is None and needs_narrative(
        turn.session, llm=turn.llm, prompts=turn.prompts, client=client, therapist=therapist, now=turn.now
    ):
        turn.job = {
            "kind": "narrative",
            "client_id": client.id,
            "request": {"therapist_id": therapist.id, "at": len(turn.sends)},
        }
    turn.sends.append((turn.inbound.channel, turn.inbound.address, message))


def run_narrative(runner: JobRunner, job: Claimed) -> None:
    """A ``/digest NAME`` job: write the narrative (no transaction open), then send the digest with it."""
    engine = runner.engine
    llm = engine.llm
    if llm is not None and job.client_id is not None and runner.seconds_left(job) > 0:
        narrate(runner.db, llm=llm, prompts=engine.prompts, client_id=job.client_id, now=engine.clock.now())

    def decide(session: Session, state: ConversationState | None) -> tuple[list[dict[str, Any]], str, str]:
        client = session.get(Client, job.client_id)
        therapist = session.get(Therapist, job.request.get("therapist_id"))
        at = int(job.request.get("at", 0))
        if client is None or therapist is None or at >= len(job.fallback):
            return job.fallback, "fallback", "fallback:gone"
        message = digest_message(
            session, llm=llm, prompts=engine.prompts, client=client, therapist=therapist, now=engine.clock.now()
        )
        row = {
            **job.fallback[at],
            "payload": message.to_payload(),
            "prompt_key": message.prompt_key,
            "prompt_version": message.prompt_version,
        }
        narrated = llm is not None and message.prompt_key == llm.prompts.template("narrative").key
        rows = [*job.fallback[:at], row, *job.fallback[at + 1 :]]
        return rows, "done", "ok" if narrated else "fallback:narrative"

    runner.apply(job, decide)
