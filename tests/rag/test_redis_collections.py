"""The shared store on a real redis-server offers what the SQLite store does beyond documents: collections kept
apart (ids, passages, counts, chunk keys), metadata filters over passage ids, retrieval by collection and filter
as over a data directory, an all-or-nothing ingestion that fails partway (stopped, or refused by a full Redis)
committing nothing and leaving no chunk behind, and a read-only open that writes nothing."""
import pytest
import redis

from cascade_rag.engine import SamplingParams
from cascade_rag.rag.chunk_store import ChunkWriteError
from cascade_rag.rag.document_store import DiskFull, NoDocuments, StoreError, UnknownDocuments
from cascade_rag.rag.filters import MetadataFilter
from cascade_rag.rag.ingest_types import Document
from cascade_rag.rag.ingestor import IngestStopped
from cascade_rag.rag.pipeline import RAG
from cascade_rag.rag.redis_location import RedisLocation
from cascade_rag.rag.redis_store import RedisDocumentStore

from .test_chunk_store import CORPUS, QUESTION
from .test_redis_store import document, rows

QUICK = SamplingParams(max_new_tokens=4)
LABELLED = [
    {"id": "varn-en", "title": "Varn lighthouse", "text": "The secret code of the Varn lighthouse is 4417.",
     "metadata": {"lang": "en", "kind": "note"}},
    {"id": "varn-de", "title": "Leuchtturm Varn", "text": "Der geheime Code des Leuchtturms Varn ist 4417.",
     "metadata": {"lang": "de", "kind": "note"}},
    {"id": "bees", "title": "Bees", "text": "A honey bee colony has one queen and thousands of workers.",
     "metadata": {"lang": "en"}},
]


def long_documents(n: int) -> list[Document]:
    words = "harbour lantern keeper granite tide beacon rope ledger signal storm gull anchor mast chart".split()
    return [Document(f"log-{i}", f"Log {i}", " ".join(words[(i + j) % len(words)] for j in range(120)))
            for i in range(n)]


def test_two_collections_in_the_store_are_separate(redis_url):
    store = RedisDocumentStore(RedisLocation.parse(redis_url))
    with store.writing():
        _, alpha = store.put_documents("alpha", [document("a", "A", "h1", rows(2, "x")),
                                                 document("b", "B", "h2", rows(1, "y"))])
        _, beta = store.put_documents("beta", [document("a", "A in beta", "h3", rows(3, "z"))])
    assert store.document_hash("alpha", "a") == "h1" and store.document_hash("beta", "a") == "h3"
    assert store.document_hash("default", "a") is None
    assert store.passage_ids("alpha").tolist() == alpha and store.passage_ids("beta").tolist() == beta
    assert store.passage_ids("default").tolist() == []
    assert [d["id"] for d in store.documents("alpha")] == ["a", "b"]
    assert [d["title"] for d in store.documents("beta")] == ["A in beta"] and store.documents() == []
    assert store.counts(frozenset(["alpha"])) == {"documents": 2, "passages": 3, "tokens": 6}
    assert store.counts(frozenset(["beta", "gamma"])) == {"documents": 1, "passages": 3, "tokens": 6}
    assert store.counts() == {"documents": 3, "passages": 6, "tokens": 12}
    assert store.chunk_keys(frozenset(["beta"])) == {"z-key-0", "z-key-1", "z-key-2"}
    assert {pid: p.collection for pid, p in store.passages(alpha + beta).items()} == \
        {**{pid: "alpha" for pid in alpha}, **{pid: "beta" for pid in beta}}
    with store.writing():
        with pytest.raises(UnknownDocuments):
            store.delete_documents("beta", ["b"])  # alpha's: nothing is deleted
        assert store.delete_documents("alpha", ["a"]) == (["a"], alpha[:2])
    assert store.document_hash("beta", "a") == "h3" and store.counts(frozenset(["alpha"]))["documents"] == 1
    assert store.vectors()[1].tolist() == alpha[2:] + beta and store.generation() == 3


def test_a_metadata_filter_selects_the_passages_of_matching_documents(redis_url):
    store = RedisDocumentStore(RedisLocation.parse(redis_url))
    with store.writing():
        _, pids = store.put_documents("default", [
            document("en1", "", "h", rows(2, "a"), metadata={"lang": "en", "kind": "log"}),
            document("de1", "", "h", rows(1, "b"), metadata={"lang": "de", "kind": "log"}),
            document("en2", "", "h", rows(1, "c"), metadata={"lang": "en"})])
        store.put_documents("other", [document("en1", "", "h", rows(1, "d"), metadata={"lang": "en"})])
    en1, de1, en2 = pids[:2], pids[2:3], pids[3:]

    def matching(*conditions, collection="default"):
        return store.passage_ids(collection, MetadataFilter.of(list(conditions))).tolist()
    assert matching(("lang", ["en"])) == en1 + en2
    assert matching(("lang", ["en", "de"]), ("kind", ["log"])) == en1 + de1
    assert matching(("lang", ["fr"])) == [] and matching(("colour", ["en"])) == []
    assert len(matching(("lang", ["en"]), collection="other")) == 1
    assert store.passages(en1)[en1[1]].metadata == {"lang": "en", "kind": "log"}
    assert [d["metadata"] for d in store.documents()] == [{"lang": "de", "kind": "log"}, {"lang": "en", "kind": "log"},
                                                          {"lang": "en"}]
    with store.writing():  # replaced without metadata: no longer matched; its old passages gone from every set
        _, again = store.put_documents("default", [document("en1", "", "h2", rows(1, "e"))])
    assert matching(("kind", ["log"])) == de1 and matching(("lang", ["en"])) == en2
    assert store.passage_ids("default").tolist() == de1 + en2 + again


