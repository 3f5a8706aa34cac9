"""The risk screen's verdict types, shared by its layers and their combination."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Level = Literal["none", "concern", "crisis"]
# The screen's layers; the dialog adds its own ("llm" opinion, "question" answered, "measure").
Layer = Literal["lexicon", "learned"]

LEVELS: Final[tuple[Level, ...]] = ("none", "concern", "crisis")


@dataclass(frozen=True)
class Signal:
    """What one layer said: its level, its score (a probability; None for the lexicon), a fixed reason.

    Never contains message text: it is stored on the flag and shown to the therapist.
    """

    layer: str  # a Layer, or a layer the dialog adds: "llm", "question", "measure"
    level: Level
    score: float | None
    reason: str


@dataclass(frozen=True)
class RiskAssessment:
    """The screen's verdict: a level and short, fixed, therapist-safe reasons (never message text).

    ``ask``: the grey zone — the dialog asks the direct safety question
    (always False at ``"crisis"``). ``signals``: each layer's say, for the
    flag. ``scope``: the learned probability that the message is a question
    outside the companion's remit (diagnosis, medication, treatment
    decisions); ``scope_question``: it is at or above the trained threshold.
    """

    level: Level
    reasons: tuple[str, ...] = ()
    ask: bool = False
    signals: tuple[Signal, ...] = ()
    scope: float = 0.0
    scope_question: bool = False
