"""Helpers for driving the companion in tests: console chats and common set-up."""

from __future__ import annotations

import io
import re

from bot.wiring import Companion
from channels import console
from storage import queries as q


class Chat:
    """A console participant driven by a test: ``send`` returns what they saw in reply."""

    def __init__(self, companion: Companion, role: str, handle: str) -> None:
        self.out = io.StringIO()
        self.channel = console.ConsoleChannel(
            db=companion.db,
            engine=companion.engine,
            chat=console.address(role, handle),
            out=self.out,
            jobs=companion.jobs,
        )
        self._seen = 0

    def _new(self) -> str:
        value = self.out.getvalue()
        fresh, self._seen = value[self._seen :], len(value)
        return fresh

    def open(self) -> str:
        """What waited in the outbox for this participant (printed on `companion chat`)."""
        self.channel.flush()
        return self._new()

    def send(self, text: str) -> str:
        self.channel.handle_line(text)
        return self._new()


def add_therapist(companion: Companion, name: str = "Dana", timezone: str = "Europe/London") -> None:
    with companion.db.unit_of_work() as session:
        q.add_therapist(session, name=name, timezone=timezone, now=companion.clock.now())


def invite_code(reply: str) -> str:
    match = re.search(r"^([A-Z0-9]{8})$", reply, re.MULTILINE)
    assert match, f"no invite code in: {reply!r}"
    return match.group(1)


def join(companion: Companion, therapist: Chat, name: str, handle: str, tz: str = "London", at: str = "18:00") -> Chat:
    """Invite and onboard a client; returns their chat with the onboarding output consumed."""
    code = invite_code(therapist.send(f"/invite {name}"))
    client = Chat(companion, "client", handle)
    client.send(f"/start {code}")
    client.send("yes")
    client.send(tz)
    client.send(at)
    therapist.open()
    return client
