"""Shared by the service tests: a real gRPC server on 127.0.0.1 over the tiny model, its corpus, and call helpers."""
import sys
import time
from contextlib import contextmanager

import grpc
import pytest

from cascade_rag.rag.client import Client
from cascade_rag.rag.pipeline import RAG
from cascade_rag.rag.proto_gen import cascade_rag_pb2 as pb
from cascade_rag.rag.server import RAGServer

CORPUS = [
    {"id": "varn", "title": "Varn lighthouse", "text": "The lighthouse of Varn was built in 1841 by the engineer Ada "
                                                       "Ilse. The secret code of the Varn lighthouse is 4417."},
    {"id": "bees", "title": "Honey bees", "text": "A honey bee colony has one queen and thousands of workers."},
    {"id": "rail", "title": "Night trains", "text": "Night trains carry sleeping cars over long distances."},
]
LONG = 1000  # max_tokens of a slow stream: a few seconds of decoding on the tiny model


@pytest.fixture(scope="module")
def rag(tmp_path_factory, tiny_model):
    with RAG(tmp_path_factory.mktemp("data"), model=tiny_model, passage_tokens=48, overlap=8) as rag:
        yield rag


@contextmanager
def serving(rag, documents: list[dict], max_queue: int):
    """A RAGServer on 127.0.0.1 (a free port) over `rag`, `documents` ingested through it; stopped on exit."""
    server = RAGServer(rag, "127.0.0.1", 0, max_queue=max_queue).start()
    try:
        with Client(f"127.0.0.1:{server.port}") as client:
            client.ingest(documents)
        yield server
    finally:
        server.stop(1)


@pytest.fixture(scope="module")
def server(rag):
    with serving(rag, CORPUS, max_queue=1) as server:
        yield server


@pytest.fixture
def client(server):
    with Client(f"127.0.0.1:{server.port}") as client:
        yield client


def consume(stream) -> tuple[str, pb.QueryResult]:
    deltas, result = [], None
    for response in stream:
        if response.HasField("result"):
            result = response.result
        else:
            assert result is None, "text after the final message"
            deltas.append(response.text)
    return "".join(deltas), result


def wait_until(condition, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def engine_free(server) -> bool:
    return server.queue.running == 0 and server.queue.waiting == 0


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, (str, bytes)):
            list(result)
    return info.value


def serve_command(tmp_path, tiny_model, *options) -> list[str]:
    return [sys.executable, "-m", "cascade_rag.rag.cli", "serve", "--data-dir", str(tmp_path / "data"),
            "--model", str(tiny_model), *options]


def health_or_code(address: str) -> str:
    """SERVING or NOT_SERVING, or the code of the failed check (UNAVAILABLE when the connection is refused)."""
    with Client(address) as client:
        try:
            return client.health(timeout=5)
        except grpc.RpcError as exc:
            return exc.code().name
