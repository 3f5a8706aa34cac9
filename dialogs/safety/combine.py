"""How the risk screen's layers combine into one verdict: a pure function, no I/O."""

from __future__ import annotations

from typing import Final

from dialogs.safety.classifier import LearnedScore, Thresholds
from dialogs.safety.verdict import LEVELS, Level, RiskAssessment, Signal

# The learned layer's reasons: fixed strings, shown to the therapist with the score.
LEARNED_CRISIS: Final = "learned layer: crisis likely"
LEARNED_GREY: Final = "learned layer: possible crisis"
LEARNED_CONCERN: Final = "learned layer: concern"
LEARNED_NONE: Final = "learned layer: no risk found"
LEARNED_FAILED: Final = "learned layer could not run"
LEXICON_GREY: Final = "lexicon: risk words, qualified"
LEXICON_NONE: Final = "lexicon: no match"
REASONS: Final = frozenset({LEARNED_CRISIS, LEARNED_GREY, LEARNED_CONCERN, LEARNED_FAILED, LEXICON_GREY})

_RANK: Final = {level: i for i, level in enumerate(LEVELS)}


def _higher(a: Level, b: Level) -> Level:
    return a if _RANK[a] >= _RANK[b] else b


def combine(
    lexical: RiskAssessment,
    learned: LearnedScore | None,
    thresholds: Thresholds | None,
    *,
    lexicon_grey: bool = False,
) -> RiskAssessment:
    """The combined verdict of the lexicon's ``lexical`` and the learned layer's ``learned`` score.

    Rules (issue 16):
      * crisis when either layer is confident: the lexicon says crisis, or the
        crisis probability is at or above ``thresholds.crisis``;
      * the grey zone — the crisis probability in ``[thresholds.ask,
        thresholds.crisis)``, or a lexicon match that carries a risk concept
        but was capped (``lexicon_grey``, see :func:`dialogs.safety.lexicon.grey`)
        — is ``"concern"`` with ``ask=True``: the dialog asks the direct question;
      * a concern-or-above probability at or above ``thresholds.concern`` is a concern;
      * any layer can raise the level and none can lower another's;
      * ``learned is None`` means the learned layer failed: the message is
        treated as the grey zone (concern, ``ask=True``), never as "none".
    ``reasons`` are the lexicon's followed by the learned layer's (fixed
    strings); ``signals`` hold one :class:`Signal` per layer with its score.
    """
    level: Level = lexical.level
    lex_reason = "; ".join(lexical.reasons) if lexical.reasons else LEXICON_NONE
    signals = [Signal("lexicon", lexical.level, None, lex_reason)]
    reasons = list(lexical.reasons)
    ask = lexicon_grey
    if lexicon_grey and LEXICON_GREY not in reasons:
        reasons.append(LEXICON_GREY)
    scope = 0.0
    scope_question = False
    if learned is None or thresholds is None:
        signals.append(Signal("learned", "concern", None, LEARNED_FAILED))
        reasons.append(LEARNED_FAILED)
        level, ask = _higher(level, "concern"), True
    else:
        scope = learned.scope
        scope_question = learned.scope >= thresholds.scope
        if learned.crisis >= thresholds.crisis:
            said: Level = "crisis"
            reason, score = LEARNED_CRISIS, learned.crisis
        elif learned.crisis >= thresholds.ask:
            said, reason, score, ask = "concern", LEARNED_GREY, learned.crisis, True
        elif learned.risk >= thresholds.concern:
            said, reason, score = "concern", LEARNED_CONCERN, learned.risk
        else:
            said, reason, score = "none", LEARNED_NONE, learned.risk
        signals.append(Signal("learned", said, round(score, 4), reason))
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
