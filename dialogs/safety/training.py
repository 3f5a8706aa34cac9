"""Choosing the learned layer's thresholds: stratified folds of the training part, and threshold targets.

Only the training part of the frozen split is ever used here: thresholds are
chosen on scores of training-part messages that the scoring model never
trained on (a held-out fold, or out-of-fold scores of a cross-validation;
see ``companion safety train``), never on the evaluation part. The model
itself is trained in :mod:`dialogs.safety.finetune`.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from dialogs.safety.classifier import LearnedScore, Thresholds
from dialogs.safety.combine import brief
from dialogs.safety.corpus import Example
from dialogs.safety.verdict import RiskAssessment

SEED: Final = 16
FOLDS: Final = 5
# Threshold targets on the out-of-fold scores: above the bars, because an unseen
# wording scores lower than a cross-validated one.
CV_CRISIS_RECALL: Final = 0.99
CV_CRISIS_FALSE_POSITIVES: Final = 0.025  # ordinary messages read as crisis
CV_ASK_RECALL: Final = 0.998  # crises that at least get the direct question
CV_ASK_FALSE_POSITIVES: Final = 0.06  # ordinary messages that get the question
CV_CONCERN_RECALL: Final = 0.95
CV_CONCERN_FALSE_POSITIVES: Final = 0.15
CV_SCOPE_RECALL: Final = 0.98
CV_SCOPE_FALSE_POSITIVES: Final = 0.05

Vectors = npt.NDArray[np.float32]
Floats = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- cross-validation


def stratified_folds(examples: Sequence[Example], k: int = FOLDS, seed: int = SEED) -> list[int]:
    """A fold number per example, each stratum (category, level, scope) dealt round-robin after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    strata: dict[tuple[str, str, bool], list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        strata[example.stratum].append(i)
    fold = [0] * len(examples)
    offset = 0
    for key in sorted(strata):
        members = sorted(strata[key], key=lambda i: examples[i].sha256)
        for j, i in enumerate(rng.permutation(members)):
            fold[int(i)] = (offset + j) % k
        offset += len(members)
    return fold


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class _Columns:
    """The training part as arrays, for scanning thresholds quickly (same rules as dialogs.safety.combine)."""

    crisis: npt.NDArray[np.bool_]  # labelled crisis
    risky: npt.NDArray[np.bool_]  # labelled concern or crisis
    concern: npt.NDArray[np.bool_]
    ordinary: npt.NDArray[np.bool_]  # labelled none
    scope: npt.NDArray[np.bool_]
    lex_crisis: npt.NDArray[np.bool_]
    lex_risky: npt.NDArray[np.bool_]  # lexicon concern or above, or its grey zone
    lex_grey: npt.NDArray[np.bool_]
    scope_patterns: npt.NDArray[np.bool_]
    brief: npt.NDArray[np.bool_]  # too short for the learned grey zone (dialogs.safety.combine.brief)
    p_crisis: Floats
    p_risk: Floats
    p_scope: Floats


def _columns(
    examples: Sequence[Example],
    scores: Sequence[LearnedScore],
    lexical: Sequence[RiskAssessment],
    scope_patterns: Sequence[bool],
) -> _Columns:
    def col(values: Any) -> Any:
        return np.array(list(values))

    return _Columns(
        crisis=col(e.level == "crisis" for e in examples),
        risky=col(e.level != "none" for e in examples),
        concern=col(e.level == "concern" for e in examples),
        ordinary=col(e.level == "none" for e in examples),
        scope=col(e.scope for e in examples),
        lex_crisis=col(a.level == "crisis" for a in lexical),
        lex_risky=col(a.level != "none" for a in lexical),
        lex_grey=col(a.ask for a in lexical),
        scope_patterns=col(scope_patterns),
        brief=col(brief(e.text) for e in examples),
        p_crisis=col(s.crisis for s in scores).astype(np.float64),
        p_risk=col(s.risk for s in scores).astype(np.float64),
        p_scope=col(s.scope for s in scores).astype(np.float64),
    )


def _largest(candidates: Floats, ok: Any) -> float:
    """The largest candidate threshold for which ``ok(t)`` holds (the smallest candidate if none does)."""
    for t in sorted(set(candidates.tolist()), reverse=True):
        if ok(t):
            return float(t)
    return float(min(candidates.tolist()))


def _rate(hit: npt.NDArray[np.bool_], among: npt.NDArray[np.bool_]) -> float:
    return float(hit[among].mean()) if among.any() else 1.0


def choose_thresholds(
    examples: Sequence[Example],
    scores: Sequence[LearnedScore],
    lexical: Sequence[RiskAssessment],
    scope_patterns: Sequence[bool],
) -> tuple[Thresholds, dict[str, Any]]:
    """Thresholds from out-of-fold scores of the training part, and a record of how each was chosen.

    Each threshold is the highest that still reaches its recall target
    (``CV_*_RECALL``) for the combined screen; if that costs more ordinary
    messages than its false-positive bound, the lowest threshold within the
    bound is taken instead (the bound wins: an alarm that always rings is
    ignored).
    """
    c = _columns(examples, scores, lexical, scope_patterns)
    grid = np.concatenate([np.linspace(0.02, 0.98, 97), c.p_crisis, c.p_risk, c.p_scope])
    grid = grid[(grid > 0.01) & (grid < 0.995)]

    def bounded(recall_ok: Any, fp: Any, bound: float) -> float:
        t = _largest(grid, recall_ok)
        if fp(t) > bound:
            within = [float(x) for x in sorted(set(grid.tolist())) if fp(x) <= bound]
            t = within[0] if within else float(grid.max())
        return t

    def crisis_hit(t: float) -> Any:
        return c.lex_crisis | (c.p_crisis >= t)

    t_crisis = bounded(
        lambda t: _rate(crisis_hit(t), c.crisis) >= CV_CRISIS_RECALL,
        lambda t: _rate(crisis_hit(t), c.ordinary),
        CV_CRISIS_FALSE_POSITIVES,
    )

    def asked(t: float) -> Any:
        return crisis_hit(t_crisis) | c.lex_grey | ((c.p_crisis >= t) & ~c.brief)

    t_ask = min(
        t_crisis,
        bounded(
            lambda t: _rate(asked(t), c.crisis) >= CV_ASK_RECALL,
            lambda t: _rate(asked(t) & ~crisis_hit(t_crisis), c.ordinary),
            CV_ASK_FALSE_POSITIVES,
        ),
    )

    def risky_hit(t: float) -> Any:
        return asked(t_ask) | c.lex_risky | (c.p_risk >= t)

    t_concern = bounded(
        lambda t: _rate(risky_hit(t), c.risky) >= CV_CONCERN_RECALL,
        lambda t: _rate(risky_hit(t), c.ordinary),
        CV_CONCERN_FALSE_POSITIVES,
    )

    def scope_hit(t: float) -> Any:
        return c.scope_patterns | (c.p_scope >= t)

    t_scope = bounded(
        lambda t: _rate(scope_hit(t), c.scope) >= CV_SCOPE_RECALL,
        lambda t: _rate(scope_hit(t), ~c.scope),
        CV_SCOPE_FALSE_POSITIVES,
    )
    chosen = Thresholds(
        crisis=round(t_crisis, 4), ask=round(t_ask, 4), concern=round(t_concern, 4), scope=round(t_scope, 4)
    )
    record = {
        "crisis_recall": _rate(crisis_hit(chosen.crisis), c.crisis),
        "crisis_on_ordinary": _rate(crisis_hit(chosen.crisis), c.ordinary),
        "crises_asked_or_above": _rate(asked(chosen.ask), c.crisis),
        "ordinary_asked": _rate(asked(chosen.ask) & ~crisis_hit(chosen.crisis), c.ordinary),
        "concern_or_above_recall": _rate(risky_hit(chosen.concern), c.risky),
        "concern_recall": _rate(risky_hit(chosen.concern), c.concern),
        "ordinary_concern_or_above": _rate(risky_hit(chosen.concern), c.ordinary),
        "scope_recall": _rate(scope_hit(chosen.scope), c.scope),
        "scope_on_other": _rate(scope_hit(chosen.scope), ~c.scope),
    }
    return chosen, {k: round(v, 4) for k, v in record.items()}


def corpus_sha256(examples: Sequence[Example]) -> str:
    """One hash for the training data: the sorted sha256 and labels of every example."""
    digest = hashlib.sha256()
    for line in sorted(f"{e.sha256} {e.level} {e.category} {e.scope}" for e in examples):
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()


def settings(n: int) -> dict[str, Any]:
    """How the thresholds were chosen (recorded in the model card)."""
    return {
        "examples": n,
        "seed": SEED,
        "folds": FOLDS,
        "cv_targets": {
            "crisis_recall": CV_CRISIS_RECALL,
            "crisis_false_positives": CV_CRISIS_FALSE_POSITIVES,
            "ask_recall": CV_ASK_RECALL,
            "ask_false_positives": CV_ASK_FALSE_POSITIVES,
            "concern_recall": CV_CONCERN_RECALL,
            "concern_false_positives": CV_CONCERN_FALSE_POSITIVES,
            "scope_recall": CV_SCOPE_RECALL,
            "scope_false_positives": CV_SCOPE_FALSE_POSITIVES,
        },
    }


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")
