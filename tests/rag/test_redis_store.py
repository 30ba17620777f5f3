"""The shared store on a real redis-server: chunk blobs, documents and passages, batches that readers see whole or
not at all, the writer lock a killed process gives up, and a RAG over it that detects a corrupted or deleted blob,
recomputes it, writes it back and says so in the answer's tiers."""
import subprocess
import sys
import threading

import pytest
import redis
import torch

from cascade_rag.engine import SamplingParams
from cascade_rag.engine.chunk_format import encode
from cascade_rag.rag.chunk_store import ChunkStore, Lookup, chunk_key
from cascade_rag.rag.document_store import NoDocuments, StoreError, StoreLocked, StoreUnavailable, UnknownDocuments
from cascade_rag.rag.pipeline import RAG
from cascade_rag.rag.redis_backend import RedisChunkBackend
from cascade_rag.rag.redis_location import RedisLocation
from cascade_rag.rag.redis_store import RedisDocumentStore

from .test_chunk_store import CORPUS, QUESTION, a_chunk

VECTOR = [0.5, 0.25, 0.0, 1.0]


def rows(n: int, tag: str) -> list:
    return [(f"{tag} text {i}", [i, i + 1], f"{tag}-key-{i}", VECTOR) for i in range(n)]


def document(doc_id: str, title: str, digest: str, passages: list, source: str | None = None,
             metadata: dict | None = None) -> tuple:
    return doc_id, title, source, digest, passages, metadata or {}


def test_chunk_blobs_round_trip_with_their_checksum(redis_url):
    store, chunk = ChunkStore(RedisChunkBackend(RedisLocation.parse(redis_url))), a_chunk()
    key = chunk_key("fp", chunk.token_ids)
    assert store.tier == "remote" and not store.contains(key) and store.get(key, "fp") == Lookup(None)
    store.put(key, chunk)
    found = store.get(key, "fp")
    assert found.problem is None and torch.equal(found.chunk.values, chunk.values)
    assert store.sizes() == {key: len(encode(chunk))}
    client = redis.Redis.from_url(redis_url)
    blob = f"cascade-rag:chunk:{key}"
    client.setrange(blob, client.strlen(blob) - 3, bytes([client.getrange(blob, -3, -3)[0] ^ 0xFF]))
    broken = store.get(key, "fp")
    assert broken.chunk is None and "checksum mismatch" in broken.problem
    store.put("stale", a_chunk(3))
    assert store.collect({key}) == 1 and set(store.sizes()) == {key}


@pytest.mark.parametrize("url, problem", [("http://h:1/0", "unknown scheme"), ("redis://h/0", "host and the port"),
                                          ("redis://h:99999/0", "port"), ("redis://h:1/x", "database")])
def test_a_bad_store_url_is_refused_naming_the_problem(url, problem):
    with pytest.raises(StoreError, match=problem):
        RedisLocation.parse(url)


def test_an_unreachable_or_empty_store_is_a_clear_error(redis_url):
    from tests.redis_server import free_port
    with pytest.raises(StoreUnavailable, match="cannot reach store redis://127.0.0.1"):
        RedisDocumentStore(RedisLocation.parse(f"redis://127.0.0.1:{free_port()}/0"))
    with pytest.raises(NoDocuments, match="cascade-rag ingest PATH --store redis://"):
        RedisDocumentStore(RedisLocation.parse(redis_url), create=False)


def test_documents_passages_and_generation(redis_url):
    store = RedisDocumentStore(RedisLocation.parse(redis_url))
    with pytest.raises(StoreLocked, match="does not hold the writer lock"):
        store.put_documents("default", [document("a", "A", "h1", rows(2, "a"))])
    with store.writing():
        removed, added = store.put_documents("default", [document("a", "A", "h1", rows(2, "a"), "a.txt")])
        assert removed == [] and len(added) == 2 and store.generation() == 1
        removed, again = store.put_documents("default", [document("a", "A", "h2", rows(3, "b"), "a.txt")])
        assert removed == added and store.document_hash("default", "a") == "h2" and store.generation() == 2
        store.put_documents("default", [document("c", "", "h3", rows(1, "c"))])
        with pytest.raises(UnknownDocuments):
            store.delete_documents("default", ["c", "nope"])
        assert store.counts() == {"documents": 2, "passages": 4, "tokens": 8}
    generation, ids, vectors = store.vectors()
    assert generation == 3 and ids.tolist() == sorted(again + [max(again) + 1]) and vectors.shape == (4, 4)
    _, pids, texts = store.texts()
    assert texts[0] == "A. b text 0" and texts[-1] == "c text 0"
    assert store.passages([again[1]])[again[1]].token_ids == [1, 2]
    assert store.chunk_keys() == {"b-key-0", "b-key-1", "b-key-2", "c-key-0"}
    with store.writing():
        assert store.delete_documents("default", ["a"]) == (["a"], again)
    assert store.documents() == [dict(id="c", title="", source=None, passages=1, tokens=2, metadata={})]
    assert not store.is_writer  # given back at the end of each write


