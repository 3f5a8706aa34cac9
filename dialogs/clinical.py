"""Shared helpers of the clinical commands (safety plan, questionnaires, review): finding the client named."""

from __future__ import annotations

from dialogs import access
from dialogs.turn import Turn
from storage import Client


def require_client(turn: Turn, rest: str, usage: str) -> tuple[Client, str] | None:
    """The therapist's own client whose name starts ``rest`` (longest name wins) and what follows it.

    Says the usage (``usage`` is the usage text itself) or "no such client"
    and returns None when there is none. Only this therapist's clients are
    candidates, so another therapist's client is "no such client".
    """
    assert turn.therapist is not None and turn.therapist.id is not None
    if not rest.strip():
        turn.say("therapist.usage", usage=usage)
        return None
    folded = rest.casefold()
    best: tuple[Client, str] | None = None
    best_len = -1
    for client in access.own_clients(turn.session, therapist_id=turn.therapist.id):
        key = client.name_key
        if (folded == key or folded.startswith((key + " ", key + "\n"))) and len(key) > best_len:
            best, best_len = (client, rest[len(key) :].strip()), len(key)
    if best is None:
        turn.say("therapist.no_such_client", name=rest.split("\n", 1)[0].strip()[:60])
        return None
    turn.about = best[0].id
    return best