def test_retrieval_by_collection_and_filter_matches_a_data_directory(tmp_path, tiny_model, redis_url):
    found = []
    for location in (tmp_path / "local", redis_url):
        with RAG(location, model=tiny_model, passage_tokens=32, overlap=4) as rag:
            rag.ingest(documents=LABELLED, collection="alpha")
            rag.ingest(documents=CORPUS, collection="beta")
            german = MetadataFilter.of([("lang", ["de"])])
            found.append(([s.doc_id for s in rag.retrieve(QUESTION, top_k=3, collection="alpha", where=german)],
                          [(s.doc_id, s.metadata) for s in rag.retrieve(QUESTION, top_k=3, collection="alpha")],
                          [s.doc_id for s in rag.retrieve(QUESTION, top_k=3, collection="beta")],
                          rag.stats(frozenset(["alpha"]))["documents"], rag.documents("beta")))
            assert not rag.store.chunk_keys(frozenset(["alpha"])) & rag.store.chunk_keys(frozenset(["beta"]))
            with pytest.raises(NoDocuments, match="collection 'gamma'"):
                rag.retrieve(QUESTION, collection="gamma")
    assert found[0] == found[1] and found[1][0] == ["varn-de"] and found[1][3] == 3


def test_an_all_or_nothing_ingestion_stopped_partway_commits_nothing(tiny_model, redis_url):
    with RAG(redis_url, model=tiny_model, passage_tokens=32, overlap=4) as rag:
        rag.ingest(documents=CORPUS)
        before = (rag.store.generation(), rag.store.counts(), set(rag.chunks.sizes()))
        steps = iter(range(12))
        with pytest.raises(IngestStopped, match="nothing of this ingestion was stored"):
            rag.ingest_documents(long_documents(4), collection="logs", all_or_nothing=True,
                                 stop=lambda: None if next(steps, None) is not None else "stopped by the test")
        assert (rag.store.generation(), rag.store.counts(), set(rag.chunks.sizes())) == before  # chunks removed
        assert rag.documents("logs") == [] and not rag.store.is_writer
        report = rag.ingest_documents(long_documents(4), collection="logs", all_or_nothing=True)
        assert len(report.added) == 4 and rag.check() == []


@pytest.mark.parametrize("point, nth", [("chunk_saved", 3), ("before_commit", 1)])
def test_a_full_redis_partway_is_a_clean_error_and_commits_nothing(tiny_model, redis_url, point, nth):
    """Redis out of memory (maxmemory, noeviction) in the middle of an all-or-nothing ingestion: DiskFull naming
    the store, from a chunk write or from the commit; nothing of the ingestion is stored, its chunks are removed."""
    client, passes = redis.Redis.from_url(redis_url), []

    def fill_up(name: str) -> None:
        passes.append(name)
        if passes.count(point) == nth and name == point:
            client.config_set("maxmemory", 1)  # below what it holds: every write that needs memory is refused
    try:
        with RAG(redis_url, model=tiny_model, passage_tokens=32, overlap=4, crash_hook=fill_up) as rag:
            with pytest.raises((DiskFull, ChunkWriteError)) as caught:
                rag.ingest_documents(long_documents(3), collection="logs", all_or_nothing=True)
            error = caught.value.__cause__ if isinstance(caught.value, ChunkWriteError) else caught.value
            assert isinstance(error, DiskFull) and f"store {redis_url} is full" in str(error)
            assert "maxmemory" in str(error) and "nothing of this change was stored" in str(error)
            assert rag.store.counts() == {"documents": 0, "passages": 0, "tokens": 0} and rag.chunks.sizes() == {}
    finally:
        client.config_set("maxmemory", 0)


def test_a_read_only_open_writes_nothing(tiny_model, redis_url):
    with RAG(redis_url, model=tiny_model, passage_tokens=32, overlap=4) as rag:
        rag.ingest(documents=CORPUS)
        reference = rag.ask(QUESTION, top_k=2, params=QUICK).result().token_ids
        used = rag.retrieve(QUESTION, top_k=1)[0].passage_id
        key = rag.store.passages([used])[used].chunk_key
    client = redis.Redis.from_url(redis_url)
    client.delete(f"cascade-rag:chunk:{key}")  # to be recomputed by the reader, which may not store it again
    everything = {k: client.dump(k) for k in client.keys()}
    with RAG(redis_url, model=tiny_model, read_only=True) as reader:
        answer = reader.ask(QUESTION, top_k=2, params=QUICK).result()
        assert answer.token_ids == reference and answer.tiers == {"recomputed": 1, "remote": 1}
        assert [d["id"] for d in reader.documents()] == ["bees", "varn"]
        with pytest.raises(StoreError, match="opened read-only"):
            reader.ingest(documents=[{"id": "new", "text": "A new document."}])
        with pytest.raises(StoreError, match="opened read-only"):
            reader.delete(["bees"])
    assert {k: client.dump(k) for k in client.keys()} == everything
    client.flushall()
    with pytest.raises(NoDocuments, match="holds no cascade-rag store"):
        RAG(redis_url, read_only=True)
