"""Issue 34's findings on ingestion, against a real server on 127.0.0.1: limits refused up front naming them, every
IngestDocuments call all or nothing (a bad title, a full disk by injected ENOSPC and by SQLite's own "database or
disk is full", a cancelled call), user and environment faults answered with clean status codes (a temperature of
1e-38, malformed protobuf), and queries answered between the steps of an ingestion."""
import errno
import threading
import time

import grpc
import pytest

from cascade_rag.rag.client import Client
from cascade_rag.rag.ingest_limits import IngestLimits
from cascade_rag.rag.local_backend import LocalDirectoryBackend
from cascade_rag.rag.pipeline import RAG
from cascade_rag.rag.proto_gen import cascade_rag_pb2 as pb
from cascade_rag.rag.server import RAGServer

from .server_helpers import client  # noqa: F401  (fixture)
from .server_helpers import consume, engine_free, rpc_error, serving, wait_until

LIMITS = IngestLimits(max_title_chars=200, max_document_passages=6, max_document_tokens=400,
                      max_call_passages=40, max_call_tokens=4000)
VARN = {"id": "varn", "title": "Varn lighthouse", "text": "The lighthouse of Varn was built in 1841 by Ada Ilse."}


def sentences(n: int, word: str = "harbour") -> str:
    return " ".join(f"Line {i} of the {word} log says the tide number {i} is {i * 7}." for i in range(n))


class FullDiskBackend(LocalDirectoryBackend):
    """The local backend whose writes fail with ENOSPC from the `fail_after`-th on, as on a full disk, or take
    `delay` seconds each, as on a slow one."""
    fail_after: int | None = None
    delay = 0.0

    def put(self, key: str, data: bytes) -> None:
        time.sleep(self.delay)
        if self.fail_after is not None:
            if self.fail_after <= 0:
                raise OSError(errno.ENOSPC, "No space left on device", str(self.path(key)))
            self.fail_after -= 1
        super().put(key, data)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return FullDiskBackend(tmp_path_factory.mktemp("chunks"))


@pytest.fixture(scope="module")
def rag(tmp_path_factory, tiny_model, backend):
    with RAG(tmp_path_factory.mktemp("data"), model=tiny_model, passage_tokens=48, overlap=8, ingest_limits=LIMITS,
             chunk_backend=backend) as rag:
        yield rag


@pytest.fixture(scope="module")
def server(rag):
    with serving(rag, [VARN], max_queue=2) as server:
        yield server


def unchanged(rag, before) -> bool:
    return rag.documents() == before and rag.check() == []


# --- finding 2: limits, refused up front naming them --------------------------------------------------------------
@pytest.mark.parametrize("documents, code, start, limit", [
    ([{"id": "a", "text": "fine"}, {"id": "t", "title": "T" * 201, "text": "x"}], "INVALID_ARGUMENT",
     "documents[1].title:", "--max-title-chars"),
    ([{"id": "a", "text": "fine"}, {"id": "long", "text": sentences(60)}], "RESOURCE_EXHAUSTED", "documents[1]:",
     "--max-document-"),
    ([{"id": f"d{i}", "text": sentences(12, str(i))} for i in range(12)], "RESOURCE_EXHAUSTED", "documents:",
     "--max-call-"),
])
def test_past_a_limit_is_refused_naming_it_and_nothing_is_written(rag, client, documents, code, start, limit):
    before, files = rag.documents(), set(rag.chunks.sizes())
    error = rpc_error(lambda: client.ingest(documents))
    assert error.code().name == code and error.details().startswith(start) and limit in error.details(), error
    assert "nothing was ingested" in error.details() or code == "INVALID_ARGUMENT"
    assert unchanged(rag, before) and set(rag.chunks.sizes()) == files


def test_the_limits_are_in_get_info(client):
    limits = client.info().limits.ingest
    assert (limits.max_title_chars, limits.max_call_passages, limits.max_document_chunk_bytes) == (200, 40, 0)


def test_a_title_past_the_models_positions_is_invalid_argument_not_an_internal_error(tmp_path, tiny_model):
    with RAG(tmp_path, model=tiny_model, passage_tokens=48, overlap=8) as rag:  # no title limit
        server = RAGServer(rag, "127.0.0.1", 0).start()
        try:
            with Client(f"127.0.0.1:{server.port}") as client:
                error = rpc_error(lambda: client.ingest([VARN, {"id": "t", "title": "Tide " * 3000, "text": "x"}]))
        finally:
            server.stop(1)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("documents[1].title")
        assert "exceeds the model's 2,048 positions" in error.details() and rag.documents() == []


