"""`python -m cascade_rag.benchmarks.bench_packed [--contexts 4096,32768] [--queries 1] [--quick] [--json PATH]`: chunk
attention over packed chunks (fp8, int4) against the same chunks in bf16, on the GPU, each format at its best launch
settings: a decode step (one query: KernelOptions.decode, packed_decode) or a question's prefill (--queries 32:
prefill, packed_prefill).

The cases are bench_kernels' (Qwen3-0.6B: 16 q heads, 8 KV heads, head_dim 128; context chunks plus a bf16 own
chunk), the context chunks quantised with kernels.kv_quant. Every format is timed over the same grid of launch
settings (KV block, warps, pipeline depth, programs per SM, register cap: 0 for the compiler's choice), so that a
ratio compares each format at its best; the default settings' time is printed beside it. GPU time as in
bench_kernels (a CUDA graph of calls over copies of the inputs larger than L2). Effective GB/s counts the bytes each
format stores (codes and parameters)."""
import argparse
import itertools
import json
from dataclasses import replace

import torch
import triton

from cascade_rag.kernels import chunk_attention as ca
from cascade_rag.kernels.kv_quant import PackedKV, dequantize, quantize
from cascade_rag.kernels.options import DEFAULT_KERNELS

from .bench_kernels import CONTEXTS, D, SWEEP_BYTES, decode_case, gpu_s

FORMATS = ("bf16", "fp8", "int4")
# block_n, warps, stages, programs/SM, max_registers (168: 6 programs of 2 warps or 3 of 4 fit an SM, where the
# compiler takes 225-255 registers and so 4 or 2)
GRID = list(itertools.product((16, 32), (2, 4), (3, 4), (2, 4), (0, 168)))
QUICK_GRID = list(itertools.product((16, 32), (2,), (3,), (2, 4, 6), (0, 168)))  # --quick: around the H100's winners
PREFILL_GRID = list(itertools.product((16, 32), (4, 8), (2, 3), (2, 4, 8), (0,)))  # a question's prefill
QUICK_PREFILL_GRID = list(itertools.product((16, 32), (4,), (2, 3), (2, 3, 4), (0, 168)))


def packed_case(total: int, chunks: int, fmt: str, seed: int, num_q: int = 1):
    """bench_kernels' decode case (num_q queries) with its context chunks in `fmt` (the own chunk stays bf16)."""
    q, keys, values = decode_case(total, chunks, seed, num_q)
    if fmt != "bf16":
        keys = [quantize(k, fmt, True) for k in keys[:-1]] + keys[-1:]
        values = [quantize(v, fmt, False) for v in values[:-1]] + values[-1:]
    return q, keys, values


def stored_bytes(keys, values) -> int:
    return sum(t.nbytes if isinstance(t, PackedKV) else t.numel() * t.element_size() for t in keys + values)


def cases(total: int, chunks: int, fmt: str, num_q: int):
    first = packed_case(total, chunks, fmt, 0, num_q)
    n = max(2, min(64, SWEEP_BYTES // stored_bytes(first[1], first[2])))
    return [first] + [packed_case(total, chunks, fmt, i, num_q) for i in range(1, n)]


def calls(inputs, options):
    scale = D ** -0.5
    return [lambda q=q, k=k, v=v: ca.chunk_attention(q, k, v, scale, options=options) for q, k, v in inputs]


def error(inputs) -> float:
    """Largest difference from the reference over the same (dequantised) chunks."""
    q, keys, values = inputs[0]
    ours = ca.chunk_attention(q, keys, values, D ** -0.5).float()
    plain = ca.chunk_attention_ref(q, [dequantize(k, q.dtype) if isinstance(k, PackedKV) else k for k in keys],
                                   [dequantize(v, q.dtype) if isinstance(v, PackedKV) else v for v in values],
                                   D ** -0.5).float()
    return (ours - plain).abs().max().item()


def tuned(s: tuple, num_q: int):
    """The kernel options of grid setting s: the decode kernel's (one query) or the question prefill's."""
    fields = dict(block_n=s[0], num_warps=s[1], num_stages=s[2], programs_per_sm=s[3], max_registers=s[4])
    if num_q == 1:
        t = replace(DEFAULT_KERNELS.decode, **fields)
        return replace(DEFAULT_KERNELS, decode=t, packed_decode=t)
    t = replace(DEFAULT_KERNELS.prefill, **fields)
    return replace(DEFAULT_KERNELS, prefill=t, packed_prefill=t)


def bench(total: int, chunks: int, fmt: str, grid: list[tuple], num_q: int = 1) -> dict:
    inputs = cases(total, chunks, fmt, num_q)
    nbytes = stored_bytes(inputs[0][1], inputs[0][2])
    default_us = gpu_s(calls(inputs, DEFAULT_KERNELS)) * 1e6
    timings = {}
    for s in grid:
        try:
            options = tuned(s, num_q)
            timings[s] = gpu_s(calls(inputs, options), reps=5) * 1e6
        except Exception as e:  # out of shared memory and the like
            print(f"{fmt} {total} {s}: {type(e).__name__}: {str(e)[:100]}")
    best = min(timings, key=timings.get)
    top = sorted(timings, key=timings.get)[:5]
    return dict(context=total, format=fmt, queries=num_q, bytes=nbytes, default_us=default_us, best_us=timings[best],
                best=dict(zip(("block_n", "num_warps", "num_stages", "programs_per_sm", "max_registers"), best)),
                gb_per_s=nbytes / timings[best] / 1e3, top5={str(s): round(timings[s], 1) for s in top},
                max_abs_err=error(inputs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", default="4096,32768")
    p.add_argument("--queries", type=int, default=1, help="1: a decode step; more: a question's prefill")
    p.add_argument("--quick", action="store_true", help="a smaller grid of launch settings")
    p.add_argument("--json")
    args = p.parse_args()
    wanted = [int(c) for c in args.contexts.split(",")]
    rows = []
    for total, chunks in [c for c in CONTEXTS if c[0] in wanted]:
        for fmt in FORMATS:
            grid = (QUICK_GRID if args.quick else GRID) if args.queries == 1 else (
                QUICK_PREFILL_GRID if args.quick else PREFILL_GRID)
            rows.append(bench(total, chunks, fmt, grid, args.queries))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}\n")
    print("| context | format | bytes | default us | best us | best settings | GB/s | bf16 best / best |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        bf16 = next(x for x in rows if x["context"] == r["context"] and x["format"] == "bf16")
        b = r["best"]
        print(f"| {r['context']} | {r['format']} | {r['bytes'] / 1e6:.1f} MB | {r['default_us']:.1f} | "
              f"{r['best_us']:.1f} | {b['block_n']}/{b['num_warps']}w/{b['num_stages']}s/{b['programs_per_sm']}p/"
              f"{b['max_registers'] or '-'}r | "
              f"{r['gb_per_s']:.0f} | {bf16['best_us'] / r['best_us']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
