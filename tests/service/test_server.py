"""The gRPC server with a real client on 127.0.0.1: streaming, health, reflection, validation, cancellation,
deadlines, the bounded queue, concurrency, SIGTERM drain, a port in use, an empty data directory, ingestion while
querying, token and TLS."""
import datetime
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from cascade_rag.rag.client import Client
from cascade_rag.rag.pipeline import RAG
from cascade_rag.rag.proto_gen import cascade_rag_pb2 as pb
from cascade_rag.rag.proto_gen import cascade_rag_pb2_grpc as pb_grpc
from cascade_rag.rag.server import RAGServer
from tests.helpers import ROOT

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


@pytest.fixture(scope="module")
def server(rag):
    server = RAGServer(rag, "127.0.0.1", 0, max_queue=1).start()
    with Client(f"127.0.0.1:{server.port}") as client:
        client.ingest(CORPUS)
    yield server
    server.stop(1)


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


# --- the API ----------------------------------------------------------------------------------------------------
def test_query_streams_text_then_a_final_result(client):
    text, result = consume(client.query("What is the secret code of the Varn lighthouse?", top_k=2, max_tokens=12))
    assert result is not None and result.text == text
    assert [s.document_id for s in result.sources][0] == "varn" and result.sources[0].title == "Varn lighthouse"
    assert result.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert 1 <= result.usage.completion_tokens <= 12 and result.usage.prompt_tokens > 0
    t = result.timings
    assert t.retrieval_time_ns > 0 and t.prefill_time_ns > 0 and t.time_to_first_token_ns >= t.queue_time_ns
    assert t.total_time_ns >= t.time_to_first_token_ns
    tiers = result.chunk_tiers
    assert tiers.cpu + tiers.disk + tiers.gpu + tiers.recomputed == 2 and tiers.recomputed == 0
    _, full = consume(client.query("What is the secret code of the Varn lighthouse?", top_k=2, max_tokens=4,
                                   mode="full"))
    assert full.chunk_tiers == pb.ChunkTiers() and full.sources[0].document_id == "varn"
    _, blend = consume(client.query("What is the secret code of the Varn lighthouse?", top_k=2, max_tokens=4,
                                    mode="blend"))
    tiers = blend.chunk_tiers
    assert blend.finish_reason != pb.FINISH_REASON_UNSPECIFIED and tiers.cpu + tiers.disk + tiers.gpu == 2


def test_retrieve_list_and_info(client):
    reply = client.retrieve("Who built the lighthouse?", top_k=2)
    assert len(reply.passages) == 2 and reply.passages[0].document_id == "varn" and reply.passages[0].score > 0
    ids, token = [], ""
    while True:
        page = client.list_documents(page_size=2, page_token=token)
        assert len(page.documents) <= 2 and page.total_size >= 3
        ids += [d.id for d in page.documents]
        token = page.next_page_token
        if not token:
            break
    assert ids == sorted(ids) and {"varn", "bees", "rail"} <= set(ids)
    info = client.info()
    assert info.counts.documents == len(ids) and info.counts.chunk_bytes > 0 and info.model.kv_bytes_per_token > 0
    assert info.embedder.dim == 384 and info.queue.max_queue == 1 and info.limits.max_top_k > 0
    assert [t.name for t in info.cache_tiers] == ["cpu"] and 0 <= info.cache_tiers[0].hit_rate <= 1


def test_health_is_serving_and_reflection_lists_the_services(server, client):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
    assert client.health() == "SERVING" and client.health("cascade_rag.v1.Answer") == "SERVING"
    services = ProtoReflectionDescriptorDatabase(client.channel).get_services()
    assert {"cascade_rag.v1.Answer", "cascade_rag.v1.Documents", "cascade_rag.v1.Info",
            "grpc.health.v1.Health"} <= set(services)


