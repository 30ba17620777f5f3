"""The `cascade-rag` command: ingest, ask, list, delete, eval, demo, serve, health (and bench, served by
cascade_rag.benchmarks.bench)."""
import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .cli_error import CLIError  # noqa: E402
from .cli_options import (add_answer_options, add_collection, add_data_dir, add_ingest_limits,  # noqa: E402
                          add_kv_format, add_model_options, add_server_options, open_rag, rag_options, read_inputs,
                          sampling)

def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="cascade-rag", description="Retrieval-augmented generation over "
                                   "persistent per-passage KV chunks.")
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", help="ingest .txt/.md/.jsonl/.pdf/.html files and folders")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="files and folders (.txt, .md, .jsonl, .pdf, .html, .htm)")
    add_data_dir(p)
    add_collection(p)
    p.add_argument("--passage-tokens", type=int, default=256, help="passage size in tokens (default 256)")
    p.add_argument("--overlap", type=int, default=32, help="tokens repeated between passages (default 32)")
    p.add_argument("--index", choices=["flat", "hnsw"], help="vector index type (default flat)")
    p.add_argument("--id-field", default="id", help="JSONL field of the document id (default id)")
    p.add_argument("--title-field", default="title", help="JSONL field of the title (default title)")
    p.add_argument("--text-field", default="text", help="JSONL field of the text (default text)")
    p.add_argument("--max-disk", metavar="SIZE",
                   help="refuse, before ingesting anything, an ingestion estimated to take more disk (or --store "
                        "memory) than this for its KV chunks and passages, e.g. 500M, 2G or 1.5GiB (K, M, G: powers "
                        "of 1024; KB, MB, GB: of 1000; default: none). One beyond the free space of the data "
                        "directory's filesystem is always refused")
    p.add_argument("--quiet", action="store_true", help="no estimate line and no progress bar (the limits are "
                                                        "still checked)")
    p.add_argument("--all-or-nothing", action="store_true",
                   help="commit the whole ingestion in one transaction, so that a failure anywhere stores none of it; "
                        "without it each document (with --ray each group of documents) is committed on its own")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="embed and prefill in Ray actors that write the chunks into the --store, the commits made "
                        "here; ADDRESS: a Ray cluster (e.g. ray://head:10001 or auto; default: a local one started "
                        "here). Without --ray the ingestion runs in this process")
    p.add_argument("--ray-actors", type=int, default=2, help="Ray actors (one GPU each where the cluster has GPUs; "
                                                             "default 2)")
    add_model_options(p)
    add_kv_format(p)

    p = sub.add_parser("ask", help="answer a question from the ingested documents")
    p.add_argument("question", help="the question, in quotes")
    add_data_dir(p)
    add_collection(p)
    add_answer_options(p)
    p.add_argument("--mode", choices=["cached", "full", "blend"], default=None,
                   help="cached: stored KV chunks; full: one prefill of the same tokens; blend: stored chunks with the "
                        "15%% of document tokens that their neighbours change most recomputed (default: the "
                        "engine's default mode, or the server's with --server: README, Engine API)")
    add_model_options(p)
    add_kv_format(p)
    p.add_argument("--server", metavar="HOST:PORT[,...]",
                   help="ask a running `cascade-rag serve` over gRPC instead; several replicas (a,b,c): gRPC's "
                        "round-robin balancing spreads the calls over them")
    add_server_options(p)

    p = sub.add_parser("list", help="list the ingested documents: id, passages, tokens, title")
    add_data_dir(p)
    add_collection(p)

    p = sub.add_parser("delete", help="delete documents by id (all or none: an unknown id deletes nothing)")
    p.add_argument("ids", nargs="+", metavar="ID", help="document ids, as `cascade-rag list` shows them")
    add_data_dir(p)
    add_collection(p)

    p = sub.add_parser("eval", help="exact match, F1, recall@k and time to first token on a QA set")
    p.add_argument("--questions", type=Path, required=True, help="JSONL: id, question, answers, gold_doc_ids")
    p.add_argument("--corpus", type=Path, required=True, help="JSONL: id, title, text")
    add_data_dir(p, help="data directory to ingest into (default: a scratch one)")
    p.add_argument("--limit", type=int, help="first N questions only")
    p.add_argument("--distractors", type=int, help="ingest only the gold passages of the questions plus N others "
                                                   "sampled with --sample-seed (default: the whole corpus)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the --distractors sample (default 0)")
    p.add_argument("--modes", default="cached,full", help="comma-separated: cached, full, blend (default cached,full)")
    p.add_argument("--output", type=Path, help="write the results as JSON here")
    p.add_argument("--fidelity-tokens", type=int, default=16,
                   help="also compare each mode with full token by token, teacher-forced on full's answer of this "
                        "many tokens: top-1 agreement and KL divergence (default 16; 0: off; needs full in --modes)")
    p.add_argument("--settings", help="comma-separated settings measured against full besides the modes (fidelity "
                                      "and engine TTFT only): cached:t1.0, blend:0.3, blend:first16, "
                                      "blend:first64w512, blend:0.15+first16, blend:none")
    p.add_argument("--plot", type=Path, help="write the fidelity-vs-TTFT plot of the modes and settings here (PNG)")
    p.add_argument("--passage-tokens", type=int, default=256, help="passage size in tokens (default 256)")
    p.add_argument("--overlap", type=int, default=32, help="tokens repeated between passages (default 32)")
    add_answer_options(p)
    p.set_defaults(max_tokens=32)  # the help of --max-tokens shows this default: it reads %(default)s
    add_model_options(p)

    p = sub.add_parser("serve", help="serve the gRPC API (proto/cascade_rag/v1) over a data directory")
    add_data_dir(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="default 50051; 0 picks a free port")
    p.add_argument("--max-queue", type=int, default=8, help="requests waiting for the engine before "
                                                            "RESOURCE_EXHAUSTED (default 8)")
    p.add_argument("--drain-seconds", type=float, default=30.0, help="on SIGTERM, how long in-flight requests may "
                                                                     "finish (default 30)")
    p.add_argument("--token", help="require 'authorization: Bearer TOKEN' on every call but health (default: "
                                   "$CASCADE_RAG_TOKEN, preferred: a flag shows in `ps` to every user of the machine)")
    p.add_argument("--tls-cert", type=Path, help="TLS certificate chain (PEM)")
    p.add_argument("--tls-key", type=Path, help="TLS private key (PEM)")
    p.add_argument("--token-file", type=Path, help="JSON file of more tokens, each scoped to collections: "
                                                   "{\"tokens\": {\"TOKEN\": [\"collection\", ...]}} (\"*\": all); "
                                                   "read at start")
    p.add_argument("--http-port", type=int, help="serve the OpenAI-compatible HTTP endpoint (/v1/chat/completions, "
                                                 "/v1/models, /health) on this port of --host (default: none; 0 picks "
                                                 "a free port; plaintext)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port of --host, at /metrics "
                                                    "(default: none; 0 picks a free port)")
    p.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="text (default) or json: one JSON object a line, each call's with its request id")
    add_ingest_limits(p)
    add_model_options(p)
    add_kv_format(p)

    p = sub.add_parser("health", help="exit 0 when a server answers SERVING to the gRPC health check")
    p.add_argument("--server", metavar="HOST:PORT", default="127.0.0.1:50051", help="default 127.0.0.1:50051")
    p.add_argument("--service", default="", help="a service name (the default, empty: the whole server)")
    p.add_argument("--wait", type=float, metavar="SECONDS", help="ask again each second until SERVING, at most this "
                                                                 "long (default: ask once)")
    add_server_options(p, token=False)

    p = sub.add_parser("demo", help="serve samples/ from a scratch directory and answer sample questions over gRPC")
    p.add_argument("--max-tokens", type=int, default=64, help="most tokens of each answer (default 64)")
    add_model_options(p)

    p = sub.add_parser("bench", help="our engine against transformers on this device (benchmarks/bench.py)")
    add_model_options(p)
    if argv and argv[0] == "bench":  # cascade_rag.benchmarks.bench (heavy) is imported only for its own command
        from cascade_rag.benchmarks import bench
        getattr(bench, "add_arguments", lambda _: None)(p)
    return root


