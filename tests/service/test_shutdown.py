"""Issue 34, finding 5: SIGTERM during a long ingestion stream. Health answers NOT_SERVING while the server drains,
the ingestion stops uncommitted at the drain's deadline, and the process exits 0 within --drain-seconds and a small
bound, with nothing noisy in its log."""
import os
import signal
import subprocess
import threading
import time

import grpc

from cascade_rag.rag.client import Client
from cascade_rag.rag.pipeline import RAG
from tests.helpers import ROOT

from .server_helpers import serve_command, wait_until

DRAIN_S, BOUND_S = 6.0, 15.0


def test_sigterm_during_an_ingestion_stops_it_uncommitted_within_the_drain_and_exits_cleanly(tmp_path, tiny_model):
    env = dict(os.environ, CASCADE_RAG_TOKEN="")
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen(serve_command(tmp_path, tiny_model, "--port", "0", "--drain-seconds", str(DRAIN_S)),
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    documents = [{"id": f"doc{i}", "title": f"Log {i}", "text": " ".join(
        f"Entry {j} of log {i} says the tide number {j} is {j * 7}." for j in range(40))} for i in range(240)]
    outcome = {}
    try:
        line = process.stdout.readline()
        assert "serving on 127.0.0.1:" in line, (tmp_path / "server.log").read_text()
        address = line.split("serving on ")[1].split()[0]
        chunks = tmp_path / "data" / "chunks"
        watcher = Client(address)  # connected before the signal, as a load balancer's health checker is
        assert watcher.health(timeout=10) == "SERVING"
        seen = []

        def not_serving() -> bool:
            try:
                seen.append((round(time.monotonic() - began, 2), watcher.health(timeout=1.0)))
            except grpc.RpcError as exc:
                seen.append((round(time.monotonic() - began, 2), exc.code().name))
            return seen[-1][1] == "NOT_SERVING"

        def ingest():
            with Client(address) as client:
                try:
                    outcome["reply"] = client.ingest(documents)
                except grpc.RpcError as exc:
                    outcome["code"] = exc.code()
        ingesting = threading.Thread(target=ingest)
        ingesting.start()
        assert wait_until(lambda: chunks.exists() and len(list(chunks.glob("*.safetensors"))) >= 3, 60.0)
        process.send_signal(signal.SIGTERM)
        began = time.monotonic()
        assert wait_until(not_serving, DRAIN_S), (seen, outcome, (tmp_path / "server.log").read_text())
        watcher.close()
        assert process.wait(timeout=DRAIN_S + BOUND_S) == 0
        exited = time.monotonic() - began
        ingesting.join(10)
        assert outcome.get("code") in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), outcome
        assert exited < DRAIN_S + BOUND_S
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    text = (tmp_path / "server.log").read_text()
    for noise in ("Traceback", "cannot schedule new futures", "un-acquired lock", "Exception"):
        assert noise not in text, text
    with RAG(tmp_path / "data") as rag:  # nothing of the call was committed, nothing of it left behind
        assert rag.documents() == [] and rag.check() == []