def test_cli_client_asks_and_checks_health(server):
    address = f"127.0.0.1:{server.port}"
    env = dict(os.environ, CASCADE_RAG_TOKEN="")
    run = lambda *args: subprocess.run([sys.executable, "-m", "cascade_rag.rag.cli", *args], cwd=ROOT, env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    asked = run("ask", "Who built the Varn lighthouse?", "--server", address, "--max-tokens", "5", "--top-k", "2")
    assert asked.returncode == 0, asked.stderr
    assert "to the question):\n  1. varn" in asked.stdout and "Timings (cached): queue" in asked.stdout
    healthy = run("health", "--server", address)
    assert healthy.returncode == 0 and healthy.stdout.strip() == "SERVING"
    bad = run("ask", "", "--server", address)
    assert bad.returncode == 1 and "INVALID_ARGUMENT: question" in bad.stderr


# --- validation -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("request_, field", [
    (dict(question=""), "question"),
    (dict(question="   \n"), "question"),
    (dict(question="x" * 4001), "question"),
    (dict(question="ok?", top_k=33), "top_k"),
    (dict(question="ok?", max_tokens=1025), "max_tokens"),
    (dict(question="ok?", temperature=-1.0), "temperature"),
    (dict(question="ok?", top_p=1.5), "top_p"),
])
def test_bad_queries_are_invalid_argument_naming_the_field(client, request_, field):
    error = rpc_error(lambda: client.query(**request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(field)
    if "mode" not in request_:
        retrieve = dict(question=request_["question"], top_k=request_.get("top_k", 0))
        if field in ("question", "top_k"):
            error = rpc_error(lambda: client.retrieve(**retrieve))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(field)


@pytest.mark.parametrize("documents, field", [
    ([], "documents"),
    ([{"id": "", "text": "some text"}], "documents[0].id"),
    ([{"id": "ok", "text": "fine"}, {"id": "blank", "text": "  "}], "documents[1].text"),
    ([{"id": "twice", "text": "a"}, {"id": "twice", "text": "b"}], "documents[1].id"),
    ([{"id": "x" * 300, "text": "long id"}], "documents[0].id"),
])
def test_malformed_documents_are_invalid_argument_and_nothing_is_ingested(client, documents, field):
    before = client.info().counts.documents
    error = rpc_error(lambda: client.ingest(documents))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(field)
    assert client.info().counts.documents == before


def test_unknown_ids_bad_pages_and_oversized_messages(server, client):
    error = rpc_error(lambda: client.delete(["varn", "no-such-doc"]))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "ids" in error.details() and "no-such-doc" in error.details()
    assert "varn" in {d.id for d in client.list_documents().documents}  # nothing was deleted
    assert rpc_error(lambda: client.delete([])).code() == grpc.StatusCode.INVALID_ARGUMENT
    error = rpc_error(lambda: client.list_documents(page_token="%%%"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("page_token")
    error = rpc_error(lambda: client.list_documents(page_size=5000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("page_size")
    big = [("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", big) as channel:
        stub = pb_grpc.AnswerStub(channel)
        error = rpc_error(lambda: stub.Retrieve(pb.RetrieveRequest(question="x" * (17 << 20))))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


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


# --- token and TLS ----------------------------------------------------------------------------------------------
def self_signed_certificate() -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def test_token_is_required_on_every_call_but_health(rag):
    server = RAGServer(rag, "127.0.0.1", 0, token="s3cret").start()
    address = f"127.0.0.1:{server.port}"
    try:
        for token in (None, "wrong"):
            with Client(address, token=token) as client:
                assert client.health() == "SERVING"
                for call in (client.info, lambda: client.query("Who built it?", max_tokens=2),
                             lambda: client.ingest([{"id": "x", "text": "y"}]), lambda: client.delete(["varn"]),
                             lambda: client.retrieve("who?"), client.list_documents):
                    assert rpc_error(call).code() == grpc.StatusCode.UNAUTHENTICATED
        with Client(address, token="s3cret") as client:
            assert client.info().counts.documents >= 3
            assert consume(client.query("Who built it?", max_tokens=2))[1] is not None
    finally:
        server.stop(1)


def test_tls_with_token(rag, tmp_path):
    cert, key = self_signed_certificate()
    (tmp_path / "ca.pem").write_bytes(cert)
    server = RAGServer(rag, "127.0.0.1", 0, token="s3cret", tls=(cert, key)).start()
    address = f"127.0.0.1:{server.port}"
    try:
        with Client(address, token="s3cret", tls_ca=tmp_path / "ca.pem") as client:
            assert client.health() == "SERVING"
            assert consume(client.query("Who built it?", max_tokens=2))[1].sources
        with Client(address, tls_ca=tmp_path / "ca.pem") as client:
            assert rpc_error(client.info).code() == grpc.StatusCode.UNAUTHENTICATED
        with Client(address, token="s3cret") as client:  # plaintext to a TLS port
            assert rpc_error(lambda: client.info()).code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(1)


# --- SIGTERM, the drain, the port ---------------------------------------------------------------------------------
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


def test_sigterm_drains_in_flight_requests_then_exits(tmp_path, tiny_model):
    """While the drain lasts the port stays open: health answers NOT_SERVING, new calls get UNAVAILABLE, the
    running answer and the queued one complete; then the process exits 0 and the port closes."""
    env = dict(os.environ, CASCADE_RAG_TOKEN="")
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen(serve_command(tmp_path, tiny_model, "--port", "0", "--max-queue", "2",
                                             "--drain-seconds", "120"),
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = process.stdout.readline()
        assert "serving on 127.0.0.1:" in line, (tmp_path / "server.log").read_text()
        address = line.split("serving on ")[1].split()[0]
        with Client(address) as client:
            client.ingest(CORPUS[:1])
            running = client.query("Tell me everything about the lighthouse.", max_tokens=LONG)
            first = next(running)
            queued = client.query("Who built it?", max_tokens=3)
            assert wait_until(lambda: client.info().queue.waiting == 1, 5.0)
            done = {}
            readers = [threading.Thread(target=lambda n=n, s=s: done.update({n: consume(s)}))
                       for n, s in (("running", running), ("queued", queued))]
            for reader in readers:
                reader.start()
            process.send_signal(signal.SIGTERM)
            assert wait_until(lambda: health_or_code(address) != "SERVING", 10.0)
            assert health_or_code(address) == "NOT_SERVING"  # not a refused connection
            with Client(address) as late:
                for call in (lambda: late.query("Too late?", max_tokens=2, timeout=5), late.info):
                    error = rpc_error(call)
                    assert error.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in error.details()
            assert "running" not in done, "the answer ended before the checks: they did not test the drain"
            assert process.poll() is None
            for reader in readers:
                reader.join(120)
            text, result = done["running"]
            assert result is not None and first.text + text == result.text
            assert result.finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_STOP)
            assert done["queued"][1] is not None  # queued requests are in flight too
        assert process.wait(timeout=30) == 0
        assert health_or_code(address) == "UNAVAILABLE"
    finally:
        if process.poll() is None:
            process.kill()
        log.close()


def test_drain_cancels_the_calls_left_when_its_time_is_over(server, rag):
    server = RAGServer(rag, "127.0.0.1", 0, max_queue=1).start()  # a second server over the corpus of `server`
    with Client(f"127.0.0.1:{server.port}") as client:
        running = client.query("Tell me everything.", max_tokens=LONG)
        next(running)
        began = time.monotonic()
        stopping = threading.Thread(target=server.stop, args=(1.0,))
        stopping.start()
        try:
            assert wait_until(lambda: client.health() == "NOT_SERVING", 1.0)
            error = rpc_error(client.info)
            assert error.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in error.details()
            assert rpc_error(lambda: consume(running)).code() in (grpc.StatusCode.CANCELLED,
                                                                  grpc.StatusCode.UNAVAILABLE)
        finally:
            stopping.join(30)
        assert 1.0 <= time.monotonic() - began < 10
        assert wait_until(lambda: engine_free(server), 5.0)


def test_serve_on_a_port_in_use_says_so_in_one_line(rag, tmp_path, tiny_model, capfd):
    from cascade_rag.rag.listen import PortInUse
    env = dict(os.environ, CASCADE_RAG_TOKEN="")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(serve_command(tmp_path, tiny_model, "--port", str(port)), cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 1 and run.stdout == ""
        assert run.stderr.splitlines() == [f"cascade-rag: error: port {port} on 127.0.0.1 is already in use: "
                                           f"stop the server on it or choose another --port (0 picks a free one)"], \
            run.stderr
        assert not (tmp_path / "data").exists()  # refused before opening anything or loading the models
        capfd.readouterr()
        with pytest.raises(PortInUse, match=f"port {port} on 127.0.0.1 is already in use"):
            RAGServer(rag, "127.0.0.1", port)
        in_process = capfd.readouterr().err
    assert not re.search(r"^[DIWEF]\d{4} ", in_process, re.MULTILINE), in_process  # gRPC's C-core log lines


# --- an empty data directory -----------------------------------------------------------------------------------
def test_query_and_retrieve_without_documents_are_failed_precondition(tmp_path, tiny_model):
    with RAG(tmp_path / "data", model=tiny_model, passage_tokens=48, overlap=8) as empty:
        server = RAGServer(empty, "127.0.0.1", 0, max_queue=1).start()
        try:
            with Client(f"127.0.0.1:{server.port}") as client:
                def refused():
                    for call in (lambda: client.query("Who built the lighthouse?", max_tokens=4),
                                 lambda: client.retrieve("Who built the lighthouse?")):
                        error = rpc_error(call)
                        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
                        assert error.details().startswith("no documents have been ingested")
                    assert engine_free(server)
                refused()
                assert client.health() == "SERVING" and client.info().counts.documents == 0
                client.ingest(CORPUS[:1])
                assert consume(client.query("Who built the lighthouse?", max_tokens=2))[1].sources[0].document_id \
                    == "varn"
                assert client.delete(["varn"]) == ["varn"]
                refused()  # every document deleted: empty again
        finally:
            server.stop(1)


# --- a client in another language -------------------------------------------------------------------------------
@pytest.mark.skipif(not (shutil.which("node") and shutil.which("npm")), reason="needs node and npm")
def test_node_client_written_from_the_proto_alone(server, client):
    example, modules = ROOT / "examples" / "node-client", ROOT / ".cache" / "node-client"
    modules.mkdir(parents=True, exist_ok=True)
    package = (example / "package.json").read_text()
    installed = modules / "package.json"
    if not (modules / "node_modules" / "@grpc" / "grpc-js").exists() or \
            not installed.exists() or installed.read_text() != package:
        installed.write_text(package)
        npm = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=modules,
                             capture_output=True, text=True, timeout=300)
        if npm.returncode:
            pytest.skip(f"npm install failed (no registry?): {npm.stderr.strip()[-300:]}")
    env = dict(os.environ, NODE_PATH=str(modules / "node_modules"), CASCADE_RAG_TOKEN="")
    run = subprocess.run(["node", str(example / "client.js"), "--server", f"127.0.0.1:{server.port}"], env=env,
                         capture_output=True, text=True, timeout=120)
    try:
        assert run.returncode == 0, run.stdout + run.stderr
        assert "health: SERVING" in run.stdout and "node-varn=INGEST_STATUS_" in run.stdout
        assert "finish: FINISH_REASON_" in run.stdout and "sources: " in run.stdout and "varn" in run.stdout
    finally:
        if {"node-varn", "node-bees"} <= {d.id for d in client.list_documents().documents}:
            client.delete(["node-varn", "node-bees"])