def cmd_ingest(args) -> int:
    from .ingest import Fields
    from .ingest_cost import parse_size
    fields = Fields(args.id_field, args.title_field, args.text_field)
    try:
        max_disk = None if args.max_disk is None else parse_size(args.max_disk)
    except ValueError as exc:
        raise CLIError(f"--max-disk: {exc}") from None
    if args.ray is not None:
        from .ray_ingest import ingest_with_ray
        if not args.store:
            raise CLIError("--ray writes into a shared store: give --store redis://HOST:PORT/DB")
        report = ingest_with_ray(args.store, read_inputs(args.paths, fields), rag_options(
            args, index=args.index, passage_tokens=args.passage_tokens, overlap=args.overlap), args.ray or None,
            args.ray_actors, progress=not args.quiet, collection=args.collection, all_or_nothing=args.all_or_nothing,
            max_disk_bytes=max_disk)
    else:
        with open_rag(args, index=args.index, passage_tokens=args.passage_tokens, overlap=args.overlap) as rag:
            report = rag.ingest(args.paths, fields=fields, progress=not args.quiet, max_disk_bytes=max_disk,
                                collection=args.collection, all_or_nothing=args.all_or_nothing)
    for error in report.errors:
        print(f"cascade-rag: error: {error}", file=sys.stderr)
    print(report.summary())
    return 1 if report.errors else 0


