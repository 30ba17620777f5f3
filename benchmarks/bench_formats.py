"""`python -m cascade_rag.benchmarks.bench_formats`: KV formats (dtype, fp8, int4) on a GPU, for the Qwen3-0.6B and
Llama-3-8B shapes (random weights): bytes per token; time to first token with the chunks in GPU memory, in pinned
CPU memory, and from their files (streamed block by block with the question's prefill, engine.chunk_stream; the
files in the page cache, and dropped from it with posix_fadvise; and from the page cache with every layer loaded
before the question's graph, EngineOptions.stream_prefill off), beside our own full prefill; each tier's
effective GB/s (the chunks' bytes over the time the tier adds to the GPU tier's TTFT); the time of the disk tier's
load alone (every layer on the GPU, no prefill); decode tokens/s. Every ratio compares figures of one run."""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from cascade_rag.engine import LEVEL_DOCUMENT, LEVEL_SYSTEM, LLMEngine, SamplingParams
from cascade_rag.engine.chunk_format import load_file, save_file
from cascade_rag.engine.chunk_stream import ChunkStreamer
from cascade_rag.engine.file_io import FileSource
from cascade_rag.engine.kv_chunk import KV_FORMATS, kv_bytes_per_token

from .bench import timed, tokens
from .checkpoints import SHAPES, TOKENIZER_FILES

SHAPES_8B = {"llama3-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                               num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                               tie_word_embeddings=False, max_position_embeddings=40960, rope_theta=500000.0)}


def fast_checkpoint(shape: str, folder: Path, tokenizer: Path) -> Path:
    """A bf16 random checkpoint of the shape, its weights drawn on the GPU and saved with safetensors (no model
    built on the CPU: an 8B one takes seconds)."""
    from safetensors.torch import save_file as save_tensors
    from transformers import AutoConfig
    cfg = dict((SHAPES | SHAPES_8B)[shape])
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, bos_token_id=1, eos_token_id=2, **cfg)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    h, d, layers = cfg["hidden_size"], cfg["head_dim"], cfg["num_hidden_layers"]
    q, kv, inter = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d, cfg["intermediate_size"]
    shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], h), "model.norm.weight": (h,)}
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (cfg["vocab_size"], h)
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                       p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                       p + "mlp.down_proj.weight": (h, inter), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
        if model_type == "qwen3":
            shapes.update({p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,)})
    gen = torch.Generator("cuda").manual_seed(0)
    tensors = {n: (torch.ones(s, device="cuda") if len(s) == 1 else
                   torch.randn(s, device="cuda", generator=gen, dtype=torch.bfloat16) * 0.02).to(torch.bfloat16).cpu()
               for n, s in shapes.items()}
    save_tensors(tensors, folder / "model.safetensors")
    for f in TOKENIZER_FILES:
        if (tokenizer / f).exists():
            (folder / f).write_bytes((tokenizer / f).read_bytes())
    return folder


