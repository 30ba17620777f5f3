"""The OpenAI-compatible HTTP endpoint, with the official `openai` client against a real server on 127.0.0.1 that
also serves gRPC: the same greedy answer on both, sources, streaming, errors by status, collections and filters,
metrics and request ids; and `cascade-rag serve` with every port and JSON log lines."""
import json
import os
import signal
import subprocess
import sys
import urllib.request

import openai
import pytest

from cascade_rag.rag.client import Client
from cascade_rag.rag.pipeline import RAG
from cascade_rag.rag.server import RAGServer
from cascade_rag.rag.token_scopes import TokenScopes
from tests.helpers import ROOT
from tests.service.server_helpers import CORPUS, LONG, consume, wait_until
from tests.service.test_collections import ADMIN_TOKEN, ALPHA, ALPHA_TOKEN, BETA, BETA_TOKEN
from tests.service.test_metrics import grown, scrape

QUESTION = "What is the secret code of the Varn lighthouse?"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    token_file = tmp_path_factory.mktemp("tokens") / "tokens.json"
    token_file.write_text(json.dumps({"tokens": {ALPHA_TOKEN: ["alpha"], BETA_TOKEN: ["beta"]}}))
    with RAG(tmp_path_factory.mktemp("data"), model=tiny_model, passage_tokens=48, overlap=8) as rag:
        server = RAGServer(rag, "127.0.0.1", 0, max_queue=2, token=ADMIN_TOKEN, metrics_port=0, http_port=0,
                           tokens=TokenScopes.of(token_file=token_file)).start()
        with Client(f"127.0.0.1:{server.port}", token=ADMIN_TOKEN) as admin:
            admin.ingest(CORPUS)
            admin.ingest(ALPHA, collection="alpha")
            admin.ingest(BETA, collection="beta")
        yield server
        server.stop(1)


def openai_client(server, token=ADMIN_TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key=token, max_retries=0,
                         timeout=120)


def test_models_and_health(server):
    assert [m.id for m in openai_client(server).models.list().data] == [server.metrics.model_name]
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/health", timeout=10) as reply:
        assert reply.status == 200 and json.load(reply) == {"status": "SERVING"}


def test_streamed_answer_equals_the_grpc_answer(server):
    with Client(f"127.0.0.1:{server.port}", token=ADMIN_TOKEN) as grpc_client:
        text, result = consume(grpc_client.query(QUESTION, top_k=2, max_tokens=16, temperature=0.0))
    before = scrape(server)
    stream = openai_client(server).chat.completions.create(
        model=server.metrics.model_name, messages=[{"role": "system", "content": "ignored"},
                                                   {"role": "user", "content": QUESTION}],
        stream=True, max_tokens=16, temperature=0, stream_options={"include_usage": True}, extra_body={"top_k": 2})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    sources = chunks[0].model_extra["sources"]
    assert [s["document_id"] for s in sources] == [s.document_id for s in result.sources]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text == result.text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length" if result.finish_reason == 2 else "stop"]
    assert chunks[-1].usage.completion_tokens == result.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == result.usage.prompt_tokens
    after = scrape(server)
    model = server.metrics.model_name
    assert grown(before, after, "cascade_rag:requests_total", model_name=model, method="ChatCompletions",
                 status="OK") == 1
    assert grown(before, after, "cascade_rag:time_to_first_token_seconds_count", model_name=model) == 1


def test_whole_answer_with_sources_and_request_id(server):
    with Client(f"127.0.0.1:{server.port}", token=ADMIN_TOKEN) as grpc_client:
        text, _ = consume(grpc_client.query(QUESTION, max_tokens=8))
    raw = openai_client(server).chat.completions.with_raw_response.create(
        model=server.metrics.model_name, messages=[{"role": "user", "content": QUESTION}], max_tokens=8,
        extra_headers={"x-request-id": "http-id-7"})
    assert raw.headers["x-request-id"] == "http-id-7"
    completion = raw.parse()
    assert completion.id == "chatcmpl-http-id-7" and completion.choices[0].message.content == text
    assert completion.model_extra["sources"][0]["document_id"] == "varn"
    assert completion.usage.completion_tokens >= 1


