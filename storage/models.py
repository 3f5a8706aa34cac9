"""The tables: who is who, what homework was set, what the client recorded, and the outbox."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any, Final

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from storage._types import UTCDateTime
from storage.crypto import EncryptedJSON, EncryptedText

# Free text from clients and therapists is sensitive health data: those columns
# are EncryptedText / EncryptedJSON (Fernet, see storage.crypto). Names stay in
# plain text because commands look clients up by them (see SECURITY.md).


class ClientStatus(StrEnum):
    INVITED = "invited"
    ACTIVE = "active"
    PAUSED = "paused"
    STOPPED = "stopped"


class HomeworkStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class CloseReason(StrEnum):
    """Why a homework left the current state for history (``Homework.closed_reason``); see dialogs.history."""

    THERAPIST = "therapist"  # /close, or the dashboard
    SUPERSEDED = "superseded"  # the client's next homework was delivered
    EXPIRED = "expired"  # its due date passed, plus the grace period


class DebriefStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    ABANDONED = "abandoned"


class DebriefKind(StrEnum):
    DEBRIEF = "debrief"  # the homework happened (at least partly)
    OBSTACLE = "obstacle"  # it did not: what got in the way


class OccasionStatus(StrEnum):
    PLANNED = "planned"  # waiting for its due time
    SENT = "sent"  # the nudge went out; waiting for "done" or "didn't do it"
    FOLLOWED_UP = "followed_up"  # no answer in 24 h; one gentle follow-up went out
    ANSWERED = "answered"  # the client debriefed (or talked through obstacles)
    NOT_REVIEWED = "not_reviewed"  # no answer to the follow-up either
    MISSED = "missed"  # due while the service was down for longer than the grace period
    SKIPPED = "skipped"  # not sent: client paused, stopped, in a crisis hold or unreachable
    CANCELLED = "cancelled"  # homework closed or the plan changed


HOMEWORK_FIELDS: Final = (
    "title",
    "type",
    "what",
    "when",
    "where",
    "with_whom",
    "record",
    "rationale",
    "due",
    "nudges",
)
"""The homework fields in the order the therapist is asked for them."""


def _ts(*, nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


class Therapist(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    timezone: str = "UTC"
    created_at: datetime = _ts(nullable=False)
    weekly_digest: str | None = None  # "mon 08:00" local, or None for no weekly digest
    weekly_digest_due: datetime | None = _ts(index=True)  # next weekly digest, UTC
    # "admin" may manage therapists from chat; the CLI (an operator on the host) always can.
    role: str = "therapist"
    disabled_at: datetime | None = _ts()  # a disabled therapist's chats are treated as strangers


class Client(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("therapist_id", "name_key"),)

    id: int | None = Field(default=None, primary_key=True)
    therapist_id: int = Field(foreign_key="therapist.id", index=True)
    name: str
    # Lower-cased name: a therapist's clients are unique by it, and commands
    # match names case-insensitively.
    name_key: str
    status: str = ClientStatus.INVITED
    timezone: str | None = None
    nudge_time: str | None = None  # "HH:MM" local, the client's preferred time
    consented_at: datetime | None = _ts()
    created_at: datetime = _ts(nullable=False)
    last_contact_at: datetime | None = _ts()
    next_session_at: datetime | None = _ts()
    last_session_at: datetime | None = _ts()
    # Set when a crisis was detected: no nudges until the therapist resumes them.
    crisis_since: datetime | None = _ts()
    quiet_start: str | None = None  # "HH:MM" local; None → the configured default
    quiet_end: str | None = None
    # The scheduler's daily cap: messages sent on the client's local day.
    scheduled_day: date | None = None
    scheduled_count: int = 0
    unreachable_at: datetime | None = _ts()  # set by a channel when the platform refuses delivery
    digest_sent_for: datetime | None = _ts()  # the session whose pre-session digest went out


class Identity(SQLModel, table=True):
    """A platform account (channel + address) linked to exactly one therapist or client."""

    __table_args__ = (UniqueConstraint("channel", "address"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str
    address: str
    therapist_id: int | None = Field(default=None, foreign_key="therapist.id", index=True)
    client_id: int | None = Field(default=None, foreign_key="client.id", index=True)
    created_at: datetime = _ts(nullable=False)


class Invite(SQLModel, table=True):
    """A single-use, expiring code: a client's invite, or a therapist's code to link a chat account.

    Only a keyed hash of the code is stored (``storage.crypto.code_hash``, an HMAC
    with a key derived from the data key), so a copy of the database redeems
    nothing; a code is looked up by its hash.
    """

    id: int | None = Field(default=None, primary_key=True)
    code_hash: str = Field(unique=True, index=True)
    client_id: int | None = Field(default=None, foreign_key="client.id", index=True)
    therapist_id: int | None = Field(default=None, foreign_key="therapist.id")
    created_at: datetime = _ts(nullable=False)
    expires_at: datetime = _ts(nullable=False)
    used_at: datetime | None = _ts()
    used_by_identity_id: int | None = Field(default=None, foreign_key="identity.id")


class JoinFailure(SQLModel, table=True):
    """A wrong invite code, kept to rate-limit code guessing per sender."""

    __table_args__ = (
        Index("ix_joinfailure_sender_at", "channel", "address", "at"),
        Index("ix_joinfailure_at", "at"),  # the global limit
    )

    id: int | None = Field(default=None, primary_key=True)
    channel: str
    address: str
    at: datetime = _ts(nullable=False)


class Homework(SQLModel, table=True):
    # A turn asks for a client's *current* homework (open, latest delivered): this index answers it
    # without walking the client's history. The sweep finds expired homework by (status, due).
    __table_args__ = (
        Index("ix_homework_current", "client_id", "status", "delivered_at", "id"),
        Index("ix_homework_expiry", "status", "due"),
    )

    id: int | None = Field(default=None, primary_key=True)
    client_id: int = Field(foreign_key="client.id", index=True)
    therapist_id: int = Field(foreign_key="therapist.id", index=True)
    title: str = Field(sa_type=EncryptedText)
    type: str = "custom"
    what: str | None = Field(default=None, sa_type=EncryptedText)
    when: str | None = Field(default=None, sa_type=EncryptedText)
    where: str | None = Field(default=None, sa_type=EncryptedText)
    with_whom: str | None = Field(default=None, sa_type=EncryptedText)
    record: str | None = Field(default=None, sa_type=EncryptedText)
    rationale: str | None = Field(default=None, sa_type=EncryptedText)
    due: date | None = None
    nudges: str | None = None  # comma-separated local "HH:MM" times
    nudge_days: str | None = None  # comma-separated "mon,wed,fri"; None → every day
    status: str = HomeworkStatus.OPEN
    created_at: datetime = _ts(nullable=False)
    delivered_at: datetime | None = _ts()
    closed_at: datetime | None = _ts()
    closed_reason: str | None = None  # a CloseReason, set with closed_at
    rationale_own_words: str | None = Field(default=None, sa_type=EncryptedText)
    confidence: int | None = None
    smaller_version_wanted: bool = False
    importance: int | None = None  # 0–10, asked after confidence (Kazantzis' common language for homework)
    # The review loop (dialogs.review): the therapist marked this homework reviewed in session; the note is
    # the therapist's own (never shown to the client). A homework closed without a mark is "not reviewed".
    reviewed_at: datetime | None = _ts()
    reviewed_by: int | None = Field(default=None, foreign_key="therapist.id")
    review_note: str | None = Field(default=None, sa_type=EncryptedText)


class Occasion(SQLModel, table=True):
    """One planned nudge of a homework's plan: the scheduler's unit of due work.

    The local date and time are what was agreed with the client; ``due_at``
    is that moment in UTC for the client's current zone (recomputed when the
    zone changes), after moving it out of quiet hours.
    """

    # (status, due_at, id) is exactly the sweep's claim order, so each batch
    # continues where the last one stopped instead of re-walking the index.
    # (homework_id, status) and (client_id, status, sent_at) serve a turn's "which nudge does this
    # answer" and "later" by current state, however many settled nudges a client's history holds.
    __table_args__ = (
        Index("ix_occasion_claim", "status", "due_at", "id"),
        Index("ix_occasion_homework_status", "homework_id", "status"),
        Index("ix_occasion_client_status", "client_id", "status", "sent_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    homework_id: int = Field(foreign_key="homework.id", index=True)
    client_id: int = Field(foreign_key="client.id", index=True)
    kind: str = "nudge"  # nudge | snooze
    local_date: date
    local_time: str  # "HH:MM"
    due_at: datetime = _ts(nullable=False)
    status: str = OccasionStatus.PLANNED
    sent_at: datetime | None = _ts()
    followed_up_at: datetime | None = _ts()
    closed_at: datetime | None = _ts()


class Debrief(SQLModel, table=True):
    # The digest reads one client's debriefs by period: (client_id, started_at) bounds it by the period.
    __table_args__ = (Index("ix_debrief_client_started", "client_id", "started_at"),)

    id: int | None = Field(default=None, primary_key=True)
    homework_id: int = Field(foreign_key="homework.id", index=True)
    occasion_id: int | None = Field(default=None, foreign_key="occasion.id")
    client_id: int = Field(foreign_key="client.id", index=True)
    kind: str = DebriefKind.DEBRIEF
    status: str = DebriefStatus.IN_PROGRESS
    started_at: datetime = _ts(nullable=False)
    completed_at: datetime | None = _ts()
    quantity: int | None = None  # 0 none · 1 a little · 2 about half · 3 most · 4 all
    what_happened: str | None = Field(default=None, sa_type=EncryptedText)
    surprised: str | None = Field(default=None, sa_type=EncryptedText)
    hard: str | None = Field(default=None, sa_type=EncryptedText)
    learned: str | None = Field(default=None, sa_type=EncryptedText)
    obstacle: str | None = Field(default=None, sa_type=EncryptedText)
    would_help: str | None = Field(default=None, sa_type=EncryptedText)
    # Type-specific ratings, e.g. {"belief_before": 80, "belief_after": 40}.
    ratings: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # LLM mode only: what the model read in each answer (did it, obstacles, emotions), per step,
    # every value marked "explicit" (the client wrote it) or "inferred". Numbers the client
    # confirmed are in ``quantity`` and ``ratings``, never only here.
    extracted: dict[str, Any] | None = Field(default=None, sa_column=Column(EncryptedJSON, nullable=True))
    # The quality rubric's criteria this debrief met, judged when it was completed (names from
    # dialogs.digest.CRITERIA): the digest's trend reads them without decrypting every answer.
    criteria: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class DebriefWeek(SQLModel, table=True):
    """One client's completed debriefs in one week, summed: what the digest's trend reads.

    ``week`` is the Monday of the client's local week (their zone when the
    debrief was completed, UTC without one). Written in the turn that
    completes a debrief (dialogs.history.count_debrief), so the trend reads
    four rows instead of every debrief of four weeks. Amounts and the rubric
    only, no text; still client data (export and erasure include it).
    """

    __table_args__ = (UniqueConstraint("client_id", "week"),)

    id: int | None = Field(default=None, primary_key=True)
    client_id: int = Field(foreign_key="client.id", index=True)
    week: date
    debriefs: int = 0
    quantity_sum: int = 0  # over the debriefs that gave an amount
    quantity_count: int = 0
    criteria_met: int = 0  # rubric criteria met, summed over the debriefs judged
    criteria_judged: int = 0  # debriefs judged (each against every criterion)


class FlagLevel(StrEnum):
    CONCERN = "concern"
    CRISIS = "crisis"
    SCOPE = "scope"  # a question outside the companion's remit (diagnosis, medication, therapy)


class SafetyFlag(SQLModel, table=True):
    """A client message the safety screen or the scope check raised, for alerts and the digest.

    A crisis flag is an alert: it stays open until the therapist acknowledges
    it, and is sent again (``escalate_at``) if that takes too long.
    """

    __table_args__ = (Index("ix_safetyflag_escalation", "escalate_at", "acknowledged_at"),)

    id: int | None = Field(default=None, primary_key=True)
    client_id: int = Field(foreign_key="client.id", index=True)
    therapist_id: int = Field(foreign_key="therapist.id", index=True)
    level: str  # plaintext: alerts, retention and the caseload query by it (SECURITY.md, "what stays readable")
    # What raised it ("suicide method or plan"): as sensitive as the text, so encrypted too.
    reasons: list[str] = Field(default_factory=list, sa_column=Column(EncryptedJSON, nullable=False))
    text: str = Field(sa_type=EncryptedText)  # the client's message: the therapist needs it to act
    context: str | None = None  # where in the dialog it was written, e.g. "debrief of #3"
    created_at: datetime = _ts(nullable=False, index=True)
    escalate_at: datetime | None = _ts()
    escalated_at: datetime | None = _ts()
    acknowledged_at: datetime | None = _ts()
    acknowledged_by: int | None = Field(default=None, foreign_key="therapist.id")
    ack_note: str | None = Field(default=None, sa_type=EncryptedText)
    # Which layer of the screen fired and its score ([{"layer", "level", "score", "reason"}]), never
    # message text; encrypted, because "which risk" is itself health data.
    signals: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(EncryptedJSON, nullable=True))
    # The direct safety question asked in the screen's grey zone (dialogs.checkin): when it was asked,
    # when an unanswered one alerts the therapist (NULL once answered or alerted), and the outcome:
    # "asked" | "yes" | "no" | "crisis" (a crisis typed instead of an answer) | "unanswered".
    question_asked_at: datetime | None = _ts()
    question_due_at: datetime | None = _ts(index=True)
    question_status: str | None = None


class LogEntry(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    client_id: int = Field(foreign_key="client.id", index=True)
    homework_id: int | None = Field(default=None, foreign_key="homework.id")
    text: str = Field(sa_type=EncryptedText)
    created_at: datetime = _ts(nullable=False)


class ConversationState(SQLModel, table=True):
    """Where one chat (channel + address) is in its dialog; a restart resumes from here."""

    __table_args__ = (UniqueConstraint("channel", "address"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str
    address: str
    flow: str = "idle"
    step: str = ""
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(EncryptedJSON, nullable=False))
    updated_at: datetime = _ts(nullable=False)
    # When this chat last wrote to us (a stranger's too): WhatsApp allows
    # free-form messages only within 24 hours of it.
    last_inbound_at: datetime | None = _ts()


URGENT: Final = 0  # outbox priority: crisis replies and alerts
REPLY: Final = 1  # an answer to someone who just wrote (the default)
BULK: Final = 2  # nudges, follow-ups and digests: may wait behind the rest


class OutboxMessage(SQLModel, table=True):
    """A message waiting for its platform to accept it; sent_at is set only after it did.

    A sender claims a row by setting ``claimed_by`` to its process's id (a
    lease that lasts as long as that process's heartbeat, see
    :class:`SenderProcess`; ``claimed_until`` is kept for information), and
    defers it with ``next_attempt_at`` after a rate limit or a transient
    error. ``failed_at`` ends a row the platform will never accept (blocked,
    bad request). ``priority`` orders chats when a backlog builds (0 urgent:
    crisis replies and alerts; 1 replies; 2 bulk: nudges and digests), while
    one chat's rows always go in id order. ``parts_sent`` counts the parts of
    a multi-part message the platform already accepted, so a retry sends only
    the rest. ``subject`` names what a row is about where a later step must
    find it again (``alert:17``: the alert of safety flag 17, edited after
    Acknowledge).
    """

    # ix_outbox_failed: the digest counts a client's undeliverable messages since the period began;
    # failures are rare, so this keeps that count off the length of the outbox.
    __table_args__ = (
        Index("ix_outbox_pending", "channel", "sent_at", "priority", "id"),
        Index("ix_outbox_chat", "channel", "address", "id"),
        Index("ix_outbox_failed", "failed_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    channel: str
    address: str
    payload: dict[str, Any] = Field(sa_column=Column(EncryptedJSON, nullable=False))
    created_at: datetime = _ts(nullable=False, index=True)  # retention purges by it
    sent_at: datetime | None = _ts()
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: datetime | None = _ts()
    claimed_until: datetime | None = _ts()
    failed_at: datetime | None = _ts()
    # The platform's id for the sent message, and what its status callbacks reported.
    platform_id: str | None = Field(default=None, index=True)
    delivery_status: str | None = None
    error_code: str | None = None
    # Which prompt template (and version) produced the text: "llm.reflection@2", "client.nudge@1".
    prompt_key: str | None = None
    prompt_version: str | None = None
    priority: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    claimed_by: str | None = None
    parts_sent: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    subject: str | None = Field(default=None, index=True)


class SenderProcess(SQLModel, table=True):
    """A running process that sends from the outbox: its identity and heartbeat.

    Rows it claimed stay its own while ``heartbeat_at`` is fresh; a process
    on the same host (``host``: the host name and PID namespace) whose
    ``pid`` is gone is deleted at once by the next process that looks, so a
    restart reclaims its leases within seconds; one on another host only
    when its heartbeat is stale. Holds no client data.
    """

    id: str = Field(primary_key=True)
    host: str
    pid: int
    pid_started: str | None = None  # /proc/PID/stat start time: tells a reused pid from the original
    started_at: datetime = _ts(nullable=False)
    heartbeat_at: datetime = _ts(nullable=False, index=True)


class RateBudget(SQLModel, table=True):
    """One platform's send budget shared by every process: the next free slot, in epoch seconds.

    A sender reserves a short run of slots at a time by moving ``next_at``
    forward in one short transaction, so all processes together stay within
    the configured rate. Holds no client data.
    """

    channel: str = Field(primary_key=True)
    next_at: float = 0.0


class ProcessedInbound(SQLModel, table=True):
    """Platform message ids already handled, so a redelivered update is dropped."""

    __table_args__ = (UniqueConstraint("channel", "message_id"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str
    message_id: str
    received_at: datetime = _ts(nullable=False, index=True)


class AuditEntry(SQLModel, table=True):
    """One access to or change of client data: who, what, which client, when — never the content.

    Append-only: the application only inserts, and the database refuses
    UPDATE and DELETE on this table (triggers, migration 0008). ``client_id``
    is a plain number, not a foreign key, so the entry outlives an erased
    client. No names either: after an erasure the log still says what was
    done to client #17, and nothing about who they were.
    """

    __table_args__ = (Index("ix_auditentry_client_at", "client_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts(nullable=False, index=True)
    actor: str  # "therapist:3", "client:7", "operator", "system"
    action: str  # e.g. "digest.read", "homework.set", "client.export", "client.forget", "alert.ack", "keys.rotate"
    therapist_id: int | None = None
    client_id: int | None = None
    # Non-sensitive particulars only: ids, counts, channel names.
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class TherapistNote(SQLModel, table=True):
    """A therapist's formulation note about a client (``/note NAME TEXT``): grounds reflections and rationales."""

    id: int | None = Field(default=None, primary_key=True)
    client_id: int = Field(foreign_key="client.id", index=True)
    therapist_id: int = Field(foreign_key="therapist.id", index=True)
    text: str = Field(sa_type=EncryptedText)
    created_at: datetime = _ts(nullable=False)