def drop_cache(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def suite(path: Path, contexts: list[int], formats: list[str], decode: bool, repeat: int, tmp: Path,
          streamer: ChunkStreamer, out) -> list[dict]:
    engine = LLMEngine(path, device="cuda", dtype="bf16")  # chunks packed below, one model for every format
    c = engine.config
    fp = engine.fingerprint("bench")
    weights = sum(p.nbytes for p in engine.model.parameters())
    after_load = engine.variant(stream_prefill=False)  # every layer loaded, then the question's graph
    level0 = engine.prefill_chunk(tokens(engine, 24, "system"), [], LEVEL_SYSTEM, fp)
    question = tokens(engine, 32, "question")
    one, rows = SamplingParams(max_new_tokens=1), []
    for context in contexts:
        n_docs = min(16, max(4, context // 2048))
        doc_tokens = (context - level0.length - 32) // n_docs
        plain = [engine.prefill_chunk(tokens(engine, doc_tokens, f"d{i}"), [level0], LEVEL_DOCUMENT, fp)
                 for i in range(n_docs)]
        full_ms = 1e3 * timed(lambda: engine.generate(question, one, [level0] + plain, "full"), "cuda", repeat)
        for fmt in formats:
            docs = [d.packed(fmt) for d in plain]
            chunks = [level0] + docs
            chunk_bytes = sum(c.nbytes for c in docs)
            row = {"shape": path.name, "format": fmt, "context_tokens": sum(c.length for c in chunks) + 32,
                   "passages": n_docs, "chunk_bytes": chunk_bytes,
                   "kv_bytes_per_token": kv_bytes_per_token(fmt, c.num_layers, c.num_kv_heads, c.head_dim, 2),
                   "full_ttft_ms": full_ms}
            row["gpu_ttft_ms"] = 1e3 * timed(lambda: engine.generate(question, one, chunks), "cuda", repeat)
            pinned = [replace(d.to("cpu"), keys=d.keys.cpu().pin_memory(), values=d.values.cpu().pin_memory())
                      for d in docs]
            row["cpu_ttft_ms"] = 1e3 * timed(lambda: engine.generate(
                question, one, [level0] + [d.to("cuda", non_blocking=True) for d in pinned]), "cuda", repeat)
            del pinned
            paths = [tmp / f"{fmt}-{i}.safetensors" for i in range(n_docs)]
            for d, p in zip(docs, paths):
                save_file(d, p)

            def streamed(over=engine):
                loaded = streamer.load([FileSource(p) for p in paths], fp, "cuda", fmt)
                return over.generate(question, one, [level0] + loaded)
            row["disk_ttft_ms"] = 1e3 * timed(streamed, "cuda", repeat)
            row["disk_then_graph_ttft_ms"] = 1e3 * timed(lambda: streamed(after_load), "cuda", repeat)

            def loaded():  # the same load, every layer on the GPU, with no prefill
                for chunk in streamer.load([FileSource(p) for p in paths], fp, "cuda", fmt):
                    chunk.arrival.wait_all()
            row["disk_load_ms"] = 1e3 * timed(loaded, "cuda", repeat)
            if fmt == "dtype":
                row["disk_whole_file_ttft_ms"] = 1e3 * timed(
                    lambda: engine.generate(question, one, [level0] + [load_file(p, fp, "cuda") for p in paths]),
                    "cuda", repeat)
            drop_cache(paths)
            torch.cuda.synchronize()
            began = time.perf_counter()
            streamed()
            torch.cuda.synchronize()
            row["disk_cold_ttft_ms"] = 1e3 * (time.perf_counter() - began)
            for tier in ("cpu", "disk", "disk_cold"):
                extra = row[f"{tier}_ttft_ms"] - row["gpu_ttft_ms"]
                row[f"{tier}_gb_per_s"] = chunk_bytes / extra / 1e6 if extra > 0 else None
            if decode:
                params = SamplingParams(max_new_tokens=128, ignore_eos=True)
                engine.generate(question, params, chunks)
                row["decode_tokens_per_s"] = statistics.median(
                    engine.generate(question, params, chunks).decode_tokens_per_s for _ in range(3))
                row["limit_tokens_per_s"] = 3.0e12 / (weights + chunk_bytes)
            for p in paths:
                p.unlink()
            rows.append(row)
            print(json.dumps(row), flush=True)
            out.write(json.dumps(row) + "\n")
            out.flush()
        del plain
    del engine
    torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| shape | context | format | KV bytes/token | full (ours) ms | cached GPU ms | pinned CPU ms | disk ms "
             "(page cache) | disk, loaded then graph ms | disk load alone ms | disk ms (dropped) | disk / full | "
             "CPU GB/s | disk GB/s | decode tok/s |",
             "|" + "---|" * 15]
    for r in rows:
        gbs = lambda k: f"{r[k]:.1f}" if r.get(k) else "n/a"  # noqa: E731
        lines.append(f"| {r['shape']} | {r['context_tokens']} | {r['format']} | {r['kv_bytes_per_token']:,.0f} | "
                     f"{r['full_ttft_ms']:.1f} | {r['gpu_ttft_ms']:.1f} | {r['cpu_ttft_ms']:.1f} | "
                     f"{r['disk_ttft_ms']:.1f} | {r['disk_then_graph_ttft_ms']:.1f} | {r['disk_load_ms']:.1f} | "
                     f"{r['disk_cold_ttft_ms']:.1f} | "
                     f"{r['disk_ttft_ms'] / r['full_ttft_ms']:.2f} | {gbs('cpu_gb_per_s')} | {gbs('disk_gb_per_s')} | "
                     f"{r.get('decode_tokens_per_s', 0):.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cascade_rag.benchmarks.bench_formats", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="qwen3-0.6b,llama3-8b")
    p.add_argument("--contexts", default="4096,16384,32768", help="per shape, comma-separated (default %(default)s)")
    p.add_argument("--contexts-8b", help="contexts of llama3-8b (default: --contexts)")
    p.add_argument("--formats", default=",".join(KV_FORMATS))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=8, help="threads of the streamed disk tier")
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--json", type=Path, required=True, help="rows as JSON lines, written as they are measured")
    args = p.parse_args(argv)
    formats = args.formats.split(",")
    streamer = ChunkStreamer(args.workers)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, open(args.json, "w") as out:
        for shape in args.shapes.split(","):
            contexts = args.contexts_8b if shape in SHAPES_8B and args.contexts_8b else args.contexts
            path = fast_checkpoint(shape, Path(tmp) / shape, args.tokenizer)
            rows += suite(path, [int(c) for c in contexts.split(",")], formats, shape not in SHAPES_8B, args.repeat,
                          Path(tmp), streamer, out)
            for f in path.glob("*.safetensors"):
                f.unlink()
    print(f"\n{torch.cuda.get_device_name()}\n\n{table(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
