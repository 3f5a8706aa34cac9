"""Strangers and joining: invite codes, consent, time zone and reminder time."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Final

from sqlmodel import select

from dialogs import access
from dialogs.homework import deliver_pending
from dialogs.messages import Option
from dialogs.nudges import in_quiet, nearest_allowed, quiet_hours
from dialogs.timeparse import format_local, parse_clock_time, timezone_choices, zone_country
from dialogs.turn import Turn, split_command
from storage import Client, ClientStatus, Invite, Therapist
from storage import queries as q

CODE_ALPHABET: Final = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
"""Upper-case letters and digits without look-alikes (0/O, 1/I/L), read aloud or copied safely."""
CODE_LENGTH: Final = 8
# One code token, optionally split once by a dash or space as people copy it.
_JOIN: Final = re.compile(
    r"^\s*(?:/start|/join|join|start)(?:@\w+)?\s+([A-Za-z0-9]{3,6}[\- ]?[A-Za-z0-9]{3,6})\s*$", re.IGNORECASE
)


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def join_code(text: str) -> str | None:
    """The code in ``/start CODE`` or ``join CODE`` (spaces and dashes ignored), upper-cased."""
    match = _JOIN.match(text)
    return re.sub(r"[\s\-]", "", match.group(1)).upper() if match else None


def stranger(turn: Turn) -> None:
    """A chat that is nobody's yet: only a join attempt does anything.

    Whatever else is sent, the reply is the same how-to-join text, so an
    unknown sender learns nothing about who uses the companion.
    """
    code = join_code(turn.text)
    if code is None:
        turn.say("unknown.how_to_join")
        return
    start_join(turn, code)


def start_join(turn: Turn, code: str) -> None:
    channel, address = turn.inbound.channel, turn.inbound.address
    since = turn.now - turn.settings.join_failure_window
    failures = q.join_failures_since(turn.session, channel=channel, address=address, since=since)
    if (
        failures >= turn.settings.join_failure_limit
        or q.join_failures_since(turn.session, since=since) >= turn.settings.join_failure_global_limit
    ):
        turn.say("join.rate_limited")
        return
    invite = q.usable_invite(turn.session, code=code, now=turn.now)
    if invite is None:
        q.record_join_failure(turn.session, channel=channel, address=address, now=turn.now)
        turn.idle()
        turn.say("join.bad_code")
        return
    if invite.therapist_id is not None:
        _link_therapist(turn, invite)
        return
    client, therapist = _people(turn, invite)
    turn.goto("join", "consent", invite_id=invite.id)
    turn.say("join.consent", kind="choice", options=turn.yes_no(), client=client.name, therapist=therapist.name)


def _link_therapist(turn: Turn, invite: Invite) -> None:
    """A therapist's link code: this chat becomes theirs (no consent flow; they are staff)."""
    therapist = turn.session.get(Therapist, invite.therapist_id)
    assert therapist is not None
    linked = q.link_identity(
        turn.session,
        channel=turn.inbound.channel,
        address=turn.inbound.address,
        now=turn.now,
        therapist_id=therapist.id,
    )
    invite.used_at, invite.used_by_identity_id = turn.now, linked.id
    turn.session.add(invite)
    turn.idle()
    turn.say("therapist.linked", therapist=therapist.name)


def join_links(templates: tuple[str, ...], code: str, prompts_text: Callable[..., str]) -> str:
    """The tap-to-join links for the platforms that are configured, as extra reply lines."""
    return "".join(prompts_text("therapist.join_link", link=t.format(code=code)) for t in templates)


def _people(turn: Turn, invite: Invite) -> tuple[Client, Therapist]:
    client = turn.session.get(Client, invite.client_id)
    assert client is not None
    therapist = turn.session.get(Therapist, client.therapist_id)
    assert therapist is not None
    return client, therapist


def consent(turn: Turn) -> None:
    code = join_code(turn.text)
    if code is not None:  # a second /start restarts with that code
        start_join(turn, code)
        return
    invite = turn.session.get(Invite, turn.data.get("invite_id"))
    if invite is None or invite.used_at is not None or invite.expires_at <= turn.now:
        turn.idle()
        turn.say("join.bad_code")
        return
    client, therapist = _people(turn, invite)
    if turn.is_("no"):
        turn.idle()
        turn.say("join.declined", therapist=therapist.name)
        return
    if not turn.is_("yes"):
        turn.say("join.consent_unclear", kind="choice", options=turn.yes_no())
        return
    # Consent links this chat to the client and spends the code, in this one
    # transaction: a code that changes hands later is already used.
    linked = q.link_identity(
        turn.session, channel=turn.inbound.channel, address=turn.inbound.address, now=turn.now, client_id=client.id
    )
    invite.used_at, invite.used_by_identity_id = turn.now, linked.id
    client.consented_at = turn.now
    turn.session.add_all([invite, client])
    turn.goto("join", "timezone", client_id=client.id)
    turn.say("join.ask_timezone")


