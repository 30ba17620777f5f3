"""Serving overhead: time to first token of the same questions asked in-process (RAG.ask), over gRPC (Answer.Query)
and over the OpenAI-compatible HTTP endpoint (a streamed /v1/chat/completions), against one server in this process
over a scratch directory with samples/ ingested. The three are interleaved question by question, after a warm-up
that puts every chunk in the memory tier, so they meet the same caches and the same machine load.

    python -m cascade_rag.benchmarks.serving_overhead --rounds 10 [--model DIR] [--max-tokens 1]"""
import argparse
import http.client
import json
import statistics
import tempfile
import time

from cascade_rag.engine import SamplingParams
from cascade_rag.rag.cli_options import SAMPLES
from cascade_rag.rag.client import Client
from cascade_rag.rag.ingest import Document, read_paths
from cascade_rag.rag.pipeline import RAG
from cascade_rag.rag.server import RAGServer


def in_process(server: RAGServer, question: str, max_tokens: int) -> float:
    """On the server's model thread, as a served answer runs (the engine's thread pool belongs to it)."""
    def ask():
        began = time.perf_counter()
        stream = server.rag.ask(question, top_k=4, params=SamplingParams(max_new_tokens=max_tokens))
        try:
            next(iter(stream))
            return time.perf_counter() - began
        finally:
            stream.close()
    with server.queue.slot():
        return server.models.call(ask)


def over_grpc(client: Client, question: str, max_tokens: int) -> float:
    began = time.perf_counter()
    stream = client.query(question, top_k=4, max_tokens=max_tokens)
    for response in stream:
        if response.HasField("text"):
            elapsed = time.perf_counter() - began
            stream.cancel()
            return elapsed
    raise RuntimeError("no text over gRPC")


def over_http(port: int, model: str, question: str, max_tokens: int) -> float:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}], "stream": True,
                       "max_tokens": max_tokens, "temperature": 0})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        began = time.perf_counter()
        connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        reply = connection.getresponse()
        for line in reply:
            if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                return time.perf_counter() - began
        raise RuntimeError(f"no text over HTTP (status {reply.status})")
    finally:
        connection.close()


def summary(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {"median_ms": round(statistics.median(ordered) * 1e3, 1),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1e3, 1), "n": len(ordered)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10, help="times each sample question is asked each way (default 10)")
    p.add_argument("--max-tokens", type=int, default=1, help="tokens generated a question (default 1)")
    p.add_argument("--model", help="Hugging Face checkpoint folder (default: the embedded model)")
    args = p.parse_args(argv)
    questions = [json.loads(line)["question"] for line in (SAMPLES / "questions.jsonl").read_text().splitlines()
                 if line.strip()]
    documents = [d for d in read_paths([SAMPLES / "docs"]) if isinstance(d, Document)]
    with tempfile.TemporaryDirectory(prefix="cascade-rag-overhead-") as data_dir, \
            RAG(data_dir, model=args.model) as rag:
        server = RAGServer(rag, "127.0.0.1", 0, http_port=0).start()
        try:
            rag.ingest_documents(documents)
            model = server.metrics.model_name
            times = {"in-process": [], "gRPC": [], "HTTP": []}
            with Client(f"127.0.0.1:{server.port}") as client:
                for question in questions:  # warm-up: every chunk read once into the memory tier
                    over_grpc(client, question, args.max_tokens)
                for _ in range(args.rounds):
                    for question in questions:
                        times["in-process"].append(in_process(server, question, args.max_tokens))
                        times["gRPC"].append(over_grpc(client, question, args.max_tokens))
                        times["HTTP"].append(over_http(server.http_port, model, question, args.max_tokens))
        finally:
            server.stop(5)
    result = {way: summary(seconds) for way, seconds in times.items()}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
