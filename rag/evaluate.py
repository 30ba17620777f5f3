"""`cascade-rag eval`: exact match and token F1 (SQuAD normalisation), recall@k, time to first token per mode, and\nthe fidelity of every mode and setting against `full` (rag.fidelity)."""
import collections
import json
import random
import re
import shutil
import string
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import fidelity
from .fidelity import Setting, parse_setting


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: list[str]) -> float:
    return float(max(normalize_answer(prediction) == normalize_answer(a) for a in answers))


def token_f1(prediction: str, answers: list[str]) -> float:
    def f1(pred: str, gold: str) -> float:
        p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
        common = sum((collections.Counter(p) & collections.Counter(g)).values())
        if common == 0:
            return 0.0
        precision, recall = common / len(p), common / len(g)
        return 2 * precision * recall / (precision + recall)
    return max(f1(prediction, a) for a in answers)


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: invalid JSON: {exc.msg}") from None
        missing = [k for k in required if k not in row]
        if missing:
            raise ValueError(f"{path}:{number}: missing field {missing[0]!r}")
        rows.append(row)
    return rows


def select_corpus(corpus: list[dict], questions: list[dict], distractors: int | None, seed: int) -> list[dict]:
    """The whole corpus, or the questions' gold passages plus `distractors` others drawn with `seed`."""
    if distractors is None:
        return corpus
    gold = {d for q in questions for d in q["gold_doc_ids"]}
    others = [doc for doc in corpus if doc["id"] not in gold]
    chosen = {doc["id"] for doc in random.Random(seed).sample(others, min(distractors, len(others)))}
    return [doc for doc in corpus if doc["id"] in gold or doc["id"] in chosen]


def summarize(rows: list[dict], modes: list[str], top_k: int) -> dict:
    result = {"questions": len(rows), "top_k": top_k,
              f"recall_at_{top_k}": float(np.mean([r["gold_retrieved"] for r in rows])), "modes": {}}
    for mode in modes:
        runs = [r[mode] for r in rows]
        ttft = [x["first_token_s"] for x in runs]
        result["modes"][mode] = {
            "exact_match": float(np.mean([x["em"] for x in runs])), "f1": float(np.mean([x["f1"] for x in runs])),
            "ttft_median_s": float(np.median(ttft)), "ttft_p90_s": float(np.percentile(ttft, 90)),
            "prefill_ttft_median_s": float(np.median([x["ttft_s"] for x in runs])),
            "decode_tokens_per_s_median": float(np.median([x["decode_tokens_per_s"] for x in runs])),
            "prompt_tokens_median": float(np.median([x["prompt_tokens"] for x in runs])),
        }
        if all("kl" in x for x in runs):
            result["modes"][mode].update(top1_agreement_with_full=float(np.mean([x["top1_agreement"] for x in runs])),
                                         kl_from_full=float(np.mean([x["kl"] for x in runs])))
    full = result["modes"].get("full")
    for mode in modes if full else []:
        if mode != "full":
            m = result["modes"][mode]
            result[f"f1_{mode}_over_full"] = m["f1"] / full["f1"] if full["f1"] else None
            result[f"ttft_full_over_{mode}"] = full["ttft_median_s"] / m["ttft_median_s"]
            result[f"agreement_{mode}_full"] = float(np.mean([r[mode]["text"] == r["full"]["text"] for r in rows]))
    return result


def evaluate(rag, questions: list[dict], modes: list[str], top_k: int, params, fidelity_tokens: int = 0,
             log=sys.stderr, settings: list[Setting] = ()) -> dict:
    """Every mode answers every question (exact match, F1, timings); with fidelity_tokens and `full` among the
    modes, every mode and every extra setting is also measured against `full` (rag.fidelity)."""
    measured = [parse_setting(m) for m in modes] + [s for s in settings if s.name not in modes]
    rows = []
    for n, q in enumerate(questions, 1):
        row = {"id": q["id"], "question": q["question"], "answers": q["answers"]}
        for mode in modes:
            answer = rag.ask(q["question"], top_k=top_k, mode=mode, params=params).result()
            row["retrieved"] = [s.doc_id for s in answer.sources]
            row[mode] = {"text": answer.text, "em": exact_match(answer.text, q["answers"]),
                         "f1": token_f1(answer.text, q["answers"]), "first_token_s": answer.first_token_s,
                         "ttft_s": answer.ttft_s, "decode_tokens_per_s": answer.decode_tokens_per_s,
                         "prompt_tokens": answer.prompt_tokens, "tiers": answer.tiers}
        row["gold_retrieved"] = bool(set(row["retrieved"]) & set(q["gold_doc_ids"]))
        if fidelity_tokens and "full" in modes:
            row["fidelity"] = fidelity.measure(rag, q["question"], measured, top_k, fidelity_tokens)
            for mode in modes:
                if mode != "full":
                    row[mode].update(top1_agreement=row["fidelity"][mode]["top1_agreement"],
                                     kl=row["fidelity"][mode]["kl"])
        rows.append(row)
        scores = " ".join(f"{m} f1 {row[m]['f1']:.2f} ttft {row[m]['first_token_s'] * 1e3:.0f} ms" for m in modes)
        scores += "".join(f"; {name} top-1 {m['top1_agreement']:.3f} kl {m['kl']:.4f}"
                          for name, m in row.get("fidelity", {}).items() if "kl" in m)
        print(f"[{n}/{len(questions)}] {q['id']}: gold retrieved {row['gold_retrieved']}; {scores}", file=log,
              flush=True)
    summary = summarize(rows, modes, top_k)
    if fidelity_tokens and "full" in modes:
        summary["fidelity"] = fidelity.summarize(rows, [s.name for s in measured])
    return {"summary": summary, "per_question": rows}