def zone_reply(turn: Turn, text: str, *, command: str = "") -> str | None:
    """The zone a client means by ``text``, or None after asking (several readings) or saying it is unknown.

    A number picks from the readings offered last (``zone_options`` in the
    chat's data); several readings are offered as choices whose values are
    the zones themselves (``command`` in front for ``/timezone``), so tapping
    one, or typing its number on WhatsApp, comes back here as a plain zone.
    The therapist's country breaks a tie (a UK therapist's client in
    Birmingham is in England).
    """
    offered = turn.data.get("zone_options")
    if isinstance(offered, list) and text.strip().isdigit() and 1 <= int(text.strip()) <= len(offered):
        return str(offered[int(text.strip()) - 1])
    therapist = turn.session.get(Therapist, turn.client.therapist_id) if turn.client is not None else None
    choices = timezone_choices(text, country=zone_country(therapist.timezone) if therapist else None)
    if len(choices) == 1:
        return choices[0].zone
    if not choices:
        turn.say("join.bad_timezone" if not command else "nudge.timezone_usage")
        return None
    turn.state.data = {**turn.state.data, "zone_options": [c.zone for c in choices]}
    options = [Option(f"{command}{c.zone}", c.place) for c in choices]
    turn.say("join.which_timezone", kind="choice", options=options, place=_strip(text))
    return None


def _strip(text: str) -> str:
    return " ".join(text.split())[:60]


def local_now(turn: Turn, zone: str) -> str:
    """The current time where the client is, to confirm a zone back ("Mon 23 Nov 04:00 (America/New_York)")."""
    return format_local(turn.now, zone) or zone


def timezone(turn: Turn) -> None:
    zone = zone_reply(turn, turn.text)
    if zone is None:
        return
    assert turn.client is not None
    turn.client.timezone = zone
    turn.session.add(turn.client)
    turn.step("nudge_time", zone_options=None)
    turn.say("join.ask_nudge_time", timezone=zone, local_now=local_now(turn, zone))


def nudge_time(turn: Turn) -> None:
    at = parse_clock_time(turn.text)
    if at is None:
        turn.say("join.bad_nudge_time")
        return
    client = turn.client
    assert client is not None and client.id is not None
    chosen = at.strftime("%H:%M")
    start, end = quiet_hours(client, turn.settings)
    quiet = in_quiet(at, start, end)
    if quiet and turn.data.get("quiet_warned") != chosen:
        # Said when the time is chosen, not discovered at 08:00 the next day: offer the nearest allowed time.
        nearest = nearest_allowed(at, start, end).strftime("%H:%M")
        quiet_end = end.strftime("%H:%M")
        turn.step("nudge_time", quiet_warned=chosen)
        turn.say(
            "join.nudge_time_quiet",
            kind="choice",
            options=(
                Option(nearest, nearest),
                Option(chosen, turn.t("join.keep_quiet_time", nudge_time=chosen, quiet_end=quiet_end)),
            ),
            nudge_time=chosen,
            quiet_start=start.strftime("%H:%M"),
            quiet_end=quiet_end,
            nearest=nearest,
        )
        return
    client.nudge_time = chosen
    client.status = ClientStatus.ACTIVE
    turn.session.add(client)
    turn.idle()
    shown = turn.t("join.quiet_kept", nudge_time=chosen, quiet_end=end.strftime("%H:%M")) if quiet else chosen
    turn.say("join.done", nudge_time=shown, timezone=client.timezone)
    turn.notify_therapist(client.therapist_id, "notify.client_joined", client=client.name)
    _, messages = deliver_pending(
        turn.session, prompts=turn.prompts, settings=turn.settings, client=client, now=turn.now
    )
    turn.sends.extend(messages)


def expire_stale_link(turn: Turn) -> None:
    """Unlink a client's chat that has been silent longer than ``link_idle`` before reading its message.

    Phone numbers are recycled and accounts change hands; whoever writes from
    a long-silent chat may not be the client. They are treated as a stranger
    (nothing of the client's is shown, and ``/mydata`` is not theirs to ask),
    the therapist is told, and a new invite links the client again. The
    client's records stay with the therapist.
    """
    idle, last, client, link = turn.settings.link_idle, turn.state.last_inbound_at, turn.client, turn.identity
    if idle is None or client is None or link is None or last is None or turn.now - last <= idle:
        return
    for invite in turn.session.exec(select(Invite).where(Invite.used_by_identity_id == link.id)).all():
        invite.used_by_identity_id = None
        turn.session.add(invite)
    turn.session.flush()
    turn.session.delete(link)
    turn.state.flow, turn.state.step, turn.state.data = "idle", "", {}
    access.audit(
        turn.session,
        actor=access.SYSTEM,
        action="link.expired",
        now=turn.now,
        client=client,
        channel=link.channel,
        idle_days=(turn.now - last).days,
    )
    turn.notify_therapist(client.therapist_id, "notify.link_expired", client=client.name, days=(turn.now - last).days)
    turn.client = turn.identity = None


def already_joined(turn: Turn) -> bool:
    """A linked client who sends /start or /join again is told so instead of re-joining."""
    command, _ = split_command(turn.text)
    if command in ("start", "join"):
        turn.say("join.already_joined")
        return True
    return False


STEPS: Final = {"consent": consent, "timezone": timezone, "nudge_time": nudge_time}
