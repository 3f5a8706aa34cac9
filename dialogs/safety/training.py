"""Training the learned layer's head: logistic regression in numpy, stratified folds, thresholds from cross-validation.

Reproducible: fixed seeds, deterministic full-batch optimisation, examples in
sha256 order. Only the training part of the frozen split is ever used here
(plus the older labelled sets in tests/data, as extra training examples,
minus anything in the evaluation part): thresholds are chosen on the
out-of-fold scores of a 5-fold cross-validation of that part, never on the
evaluation part.

What is trained, and why so small: the embedding already reads meaning; the
head only has to draw three regions in it. One hidden layer of 128 units with
weight decay and balanced class weights (risk kinds form several clusters a
single plane separates less well), nothing bigger: a flexible model would fit
the corpus's phrasings rather than the risk.
Each message trains on its whole-text embedding; an ordinary message's
sentence windows also train as ordinary (the windows are what the screen
reads too, and a sentence of an ordinary message is ordinary), while a risk
message's windows are not labelled (which sentence carries the risk is not
known).
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

from dialogs.safety.classifier import CLASSES, Head, LearnedScore, Thresholds, aggregate
from dialogs.safety.corpus import Example
from dialogs.safety.verdict import RiskAssessment

SEED: Final = 16
FOLDS: Final = 5
# The level head: hidden units and weight decay (on the standardised features, loss averaged
# per example), compared on cross-validation of the training part only (a linear head, 64-256
# units, decay 1e-3..1e-2: one hidden layer of 128 with 1e-2 was best and least overfit).
HIDDEN: Final = 128
DECAY: Final = 0.01
SCOPE_L2: Final = 0.01
WINDOW_WEIGHT: Final = 0.5  # an ordinary message's windows, as ordinary examples
EPOCHS: Final = 300
RATE: Final = 0.003

# Threshold targets on the out-of-fold scores: above the bars, because an unseen
# wording scores lower than a cross-validated one.
CV_CRISIS_RECALL: Final = 0.99
CV_CRISIS_FALSE_POSITIVES: Final = 0.02  # ordinary messages read as crisis
CV_ASK_RECALL: Final = 0.998  # crises that at least get the direct question
CV_ASK_FALSE_POSITIVES: Final = 0.10  # ordinary messages that get the question
CV_CONCERN_RECALL: Final = 0.95
CV_CONCERN_FALSE_POSITIVES: Final = 0.15
CV_SCOPE_RECALL: Final = 0.98
CV_SCOPE_FALSE_POSITIVES: Final = 0.05

Vectors = npt.NDArray[np.float32]
Floats = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- the models


def _standardise(x: Floats) -> tuple[Floats, Floats]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    return mean, np.where(scale > 1e-6, scale, 1.0)


class _Adam:
    """Adam over a dict of arrays (full batch, fixed step): deterministic and quick for a few thousand rows."""

    def __init__(self, params: dict[str, Floats], rate: float) -> None:
        self.params, self.rate, self.t = params, rate, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, grads: dict[str, Floats]) -> None:
        self.t += 1
        for k, g in grads.items():
            self.m[k] = 0.9 * self.m[k] + 0.1 * g
            self.v[k] = 0.999 * self.v[k] + 0.001 * g * g
            m_hat = self.m[k] / (1 - 0.9**self.t)
            v_hat = self.v[k] / (1 - 0.999**self.t)
            self.params[k] -= self.rate * m_hat / (np.sqrt(v_hat) + 1e-8)


def fit_mlp(
    z: Floats, y: npt.NDArray[np.int64], weights: Floats, *, hidden: int, decay: float
) -> tuple[Floats, Floats, Floats, Floats]:
    """Weighted softmax over one ReLU hidden layer, L2 weight decay on both weight matrices (seeded, full batch)."""
    rng = np.random.default_rng(SEED)
    d = z.shape[1]
    k = len(CLASSES)
    target = np.eye(k)[y]
    share = weights / weights.sum()
    params = {
        "w1": rng.normal(0.0, 1.0 / np.sqrt(d), (d, hidden)),
        "b1": np.zeros(hidden),
        "w2": rng.normal(0.0, 1.0 / np.sqrt(hidden), (hidden, k)),
        "b2": np.zeros(k),
    }
    adam = _Adam(params, RATE)
    for _ in range(EPOCHS):
        pre = z @ params["w1"] + params["b1"]
        act = np.maximum(pre, 0.0)
        logits = act @ params["w2"] + params["b2"]
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        err = (p - target) * share[:, None]
        back = (err @ params["w2"].T) * (pre > 0)
        adam.step(
            {
                "w2": act.T @ err + decay * params["w2"],
                "b2": err.sum(axis=0),
                "w1": z.T @ back + decay * params["w1"],
                "b1": back.sum(axis=0),
            }
        )
    return params["w1"], params["b1"], params["w2"], params["b2"]


def fit_binary(z: Floats, y: Floats, weights: Floats, l2: float) -> tuple[Floats, float]:
    """Weighted binary logistic regression with L2 (bias unpenalised), full batch."""
    share = weights / weights.sum()
    params = {"w": np.zeros(z.shape[1]), "b": np.zeros(1)}
    adam = _Adam(params, RATE)
    for _ in range(EPOCHS):
        p = 1.0 / (1.0 + np.exp(-(z @ params["w"] + params["b"])))
        err = (p - y) * share
        adam.step({"w": z.T @ err + l2 * params["w"], "b": np.array([err.sum()])})
    return params["w"], float(params["b"][0])


def _balanced(labels: Sequence[Any], weights: Floats) -> Floats:
    # Each class carries the same total weight: a rare level is not drowned by ordinary messages.
    totals: dict[Any, float] = defaultdict(float)
    for label, w in zip(labels, weights, strict=True):
        totals[label] += float(w)
    mean = sum(totals.values()) / len(totals)
    return np.array([w * mean / totals[label] for label, w in zip(labels, weights, strict=True)])


def fit_head(
    examples: Sequence[Example],
    units: Sequence[Vectors],
    thresholds: Thresholds | None = None,
    *,
    hidden: int = HIDDEN,
    decay: float = DECAY,
    window_weight: float = WINDOW_WEIGHT,
) -> Head:
    """A head trained on ``examples`` (``units[i]``: row 0 the whole message, then its windows)."""
    rows: list[Vectors] = []
    level: list[int] = []
    scope: list[bool] = []
    weight: list[float] = []
    for example, vectors in zip(examples, units, strict=True):
        rows.append(vectors[0])
        level.append(CLASSES.index(example.level))
        scope.append(example.scope)
        weight.append(1.0)
        if example.level == "none" and not example.scope:
            for row in vectors[1:]:
                rows.append(row)
                level.append(0)
                scope.append(False)
                weight.append(window_weight)
    x = np.stack(rows).astype(np.float64)
    mean, scale = _standardise(x)
    z = (x - mean) / scale
    raw = np.array(weight)
    w1, b1, w2, b2 = fit_mlp(z, np.array(level, dtype=np.int64), _balanced(level, raw), hidden=hidden, decay=decay)
    scope_w, scope_b = fit_binary(z, np.array(scope, dtype=np.float64), _balanced(scope, raw), SCOPE_L2)
    return Head(
        mean=mean,
        scale=scale,
        hidden_weights=w1,
        hidden_bias=b1,
        level_weights=w2,
        level_bias=b2,
        scope_weights=scope_w,
        scope_bias=scope_b,
        thresholds=thresholds or Thresholds(crisis=0.5, ask=0.3, concern=0.5, scope=0.5),
    )


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


def out_of_fold(
    examples: Sequence[Example],
    units: Sequence[Vectors],
    extra: Sequence[tuple[Example, Vectors]] = (),
    *,
    k: int = FOLDS,
    **fit: Any,
) -> list[LearnedScore]:
    """Each example's score from a head trained on the other folds (plus ``extra``, always training)."""
    folds = stratified_folds(examples, k)
    scores: list[LearnedScore | None] = [None] * len(examples)
    for f in range(k):
        train = [i for i in range(len(examples)) if folds[i] != f]
        held = [i for i in range(len(examples)) if folds[i] == f]
        head = fit_head(
            [examples[i] for i in train] + [e for e, _ in extra],
            [units[i] for i in train] + [u for _, u in extra],
            **fit,
        )
        for i in held:
            scores[i] = aggregate(*head.predict(units[i]))
    return [s for s in scores if s is not None]


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
        return crisis_hit(t_crisis) | c.lex_grey | (c.p_crisis >= t)

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
    """How a head was trained (recorded in head.json)."""
    return {
        "examples": n,
        "seed": SEED,
        "folds": FOLDS,
        "level_head": f"softmax over {HIDDEN} ReLU units, weight decay {DECAY}",
        "scope_head": f"logistic regression, L2 {SCOPE_L2}",
        "window_weight": WINDOW_WEIGHT,
        "epochs": EPOCHS,
        "optimiser": f"Adam, full batch, rate {RATE}",
        "class_weights": "balanced",
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
