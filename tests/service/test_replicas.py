"""Replicas: two real `cascade-rag serve` processes over one real redis-server. A document ingested through one is
answered through the other token for token from the shared store's chunks (tier "remote", nothing prefilled); a
client spreads calls over both with gRPC's round robin; a replica killed with SIGKILL in the middle of an
ingestion (all or nothing) leaves the store consistent with nothing of the call visible, and the ingestion re-run
through the other completes it."""
import os
import random
import signal
import subprocess
import sys
import threading
import time

import grpc

from cascade_rag.rag.cli import main as cli_main
from cascade_rag.rag.client import Client
from cascade_rag.rag.pipeline import RAG
from cascade_rag.rag.proto_gen import cascade_rag_pb2 as pb
from cascade_rag.rag.redis_backend import RedisChunkBackend
from cascade_rag.rag.redis_location import RedisLocation
from cascade_rag.rag.redis_store import RedisDocumentStore
from tests.helpers import ROOT

from .server_helpers import CORPUS, consume

QUESTION = "What is the secret code of the Varn lighthouse?"
WORDS = "harbour lantern keeper granite tide beacon rope ledger signal storm gull anchor mast chart".split()


def start_replica(folder, store: str, model, name: str) -> tuple[subprocess.Popen, str]:
    log = open(folder / f"{name}.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "cascade_rag.rag.cli", "serve", "--store", store, "--model",
                                str(model), "--port", "0"], cwd=ROOT, env=dict(os.environ, CASCADE_RAG_TOKEN=""),
                               stdout=subprocess.PIPE, stderr=log, text=True)
    line = process.stdout.readline()
    assert "serving on 127.0.0.1:" in line, (folder / f"{name}.log").read_text()
    return process, line.split("serving on ")[1].split()[0]


def ask(address: str) -> tuple[list[str], object]:
    with Client(address) as client:
        deltas = []
        for response in client.query(QUESTION, top_k=2, max_tokens=12):
            if response.HasField("result"):
                return deltas, response.result
            deltas.append(response.text)


def long_documents(n: int) -> list[dict]:
    rng = random.Random(7)
    return [{"id": f"log-{i:02d}", "title": f"Harbour log {i}",
             "text": " ".join(rng.choice(WORDS) for _ in range(400))} for i in range(n)]


def consistent(store: RedisDocumentStore, blobs: set[str]) -> None:
    """Every committed document has all its passages, vectors and chunk blobs; nothing else is visible."""
    documents = store.documents()
    generation, ids, _ = store.vectors()
    passages = store.passages(ids.tolist())
    assert len(passages) == len(ids) == sum(d["passages"] for d in documents) == store.counts()["passages"]
    for d in documents:
        assert sorted(p.seq for p in passages.values() if p.doc_id == d["id"]) == list(range(d["passages"]))
    assert store.chunk_keys() <= blobs


def test_replicas_share_one_store(tmp_path, tiny_model, redis_url):
    a, address_a = start_replica(tmp_path, redis_url, tiny_model, "a")
    b, address_b = start_replica(tmp_path, redis_url, tiny_model, "b")
    try:
        with Client(address_a) as client:
            client.ingest(CORPUS)
        deltas_a, result_a = ask(address_a)
        deadline = time.monotonic() + 10
        while True:  # b's indexes follow the store's generation within its refresh interval
            try:
                deltas_b, result_b = ask(address_b)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION and time.monotonic() < deadline
                time.sleep(0.2)
        assert deltas_b == deltas_a and result_b.text == result_a.text and len(deltas_a) > 1
        assert [s.document_id for s in result_b.sources] == [s.document_id for s in result_a.sources]
        tiers = result_b.chunk_tiers
        assert (tiers.remote, tiers.recomputed, tiers.disk) == (2, 0, 0), tiers  # no passage prefilled in b

        with Client(address_a) as one, Client(address_b) as other:
            before = [one.info().queue.answered, other.info().queue.answered]
            with Client(f"{address_a},{address_b}") as both:  # round robin over the replicas
                for _ in range(6):
                    assert consume(both.query(QUESTION, top_k=2, max_tokens=2))[1] is not None
            after = [one.info().queue.answered, other.info().queue.answered]
        spread = [y - x for x, y in zip(before, after)]
        assert sum(spread) == 6 and min(spread) >= 2, spread  # the first calls go to the first one connected
        assert cli_main(["ask", QUESTION, "--server", f"{address_b},{address_a}", "--top-k", "2",
                         "--max-tokens", "4"]) == 0

        # SIGKILL of a replica in the middle of an ingestion (all or nothing: one transaction for the call)
        store, location = RedisDocumentStore(RedisLocation.parse(redis_url)), RedisLocation.parse(redis_url)
        blobs = RedisChunkBackend(location)
        chunks_before = len(blobs.sizes())
        documents, failed = long_documents(10), []
        ingesting = threading.Thread(target=lambda: failed.append(ingest_error(address_a, documents)))
        ingesting.start()
        deadline = time.monotonic() + 120
        while len(blobs.sizes()) < chunks_before + 3:  # some of the call's chunks are written, none committed
            assert time.monotonic() < deadline and a.poll() is None
            time.sleep(0.01)
        a.send_signal(signal.SIGKILL)
        a.wait()
        ingesting.join()
        assert failed == [grpc.StatusCode.UNAVAILABLE]
        with RAG(redis_url, create=False) as rag:
            assert store.counts()["documents"] == len(CORPUS)  # nothing of the call is visible
            consistent(store, set(rag.chunks.sizes()))
        with Client(address_b) as client:  # b takes the writer lock over at once: a's connection died with it
            reply = client.ingest(documents)
        assert [r.status for r in reply.results] == [pb.INGEST_STATUS_ADDED] * len(documents)
        with RAG(redis_url, create=False) as rag:
            assert rag.check() == [] and rag.stats()["documents"] == len(CORPUS) + len(documents)
        assert ask(address_b)[0] == deltas_a
    finally:
        for process in (a, b):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(60)


def ingest_error(address: str, documents: list[dict]):
    with Client(address) as client:
        try:
            client.ingest(documents, batch_size=4)
        except grpc.RpcError as exc:
            return exc.code()
    return None
