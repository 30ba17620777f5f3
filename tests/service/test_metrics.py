"""Prometheus metrics scraped from a real server on 127.0.0.1, request ids in the response metadata and in the
log line of each call, and the JSON log format."""
import io
import json
import logging
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cascade_rag.rag.client import Client
from cascade_rag.rag.log_format import JSONFormatter, TextFormatter
from cascade_rag.rag.metrics import ServingMetrics
from cascade_rag.rag.pipeline import RAG
from cascade_rag.rag.server import RAGServer
from tests.service.server_helpers import CORPUS, consume, rpc_error

QUESTIONS = ["Who built the Varn lighthouse?", "How many queens has a bee colony?", "What do night trains carry?"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    with RAG(tmp_path_factory.mktemp("data"), model=tiny_model, passage_tokens=48, overlap=8) as rag:
        server = RAGServer(rag, "127.0.0.1", 0, max_queue=2, metrics_port=0).start()
        with Client(f"127.0.0.1:{server.port}") as client:
            client.ingest(CORPUS)
        yield server
        server.stop(1)


def scrape(server) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} of one scrape of /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    wanted = set(labels.items())
    found = [v for k, v in samples.get(name, {}).items() if wanted <= set(k)]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def grown(before, after, name: str, **labels) -> float:
    """How much a sample grew between two scrapes (from 0 when the first did not have it yet)."""
    wanted = set(labels.items())
    old = [v for k, v in before.get(name, {}).items() if wanted <= set(k)]
    return value(after, name, **labels) - (old[0] if old else 0.0)


def test_a_scrape_after_three_queries_shows_their_counts_and_ttft(server):
    model = server.metrics.model_name
    before = scrape(server)
    results = []
    with Client(f"127.0.0.1:{server.port}") as client:
        for question in QUESTIONS:
            results.append(consume(client.query(question, top_k=2, max_tokens=6))[1])
    after = scrape(server)

    def grew(name, **labels):
        return grown(before, after, name, model_name=model, **labels)
    assert grew("cascade_rag:requests_total", method="Query", status="OK") == 3
    assert grew("cascade_rag:time_to_first_token_seconds_count") == 3
    assert grew("cascade_rag:e2e_request_latency_seconds_count") == 3
    assert grew("cascade_rag:request_queue_time_seconds_count") == 3
    assert grew("cascade_rag:request_prefill_time_seconds_count") == 3
    assert grew("cascade_rag:generation_tokens_total") == sum(r.usage.completion_tokens for r in results)
    assert grew("cascade_rag:prompt_tokens_total") == sum(r.usage.prompt_tokens for r in results)
    ttft = sum(r.timings.time_to_first_token_ns for r in results) / 1e9
    assert grew("cascade_rag:time_to_first_token_seconds_sum") == pytest.approx(ttft, rel=0.2, abs=0.05)
    assert value(after, "cascade_rag:time_to_first_token_seconds_bucket", model_name=model, le="+Inf") >= 3
    # six chunks, each looked up in the CPU tier (the device's), found there or on disk
    assert grew("cascade_rag:chunk_lookups_total", tier="cpu") == 6
    assert grew("cascade_rag:chunk_hits_total", tier="cpu") + grew("cascade_rag:chunk_hits_total", tier="disk") == 6
    assert value(after, "cascade_rag:queue_size", model_name=model) == 0
    assert value(after, "cascade_rag:chunk_bytes", model_name=model, tier="disk") == server.rag.stats()["chunk_bytes"]
    assert value(after, "cascade_rag:chunk_bytes", model_name=model, tier="cpu") > 0