# --- finding 3: all or nothing ------------------------------------------------------------------------------------
def test_a_full_disk_mid_call_commits_nothing_and_says_so(rag, client, backend):
    before, files = rag.documents(), set(rag.chunks.sizes())
    documents = [{"id": f"full{i}", "title": f"Log {i}", "text": sentences(3, f"pier {i}")} for i in range(12)]
    backend.fail_after = 5
    try:
        error = rpc_error(lambda: client.ingest(documents))
    finally:
        backend.fail_after = None
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "disk" in error.details() and "full" in \
        error.details() and "No space left on device" in error.details(), error.details()
    assert unchanged(rag, before) and set(rag.chunks.sizes()) == files
    assert not list(backend.folder.glob(".*.tmp"))
    reply = client.ingest(documents)  # the disk has room again: the same call goes through whole
    assert len(reply.results) == 12 and reply.passages >= 12
    client.delete([d["id"] for d in documents])


def test_sqlite_full_at_the_commit_is_resource_exhausted_and_rolled_back(rag, client):
    before, files = rag.documents(), set(rag.chunks.sizes())
    rag.store.db.execute("VACUUM")  # no free pages left for the rows to come
    pages = rag.store.db.execute("PRAGMA page_count").fetchone()[0]
    rag.store.db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL, through the real commit
    try:
        error = rpc_error(lambda: client.ingest([{"id": f"s{i}", "text": sentences(8, str(i))} for i in range(3)]))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        assert "is full" in error.details() and "nothing of this change was stored" in error.details()
        assert unchanged(rag, before) and set(rag.chunks.sizes()) == files
    finally:
        rag.store.db.execute("PRAGMA max_page_count = 1073741823")
    assert client.ingest([{"id": "s0", "text": sentences(8, "0")}]).passages > 0


@pytest.fixture
def slow_disk(backend):
    backend.delay = 0.3
    yield
    backend.delay = 0.0


def test_a_cancelled_ingestion_stops_at_its_next_step_and_commits_nothing(rag, server, client, slow_disk):
    before = rag.documents()
    documents = [{"id": f"c{i}", "text": sentences(8, f"cancel {i}")} for i in range(6)]
    request = pb.IngestDocumentsRequest(documents=[pb.Document(**d) for d in documents])
    call = client.documents.IngestDocuments.future(iter([request]))
    assert wait_until(lambda: len(rag.chunks.sizes()) > len(rag.store.chunk_keys()) + 1, 20.0), call.exception()
    call.cancel()
    assert wait_until(lambda: unchanged(rag, before) and set(rag.chunks.sizes()) == rag.store.chunk_keys(), 10.0)
    _, result = consume(client.query("Who built the Varn lighthouse?", max_tokens=2))
    assert result is not None and engine_free(server)


def test_queries_are_answered_between_the_steps_of_a_long_ingestion(rag, client, slow_disk):
    documents = [{"id": f"q{i}", "text": sentences(8, f"quay {i}")} for i in range(6)]
    done = threading.Event()
    ingesting = threading.Thread(target=lambda: (client.ingest(documents), done.set()))
    ingesting.start()
    try:
        assert wait_until(lambda: len(rag.chunks.sizes()) > len(rag.store.chunk_keys()), 20.0)
        began = time.monotonic()
        _, result = consume(client.query("Who built the Varn lighthouse?", max_tokens=2))
        assert result is not None and not done.is_set(), "the query waited for the whole ingestion"
        assert time.monotonic() - began < 30
    finally:
        ingesting.join(120)
    assert done.is_set() and {d["id"] for d in documents} <= {d["id"] for d in rag.documents()}
    client.delete([d["id"] for d in documents])


# --- finding 4: clean status codes --------------------------------------------------------------------------------
def test_a_temperature_just_above_zero_answers_like_greedy(client):
    _, greedy = consume(client.query("Who built the Varn lighthouse?", max_tokens=6))
    _, tiny = consume(client.query("Who built the Varn lighthouse?", max_tokens=6, temperature=1e-38, top_p=0.9))
    assert tiny.text == greedy.text


@pytest.mark.parametrize("method", ["/cascade_rag.v1.Answer/Retrieve", "/cascade_rag.v1.Answer/Query",
                                    "/cascade_rag.v1.Documents/IngestDocuments"])
def test_malformed_protobuf_is_invalid_argument(server, method):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        garbage = b"\x0a\xff\xff\xff\xff\x0f"  # field 1, a length past the end
        if method.endswith("IngestDocuments"):
            call = channel.stream_unary(method, request_serializer=bytes, response_deserializer=bytes)
            error = rpc_error(lambda: call(iter([garbage]), timeout=10))
        elif method.endswith("Query"):
            call = channel.unary_stream(method, request_serializer=bytes, response_deserializer=bytes)
            error = rpc_error(lambda: call(garbage, timeout=10))
        else:
            call = channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
            error = rpc_error(lambda: call(garbage, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("request: ") \
        and method in error.details(), error
