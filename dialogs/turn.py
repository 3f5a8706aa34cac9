"""One dialog turn: the inbound message, the chat's state, and the messages it produces."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Final

from sqlmodel import Session

from dialogs import access
from dialogs.messages import Inbound, MessageKind, Option, Outbound, about_client
from prompts import Prompts
from storage import Client, ConversationState, Identity, Therapist
from storage import queries as q

if TYPE_CHECKING:
    from dialogs.llm import LanguageModel
    from storage.memory import Memory

IDLE: Final = "idle"
# Control and bidi-override characters, and lone surrogates (valid in JSON's "\ud800", not in UTF-8: they
# could not be encrypted or stored, so a platform would see an error and redeliver the message forever).
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


@dataclass(frozen=True)
class DialogSettings:
    """The engine's tunables; bot.config fills them from config.yaml."""

    invite_ttl: timedelta = timedelta(days=7)
    join_failure_limit: int = 5
    join_failure_global_limit: int = 200
    # A client chat silent this long is unlinked at its next message (a recycled number, a sold
    # account): the new holder is a stranger until the therapist sends a new invite. None: never.
    link_idle: timedelta | None = timedelta(days=180)
    join_failure_window: timedelta = timedelta(hours=1)
    max_text_length: int = 4000
    default_nudge_time: str = "18:00"
    # ISO country code (or "default") → crisis resource lines; see bot.config.SafetySettings.
    crisis_resources: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    alert_ack_timeout: timedelta = timedelta(minutes=15)
    question_timeout: timedelta = timedelta(minutes=10)  # the direct safety question (dialogs.checkin)
    fallback_contact: tuple[str, str] | None = None  # (channel, address)
    # Nudges (see dialogs.nudges).
    quiet_start: str = "21:30"
    quiet_end: str = "08:00"
    daily_cap: int = 3  # scheduler messages per client per local day
    follow_up_after: timedelta = timedelta(hours=24)
    catch_up_grace: timedelta = timedelta(hours=2)
    horizon_days: int = 7  # how far ahead nudges are planned when a homework has no due date
    max_planned: int = 60
    # A homework closes into history this long after its due date (dialogs.history).
    homework_grace: timedelta = timedelta(days=2)
    busy_retry: timedelta = timedelta(minutes=30)
    digest_lead: timedelta = timedelta(hours=2)
    tonight: time = time(20, 0)
    # Join-link templates per platform, e.g. "https://t.me/companion_bot?start={code}",
    # filled in at start-up by the channels that are configured.
    join_links: tuple[str, ...] = ()
    # The dashboard's address and how long a sign-in link from /dashboard works (see bot.web).
    dashboard_url: str = "http://127.0.0.1:8080/dashboard"
    dashboard_link_ttl: timedelta = timedelta(minutes=15)


def clean_text(raw: str) -> str:
    """NFC-normalise, drop control and bidi-override characters, trim.

    Bidi overrides are dropped because they can make a stored answer display
    differently from what was typed; ordinary RTL text is kept as it is.
    """
    return _CONTROL.sub("", unicodedata.normalize("NFC", raw)).strip()


def split_command(text: str) -> tuple[str | None, str]:
    """``"/Invite@bot Sam"`` → ``("invite", "Sam")``; text without a slash → ``(None, text)``."""
    if not text.startswith("/"):
        return None, text
    head, _, rest = text[1:].partition(" ")
    if "\n" in head:
        head, _, more = head.partition("\n")
        rest = "\n" + more + (" " + rest if rest else "")
    return head.split("@", 1)[0].casefold(), rest.strip()


