"""The risk screen run on every client message before any dialog logic: a lexicon and a learned layer, combined.

Layers: :mod:`dialogs.safety.lexicon` (fast, explainable rules) and
:mod:`dialogs.safety.classifier` (all-MiniLM-L6-v2 fine-tuned for risk and
scope, an int8 ONNX file run on onnxruntime);
:func:`dialogs.safety.combine.combine` merges them. Every caller uses
:func:`assess` from this package; ``dialogs.safety.lexicon.assess`` stays the
lexicon alone.

Start-up: :func:`load` builds the learned layer (a fraction of a second) and raises
:class:`ModelError` when its files are missing or corrupt; ``bot.wiring``
calls it so a service refuses to start without its screen. A process that
never called it (a script, a test) loads the layer on its first
:func:`assess`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Final

from dialogs.safety import lexicon
from dialogs.safety.classifier import LearnedLayer, LearnedScore, ModelError, Thresholds
from dialogs.safety.combine import REASONS as _LEARNED_REASONS
from dialogs.safety.combine import asks, brief, combine
from dialogs.safety.verdict import LEVELS, Layer, Level, RiskAssessment, Signal

__all__ = [
    "LEVELS",
    "Layer",
    "LearnedLayer",
    "LearnedScore",
    "Level",
    "ModelError",
    "RiskAssessment",
    "Signal",
    "Thresholds",
    "assess",
    "brief",
    "combine",
    "known_reasons",
    "learned_layer",
    "load",
]

log = logging.getLogger("companion.safety")

_layer: LearnedLayer | None = None
_failure: str | None = None  # why the learned layer could not be loaded, once tried
_source: Path | None = None  # the model card _layer was built from (None: the packaged one)
_lock: Final = threading.Lock()


def load(card_path: Path | None = None) -> LearnedLayer:
    """Build (once per process) and return the learned layer; raises :class:`ModelError` naming the fix.

    Without an argument: the packaged model card and model. Another card (an
    operator's ``safety.learned_model``) builds a new layer that becomes the
    process's own only if it loads; a failure leaves a layer already loaded
    in place.
    """
    global _layer, _failure, _source
    with _lock:
        if _layer is None or (card_path is not None and card_path != _source):
            from dialogs.safety import classifier

            try:
                built = classifier.shared() if card_path is None else classifier.load(card_path)
            except ModelError as exc:
                if _layer is None:
                    _failure = str(exc)
                raise
            _layer, _failure, _source = built, None, card_path
        return _layer


def learned_layer() -> LearnedLayer | None:
    """The learned layer, loading it if nobody has yet; None (logged once) if it cannot be loaded."""
    if _layer is not None:
        return _layer
    if _failure is not None:
        return None
    try:
        return load()
    except ModelError as exc:
        log.error("the learned risk layer cannot run (%s): every message gets the direct safety question", exc)
        return None


def assess(text: str, *, locale: str = lexicon.DEFAULT_LOCALE) -> RiskAssessment:
    """Screen one client message with both layers; deterministic, offline, and it never raises.

    The lexicon's contract (see :func:`dialogs.safety.lexicon.assess`) holds
    for the levels it finds; the learned layer can only add to them (rules in
    :func:`dialogs.safety.combine.combine`). When the learned layer cannot
    run — not loaded, or failing on this message — the verdict is the grey
    zone: at least ``"concern"`` with ``ask=True`` and a signal saying so,
    never a silent ``"none"``. Empty or blank text is ``"none"`` without
    asking (there is nothing to read). The learned layer was trained on English
    whatever the locale. Latency: BENCHMARKS.md ("Risk screen per message").
    """
    try:
        if not isinstance(text, str):
            text = "" if text is None else str(text)
        lexical = lexicon.assess(text, locale=locale)
        if not text.strip():
            return lexical
        grey = lexical.ask
    except Exception:  # the lexicon already fails safe; this is belt and braces
        return RiskAssessment("concern", ("screen could not run",), ask=True)
    score: LearnedScore | None = None
    layer = learned_layer()
    thresholds = layer.thresholds if layer is not None else None
    if layer is not None:
        try:
            score = layer.score(text)
        except Exception as exc:  # the screen runs before every dialog: it must never take one down
            log.error("the learned risk layer failed on a message: %s", type(exc).__name__)
            score = None
    try:
        return combine(lexical, score, thresholds, lexicon_grey=grey, question=asks(text), short=brief(text))
    except Exception:
        return RiskAssessment(lexical.level if lexical.level == "crisis" else "concern", lexical.reasons, ask=True)


def known_reasons(locale: str = lexicon.DEFAULT_LOCALE) -> frozenset[str]:
    """Every reason string :func:`assess` can return for ``locale``: a fixed vocabulary."""
    return lexicon.known_reasons(locale) | _LEARNED_REASONS
