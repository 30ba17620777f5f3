"""The gRPC server's API with a real client on 127.0.0.1: streaming, health, reflection, validation, token and TLS."""
import datetime
import ipaddress
import os
import shutil
import subprocess
import sys

import grpc
import pytest

from cascade_rag.engine import DEFAULT_MODE
from cascade_rag.rag.client import Client
from cascade_rag.rag.proto_gen import cascade_rag_pb2 as pb
from cascade_rag.rag.proto_gen import cascade_rag_pb2_grpc as pb_grpc
from cascade_rag.rag.server import RAGServer
from cascade_rag.rag.wire import MODE_TO_PROTO
from tests.helpers import ROOT

from .server_helpers import client, rag, server  # noqa: F401  (fixtures)
from .server_helpers import consume, rpc_error


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


def test_a_query_naming_no_mode_gets_the_engines_default(client):
    """The client sends MODE_UNSPECIFIED when no mode is named; the server answers in DEFAULT_MODE (greedy: the same
    tokens as naming it)."""
    question = "What is the secret code of the Varn lighthouse?"
    unnamed, result = consume(client.query(question, top_k=2, max_tokens=8))
    named, _ = consume(client.query(question, top_k=2, max_tokens=8, mode=DEFAULT_MODE))
    assert unnamed == named and result.mode == MODE_TO_PROTO[DEFAULT_MODE]
    _, full = consume(client.query(question, top_k=2, max_tokens=2, mode="full"))
    assert full.mode == pb.MODE_FULL
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        client.query(question, mode="fast")


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
    assert "to the question):\n  1. varn" in asked.stdout and f"Timings ({DEFAULT_MODE}): queue" in asked.stdout
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
