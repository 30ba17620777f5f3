"""`python -m cascade_rag.rag.format_fidelity`: how close packed KV formats come to chunks in the model's dtype, in
the same mode. For each question, the retrieved passages' stored chunks (the data directory's, in the model's
dtype) are packed in each format (as ingestion with --kv-format would store them: the quantisation is a function of
the chunk); then, as `cascade-rag eval --fidelity-tokens` compares a mode with `full` (evaluate.fidelity), each
format is fed the model-dtype chunks' greedy answer teacher-forced: the share of its tokens the format also ranks
first, and the mean KL divergence of its next-token distributions from the model dtype's. Also token F1 of each
format's own greedy answer, with the bootstrap interval of the model dtype's F1 and the paired one of the
difference."""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from .evaluate import read_jsonl, select_corpus, token_f1

BOOTSTRAP_RESAMPLES = 10_000


def bootstrap(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """The 95% interval of the mean of `values` over resamples of the questions."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (BOOTSTRAP_RESAMPLES, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def compare(engine, chunks, ids, formats, mode: str, tokens: int, max_tokens: int, answers: list[str]) -> dict:
    """One question: the model-dtype chunks' greedy answer of `tokens` tokens teacher-forced in each format (top-1
    agreement, KL), and each format's own answer's F1."""
    from cascade_rag.engine import SamplingParams
    packed = {"dtype": chunks}
    for fmt in formats:
        packed[fmt] = [chunks[0]] + [c.packed(fmt) for c in chunks[1:]]  # level 0 stays in the model's dtype
    forced = engine.generate(ids, SamplingParams(max_new_tokens=tokens, ignore_eos=True), chunks, mode).token_ids
    sequence = ids + forced[:-1]

    def log_probs(context):
        return engine.logits(context, sequence, mode)[len(ids) - 1:].log_softmax(-1)
    reference, row = log_probs(chunks), {}
    for fmt, context in packed.items():
        answer = engine.generate(ids, SamplingParams(max_new_tokens=max_tokens), context, mode).text
        row[fmt] = {"text": answer, "f1": token_f1(answer, answers)}
        if fmt != "dtype":
            lp = log_probs(context)
            row[fmt].update(top1_agreement=float((lp.argmax(-1) == reference.argmax(-1)).float().mean()),
                            kl=float((reference.exp() * (reference - lp)).sum(-1).mean()))
    return row


def summarize(rows: list[dict], formats: list[str]) -> dict:
    f1 = {fmt: np.array([r[fmt]["f1"] for r in rows]) for fmt in ["dtype"] + formats}
    summary = {"questions": len(rows), "dtype": {"f1": float(f1["dtype"].mean()),
                                                 "f1_interval": bootstrap(f1["dtype"])}}
    for fmt in formats:
        low, high = summary["dtype"]["f1_interval"]
        summary[fmt] = {
            "top1_agreement": float(np.mean([r[fmt]["top1_agreement"] for r in rows])),
            "kl": float(np.mean([r[fmt]["kl"] for r in rows])),
            "f1": float(f1[fmt].mean()), "f1_within_dtype_interval": bool(low <= f1[fmt].mean() <= high),
            "f1_difference_interval": bootstrap(f1[fmt] - f1["dtype"]),
            "answers_identical": float(np.mean([r[fmt]["text"] == r["dtype"]["text"] for r in rows])),
        }
    return summary


def table(summary: dict, formats: list[str]) -> str:
    d = summary["dtype"]
    lines = ["| format | questions | top-1 agreement | KL | token F1 | F1 within the dtype's 95% interval | F1 - dtype F1 "
             "(95% paired interval) | answers identical |", "|---|---|---|---|---|---|---|---|",
             f"| dtype | {summary['questions']} | 1 | 0 | {d['f1']:.3f} ({d['f1_interval'][0]:.3f} - "
             f"{d['f1_interval'][1]:.3f}) | | | |"]
    for fmt in formats:
        m = summary[fmt]
        lo, hi = m["f1_difference_interval"]
        lines.append(f"| {fmt} | {summary['questions']} | {m['top1_agreement']:.4f} | {m['kl']:.5f} | {m['f1']:.3f} | "
                     f"{'yes' if m['f1_within_dtype_interval'] else 'no'} | {m['f1'] - d['f1']:+.3f} ({lo:+.3f} - "
                     f"{hi:+.3f}) | {m['answers_identical']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from cascade_rag.engine import MODES
    from .pipeline import RAG
    p = argparse.ArgumentParser(prog="python -m cascade_rag.rag.format_fidelity", description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", type=Path, required=True, help="JSONL: id, question, answers, gold_doc_ids")
    p.add_argument("--corpus", type=Path, required=True, help="JSONL: id, title, text")
    p.add_argument("--data-dir", type=Path, help="data directory in the model's dtype (default: a scratch one)")
    p.add_argument("--limit", type=int, default=100, help="first N questions (default 100)")
    p.add_argument("--distractors", type=int, help="ingest only the gold passages plus N others (default: all)")
    p.add_argument("--formats", default="fp8,int4", help="packed formats to compare (default fp8,int4)")
    p.add_argument("--mode", choices=[m for m in MODES if m != "full"], default="cached",
                   help="the mode of both sides (default cached; full reads no stored KV)")
    p.add_argument("--tokens", type=int, default=16, help="teacher-forced tokens (default 16)")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens of each answer scored by F1 (default 32)")
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--output", type=Path, help="write the summary and every question's results as JSON here")
    args = p.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    questions = read_jsonl(args.questions, ("id", "question", "answers", "gold_doc_ids"))[:args.limit]
    corpus = select_corpus(read_jsonl(args.corpus, ("id", "text")), questions, args.distractors, 0)
    with RAG(args.data_dir or tempfile.mkdtemp(prefix="cascade-rag-formats-"), kv_format="dtype") as rag:
        print(rag.ingest(documents=corpus, progress=True).summary(), file=sys.stderr)
        engine, rows = rag.model().engine, []
        for n, q in enumerate(questions, 1):
            chunks, ids = rag.composition(q["question"], args.top_k)
            rows.append(dict(id=q["id"], **compare(engine, chunks, ids, formats, args.mode, args.tokens,
                                                   args.max_tokens, q["answers"])))
            print(f"[{n}/{len(questions)}] {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
        summary = dict(summarize(rows, formats), mode=args.mode, tokens=args.tokens, max_tokens=args.max_tokens,
                       top_k=args.top_k, dtype_name=str(engine.dtype), distractors=args.distractors,
                       kv_bytes_per_token={f: _bytes(engine, f) for f in ["dtype"] + formats})
    print(table(summary, formats))
    if args.output:
        args.output.write_text(json.dumps({"summary": summary, "per_question": rows}, indent=2))
    return 0


def _bytes(engine, fmt: str) -> float:
    from cascade_rag.engine.kv_chunk import kv_bytes_per_token
    c = engine.config
    return kv_bytes_per_token(fmt, c.num_layers, c.num_kv_heads, c.head_dim, engine.dtype.itemsize)


if __name__ == "__main__":
    sys.exit(main())
