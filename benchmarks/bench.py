"""`cascade-rag bench`: our engine against transformers, measured in the same run on the same device."""
import json
import statistics
import sys
import time

import torch

from cascade_rag.engine import (LEVEL_DOCUMENT, LEVEL_SYSTEM, LLMEngine, ModelConfig, SamplingParams, default_device,
                                default_dtype, default_prefill_batch_tokens)
from cascade_rag.engine.chunk_format import load_file, save_file

from .checkpoints import SHAPES, shape_checkpoint

QWEN3_06B = ModelConfig(architecture="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                        num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-6,
                        rope_theta=1e6, max_position=40960, tie_word_embeddings=True, qk_norm=True, qkv_bias=False)
FILLER = ("The committee met in the old library to review the harbour plans, the budget for the new bridge and "
          "the schedule of the spring festival. Several members asked for more detail on costs and timing. ")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeat: int) -> float:
    """Median wall time of fn() in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        sync(device)
        began = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def tokens(engine: LLMEngine, n: int, salt: str) -> list[int]:
    ids = engine.tokenizer.encode(f"{salt}: " + FILLER * (n // 30 + 2))
    return ids[:n]


def decode_rates(engine: LLMEngine, hf, new_tokens: int, repeat: int = 5) -> dict:
    """Decode tokens/s of ours and of transformers' generate, measured alternately (medians), so that a change
    in the machine's speed during the run affects both alike."""
    ids = engine.chat_ids([{"role": "user", "content": "Write a long story about a dragon who learns to sail."}])
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    x = torch.tensor([ids], device=engine.device)

    def hf_seconds(n):
        sync(engine.device)
        began = time.perf_counter()
        hf.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                    pad_token_id=hf.generation_config.eos_token_id)
        sync(engine.device)
        return time.perf_counter() - began
    engine.generate(ids, SamplingParams(max_new_tokens=4))
    hf_seconds(4)
    ours, theirs = [], []
    for _ in range(repeat):
        ours.append(engine.generate(ids, params).decode_tokens_per_s)
        theirs.append((new_tokens - 1) / (hf_seconds(new_tokens) - hf_seconds(1)))
    ours, theirs = statistics.median(ours), statistics.median(theirs)
    return {"ours_tokens_per_s": ours, "hf_tokens_per_s": theirs, "ratio": ours / theirs}


def ttft(engine: LLMEngine, hf, docs: int, doc_tokens: int, question_tokens: int, repeat: int) -> dict:
    fp = engine.fingerprint("bench")
    level0 = engine.prefill_chunk(engine.chat_ids([{"role": "system", "content": "Answer from the documents."}])[:-2],
                                  [], LEVEL_SYSTEM, fp)
    chunks = [level0] + [engine.prefill_chunk(tokens(engine, doc_tokens, f"doc {i}"), [level0], LEVEL_DOCUMENT, fp)
                         for i in range(docs)]
    question = tokens(engine, question_tokens, "question")
    one = SamplingParams(max_new_tokens=1)
    result = {"context_tokens": sum(c.length for c in chunks) + len(question)}
    for mode in ("cached", "full"):
        result[f"{mode}_ttft_ms"] = 1e3 * timed(lambda: engine.generate(question, one, chunks, mode), engine.device,
                                                 repeat)
    all_ids = torch.tensor([[t for c in chunks for t in c.token_ids] + question], device=engine.device)
    with torch.inference_mode():
        result["hf_full_ttft_ms"] = 1e3 * timed(lambda: hf(all_ids, logits_to_keep=1).logits[:, -1].argmax(), engine.device, repeat)
    result["full_over_cached"] = result["full_ttft_ms"] / result["cached_ttft_ms"]
    return result


