"""The gRPC server's life on 127.0.0.1: SIGTERM drains the calls in flight, a port in use, an empty data directory."""
import os
import re
import signal
import socket
import subprocess
import threading
import time

import grpc
import pytest

from cascade_rag.rag.client import Client
from cascade_rag.rag.pipeline import RAG
from cascade_rag.rag.proto_gen import cascade_rag_pb2 as pb
from cascade_rag.rag.server import RAGServer
from tests.helpers import ROOT

from .server_helpers import rag, server  # noqa: F401  (fixtures)
from .server_helpers import CORPUS, LONG, consume, engine_free, health_or_code, rpc_error, serve_command, wait_until


# --- SIGTERM, the drain, the port ---------------------------------------------------------------------------------
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
