"""Collections kept apart by scoped tokens, document metadata and filters applied before the top-k, over a real
gRPC server on 127.0.0.1; the store of an older version migrated; the token file's errors."""
import json
import sqlite3

import grpc
import numpy as np
import pytest

from cascade_rag.rag.client import Client
from cascade_rag.rag.pipeline import RAG
from cascade_rag.rag.proto_gen import cascade_rag_pb2 as pb
from cascade_rag.rag.server import RAGServer
from cascade_rag.rag.store import Store
from cascade_rag.rag.token_scopes import TokenScopes
from tests.service.server_helpers import consume, rpc_error

ALPHA_TOKEN, BETA_TOKEN, ADMIN_TOKEN = "alpha-token-0123456789", "beta-token-0123456789", "admin-token-0123456789"
SHARED_TEXT = "The ferry timetable changes every spring when the harbour reopens."
ALPHA = [
    {"id": "varn", "title": "Varn lighthouse", "text": "The lighthouse of Varn was built in 1841 by the engineer Ada "
     "Ilse. The secret code of the Varn lighthouse is 4417.", "metadata": {"lang": "en", "kind": "history"}},
    {"id": "phare", "title": "Phare de Varn", "text": "Le phare de Varn fut construit en 1841 par Ada Ilse.",
     "metadata": {"lang": "fr", "kind": "history"}},
    {"id": "ferry", "title": "Ferries", "text": SHARED_TEXT, "metadata": {"lang": "en", "kind": "timetable"}},
]
BETA = [
    {"id": "varn", "title": "Beta notes", "text": "Beta's own note on hives: a honey bee colony has one queen."},
    {"id": "ferry", "title": "Ferries", "text": SHARED_TEXT},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    token_file = tmp_path_factory.mktemp("tokens") / "tokens.json"
    token_file.write_text(json.dumps({"tokens": {ALPHA_TOKEN: ["alpha"], BETA_TOKEN: ["beta"]}}))
    with RAG(tmp_path_factory.mktemp("data"), model=tiny_model, passage_tokens=48, overlap=8) as rag:
        server = RAGServer(rag, "127.0.0.1", 0, max_queue=2, token=ADMIN_TOKEN,
                           tokens=TokenScopes.of(token_file=token_file)).start()
        address = f"127.0.0.1:{server.port}"
        with Client(address, token=ALPHA_TOKEN) as alpha, Client(address, token=BETA_TOKEN) as beta:
            alpha.ingest(ALPHA, collection="alpha")
            beta.ingest(BETA, collection="beta")
        yield server
        server.stop(1)


def client(server, token):
    return Client(f"127.0.0.1:{server.port}", token=token)


def test_a_token_sees_only_its_collection_on_every_path(server):
    with client(server, ALPHA_TOKEN) as alpha:
        for call in (lambda: alpha.retrieve("Who built the lighthouse?", collection="beta"),
                     lambda: alpha.query("Who built the lighthouse?", max_tokens=2, collection="beta"),
                     lambda: alpha.list_documents(collection="beta"),
                     lambda: alpha.ingest([{"id": "x", "text": "y"}], collection="beta"),
                     lambda: alpha.delete(["varn"], collection="beta"),
                     lambda: alpha.retrieve("Who built the lighthouse?"),       # the default collection
                     lambda: alpha.retrieve("Who?", collection="no-such-one")):  # refused before it is looked up
            error = rpc_error(call)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED and error.details().startswith("collection")
        passages = alpha.retrieve("Who built the lighthouse? ferry timetable bees queen", top_k=32,
                                  collection="alpha").passages
        assert {p.document_id for p in passages} == {"varn", "phare", "ferry"}
        assert "Beta" not in " ".join(p.text + p.title for p in passages)
        _, result = consume(alpha.query("What does a honey bee colony have?", top_k=32, max_tokens=2,
                                        collection="alpha"))
        assert {s.document_id for s in result.sources} <= {"varn", "phare", "ferry"}
        assert all("Beta" not in s.text for s in result.sources)
        listed = alpha.list_documents(collection="alpha")
        assert [d.id for d in listed.documents] == ["ferry", "phare", "varn"] and listed.total_size == 3
        assert dict(listed.documents[2].metadata) == {"lang": "en", "kind": "history"}
        info = alpha.info()
        assert info.counts.documents == 3 and not info.cache_tiers
        assert info.counts.passages == server.rag.stats(frozenset(["alpha"]))["passages"]
    with client(server, BETA_TOKEN) as beta:
        assert [d.id for d in beta.list_documents(collection="beta").documents] == ["ferry", "varn"]
        passages = beta.retrieve("lighthouse secret code 4417", top_k=32, collection="beta").passages
        assert {p.document_id for p in passages} <= {"varn", "ferry"} and "4417" not in str(passages)
        assert beta.info().counts.documents == 2
    with client(server, ADMIN_TOKEN) as admin:  # --token covers every collection
        assert admin.list_documents(collection="beta").total_size == 2
        assert admin.info().counts.documents == 5 and admin.info().cache_tiers


def test_collections_share_no_chunk_even_for_the_same_text(server):
    store = server.rag.store
    alpha, beta = store.chunk_keys(frozenset(["alpha"])), store.chunk_keys(frozenset(["beta"]))
    assert alpha and beta and not alpha & beta
    same = [p for p in server.rag.retrieve(SHARED_TEXT, 1, "alpha") + server.rag.retrieve(SHARED_TEXT, 1, "beta")]
    assert [s.doc_id for s in same] == ["ferry", "ferry"] and same[0].text == same[1].text


def test_ids_are_per_collection_and_deletion_stays_in_its_collection(server):
    with client(server, ADMIN_TOKEN) as admin:
        admin.ingest([{"id": "temp", "text": "A temporary note about kites."}], collection="gamma")
        assert rpc_error(lambda: admin.delete(["temp"], collection="beta")).code() == grpc.StatusCode.NOT_FOUND
        assert admin.delete(["temp"], collection="gamma") == ["temp"]
        error = rpc_error(lambda: admin.retrieve("kites?", collection="gamma"))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "'gamma'" in error.details()
        assert admin.list_documents(collection="alpha").total_size == 3


def test_a_filter_is_applied_before_the_top_k_is_cut(server):
    with client(server, ALPHA_TOKEN) as alpha:
        question = "What is the secret code of the Varn lighthouse built in 1841?"
        unfiltered = alpha.retrieve(question, top_k=1, collection="alpha").passages
        assert unfiltered[0].document_id == "varn"
        french = alpha.retrieve(question, top_k=1, collection="alpha", where={"lang": "fr"}).passages
        assert [p.document_id for p in french] == ["phare"] and dict(french[0].metadata)["lang"] == "fr"
        timetables = alpha.retrieve(question, top_k=3, collection="alpha", where={"kind": ["timetable", "x"]})
        assert [p.document_id for p in timetables.passages] == ["ferry"]
        both = alpha.retrieve(question, top_k=3, collection="alpha", where={"kind": "history", "lang": ["en", "de"]})
        assert [p.document_id for p in both.passages] == ["varn"]
        assert not alpha.retrieve(question, collection="alpha", where={"lang": "nl"}).passages
        _, result = consume(alpha.query(question, top_k=1, max_tokens=2, collection="alpha", where={"lang": "fr"}))
        assert [s.document_id for s in result.sources] == ["phare"]


def test_bad_collections_filters_and_metadata_name_the_field(server):
    with client(server, ADMIN_TOKEN) as admin:
        error = rpc_error(lambda: admin.retrieve("Who?", collection="no spaces please"))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("collection")
        error = rpc_error(lambda: admin.retrieve("Who?", collection="alpha", where={"lang": []}))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("filter.conditions[0]")
        error = rpc_error(lambda: admin.ingest([{"id": "m", "text": "t", "metadata": {"k": "v" * 2000}}]))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith("documents[0].metadata.k")

        def two_collections():
            yield pb.IngestDocumentsRequest(documents=[pb.Document(id="a", text="a")], collection="alpha")
            yield pb.IngestDocumentsRequest(documents=[pb.Document(id="b", text="b")], collection="beta")
        error = rpc_error(lambda: admin.documents.IngestDocuments(two_collections(), metadata=admin.metadata))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("collection")


def test_a_store_without_collections_is_migrated_in_place(tmp_path):
    db = sqlite3.connect(tmp_path / "store.sqlite")
    db.executescript("""
        CREATE TABLE documents (id TEXT PRIMARY KEY, title TEXT NOT NULL, source TEXT, content_hash TEXT NOT NULL,
            n_passages INTEGER NOT NULL, n_tokens INTEGER NOT NULL);
        CREATE TABLE passages (pid INTEGER PRIMARY KEY AUTOINCREMENT, doc_id TEXT NOT NULL REFERENCES documents(id)
            ON DELETE CASCADE, seq INTEGER NOT NULL, text TEXT NOT NULL, token_ids TEXT NOT NULL,
            chunk_key TEXT NOT NULL, vector BLOB NOT NULL);
        CREATE INDEX passages_doc ON passages(doc_id);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('generation', '7');
        INSERT INTO documents VALUES ('a', 'A', NULL, 'h', 1, 3);
        INSERT INTO passages (pid, doc_id, seq, text, token_ids, chunk_key, vector) VALUES
            (41, 'a', 0, 'alpha text', '[1, 2, 3]', 'k41', x'0000803f');
    """)
    db.close()
    store = Store(tmp_path)
    try:
        assert store.generation() == 7 and store.documents() == [
            dict(id="a", title="A", source=None, passages=1, tokens=3, metadata={})]
        assert store.passage_ids("default").tolist() == [41] and store.passages([41])[41].chunk_key == "k41"
        passages = [("b", [4], "k", np.ones(1, np.float32))]
        added = store.put_documents("default", [("b", "B", None, "h2", passages, {})])[1]
        assert added[0] > 41  # passage ids are not reused
        assert store.delete_documents("default", ["a"]) == (["a"], [41])
    finally:
        store.close()


@pytest.mark.parametrize("content, message", [
    ("{oops", "not JSON"),
    ('{"tokens": {}}', "expected"),
    ('{"tokens": {"short": ["a"]}}', "shorter than 16"),
    ('{"tokens": {"0123456789abcdef": "alpha"}}', "list of collection names"),
    ('{"tokens": {"0123456789abcdef": ["bad name!"]}}', "not a collection name"),
])
def test_token_file_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "tokens.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        TokenScopes.of(token_file=path)
    assert str(path) in str(error.value)