def table(summary: dict) -> str:
    k = summary["top_k"]
    lines = ["| mode | questions | exact match | token F1 | recall@%d | TTFT median ms | TTFT p90 ms | prefill TTFT "
             "median ms | decode tokens/s |" % k, "|---|---|---|---|---|---|---|---|---|"]
    for mode, m in summary["modes"].items():
        lines.append(f"| {mode} | {summary['questions']} | {m['exact_match']:.3f} | {m['f1']:.3f} | "
                     f"{summary[f'recall_at_{k}']:.3f} | {m['ttft_median_s'] * 1e3:.0f} | {m['ttft_p90_s'] * 1e3:.0f} | "
                     f"{m['prefill_ttft_median_s'] * 1e3:.0f} | {m['decode_tokens_per_s_median']:.1f} |")
    for mode in summary["modes"]:
        if summary.get(f"f1_{mode}_over_full") is not None:
            lines.append(f"\nF1({mode}) / F1(full) = {summary[f'f1_{mode}_over_full']:.3f}; TTFT median full / {mode} = "
                         f"{summary[f'ttft_full_over_{mode}']:.2f}x; answers identical to full: "
                         f"{summary[f'agreement_{mode}_full']:.1%}")
        m = summary["modes"][mode]
        if "kl_from_full" in m:
            lines.append(f"{mode} against full, teacher-forced on full's answers: top-1 agreement "
                         f"{m['top1_agreement_with_full']:.3f}, KL {m['kl_from_full']:.4f}")
    if "fidelity" in summary:
        lines.append("\n" + fidelity.table(summary["fidelity"]))
    return "\n".join(lines)


def main(args) -> int:
    from cascade_rag.engine import MODES, SamplingParams
    from .pipeline import RAG
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"--modes must list some of {', '.join(MODES)}, got {args.modes!r}")
    if args.fidelity_tokens < 0:
        raise ValueError(f"--fidelity-tokens must be at least 0, got {args.fidelity_tokens}")
    settings = [parse_setting(s) for s in (args.settings or "").split(",") if s.strip()]
    if (settings or args.plot) and not (args.fidelity_tokens and "full" in modes):
        raise ValueError("--settings and --plot need the fidelity measurement: full in --modes and --fidelity-tokens")
    questions = read_jsonl(args.questions, ("id", "question", "answers", "gold_doc_ids"))
    questions = questions[:args.limit] if args.limit else questions
    corpus = select_corpus(read_jsonl(args.corpus, ("id", "text")), questions, args.distractors, args.sample_seed)
    params = SamplingParams(max_new_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed)
    store = getattr(args, "store", None) or args.data_dir
    scratch = None if store else tempfile.mkdtemp(prefix="cascade-rag-eval-")
    try:
        with RAG(store or scratch, model=args.model, device=args.device, dtype=args.dtype,
                 passage_tokens=args.passage_tokens, overlap=args.overlap) as rag:
            began = time.perf_counter()
            report = rag.ingest(documents=corpus, progress=True)
            print(report.summary(), file=sys.stderr)
            for error in report.errors:
                print(f"cascade-rag: error: {error}", file=sys.stderr)
            results = evaluate(rag, questions, modes, args.top_k, params, args.fidelity_tokens, settings=settings)
            results["summary"].update(
                corpus_documents=len(corpus), corpus_passages=rag.stats()["passages"],
                distractors=args.distractors, sample_seed=args.sample_seed, device=rag.options.device, dtype=rag.options.dtype,
                max_new_tokens=args.max_tokens, fidelity_tokens=args.fidelity_tokens, ingest={
                    "documents": report.documents, "unchanged": len(report.unchanged), "passages": report.passages,
                    "prefilled": report.prefilled, "tokens": report.tokens, "kv_bytes": report.kv_bytes,
                    "seconds": report.seconds,
                    "passages_per_s": report.prefilled / report.seconds if report.seconds else None},
                total_s=time.perf_counter() - began)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    print(table(results["summary"]))
    print(json.dumps(results["summary"], indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    if args.plot:
        from .fidelity_plot import plot
        plot([results["summary"]], args.plot)
    return 0