def test_a_reader_sees_a_batch_whole_or_not_at_all(redis_url):
    """Batches of two documents of three passages: whatever a concurrent reader reads is a multiple of them."""
    writer = RedisDocumentStore(RedisLocation.parse(redis_url))
    reader = RedisDocumentStore(RedisLocation.parse(redis_url))
    seen, done = [], threading.Event()

    def read():
        while not done.is_set():
            generation, ids, _ = reader.vectors()
            seen.append((generation, len(ids), reader.counts()["documents"]))
    thread = threading.Thread(target=read)
    thread.start()
    with writer.writing():
        for n in range(30):
            writer.put_documents("default", [document(f"d{n}a", "", "h", rows(3, "x")),
                                             document(f"d{n}b", "", "h", rows(3, "y"))])
        with pytest.raises(ValueError, match="one-dimensional"):  # refused before it is sent: nothing is written
            writer.put_documents("default", [document("e1", "", "h", rows(3, "x")),
                                             document("e2", "", "h", [("t", [1], "k", None)])])
    done.set()
    thread.join()
    assert writer.counts()["documents"] == 60 and writer.document_hash("default", "e1") is None
    assert writer.generation() == 30
    assert len(seen) > 3 and all(n == 6 * g and docs % 2 == 0 for g, n, docs in seen)


HOLD = """
import sys, time
from cascade_rag.rag.redis_location import RedisLocation
from cascade_rag.rag.redis_store import RedisDocumentStore
store = RedisDocumentStore(RedisLocation.parse(sys.argv[1]))
store.lock_for_writing()
print("held", flush=True)
time.sleep(600)
"""


def test_a_killed_writer_gives_the_lock_up_at_once(redis_url):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, redis_url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        store = RedisDocumentStore(RedisLocation.parse(redis_url))
        with pytest.raises(StoreLocked, match=f"pid {holder.pid}"):
            store.lock_for_writing()
    finally:
        holder.kill()
        holder.wait()
    store.lock_for_writing()  # its connection closed with it: no lease to wait out
    assert store.is_writer
    store.close()


def test_a_rag_over_redis_answers_as_over_a_directory_and_recomputes_a_bad_blob(tmp_path, tiny_model, redis_url):
    quick = SamplingParams(max_new_tokens=8)
    with RAG(tmp_path / "local", model=tiny_model, passage_tokens=32, overlap=4) as local:
        local.ingest(documents=CORPUS)
        reference = local.ask(QUESTION, top_k=2, params=quick).result().token_ids
    with RAG(redis_url, model=tiny_model, passage_tokens=32, overlap=4) as rag:
        report = rag.ingest(documents=CORPUS)
        assert sorted(report.added) == ["bees", "varn"] and rag.check() == []
        keys = sorted(rag.store.chunk_keys())
    client = redis.Redis.from_url(redis_url)
    with RAG(redis_url, model=tiny_model, create=False) as replica:
        answer = replica.ask(QUESTION, top_k=2, params=quick).result()
        assert answer.tiers == {"remote": 2} and answer.token_ids == reference
        used = [replica.retriever.store.passages([s.passage_id])[s.passage_id].chunk_key for s in answer.sources]
        corrupt, deleted = f"cascade-rag:chunk:{used[0]}", f"cascade-rag:chunk:{used[1]}"
        original = client.get(corrupt)
        client.setrange(corrupt, len(original) - 5, bytes([original[-5] ^ 0x55]))
        client.delete(deleted)
        for key in keys:
            replica.model().tiers.discard(key)
        again = replica.ask(QUESTION, top_k=2, params=quick).result()
        assert again.tiers == {"recomputed": 2} and again.token_ids == reference
        assert any("checksum mismatch" in w for w in again.warnings)
        assert any("missing" in w for w in again.warnings)
        assert replica.check() == []  # both written back
    with RAG(redis_url, model=tiny_model, create=False) as fresh:
        assert fresh.ask(QUESTION, top_k=2, params=quick).result().tiers == {"remote": 2}


def test_a_following_retriever_answers_from_the_indexes_it_holds_until_refreshed(redis_url):
    """A server's retriever (following the store) never rebuilds on an answer's path when another process changed
    the store: refresh() (the IndexRefresher's thread) builds the new indexes and swaps them in."""
    from cascade_rag.rag.manifest import Manifest
    from cascade_rag.rag.retriever import Retriever
    writer = RedisDocumentStore(RedisLocation.parse(redis_url))
    with writer.writing():
        writer.write_manifest({"dim": len(VECTOR)})
        writer.put_documents("default", [document("a", "A", "h", rows(2, "a"))])
    reader = RedisDocumentStore(RedisLocation.parse(redis_url))
    retriever = Retriever(reader, Manifest(reader), "flat")
    retriever.follow()
    held = retriever.index()
    assert held.generation == 1 and len(held) == 2
    with writer.writing():
        writer.put_documents("default", [document("b", "B", "h", rows(3, "b"))])
    assert retriever.index() is held and len(held) == 2  # the answer's path: what it holds
    assert retriever.refresh()
    fresh = retriever.index()
    assert fresh is not held and fresh.generation == 2 and len(fresh) == 5 and not retriever.refresh()
