"""The dialog engine: one inbound message in, state change and outbox rows out, in the caller's transaction."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Final

from sqlalchemy import event, insert
from sqlmodel import Session

from dialogs import client as client_flows
from dialogs import guard, llm_steps, measures, onboarding, safety_plan, therapist
from dialogs.clock import Clock
from dialogs.homework import deliver_pending
from dialogs.llm import LanguageModel
from dialogs.llm_jobs import new_job, supersede
from dialogs.messages import Inbound, outbox_row
from dialogs.turn import IDLE, DialogSettings, Turn, clean_text, split_command
from prompts import Prompts
from storage import ClientStatus, OutboxMessage, Therapist
from storage import queries as q
from storage.memory import Memory

Handler = Callable[[Turn], None]

_CLIENT_FLOWS: Final[dict[str, Handler]] = {
    **client_flows.FLOWS,
    "join": lambda turn: onboarding.STEPS[turn.state.step](turn),
}
_THERAPIST_FLOWS: Final[dict[str, Handler]] = {
    therapist.DRAFT: therapist.draft_step,
    safety_plan.DRAFT: safety_plan.draft_step,
}
# A client's last contact is kept to the minute (the caseload shows it; "silent" counts days).
LAST_CONTACT_RESOLUTION: Final = timedelta(minutes=1)


def _enabled(therapist: Therapist | None) -> Therapist | None:
    """A disabled therapist's chats are treated as strangers' (``companion therapist disable``)."""
    return therapist if therapist is not None and therapist.disabled_at is None else None


class Engine:
    """Turns one inbound message into the chat's next state and the messages to send.

    :meth:`handle` reads and writes only through ``session``, which belongs to
    a unit of work the caller opens and commits: the new dialog state, the
    records it wrote (debriefs, homework, notes) and the outbox rows land
    together or not at all. Turns of one chat are serialised by a row lock on
    its conversation state. The engine never talks to a platform; channel
    adapters deliver the outbox. In LLM mode it never calls the model
    either: a turn that wants a model reply writes a job instead of its
    outbox rows (dialogs.llm_jobs), run after the commit; ``on_job`` and
    ``on_outbox`` are the wake-up hints the composition root sets.
    """

    def __init__(
        self,
        *,
        prompts: Prompts,
        clock: Clock,
        settings: DialogSettings | None = None,
        llm: LanguageModel | None = None,
        memory: Memory | None = None,
    ) -> None:
        self.prompts = prompts
        self.clock = clock
        self.settings = settings or DialogSettings()
        # LLM mode (dialogs.llm_steps): both None unless an operator configured a provider.
        self.llm = llm
        self.memory = memory
        # Wake-up hints set by the composition root: a turn committed a model job / outbox rows.
        self.on_job: Callable[[], None] | None = None
        self.on_outbox: Callable[[], None] | None = None

    def notify_outbox(self) -> None:
        if self.on_outbox is not None:
            self.on_outbox()

    def handle(self, session: Session, inbound: Inbound) -> int:
        """Handle ``inbound``; returns how many outbox messages it queued (0 for a duplicate)."""
        now = self.clock.now()
        if not q.claim_inbound(session, channel=inbound.channel, message_id=inbound.message_id, now=now):
            return 0
        state, who, therapist_, client_ = q.chat_context(
            session, channel=inbound.channel, address=inbound.address, now=now
        )
        if self.llm is not None:
            # A reply still waiting for the model is overtaken by this message: its scripted reply goes first.
            supersede(session, state_id=state.id)
        debrief_id = state.data.get("debrief_id")
        # A debrief step reads its debrief and homework: one query here, none in the step. The
        # session holds loaded rows weakly, so keep them (and a client's therapist) for the turn.
        session.info["turn_rows"] = (
            therapist_,
            q.debrief_with_homework(session, debrief_id=debrief_id) if isinstance(debrief_id, int) else None,
        )
        turn = Turn(
            session=session,
            now=now,
            prompts=self.prompts,
            settings=self.settings,
            inbound=inbound,
            text=clean_text(inbound.text),
            state=state,
            identity=who,
            therapist=_enabled(therapist_) if who and who.therapist_id else None,
            client=client_,
            llm=self.llm,
            memory=self.memory,
        )
        changes = llm_steps.watch(turn)
        onboarding.expire_stale_link(turn)
        self._route(turn)
        llm_steps.remember(turn, changes)
        if turn.client is not None:
            last = turn.client.last_contact_at
            if last is None or now - last >= LAST_CONTACT_RESOLUTION:  # an UPDATE less per message in a burst
                turn.client.last_contact_at = now
                session.add(turn.client)
            if state.flow == IDLE:
                # A homework set while this client was busy goes out now.
                _, messages = deliver_pending(
                    session, prompts=self.prompts, settings=self.settings, client=turn.client, now=now
                )
                turn.sends.extend(messages)
        state.last_inbound_at = state.updated_at = now
        session.add(state)
        session.flush()
        queued = [outbox_row(channel, address, message, now) for channel, address, message in turn.sends]
        if turn.job is not None:
            # LLM mode: the model is called after this commit; until its reply (or the deadline) the
            # turn's messages wait in the job, so the client gets one coherent reply.
            assert self.llm is not None
            new_job(
                session,
                kind=turn.job["kind"],
                now=now,
                deadline=timedelta(seconds=self.llm.reply_deadline),
                client_id=turn.job.get("client_id"),
                state=state,
                channel=inbound.channel,
                address=inbound.address,
                request=turn.job.get("request"),
                fallback=queued,
            )
            turn.jobs_written += 1
            queued = []
        if queued:  # one multi-row INSERT, in the order said
            session.execute(insert(OutboxMessage), queued)
        for client_id in turn.forgotten:
            if self.memory is not None:  # the vectors go after the erasure's commit, never inside it
                new_job(session, kind="forget", now=now, deadline=timedelta(hours=1), request={"client_id": client_id})
                turn.jobs_written += 1
        if turn.jobs_written and self.on_job is not None:
            event.listen(session, "after_commit", lambda _s: self.on_job and self.on_job(), once=True)
        if queued and self.on_outbox is not None:
            event.listen(session, "after_commit", lambda _s: self.notify_outbox(), once=True)
        return len(queued) + (1 if turn.job is not None else 0)

    def forget(self, client_id: int) -> None:
        """Delete what the memory store holds about an erased client (after the erasure committed).

        A chat's ``/delete`` does it through a job written with the erasure
        (dialogs.llm_jobs); the CLI calls this after its commit.
        """
        if self.memory is not None:
            self.memory.forget(client_id)

    def _route(self, turn: Turn) -> None:
        # Safety first: every message not from a therapist is screened before
        # anything else, whatever its length and whatever the dialog state.
        if turn.therapist is None and turn.text and guard.screen(turn):
            measures.after_screen(turn)  # a questionnaire paused by its safety question goes on
            return
        if turn.inbound.kind == "edited":
            return  # an edit is screened above, but never re-read as an answer
        if turn.inbound.kind == "unsupported" and not turn.text:
            turn.say("common.unsupported")
            return
        if not turn.text:
            turn.say("common.empty")
            return
        if len(turn.text) > self.settings.max_text_length:
            turn.say("common.too_long", limit=self.settings.max_text_length)
            return
        if turn.therapist is not None:
            self._therapist(turn)
        elif turn.client is not None:
            self._client(turn)
        elif turn.state.flow == "join" and turn.state.step == "consent":
            onboarding.consent(turn)
        else:
            turn.idle()
            onboarding.stranger(turn)

    def _therapist(self, turn: Turn) -> None:
        command, _ = split_command(turn.text)
        flow = _THERAPIST_FLOWS.get(turn.state.flow)
        if flow is not None and command is None:
            flow(turn)
            return
        if flow is not None and command == "cancel":
            turn.idle()
            turn.say("therapist.cancelled")
            return
        # A new command abandons a half-finished draft rather than mixing the two.
        turn.idle()
        therapist.idle(turn)

    def _client(self, turn: Turn) -> None:
        if turn.is_("is_bot"):
            # Disclosure whenever asked, without losing the current step.
            turn.say("client.is_bot")
            return
        assert turn.client is not None
        joining = turn.state.flow == "join"
        if not joining and onboarding.already_joined(turn):
            return
        command, _ = split_command(turn.text)
        flow = _CLIENT_FLOWS.get(turn.state.flow)
        if flow is not None and (command is None or joining):
            flow(turn)
            return
        if turn.state.flow != IDLE and command == "cancel":
            turn.idle()
            turn.say("client.cancelled")
            return
        if turn.client.status == ClientStatus.INVITED:
            turn.goto("join", "timezone", client_id=turn.client.id)
            turn.say("join.ask_timezone")
            return
        # Any command leaves the current flow (answers so far are saved) and runs. An idle chat keeps
        # its data: a note offered there is answered by this message (dialogs.client.idle).
        if turn.state.flow != IDLE:
            turn.idle()
        client_flows.idle(turn)
