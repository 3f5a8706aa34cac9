"""A per-client memory of past debriefs, notes and therapist notes, as vectors in Chroma (LLM mode only).

What is stored, and what is not: Chroma holds one embedding per item and
its *reference* (kind and row id), never the text. The text stays in the
database, encrypted at rest; :func:`dialogs.llm` resolves a hit back to its
row (checking that it is that client's) when it builds a prompt. Embeddings
are derived from health data all the same, so the Chroma directory deserves
the database's protection, and :meth:`Memory.forget` drops a client's
vectors with their data.

Each client has a collection of their own (``client-<id>``): a query is
scoped by construction, not by a filter that a bug could drop.

Chroma's default embedding function downloads a model on first use, so it
is never used: embeddings come from an injected :class:`Embedder` (the
configured provider's, or the packaged all-MiniLM-L6-v2 on onnxruntime for
local use and the tests), and are passed to Chroma explicitly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

log = logging.getLogger("companion.memory")

KINDS: Final = ("debrief", "log", "note")


@dataclass(frozen=True)
class MemoryHit:
    """One retrieved item: what it is (``kind``), which row (``ref_id``), and how far from the query (0 = same)."""

    kind: str
    ref_id: int
    distance: float


class Memory(Protocol):
    """A client's memory. Implementations are thread-safe; callers treat every failure as "no memory"."""

    def add(self, client_id: int, kind: str, ref_id: int, text: str) -> None:
        """Remember (or re-remember: the same kind and ref_id replaces) one item of ``client_id``'s."""

    def query(self, client_id: int, text: str, k: int) -> list[MemoryHit]:
        """The ``k`` items of ``client_id``'s closest to ``text``, nearest first."""
        ...

    def forget(self, client_id: int) -> None:
        """Drop everything remembered about ``client_id`` (their vectors go with their data)."""


class NoMemory:
    """The memory when none is configured: remembers nothing, finds nothing."""

    def add(self, client_id: int, kind: str, ref_id: int, text: str) -> None:
        return None

    def query(self, client_id: int, text: str, k: int) -> list[MemoryHit]:
        return []

    def forget(self, client_id: int) -> None:
        return None


class Embedder(Protocol):
    """Text to vectors, LangChain's embeddings shape; implementations are thread-safe.

    The local one (all-MiniLM-L6-v2 on onnxruntime) is
    :class:`dialogs.safety.embedding.MiniLM`, injected by ``bot.wiring``:
    storage depends on no model.
    """

    def embed_documents(self, texts: list[str]) -> list[list[float]]: ...

    def embed_query(self, text: str) -> list[float]: ...


class ChromaMemory:
    """:class:`Memory` in Chroma: embedded (``PersistentClient``) by default, or a Chroma server (``HttpClient``)."""

    def __init__(self, client: Any, embedder: Embedder) -> None:
        self._client = client
        self._embedder = embedder

    @classmethod
    def persistent(cls, path: str | Path, embedder: Embedder) -> ChromaMemory:
        import chromadb
        from chromadb.config import Settings

        Path(path).mkdir(parents=True, exist_ok=True)
        return cls(chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False)), embedder)

    @classmethod
    def server(cls, url: str, embedder: Embedder) -> ChromaMemory:
        from urllib.parse import urlparse

        import chromadb
        from chromadb.config import Settings

        parsed = urlparse(url)
        return cls(
            chromadb.HttpClient(
                host=parsed.hostname or "localhost",
                port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                ssl=parsed.scheme == "https",
                settings=Settings(anonymized_telemetry=False),
            ),
            embedder,
        )

    @staticmethod
    def _name(client_id: int) -> str:
        return f"client-{int(client_id)}"

    def _collection(self, client_id: int) -> Any:
        # No embedding function: vectors are always passed in (Chroma's default would download a model).
        return self._client.get_or_create_collection(
            self._name(client_id), embedding_function=None, metadata={"hnsw:space": "cosine"}
        )

    def add(self, client_id: int, kind: str, ref_id: int, text: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown memory kind {kind!r}")
        if not text.strip():
            return
        vector = self._embedder.embed_documents([text])[0]
        self._collection(client_id).upsert(
            ids=[f"{kind}:{int(ref_id)}"],
            embeddings=[vector],
            metadatas=[{"kind": kind, "ref_id": int(ref_id)}],
        )

    def query(self, client_id: int, text: str, k: int) -> list[MemoryHit]:
        collection = self._collection(client_id)
        count = collection.count()
        if count == 0 or k <= 0 or not text.strip():
            return []
        found = collection.query(
            query_embeddings=[self._embedder.embed_query(text)],
            n_results=min(k, count),
            include=["metadatas", "distances"],
        )
        metadatas: Sequence[Any] = (found.get("metadatas") or [[]])[0]
        distances: Sequence[float] = (found.get("distances") or [[]])[0]
        return [
            MemoryHit(str(meta["kind"]), int(meta["ref_id"]), float(distance))
            for meta, distance in zip(metadatas, distances, strict=False)
            if meta
        ]

    def forget(self, client_id: int) -> None:
        try:
            self._client.delete_collection(self._name(client_id))
        except Exception as exc:  # chromadb raises NotFoundError/ValueError for a collection never made
            if "not exist" not in str(exc).lower() and "not found" not in str(exc).lower():
                raise