class LlmUsage(SQLModel, table=True):
    """One call to the configured language model: what it was for, the tokens it used, and how it ended."""

    __table_args__ = (Index("ix_llmusage_at", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts(nullable=False)
    client_id: int | None = Field(default=None, index=True)  # no FK: usage is kept after erasure
    purpose: str  # reflection | extraction | narrative
    provider: str
    model: str
    prompt_key: str
    prompt_version: str
    input_tokens: int = 0
    output_tokens: int = 0
    outcome: str = "ok"  # ok, or "fallback:<reason>" (invalid, timeout, error, unsafe)
    # The validated digest narrative (purpose "narrative" only), so every process reuses the one call per period.
    output: str | None = Field(default=None, sa_type=EncryptedText)


class LlmJob(SQLModel, table=True):
    """A model call (or memory write) a turn decided on, run after its commit, outside any transaction.

    A turn that wants a model's reply writes this row *instead of* its
    outbox rows, which it keeps in ``fallback`` (the scripted reply, sent as
    is if the call fails or ``deadline_at`` passes). A runner leases the row
    (``claimed_until``, as the outbox sender does), calls the model with no
    transaction open, and applies the result in a second, short transaction
    that locks the chat's state, checks it still is where the turn left it
    (``flow``/``step`` and this row still ``pending``), and moves ``status``
    on with a conditional UPDATE: a result is applied once, by one process.
    A crash between the two leaves the row pending; it is run again after
    its lease, or falls back once its deadline has passed. A finished job
    keeps its bookkeeping but not the text it carried (``request`` and
    ``fallback`` are emptied).
    """

    __table_args__ = (Index("ix_llmjob_pending", "status", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str  # reply | narrative | remember | forget
    client_id: int | None = Field(default=None, index=True)  # no FK: a forget job outlives the client row
    state_id: int | None = None  # the ConversationState whose turn made it (reply jobs)
    flow: str = ""  # where that turn left the chat: the result applies only if it is still there
    step: str = ""
    channel: str = ""
    address: str = ""
    # What the call needs (scrubbed prompt parts, the original message for number checks): client text.
    request: dict[str, Any] = Field(default_factory=dict, sa_column=Column(EncryptedJSON, nullable=False))
    # The turn's scripted outbox rows, sent as they are on any failure.
    fallback: list[Any] = Field(default_factory=list, sa_column=Column(EncryptedJSON, nullable=False))
    status: str = "pending"  # pending | done | fallback | superseded
    outcome: str | None = None  # ok, or fallback:<reason>
    created_at: datetime = _ts(nullable=False)
    deadline_at: datetime = _ts(nullable=False)
    claimed_until: datetime | None = _ts()
    attempts: int = 0
    finished_at: datetime | None = _ts()


class WebToken(SQLModel, table=True):
    """A dashboard sign-in link (single use, short-lived) or a dashboard session.

    Only a SHA-256 of the token is stored, so a database dump signs nobody in.
    """

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True, index=True)
    kind: str  # "link" | "session"
    therapist_id: int = Field(foreign_key="therapist.id", index=True)
    created_at: datetime = _ts(nullable=False)
    expires_at: datetime = _ts(nullable=False)
    used_at: datetime | None = _ts()  # a link: when it was exchanged for a session; a session: signed out
    csrf_secret: str | None = None  # sessions only


SAFETY_PLAN_FIELDS: Final = ("warning_signs", "coping", "distractions", "people", "professionals", "environment")
"""Stanley & Brown's six steps, in the order they are written (and asked for)."""


class SafetyPlan(SQLModel, table=True):
    """A client's safety plan (Stanley & Brown), written with the therapist in session: one per client.

    Every step is the client's own words, encrypted. ``reviewed_at`` is when
    the therapist last saved it (each save is a review with the client).
    """

    id: int | None = Field(default=None, primary_key=True)
    client_id: int = Field(foreign_key="client.id", unique=True, index=True)
    therapist_id: int = Field(foreign_key="therapist.id", index=True)
    warning_signs: str | None = Field(default=None, sa_type=EncryptedText)
    coping: str | None = Field(default=None, sa_type=EncryptedText)
    distractions: str | None = Field(default=None, sa_type=EncryptedText)
    people: str | None = Field(default=None, sa_type=EncryptedText)
    professionals: str | None = Field(default=None, sa_type=EncryptedText)
    environment: str | None = Field(default=None, sa_type=EncryptedText)
    created_at: datetime = _ts(nullable=False)
    reviewed_at: datetime = _ts(nullable=False)


class MeasureSchedule(SQLModel, table=True):
    """When a client is asked a questionnaire (``/measure NAME phq9 weekly``): the scheduler's due row."""

    __table_args__ = (UniqueConstraint("client_id", "instrument"),)

    id: int | None = Field(default=None, primary_key=True)
    client_id: int = Field(foreign_key="client.id", index=True)
    therapist_id: int = Field(foreign_key="therapist.id", index=True)
    instrument: str  # "phq9" | "gad7"
    cadence: str  # "weekly" | "before_session" | "once"
    due_at: datetime | None = _ts(index=True)  # next time to ask, UTC; None: nothing planned
    created_at: datetime = _ts(nullable=False)


class MeasureStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"


class MeasureResponse(SQLModel, table=True):
    """One administration of a questionnaire: the answers so far (kept when interrupted), then the score."""

    __table_args__ = (Index("ix_measureresponse_client_started", "client_id", "started_at"),)

    id: int | None = Field(default=None, primary_key=True)
    client_id: int = Field(foreign_key="client.id", index=True)
    instrument: str
    status: str = MeasureStatus.IN_PROGRESS
    started_at: datetime = _ts(nullable=False)
    completed_at: datetime | None = _ts()
    # Item answers (0–3) in order; encrypted, because each item is itself a health disclosure.
    answers: list[int] = Field(default_factory=list, sa_column=Column(EncryptedJSON, nullable=False))
    # The total and its published band, kept plain like a debrief's amount so the digest can chart them.
    score: int | None = None
    band: str | None = None


class InstanceValue(SQLModel, table=True):
    """A value that belongs to this installation rather than to a person, by name.

    ``key_check`` holds a known text encrypted with the data key: at start the
    service refuses a key that cannot read it (storage.keycheck). The value is
    encrypted like client text, so ``companion keys rotate`` carries it over.
    """

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    value: str = Field(sa_type=EncryptedText)
    created_at: datetime = _ts(nullable=False)