def test_errors_are_openai_errors_with_the_grpc_codes(server):
    model = server.metrics.model_name
    ask = dict(model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        openai_client(server, "wrong-token").chat.completions.create(**ask)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        openai_client(server, ALPHA_TOKEN).chat.completions.create(**ask, extra_body={"collection": "beta"})
    assert denied.value.body["code"] == "PERMISSION_DENIED" and denied.value.body["param"] == "collection"
    with pytest.raises(openai.NotFoundError):
        openai_client(server).chat.completions.create(**dict(ask, model="gpt-4o"))
    for bad, param in (({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
                       ({"extra_body": {"top_k": 33}}, "top_k"), ({"temperature": 3}, "temperature"),
                       ({"n": 2}, "n"), ({"extra_body": {"filter": {"field": "lang", "operator": ">"}}}, None),
                       ({"extra_body": {"collection": "bad name"}}, "collection")):
        with pytest.raises(openai.BadRequestError) as error:
            openai_client(server).chat.completions.create(**{**ask, **bad})
        assert error.value.body["code"] == "INVALID_ARGUMENT"
        assert param is None or error.value.body["param"] == param, error.value.body


def test_collections_and_filters_over_http(server):
    alpha = openai_client(server, ALPHA_TOKEN)
    ask = dict(model=server.metrics.model_name, max_tokens=2, messages=[{"role": "user", "content": QUESTION}])
    completion = alpha.chat.completions.create(**ask, extra_body={"collection": "alpha", "top_k": 32})
    assert {s["document_id"] for s in completion.model_extra["sources"]} <= {"varn", "phare", "ferry"}
    assert all("Beta" not in s["text"] for s in completion.model_extra["sources"])
    french = alpha.chat.completions.create(**ask, extra_body={
        "collection": "alpha", "top_k": 1, "filter": {"operator": "AND", "conditions": [
            {"field": "meta.lang", "operator": "in", "value": ["fr", "de"]},
            {"field": "kind", "operator": "==", "value": "history"}]}})
    assert [s["document_id"] for s in french.model_extra["sources"]] == ["phare"]
    with pytest.raises(openai.PermissionDeniedError):  # the default collection is not alpha's
        alpha.chat.completions.create(**ask)


def test_a_client_that_leaves_mid_stream_frees_the_engine(server):
    stream = openai_client(server).chat.completions.create(
        model=server.metrics.model_name, messages=[{"role": "user", "content": "Tell me everything."}],
        max_tokens=LONG, stream=True)
    for _, _chunk in zip(range(3), stream):
        pass
    assert server.queue.running == 1
    stream.close()
    assert wait_until(lambda: server.queue.running == 0 and server.queue.waiting == 0, 10.0)


def test_serve_command_with_every_port_and_json_logs(tmp_path, tiny_model):
    env = dict(os.environ, CASCADE_RAG_TOKEN="")
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "cascade_rag.rag.cli", "serve", "--data-dir",
                                str(tmp_path / "data"), "--model", str(tiny_model), "--port", "0", "--http-port", "0",
                                "--metrics-port", "0", "--log-format", "json", "--drain-seconds", "5"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = process.stdout.readline()
        announced = json.loads(line)
        assert announced["message"].startswith("serving on 127.0.0.1:"), (tmp_path / "server.log").read_text()
        with Client(f"127.0.0.1:{announced['grpc_port']}") as client:
            client.ingest(CORPUS[:1])
        http = openai.OpenAI(base_url=f"http://127.0.0.1:{announced['http_port']}/v1", api_key="none", max_retries=0)
        raw = http.chat.completions.with_raw_response.create(
            model=http.models.list().data[0].id, messages=[{"role": "user", "content": QUESTION}], max_tokens=2)
        rid = raw.headers["x-request-id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{announced['metrics_port']}/metrics", timeout=10) as reply:
            assert b'cascade_rag:requests_total{method="ChatCompletions"' in reply.read()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    lines = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines()]  # every line JSON
    call = [x for x in lines if x.get("request_id") == rid]
    assert len(call) == 1 and call[0]["method"] == "ChatCompletions" and call[0]["status"] == "OK"
    assert call[0]["protocol"] == "http" and call[0]["http_status"] == 200
    assert any(x.get("method") == "IngestDocuments" and x["protocol"] == "grpc" for x in lines)
    assert lines[-1]["message"] == "stopped"
