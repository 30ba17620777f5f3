"""`cascade-rag demo`: a server on a free local port over a scratch data directory; the sample corpus is ingested
and the sample questions are answered through the gRPC client, streamed with sources and timings."""
import json
import tempfile

from .cli_options import SAMPLES


def main(args) -> int:
    from .client import Client, print_stream
    from .ingest import Document, read_paths
    from .pipeline import RAG
    from .proto_gen import cascade_rag_pb2 as pb
    from .server import RAGServer
    questions = [json.loads(line) for line in (SAMPLES / "questions.jsonl").read_text().splitlines() if line]
    documents = [d for d in read_paths([SAMPLES / "docs"]) if isinstance(d, Document)]
    with tempfile.TemporaryDirectory(prefix="cascade-rag-demo-") as data_dir:
        with RAG(data_dir, model=args.model, device=args.device, dtype=args.dtype) as rag:
            print("loading the models ...")
            server = RAGServer(rag, "127.0.0.1", 0).start()
            address = f"127.0.0.1:{server.port}"
            print(f"server listening on {address} (data in {data_dir})")
            try:
                with Client(address) as client:
                    print(f"ingesting {len(documents)} documents from {SAMPLES / 'docs'} over gRPC ...")
                    reply = client.ingest(documents)
                    added = sum(r.status == pb.INGEST_STATUS_ADDED for r in reply.results)
                    print(f"{len(reply.results)} documents ingested ({added} new), {reply.passages} passages, "
                          f"{reply.tokens} tokens, KV {reply.kv_bytes / 2**20:.1f} MiB, {reply.time_ns / 1e9:.1f} s")
                    for q in questions[:3]:
                        print(f"\nQ: {q['question']}\nA: ", end="", flush=True)
                        print_stream(client.query(q["question"], max_tokens=args.max_tokens))
                    info = client.info()
                    hits = ", ".join(f"{t.name} tier {t.hit_rate:.0%} hits" for t in info.cache_tiers)
                    print(f"\nserver: {info.counts.documents} documents, {info.counts.chunk_bytes / 2**20:.1f} MiB "
                          f"of KV chunks on disk, {hits}, {info.queue.answered} requests served")
            finally:
                print("stopping the server ...")
                server.stop(5)
    return 0