def context_suite(engine: LLMEngine, hf, contexts, question_tokens: int, new_tokens: int, repeat: int,
                  tmpdir) -> list[dict]:
    """TTFT (full, cached from GPU/CPU/disk, transformers) and decode tokens/s against context length."""
    from pathlib import Path
    from cascade_rag.engine import KVChunk
    device, fp = engine.device, engine.fingerprint("bench")
    weight_bytes = sum(p.nbytes for p in engine.model.parameters())
    level0 = engine.prefill_chunk(tokens(engine, 24, "system"), [], LEVEL_SYSTEM, fp)
    question = tokens(engine, question_tokens, "question")
    rows = []
    for context in contexts:
        n_docs = min(16, max(4, context // 2048))
        doc_tokens = (context - level0.length - question_tokens) // n_docs
        docs = [engine.prefill_chunk(tokens(engine, doc_tokens, f"doc {i}"), [level0], LEVEL_DOCUMENT, fp)
                for i in range(n_docs)]
        chunks = [level0] + docs
        total = sum(c.length for c in chunks) + len(question)
        one = SamplingParams(max_new_tokens=1)
        row = {"context_tokens": total, "passages": n_docs}
        row["full_ttft_ms"] = 1e3 * timed(lambda: engine.generate(question, one, chunks, "full"), device, repeat)
        row["cached_gpu_ttft_ms"] = 1e3 * timed(lambda: engine.generate(question, one, chunks), device, repeat)
        pinned = [c.to("cpu") for c in docs]
        if device.startswith("cuda"):
            pinned = [KVChunk(c.level, c.token_ids, c.start, c.keys.pin_memory(), c.values.pin_memory(),
                              c.fingerprint) for c in pinned]
        row["cached_cpu_ttft_ms"] = 1e3 * timed(
            lambda: engine.generate(question, one, [level0] + [c.to(device, non_blocking=True) for c in pinned]),
            device, repeat)
        paths = [Path(tmpdir) / f"doc{i}.safetensors" for i in range(n_docs)]
        for c, p in zip(docs, paths):
            save_file(c, p)
        row["cached_disk_ttft_ms"] = 1e3 * timed(
            lambda: engine.generate(question, one, [level0] + [load_file(p, fp, device) for p in paths]),
            device, repeat)
        all_ids = torch.tensor([[t for c in chunks for t in c.token_ids] + question], device=device)
        with torch.inference_mode():
            row["hf_full_ttft_ms"] = 1e3 * timed(lambda: hf(all_ids, logits_to_keep=1).logits[:, -1].argmax(), device, repeat)
        del pinned
        params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
        engine.generate(question, params, chunks)
        row["ours_tokens_per_s"] = statistics.median(
            engine.generate(question, params, chunks).decode_tokens_per_s for _ in range(3))
        kv_bytes = total * engine.kv_bytes_per_token()
        row["limit_tokens_per_s"] = 3.0e12 / (weight_bytes + kv_bytes)
        row["ours_fraction_of_limit"] = row["ours_tokens_per_s"] / row["limit_tokens_per_s"]
        row["hf_dynamic_tokens_per_s"] = hf_decode_rate(hf, all_ids, new_tokens, device, {})
        rows.append(row)
        print(json.dumps(row), flush=True)
        del docs, chunks
    return rows


def ingest_rates(engine: LLMEngine, passages: int, passage_tokens: int, batch_tokens: int) -> dict:
    """Passage prefill throughput (the model part of ingestion): one passage per forward, and batched."""
    fp = engine.fingerprint("bench")
    level0 = engine.prefill_chunk(tokens(engine, 24, "system"), [], LEVEL_SYSTEM, fp)
    texts = [tokens(engine, passage_tokens, f"passage {i}") for i in range(passages)]
    per_batch = max(1, batch_tokens // passage_tokens)

    def one_by_one():
        for t in texts:
            engine.prefill_chunk(t, [level0], LEVEL_DOCUMENT, fp)

    def batched():
        for i in range(0, passages, per_batch):
            engine.prefill_chunks(texts[i:i + per_batch], [level0], LEVEL_DOCUMENT, fp)
    result = {"passages": passages, "passage_tokens": passage_tokens, "batch_passages": per_batch}
    result["sequential_passages_per_s"] = passages / timed(one_by_one, engine.device, 2)
    result["batched_passages_per_s"] = passages / timed(batched, engine.device, 2)
    print(json.dumps(result), flush=True)
    return result


def hf_decode_rate(hf, ids, new_tokens: int, device: str, options: dict) -> float:
    def run(n):
        return lambda: hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                   pad_token_id=0, **options)
    whole = timed(run(new_tokens), device, 2)
    first = timed(run(1), device, 2)
    return (new_tokens - 1) / (whole - first)


def print_context_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}\n")
    print("| context | passages | TTFT full (ours) ms | cached GPU ms | cached CPU ms | cached disk ms | "
          "transformers full ms | full / cached GPU | decode ours tok/s | % of limit | transformers dynamic "
          "tok/s | transformers static compiled tok/s |")
    print("|" + "---|" * 12)
    for r in rows:
        static = r.get("hf_static_tokens_per_s")
        print(f"| {r['context_tokens']} | {r['passages']} | {r['full_ttft_ms']:.1f} | {r['cached_gpu_ttft_ms']:.1f} | "
              f"{r['cached_cpu_ttft_ms']:.1f} | {r['cached_disk_ttft_ms']:.1f} | {r['hf_full_ttft_ms']:.1f} | "
              f"{r['full_ttft_ms'] / r['cached_gpu_ttft_ms']:.0f}x | {r['ours_tokens_per_s']:.0f} | "
              f"{100 * r['ours_fraction_of_limit']:.0f}% | {r['hf_dynamic_tokens_per_s']:.0f} | "
              f"{'%.0f' % static if static else 'n/a'} |")


def main(args) -> int:
    from transformers import AutoModelForCausalLM
    if args.shape:
        import tempfile
        from cascade_rag.engine import embedded_model_path
        args.model = shape_checkpoint(args.shape, args.shape_dir or tempfile.mkdtemp(),
                                       args.tokenizer or embedded_model_path())
    device = args.device or default_device()
    engine = LLMEngine(args.model, device=device, dtype=args.dtype or default_dtype(device))
    if args.ingest:
        result = ingest_rates(engine, args.ingest, args.doc_tokens,
                              args.batch_tokens or default_prefill_batch_tokens(engine.device))
        print(f"| passage prefill ({result['passage_tokens']} tokens) | one at a time passages/s | batched "
              f"({result['batch_passages']} a batch) passages/s |\n|---|---|---|\n| {engine.model_path.name}, "
              f"{engine.dtype}, {engine.device} | {result['sequential_passages_per_s']:.1f} | "
              f"{result['batched_passages_per_s']:.1f} |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return 0
    if args.contexts:
        import tempfile
        hf = AutoModelForCausalLM.from_pretrained(str(engine.model_path), dtype=engine.dtype).to(engine.device).eval()
        contexts = [int(c) for c in args.contexts.split(",")]
        with tempfile.TemporaryDirectory() as tmp:
            rows = context_suite(engine, hf, contexts, 32, args.new_tokens, args.repeat, tmp)
        if args.static_contexts:
            for row in rows:
                if row["context_tokens"] // 1024 in [int(c) // 1024 for c in args.static_contexts.split(",")]:
                    ids = torch.randint(0, 1000, (1, row["context_tokens"]), device=engine.device)
                    row["hf_static_tokens_per_s"] = hf_decode_rate(hf, ids, args.new_tokens, engine.device,
                                                                   {"cache_implementation": "static"})
                    print(json.dumps(row), flush=True)
        name = args.shape or engine.model_path.name
        print_context_table(rows, f"{name}, {engine.dtype}, {torch.cuda.get_device_name() if engine.device.startswith('cuda') else 'cpu'}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"model": name, "rows": rows}, f, indent=2)
        return 0
    hf = AutoModelForCausalLM.from_pretrained(str(engine.model_path), dtype=engine.dtype).to(engine.device).eval()
    device_name = torch.cuda.get_device_name() if engine.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    print(f"# cascade-rag bench: {engine.model_path.name}, {engine.dtype}, {device_name}, batch size 1\n", flush=True)
    results = {"device": device_name, "model": engine.model_path.name, "dtype": str(engine.dtype)}

    results["decode"] = decode = decode_rates(engine, hf, args.new_tokens)
    print("| decode | ours tokens/s | transformers generate tokens/s | ours / transformers |\n|---|---|---|---|")
    print(f"| {args.new_tokens} new tokens | {decode['ours_tokens_per_s']:.1f} | {decode['hf_tokens_per_s']:.1f} | "
          f"{decode['ratio']:.2f}x |\n", flush=True)

    results["ttft"] = t = ttft(engine, hf, args.docs, args.doc_tokens, args.question_tokens, args.repeat)
    print("| time to first token | context tokens | cached ms | full (ours) ms | transformers full ms | full / cached |")
    print("|---|---|---|---|---|---|")
    print(f"| level 0 + {args.docs} x {args.doc_tokens}-token documents + {args.question_tokens}-token question | "
          f"{t['context_tokens']} | {t['cached_ttft_ms']:.1f} | {t['full_ttft_ms']:.1f} | {t['hf_full_ttft_ms']:.1f} | "
          f"{t['full_over_cached']:.1f}x |\n")

    results["kv_bytes_per_token"] = sizes = {
        engine.model_path.name: engine.kv_bytes_per_token(),
        "Qwen3-0.6B shape (bf16)": QWEN3_06B.kv_bytes_per_token(2),
    }
    print("| stored chunk | KV bytes per token |\n|---|---|")
    for name, size in sizes.items():
        print(f"| {name} ({engine.dtype if name == engine.model_path.name else 'torch.bfloat16'}) | "
              f"{size:,} ({size / 1024:.1f} KiB) |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def add_arguments(parser) -> None:
    parser.add_argument("--contexts", help="comma-separated context lengths: run the context suite (GPU)")
    parser.add_argument("--static-contexts", help="contexts at which to also time transformers' static cache")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="bench a random-weight checkpoint of this shape")
    parser.add_argument("--shape-dir", help="where to keep the random checkpoint")
    parser.add_argument("--tokenizer", help="folder with tokenizer files for --shape (default: the embedded model)")
    parser.add_argument("--ingest", type=int, metavar="N", help="time the prefill of N passages (ingestion)")
    parser.add_argument("--batch-tokens", type=int,
                        help="passage tokens per batch for --ingest (default: as ingestion, 2048 on CPU, 8192 on GPU)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens decoded per timing (default 64)")
    parser.add_argument("--docs", type=int, default=5, help="stored chunks per request (default 5)")
    parser.add_argument("--doc-tokens", type=int, default=200, help="tokens of each passage (default 200)")
    parser.add_argument("--question-tokens", type=int, default=20, help="tokens of the question (default 20)")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions; the median is kept (default 5)")
    parser.add_argument("--json", help="also write the results to this JSON file")


if __name__ == "__main__":
    import argparse
    from cascade_rag.rag.cli_options import add_model_options
    parser = argparse.ArgumentParser(prog="python -m cascade_rag.benchmarks.bench", description=__doc__.split("\n\n")[0])
    add_model_options(parser)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
