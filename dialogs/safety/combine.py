"""How the risk screen's layers combine into one verdict: a pure function, no I/O."""

from __future__ import annotations

import re
from typing import Final

from dialogs.safety.classifier import LearnedScore, Thresholds
from dialogs.safety.verdict import LEVELS, Level, RiskAssessment, Signal

# The learned layer's reasons (in ``reasons``, for the flag) and its signal's shorter ones (shown
# after the layer's name, with the score: "learned layer: possible crisis 0.83"). Fixed strings.
LEARNED_CRISIS: Final = "learned layer: crisis likely"
LEARNED_GREY: Final = "learned layer: possible crisis"
LEARNED_CONCERN: Final = "learned layer: concern"
LEARNED_FAILED: Final = "learned layer could not run"
REASONS: Final = frozenset({LEARNED_CRISIS, LEARNED_GREY, LEARNED_CONCERN, LEARNED_FAILED})
_SIGNAL_REASON: Final = {
    LEARNED_CRISIS: "crisis likely",
    LEARNED_GREY: "possible crisis",
    LEARNED_CONCERN: "concern",
    LEARNED_FAILED: "could not run",
}
LEARNED_NONE: Final = "no risk found"

_RANK: Final = {level: i for i, level in enumerate(LEVELS)}
# A scope question asks something: the learned scope head alone also scores answers that merely
# mention mood or medication ("it helps my mood"), which must stay answers in a dialog.
_ASKS: Final = re.compile(
    r"\?|\b(?:should|shall|can|could|may|might|will|would|what|how|why|which|whether|think|reckon|wonder"
    r"|advice|advise|tell me|is it|is this|is that|am i|do i|does|did i|ok to|okay to|alright to)\b",
    re.IGNORECASE,
)


# Fewer words than this and the learned layer's unsure band does not ask: "tonight", "one stop",
# "done" carry too little for a middling score to mean anything (the corpus holds almost no
# messages this short, so the model has not learned them). Its confident crisis still counts, and
# the lexicon reads every message whatever its length.
BRIEF_WORDS: Final = 3
_WORD: Final = re.compile(r"\w+")


def brief(text: str) -> bool:
    """Whether ``text`` is too short for the learned layer's grey zone (fewer than :data:`BRIEF_WORDS` words)."""
    return len(_WORD.findall(text)) < BRIEF_WORDS


def asks(text: str) -> bool:
    """Whether ``text`` reads as a question or a request for advice (for the learned scope head)."""
    return _ASKS.search(text) is not None


def _higher(a: Level, b: Level) -> Level:
    return a if _RANK[a] >= _RANK[b] else b


def combine(
    lexical: RiskAssessment,
    learned: LearnedScore | None,
    thresholds: Thresholds | None,
    *,
    lexicon_grey: bool | None = None,
    question: bool = True,
    short: bool = False,
) -> RiskAssessment:
    """The combined verdict of the lexicon's ``lexical`` and the learned layer's ``learned`` score.

    Rules (issue 16):
      * crisis when either layer is confident: the lexicon says crisis, or the
        crisis probability is at or above ``thresholds.crisis``;
      * the grey zone — the crisis probability in ``[thresholds.ask,
        thresholds.crisis)`` for a message that is not ``short`` (see
        :func:`brief`; a short one is then a concern, unasked), or a lexicon match that carries a risk concept
        but was capped (``lexicon_grey``; by default the lexicon's own ``ask``)
        — is ``"concern"`` with ``ask=True``: the dialog asks the direct question;
      * a concern-or-above probability at or above ``thresholds.concern`` is a concern;
      * any layer can raise the level and none can lower another's;
      * ``scope_question``: the scope probability is at or above
        ``thresholds.scope`` and the message is a ``question`` (see :func:`asks`);
      * ``learned is None`` means the learned layer failed: the message is
        treated as the grey zone (concern, ``ask=True``), never as "none".
    ``reasons`` are the lexicon's followed by the learned layer's (fixed
    strings); ``signals`` are the lexicon's (one per reason) and one of the
    learned layer, with its score (also when it found nothing: the therapist
    sees that it disagreed).
    """
    level: Level = lexical.level
    signals = list(lexical.signals)
    reasons = list(lexical.reasons)
    ask = lexical.ask if lexicon_grey is None else lexicon_grey
    scope = 0.0
    scope_question = False
    if learned is None or thresholds is None:
        signals.append(Signal("learned", "concern", None, _SIGNAL_REASON[LEARNED_FAILED]))
        reasons.append(LEARNED_FAILED)
        level, ask = _higher(level, "concern"), True
    else:
        scope = learned.scope
        scope_question = question and learned.scope >= thresholds.scope
        if learned.crisis >= thresholds.crisis:
            said: Level = "crisis"
            reason, score = LEARNED_CRISIS, learned.crisis
        elif learned.crisis >= thresholds.ask and not short:
            said, reason, score, ask = "concern", LEARNED_GREY, learned.crisis, True
        elif learned.risk >= thresholds.concern:
            said, reason, score = "concern", LEARNED_CONCERN, learned.risk
        else:  # the crisis probability: "no risk found 0.02" must not read as a risk of 0.9
            said, reason, score = "none", LEARNED_NONE, learned.crisis
        signals.append(Signal("learned", said, round(score, 4), _SIGNAL_REASON.get(reason, reason)))
        if said != "none":
            reasons.append(reason)
        level = _higher(level, said)
    if level == "crisis":
        ask = False  # the crisis path runs at once: nothing to ask
    elif ask:
        level = "concern"
    return RiskAssessment(
        level=level,
        reasons=tuple(reasons),
        ask=ask,
        signals=tuple(signals),
        scope=round(float(scope), 4),
        scope_question=scope_question,
    )