@dataclass
class Turn:
    """Everything a handler may touch for one inbound message.

    Handlers read and write through ``session`` (the caller's unit of work),
    move the chat with :meth:`goto`, and speak with :meth:`say`/:meth:`send`;
    the engine turns what was said into outbox rows in the same transaction.
    """

    session: Session
    now: datetime
    prompts: Prompts
    settings: DialogSettings
    inbound: Inbound
    text: str
    state: ConversationState
    identity: Identity | None
    therapist: Therapist | None = None
    client: Client | None = None
    sends: list[tuple[str, str, Outbound]] = field(default_factory=list)
    # LLM mode (None: scripted only); see dialogs.llm_steps. ``llm_calls`` holds the per-message budget.
    llm: LanguageModel | None = None
    memory: Memory | None = None
    llm_calls: int = 0
    # The client a therapist's command is about: its replies carry it, so an erasure finds them.
    about: int | None = None
    # The screen flagged this message as a concern and said so: no further "what do you mean?".
    risk_noted: bool = False
    # Clients erased in this turn: the engine deletes their vectors from the memory store too.
    forgotten: list[int] = field(default_factory=list)
    # LLM mode: the model call this message asked for (dialogs.llm_steps), made after the commit; the
    # engine keeps the turn's messages as its fallback (dialogs.llm_jobs). ``jobs_written`` counts jobs.
    job: dict[str, Any] | None = None
    jobs_written: int = 0

    # --- speaking ------------------------------------------------------------

    def t(self, key: str, **fields: Any) -> str:
        return self.prompts.text(key, **fields)

    def say(self, key: str, *, kind: MessageKind = "text", options: Sequence[Option] = (), **fields: Any) -> None:
        """Reply in the chat the message came from; the row records ``key`` and the catalogue's version."""
        self.say_text(self.t(key, **fields), kind=kind, options=options, prompt=key)

    def say_text(
        self,
        text: str,
        *,
        kind: MessageKind = "text",
        options: Sequence[Option] = (),
        ref: dict[str, Any] | None = None,
        prompt: str | None = None,
    ) -> None:
        ref = ref if ref is not None else about_client(self.about)
        version = self.prompts.version if prompt is not None else None
        message = Outbound(text, kind, tuple(options), ref, prompt_key=prompt, prompt_version=version)
        self.sends.append((self.inbound.channel, self.inbound.address, message))

    def send(self, to: Identity, message: Outbound) -> None:
        """Address another chat (a client's, a therapist's); it goes through the outbox too."""
        self.sends.append((to.channel, to.address, message))

    def notify_therapist(self, therapist_id: int, key: str, **fields: Any) -> None:
        """Tell a therapist something (about this turn's client) in the chat they linked most recently."""
        chat = q.latest_identity(self.session, therapist_id=therapist_id)
        if chat is not None:
            about = about_client(self.client.id if self.client is not None else None)
            message = Outbound(self.t(key, **fields), ref=about, prompt_key=key, prompt_version=self.prompts.version)
            self.send(chat, message)

    def audit(self, action: str, client: Client | None = None, **detail: Any) -> None:
        """Record this person's access to or change of client data (never its content)."""
        if self.therapist is not None:
            actor, therapist_id = access.therapist_actor(self.therapist), self.therapist.id
        elif self.client is not None:
            actor, therapist_id = access.client_actor(self.client), self.client.therapist_id
        else:
            actor, therapist_id = access.SYSTEM, None
        access.audit(
            self.session, actor=actor, action=action, now=self.now, client=client, therapist_id=therapist_id, **detail
        )

    def yes_no(self) -> tuple[Option, ...]:
        return (Option("yes", self.t("common.yes")), Option("no", self.t("common.no")))

    def scale(self, low: int, high: int, labels: dict[int, str] | None = None) -> tuple[Option, ...]:
        labels = labels or {}
        return tuple(Option(str(n), labels.get(n, str(n))) for n in range(low, high + 1))

    # --- moving --------------------------------------------------------------

    def goto(self, flow: str, step: str = "", **data: Any) -> None:
        """Move this chat to ``flow``/``step``; ``data`` replaces the flow's data."""
        self.state.flow, self.state.step, self.state.data = flow, step, dict(data)

    def step(self, step: str, **updates: Any) -> None:
        """Next step of the same flow, keeping its data (plus ``updates``)."""
        self.state.step = step
        self.state.data = {**self.state.data, **updates}

    def idle(self) -> None:
        self.goto(IDLE)

    @property
    def data(self) -> dict[str, Any]:
        return self.state.data

    # --- reading answers -----------------------------------------------------

    def is_(self, vocab: str) -> bool:
        return self.prompts.matches(vocab, self.text)

    def number(self, low: int, high: int) -> int | None:
        """The answer as a whole number in [low, high], tolerating "7/10", "80%" and spaces."""
        match = re.fullmatch(r"\s*(\d{1,3})\s*(?:%|/\s*\d{1,3})?\s*[.!]?\s*", self.text)
        if match is None:
            return None
        value = int(match.group(1))
        return value if low <= value <= high else None

    def free_text(self) -> str | None:
        """A free-text answer, or None when the person chose to skip."""
        return None if self.is_("skip") else self.text
