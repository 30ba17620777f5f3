"""The chunk store over a second backend, written as one class here: a failed or half-done write is a miss, and
nothing half-written or half-read is ever served, down to the answers of a RAG that uses it."""
import os

import pytest
import torch

from cascade_rag.engine import LEVEL_DOCUMENT, KVChunk, SamplingParams
from cascade_rag.engine.chunk_format import encode
from cascade_rag.rag.chunk_store import ChunkBackend, ChunkStore, ChunkWriteError, Lookup, chunk_key
from cascade_rag.rag.local_backend import LocalDirectoryBackend
from cascade_rag.rag.pipeline import RAG

CORPUS = [
    {"id": "varn", "title": "Varn lighthouse", "text": "The secret code of the Varn lighthouse is 4417. "
                                                       "Its keeper rows out every Sunday."},
    {"id": "bees", "title": "Bees", "text": "A honey bee colony has one queen and thousands of workers."},
]
QUESTION = "What is the secret code of the Varn lighthouse?"


class HalfwayBackend(ChunkBackend):
    """Bytes in a dict; told to, it stores only the first half of a write and then fails, fails to delete, and
    returns only the first half of what it holds."""

    def __init__(self):
        self.data: dict[str, bytes] = {}
        self.fail_writes = self.fail_deletes = self.half_reads = False

    def put(self, key: str, data: bytes) -> None:
        if self.fail_writes:
            self.data[key] = data[:len(data) // 2]
            raise OSError("device full halfway")
        self.data[key] = bytes(data)

    def get(self, key: str) -> bytearray | None:
        data = self.data.get(key)
        if data is None:
            return None
        return bytearray(data[:len(data) // 2] if self.half_reads else data)

    def contains(self, key: str) -> bool:
        return key in self.data

    def delete(self, key: str) -> None:
        if self.fail_deletes:
            raise OSError("backend gone")
        self.data.pop(key, None)

    def sizes(self) -> dict[str, int]:
        return {key: len(data) for key, data in self.data.items()}


def a_chunk(n: int = 5, fingerprint: str = "fp") -> KVChunk:
    torch.manual_seed(n)
    return KVChunk(LEVEL_DOCUMENT, list(range(n)), 3, torch.randn(2, n, 2, 8), torch.randn(2, n, 2, 8), fingerprint)


@pytest.mark.parametrize("make", [HalfwayBackend, lambda tmp: LocalDirectoryBackend(tmp / "chunks")])
def test_the_store_round_trips_over_each_backend(make, tmp_path):
    backend = make(tmp_path) if make is not HalfwayBackend else make()
    store, chunk = ChunkStore(backend), a_chunk()
    key = chunk_key("fp", chunk.token_ids)
    assert not store.contains(key) and store.get(key, "fp") == Lookup(None)
    store.put(key, chunk)
    found = store.get(key, "fp")
    assert store.contains(key) and found.problem is None and torch.equal(found.chunk.keys, chunk.keys)
    assert store.sizes() == {key: len(encode(chunk))}
    other = store.get(key, "another model")
    assert other.chunk is None and "fingerprint" in other.problem
    store.put("stale", a_chunk(3))
    assert store.collect({key}) == 1 and set(store.sizes()) == {key}
    store.delete(key)
    assert not store.contains(key) and store.get(key, "fp").chunk is None


def test_a_failed_write_is_a_miss_and_nothing_half_written_is_served():
    backend = HalfwayBackend()
    store, chunk = ChunkStore(backend), a_chunk()
    backend.fail_writes = True
    with pytest.raises(ChunkWriteError, match="device full halfway"):
        store.put("k", chunk)
    assert not store.contains("k") and store.get("k", "fp").chunk is None  # what was written was removed
    backend.fail_deletes = True  # and where it cannot be removed, its half is refused
    with pytest.raises(ChunkWriteError):
        store.put("k", chunk)
    assert len(backend.data["k"]) < len(encode(chunk))
    found = store.get("k", "fp")
    assert found.chunk is None and "truncated or corrupted" in found.problem
    backend.fail_writes = backend.fail_deletes = False
    store.put("k", chunk)
    backend.half_reads = True
    found = store.get("k", "fp")
    assert found.chunk is None and "truncated or corrupted" in found.problem


def test_a_rag_over_the_backend_recomputes_what_it_cannot_read_and_commits_nothing_it_could_not_write(
        tmp_path, tiny_model):
    quick = SamplingParams(max_new_tokens=8)
    with RAG(tmp_path / "local", model=tiny_model, passage_tokens=32, overlap=4) as local:
        local.ingest(documents=CORPUS)
        reference = local.ask(QUESTION, top_k=2, params=quick).result().token_ids
    backend = HalfwayBackend()
    with RAG(tmp_path / "data", model=tiny_model, passage_tokens=32, overlap=4, chunk_backend=backend) as rag:
        backend.fail_writes = True
        with pytest.raises(ChunkWriteError):
            rag.ingest(documents=CORPUS)
        assert rag.documents() == [] and rag.check() == [] and backend.data == {}
        backend.fail_writes = False
        report = rag.ingest(documents=CORPUS)
        assert sorted(report.added) == ["bees", "varn"]
        assert set(backend.data) == rag.store.chunk_keys() and rag.check() == []
        for key in backend.data:
            rag.model().tiers.discard(key)
        backend.half_reads = True
        answer = rag.ask(QUESTION, top_k=2, params=quick).result()
        assert answer.tiers == {"recomputed": 2} and all("truncated or corrupted" in w for w in answer.warnings)
        assert answer.token_ids == reference
        backend.half_reads = False
        again = rag.ask(QUESTION, top_k=2, params=quick).result()  # the memory tiers hold the recomputed chunks
        assert again.tiers == {"cpu": 2} and again.token_ids == reference


def test_a_local_write_that_fails_leaves_no_file(tmp_path, monkeypatch):
    store, chunk = ChunkStore(LocalDirectoryBackend(tmp_path)), a_chunk()

    def fail(fd):
        raise OSError("fsync failed")
    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(ChunkWriteError, match="fsync failed"):
        store.put("k", chunk)
    assert list(tmp_path.iterdir()) == [] and store.get("k", "fp").chunk is None
