"""The console channel: `companion chat` as a therapist or a client, one stdin line per message."""

from __future__ import annotations

import logging
import sys
import threading
import uuid
from collections.abc import Iterable
from typing import Final, TextIO

from channels.base import render_plain
from dialogs.engine import Engine
from dialogs.llm_jobs import JobRunner
from dialogs.messages import Inbound
from dialogs.nudges import outbound
from storage import Database
from storage import queries as q

log = logging.getLogger("companion.console")
NAME: Final = q.CONSOLE
ROLES: Final = ("therapist", "client")


def address(role: str, handle: str) -> str:
    """Console chats are addressed ``therapist:NAME`` or ``client:HANDLE`` so roles never collide."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    handle = " ".join(handle.split())
    if not handle:
        raise ValueError("a console handle cannot be empty")
    return f"{role}:{handle}"


class ConsoleChannel:
    """One participant's terminal: prints what waits in the outbox, then turns each line into a message.

    Messages for this participant that were queued while they were away (a
    homework the therapist set, later a nudge) are printed before any input
    is read. A row is marked sent only after it was written to ``out``.
    In LLM mode (``jobs``) a line's model call runs after its commit and
    the line's reply is printed once it is decided (reply or fallback).
    """

    def __init__(
        self, *, db: Database, engine: Engine, chat: str, out: TextIO | None = None, jobs: JobRunner | None = None
    ) -> None:
        # sys.stdout is looked up now, not at import, so redirection works.
        self.db, self.engine, self.chat, self.out = db, engine, chat, out or sys.stdout
        self.jobs = jobs
        # The watcher thread and the input loop both flush; one at a time, so
        # a row is never printed twice (SQLite has no row locks to prevent it).
        self._lock = threading.Lock()

    def flush(self) -> int:
        """Print and mark sent everything waiting for this chat; returns how many."""
        with self._lock:
            return self._flush()

    def watch(self, stop: threading.Event, interval: float = 1.0) -> threading.Thread:
        """Print messages as they arrive while the person sits at the prompt.

        An urgent alert must not wait for the therapist's next keystroke, so
        interactive chats poll the outbox every ``interval`` seconds until
        ``stop`` is set.
        """

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.flush()
                except Exception:  # keep watching; the input loop reports real failures
                    log.exception("console outbox poll failed")

        thread = threading.Thread(target=loop, name="console-watch", daemon=True)
        thread.start()
        return thread

    def _flush(self) -> int:
        printed = 0
        with self.db.unit_of_work() as session:
            for row in q.pending_outbox(session, channel=NAME, address=self.chat, limit=1000):
                self.out.write(render_plain(outbound(session, self.engine.prompts, row.payload)) + "\n\n")
                self.out.flush()
                q.mark_sent(session, message=row, now=self.engine.clock.now())
                printed += 1
        return printed

    def handle_line(self, text: str) -> None:
        inbound = Inbound(channel=NAME, address=self.chat, text=text, message_id=uuid.uuid4().hex)
        with self.db.unit_of_work() as session:
            self.engine.handle(session, inbound)
        if self.jobs is not None:
            self.jobs.run_pending(chat=(NAME, self.chat))  # the model call, outside the turn's transaction
        self.flush()

    def run(self, lines: Iterable[str], *, prompt: str = "") -> None:
        """Read lines until EOF. A line ending in a backslash continues on the next
        line, so a multi-line message (``/homework NAME`` with ``field: value``
        lines) can be typed or piped."""
        self.flush()
        self._prompt(prompt)
        pending: list[str] = []
        for raw in lines:
            line = raw.rstrip("\r\n")
            if line.endswith("\\"):
                pending.append(line[:-1])
                continue
            self.handle_line("\n".join([*pending, line]))
            pending.clear()
            self._prompt(prompt)
        if pending:
            self.handle_line("\n".join(pending))

    def _prompt(self, prompt: str) -> None:
        if prompt:
            self.out.write(prompt)
            self.out.flush()
