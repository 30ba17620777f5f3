"""`cascade-rag bench`: our engine against transformers, measured in the same run on the same device."""
import json
import statistics
import sys
import time

import torch

from engine import LEVEL_DOCUMENT, LEVEL_SYSTEM, LLMEngine, ModelConfig, SamplingParams

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


def decode_rates(engine: LLMEngine, hf, new_tokens: int) -> dict:
    ids = engine.chat_ids([{"role": "user", "content": "Write a long story about a dragon who learns to sail."}])
    params = SamplingParams(max_new_tokens=new_tokens)
    engine.generate(ids, SamplingParams(max_new_tokens=4))
    ours = statistics.median(engine.generate(ids, params).decode_tokens_per_s for _ in range(3))
    x = torch.tensor([ids], device=engine.device)

    def hf_generate(n):
        return lambda: hf.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                   pad_token_id=hf.generation_config.eos_token_id)
    first = timed(hf_generate(1), engine.device, 3)
    whole = timed(hf_generate(new_tokens), engine.device, 3)
    theirs = (new_tokens - 1) / (whole - first)
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
        result["hf_full_ttft_ms"] = 1e3 * timed(lambda: hf(all_ids).logits[:, -1].argmax(), engine.device, repeat)
    result["full_over_cached"] = result["full_ttft_ms"] / result["cached_ttft_ms"]
    return result


def main(args) -> int:
    from transformers import AutoModelForCausalLM
    engine = LLMEngine(args.model, device=args.device, dtype=args.dtype)
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
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--docs", type=int, default=5)
    parser.add_argument("--doc-tokens", type=int, default=200)
    parser.add_argument("--question-tokens", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="also write the results to this JSON file")


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--device")
    parser.add_argument("--dtype")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