def test_refused_calls_are_counted_by_status(server):
    model = server.metrics.model_name
    with Client(f"127.0.0.1:{server.port}") as client:
        before = scrape(server)
        assert rpc_error(lambda: client.query("", max_tokens=2)).code() == grpc.StatusCode.INVALID_ARGUMENT
        assert rpc_error(lambda: client.delete(["no-such-doc"])).code() == grpc.StatusCode.NOT_FOUND
        client.retrieve("Who built it?")
    after = scrape(server)

    def grew(**labels):
        return grown(before, after, "cascade_rag:requests_total", model_name=model, **labels)
    assert grew(method="Query", status="INVALID_ARGUMENT") == 1
    assert grew(method="DeleteDocuments", status="NOT_FOUND") == 1
    assert grew(method="Retrieve", status="OK") == 1


def test_request_ids_are_returned_and_logged(server, caplog):
    caplog.set_level(logging.INFO, logger="cascade_rag.requests")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        from cascade_rag.rag.proto_gen import cascade_rag_pb2 as pb
        from cascade_rag.rag.proto_gen import cascade_rag_pb2_grpc as pb_grpc
        stub = pb_grpc.AnswerStub(channel)
        stream = stub.Query(pb.QueryRequest(question="Who built it?", max_tokens=2),
                            metadata=(("x-request-id", "my-id-42"),))
        assert dict(stream.initial_metadata())["x-request-id"] == "my-id-42"
        list(stream)
        _, call = stub.Retrieve.with_call(pb.RetrieveRequest(question="Who built it?"))
        made = dict(call.initial_metadata())["x-request-id"]
        assert len(made) == 32 and made != "my-id-42"
        with pytest.raises(grpc.RpcError) as refused:  # an id unfit for a log line is replaced
            stub.Retrieve(pb.RetrieveRequest(question=""), metadata=(("x-request-id", "bad id \"quoted\" status=OK"),))
        replaced = dict(refused.value.initial_metadata())["x-request-id"]
        assert " " not in replaced and len(replaced) == 32
    lines = {r.fields["request_id"]: r for r in caplog.records if r.name == "cascade_rag.requests"}
    assert lines["my-id-42"].fields["method"] == "Query" and lines["my-id-42"].fields["status"] == "OK"
    assert lines[made].fields["method"] == "Retrieve" and "request_id=" + made in lines[made].getMessage()
    assert lines[replaced].fields["status"] == "INVALID_ARGUMENT"


def test_json_lines_hold_the_fields_of_a_call():
    record = logging.LogRecord("cascade_rag.requests", logging.INFO, __file__, 1, "Query OK 12 ms request_id=abc",
                               None, None)
    record.fields = {"request_id": "abc", "method": "Query", "status": "OK", "duration_s": 0.012}
    line = json.loads(JSONFormatter().format(record))
    assert line["request_id"] == "abc" and line["status"] == "OK" and line["level"] == "INFO"
    assert line["message"].startswith("Query OK") and line["time"].endswith("Z")
    warning = logging.LogRecord("cascade_rag", logging.WARNING, __file__, 1, "careful", None, None)
    assert TextFormatter().format(warning) == "cascade-rag: warning: careful"


def test_metrics_of_recomputed_chunks_count_a_lookup_in_every_tier():
    from cascade_rag.rag.answer import Answer
    metrics = ServingMetrics("m", ["gpu", "cpu"])
    metrics.answered(Answer("q", "cached", [], tiers={"gpu": 1, "cpu": 2, "disk": 3, "recomputed": 4}), 1.0)
    out = io.StringIO()
    from prometheus_client import generate_latest
    out.write(generate_latest(metrics.registry).decode())
    samples = {(s.name, s.labels.get("tier")): s.value for f in text_string_to_metric_families(out.getvalue())
               for s in f.samples}
    assert samples["cascade_rag:chunk_lookups_total", "gpu"] == 10
    assert samples["cascade_rag:chunk_lookups_total", "cpu"] == 9
    assert samples["cascade_rag:chunk_lookups_total", "disk"] == 7
    assert [samples["cascade_rag:chunk_hits_total", t] for t in ("gpu", "cpu", "disk")] == [1, 2, 3]