def print_answer(stream, out=sys.stdout) -> None:
    for delta in stream:
        out.write(delta)
        out.flush()
    a = stream.answer
    from .answer_format import format_sources
    out.write("\n\n" + format_sources([(s.doc_id, s.title, s.score) for s in a.sources]))
    tiers = ", ".join(f"{n} {tier}" for tier, n in sorted(a.tiers.items())) or "none"
    out.write(f"Timings ({a.mode}): retrieval {a.retrieval_s * 1e3:.0f} ms, chunks {a.chunks_s * 1e3:.0f} ms, "
              f"time to first token {a.first_token_s * 1e3:.0f} ms (prefill {a.ttft_s * 1e3:.0f} ms, "
              f"{a.prompt_tokens} prompt tokens), decode {a.decode_tokens_per_s:.1f} tokens/s; chunks from: {tiers}\n")


def cmd_ask(args) -> int:
    if args.server:
        from .client import ask
        return ask(args)
    with open_rag(args, read_only=True) as rag:
        print_answer(rag.ask(args.question, top_k=args.top_k, mode=args.mode, params=sampling(args),
                             collection=args.collection))
    return 0


def cmd_list(args) -> int:
    with open_rag(args, read_only=True) as rag:
        documents = rag.documents(args.collection)
    for d in documents:
        print(f"{d['id']}\t{d['passages']} passages\t{d['tokens']} tokens\t{d['title']}")
    print(f"{len(documents)} documents", file=sys.stderr)
    return 0


def cmd_delete(args) -> int:
    with open_rag(args, create=False) as rag:
        deleted = rag.delete(args.ids, args.collection)
    print(f"deleted {len(deleted)} documents: {', '.join(deleted)}")
    return 0


def cmd_demo(args) -> int:
    from .demo import main as demo_main
    return demo_main(args)


def cmd_eval(args) -> int:
    from .evaluate import main as evaluate_main
    return evaluate_main(args)


def cmd_bench(args) -> int:
    from cascade_rag.benchmarks import bench
    return bench.main(args) or 0


def cmd_serve(args) -> int:
    from .serve_command import serve
    return serve(args)


def cmd_health(args) -> int:
    from .client import check_health
    return check_health(args)


COMMANDS = {"ingest": cmd_ingest, "ask": cmd_ask, "list": cmd_list, "delete": cmd_delete, "demo": cmd_demo,
            "eval": cmd_eval, "bench": cmd_bench, "serve": cmd_serve, "health": cmd_health}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(argv).parse_args(argv)
    # the handler filters too: some libraries (bm25s) set their own loggers to DEBUG, which the root's level
    # alone does not stop
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    logging.basicConfig(format="cascade-rag: warning: %(message)s", level=logging.WARNING, handlers=[handler])
    from cascade_rag.engine import KVChunkError, ModelLoadError
    from cascade_rag.engine.embedded import ModelPreparationError
    from .document_store import StoreError
    try:
        return COMMANDS[args.command](args)
    except (CLIError, ValueError, OSError, StoreError, ModelLoadError, ModelPreparationError, KVChunkError) as exc:
        print(f"cascade-rag: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cascade-rag: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
