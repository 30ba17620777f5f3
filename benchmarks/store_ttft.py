"""Time to first token with the retrieved passages' chunks read from the local disk tier against the shared store
(Redis), in one run: the same documents ingested into a scratch data directory and into the store, each question
asked of both in turn with the memory tiers emptied first, so that every chunk comes from the tier measured.

    python -m cascade_rag.benchmarks.store_ttft --store redis://127.0.0.1:6379/0 [--docs samples/docs]
        [--questions samples/questions.jsonl] [--top-k 3] [--repeats 5] [--output result.json]"""
import argparse
import json
import statistics
import tempfile
from pathlib import Path

from cascade_rag.engine import SamplingParams
from cascade_rag.rag.pipeline import RAG

ROOT = Path(__file__).resolve().parent.parent


def ask_cold(rag: RAG, question: str, top_k: int) -> dict:
    """One answer of one token with no chunk in the memory tiers."""
    for key in rag.store.chunk_keys():
        rag.model().tiers.discard(key)
    answer = rag.ask(question, top_k=top_k, params=SamplingParams(max_new_tokens=1)).result()
    return {"first_token_s": answer.first_token_s, "chunks_s": answer.chunks_s, "tiers": answer.tiers}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="redis://HOST:PORT/DB, an empty database (it is ingested into)")
    p.add_argument("--docs", type=Path, default=ROOT / "samples" / "docs")
    p.add_argument("--questions", type=Path, default=ROOT / "samples" / "questions.jsonl")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model", help="default: the embedded model")
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)
    questions = [json.loads(line)["question"] for line in args.questions.read_text().splitlines() if line.strip()]
    runs = {"disk": [], "remote": []}
    with tempfile.TemporaryDirectory(prefix="cascade-rag-ttft-") as folder, \
            RAG(folder, model=args.model) as local, RAG(args.store, model=args.model) as shared:
        for rag in (local, shared):
            rag.ingest([args.docs])
        for _ in range(args.repeats):
            for question in questions:
                for name, rag in (("disk", local), ("remote", shared)):
                    run = ask_cold(rag, question, args.top_k)
                    assert run["tiers"] == {name: args.top_k}, run["tiers"]
                    runs[name].append(run)
        device, dtype = local.options.device, local.options.dtype
    summary = {name: {"answers": len(r), "median_first_token_ms": 1e3 * statistics.median(x["first_token_s"] for x in r),
                      "median_chunks_ms": 1e3 * statistics.median(x["chunks_s"] for x in r)}
               for name, r in runs.items()}
    result = {"device": device, "dtype": dtype, "top_k": args.top_k, "summary": summary, "runs": runs}
    for name, s in summary.items():
        print(f"{name:7s} {s['answers']} answers: time to first token {s['median_first_token_ms']:.0f} ms "
              f"(chunks {s['median_chunks_ms']:.1f} ms), medians")
    if args.output:
        args.output.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
