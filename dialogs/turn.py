"""One dialog turn: the inbound message, the chat's state, and the messages it produces."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any, Final

from sqlmodel import Session

from dialogs.messages import Inbound, MessageKind, Option, Outbound
from prompts import Prompts
from storage import Client, ConversationState, Identity, Therapist
from storage import queries as q

IDLE: Final = "idle"
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class DialogSettings:
    """The engine's tunables; bot.config fills them from config.yaml."""

    invite_ttl: timedelta = timedelta(days=7)
    join_failure_limit: int = 5
    join_failure_window: timedelta = timedelta(hours=1)
    max_text_length: int = 4000
    default_nudge_time: str = "18:00"
    # ISO country code (or "default") → crisis resource lines; see bot.config.SafetySettings.
    crisis_resources: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    alert_ack_timeout: timedelta = timedelta(minutes=15)
    fallback_contact: tuple[str, str] | None = None  # (channel, address)
    # Nudges (see dialogs.nudges).
    quiet_start: str = "21:30"
    quiet_end: str = "08:00"
    daily_cap: int = 3  # scheduler messages per client per local day
    follow_up_after: timedelta = timedelta(hours=24)
    catch_up_grace: timedelta = timedelta(hours=2)
    horizon_days: int = 7  # how far ahead nudges are planned when a homework has no due date
    max_planned: int = 60
    busy_retry: timedelta = timedelta(minutes=30)
    digest_lead: timedelta = timedelta(hours=2)
    tonight: time = time(20, 0)
    # Join-link templates per platform, e.g. "https://t.me/companion_bot?start={code}",
    # filled in at start-up by the channels that are configured.
    join_links: tuple[str, ...] = ()


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

    # --- speaking ------------------------------------------------------------

    def t(self, key: str, **fields: Any) -> str:
        return self.prompts.text(key, **fields)

    def say(self, key: str, *, kind: MessageKind = "text", options: Sequence[Option] = (), **fields: Any) -> None:
        """Reply in the chat the message came from."""
        self.say_text(self.t(key, **fields), kind=kind, options=options)

    def say_text(
        self,
        text: str,
        *,
        kind: MessageKind = "text",
        options: Sequence[Option] = (),
        ref: dict[str, Any] | None = None,
    ) -> None:
        self.sends.append((self.inbound.channel, self.inbound.address, Outbound(text, kind, tuple(options), ref)))

    def send(self, to: Identity, message: Outbound) -> None:
        """Address another chat (a client's, a therapist's); it goes through the outbox too."""
        self.sends.append((to.channel, to.address, message))

    def notify_therapist(self, therapist_id: int, key: str, **fields: Any) -> None:
        """Tell a therapist something in the chat they linked most recently."""
        chat = q.latest_identity(self.session, therapist_id=therapist_id)
        if chat is not None:
            self.send(chat, Outbound(self.t(key, **fields)))

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
