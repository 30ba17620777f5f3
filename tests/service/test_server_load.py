"""The gRPC server under load: cancellation, deadlines, the bounded queue, concurrency, ingestion while querying."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from cascade_rag.rag.client import Client
from cascade_rag.rag.proto_gen import cascade_rag_pb2 as pb
from cascade_rag.rag.server import RAGServer

from .server_helpers import client, rag, server  # noqa: F401  (fixtures)
from .server_helpers import LONG, consume, engine_free, rpc_error, wait_until


# --- cancellation, deadlines, the queue -------------------------------------------------------------------------
def test_cancelled_stream_frees_the_engine(server, client):
    stream = client.query("Tell me everything about the lighthouse.", max_tokens=LONG)
    for _, response in zip(range(3), stream):
        assert response.HasField("text")
    assert server.queue.running == 1
    stream.cancel()
    assert wait_until(lambda: engine_free(server), 2.0), "the engine is still held after cancel"
    _, result = consume(client.query("Who built the lighthouse?", max_tokens=3))
    assert result.timings.queue_time_ns < 1e9


def test_deadline_exceeded_while_running_and_while_queued(server, client):
    error = rpc_error(lambda: client.query("Tell me everything.", max_tokens=LONG, timeout=0.5))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_until(lambda: engine_free(server), 2.0)
    running = client.query("Tell me everything.", max_tokens=LONG)
    next(running)
    error = rpc_error(lambda: client.query("Who built it?", max_tokens=3, timeout=0.5))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_until(lambda: server.queue.waiting == 0, 1.0), "the expired request still waits in the queue"
    running.cancel()
    assert wait_until(lambda: engine_free(server), 2.0)


def test_full_queue_is_resource_exhausted_at_once(server, client):
    running = client.query("Tell me everything.", max_tokens=LONG)
    next(running)
    queued = client.query("And then?", max_tokens=3)  # max_queue=1: this one waits
    assert wait_until(lambda: server.queue.waiting == 1, 2.0)
    began = time.monotonic()
    error = rpc_error(lambda: client.query("One more?", max_tokens=3))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "busy" in error.details()
    assert time.monotonic() - began < 1.0
    assert rpc_error(lambda: client.retrieve("One more?")).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.health() == "SERVING" and client.info().queue.waiting == 1  # still answered while busy
    running.cancel()
    _, result = consume(queued)
    assert result is not None and result.timings.queue_time_ns > 0
    assert wait_until(lambda: engine_free(server), 2.0)


def test_concurrent_clients_are_all_answered_or_cleanly_rejected(rag):
    server = RAGServer(rag, "127.0.0.1", 0, max_queue=8).start()
    address = f"127.0.0.1:{server.port}"

    def one(n: int) -> str:
        with Client(address) as client:
            try:
                _, result = consume(client.query(f"Question {n}: who built the lighthouse?", max_tokens=6,
                                                 timeout=120))
                return "OK" if result is not None else "NO RESULT"
            except grpc.RpcError as exc:
                return exc.code().name
    try:
        with ThreadPoolExecutor(20) as pool:
            outcomes = list(pool.map(one, range(20)))
    finally:
        server.stop(5)
    assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED"}, outcomes
    assert outcomes.count("OK") >= 9, outcomes  # the one running and the eight queued at least


def test_ingestion_while_querying_never_shows_half_a_document(server, client):
    text = " ".join(f"Paragraph {i} of the harbour log says the tide table number {i} is {i * 7}." for i in range(40))
    seen, stop = [], threading.Event()

    def retrieve_loop():
        with Client(f"127.0.0.1:{server.port}") as c:
            while not stop.is_set():
                try:
                    reply = c.retrieve("harbour log tide table", top_k=32)
                    seen.append(sum(p.document_id == "harbour" for p in reply.passages))
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
    querying = client.query("What does the harbour log say?", max_tokens=200)
    reader = threading.Thread(target=retrieve_loop)
    reader.start()
    try:
        reply = client.ingest([{"id": "harbour", "title": "Harbour log", "text": text}])
        assert [r.status for r in reply.results] == [pb.INGEST_STATUS_ADDED] and reply.passages > 2
        _, result = consume(querying)
        assert result is not None
        time.sleep(0.3)
    finally:
        stop.set()
        reader.join()
    passages = reply.passages
    assert seen and set(seen) <= {0, passages}, (seen, passages)
    assert client.retrieve("harbour log tide table", top_k=32).passages[0].document_id == "harbour"
    assert client.delete(["harbour"]) == ["harbour"]
