"""`python -m cascade_rag.benchmarks.tune_recompute [--json PATH]`: the attention of EPIC's recompute (each passage's
first tokens over the passages before it, engine.recompute_graph) on the GPU, as its CUDA graph launches it
(chunk_attention_table under key limits), in the default row tiles of 64 and over a grid of the long prefill's
settings (KernelOptions.long_prefill: row tiles of 128 rows and more); each result checked against the PyTorch
reference. Qwen3-0.6B heads (16 q, 8 KV, head_dim 128), bf16; GPU time as in bench_kernels (CUDA-graph replays
over copies of the inputs larger than L2)."""
import argparse
import itertools
import json
from dataclasses import asdict, replace

import torch

from cascade_rag.kernels import chunk_attention as ca
from cascade_rag.kernels.options import DEFAULT_KERNELS, KernelOptions, LongPrefillTuning

from .bench_kernels import D, HKV, HQ, copies, gpu_s

LEVEL0 = 24
CASES = [(4096, 4, 64), (16384, 8, 64), (32768, 16, 64), (32768, 16, 16)]  # (context, passages, tokens a passage)
MAX_CHUNKS = 63  # the graph's table slots (EngineOptions.graph_max_chunks)


def layout(context: int, passages: int, prefix: int, seed: int, device: str = "cuda"):
    """EPIC's recompute inputs: the context chunks (level 0, then each passage's stored rows after its first
    `prefix`), the recomputed rows' own buffer, the queries rotated per chunk and each one's key limit."""
    g = torch.Generator(device=device).manual_seed(seed)
    doc = (context - LEVEL0) // passages

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=torch.bfloat16, generator=g)
    lengths = [LEVEL0] + [doc - prefix] * passages
    keys, values = [rand(n, HKV, D) for n in lengths], [rand(n, HKV, D) for n in lengths]
    m = passages * prefix
    own_k, own_v = rand(m, HKV, D), rand(m, HKV, D)
    limits = torch.tensor([LEVEL0 + p * (doc - prefix) for p in range(passages) for _ in range(prefix)],
                          dtype=torch.int64, device=device)
    q = rand(len(lengths) + 1, m, HQ, D)
    return keys, values, own_k, own_v, q, limits


def calls(context: int, passages: int, prefix: int, options: KernelOptions, device: str = "cuda"):
    """One call over each copy of the inputs, and the first copy's inputs."""
    out, first = [], None
    for i in range(copies(2 * context * HKV * D * 2)):
        keys, values, own_k, own_v, q, limits = layout(context, passages, prefix, i, device)
        first = first or (keys, values, own_k, own_v, q, limits)
        m = own_k.shape[0]
        table = torch.from_numpy(ca.chunk_tables([(k[None], v[None]) for k, v in zip(keys, values)], own_k[None], own_v[None], MAX_CHUNKS)[0])
        table = table.to(device)
        aligned = bool((table[:4 * MAX_CHUNKS] % 16 == 0).all())
        work = ca.decode_workspace(m, HQ, D, HKV, context, device, aligned, options)
        pad = torch.zeros(MAX_CHUNKS - len(keys) - 1, m, HQ, D, device=device, dtype=torch.bfloat16)
        queries = torch.cat((pad, q))  # the padding chunks' rotations, as rope_store writes them
        out.append(lambda queries=queries, own_k=own_k, own_v=own_v, table=table, work=work, limits=limits:
                   ca.chunk_attention_table(queries, own_k, own_v, table, D ** -0.5, work, options=options,
                                            limits=limits))
    return out, first


def error(call, first) -> float:
    """Largest deviation from the reference: a query sees the context keys below its limit and the own rows up to
    its own, each chunk's keys with that chunk's rotation of it."""
    keys, values, own_k, own_v, q, limits = first
    m, context = own_k.shape[0], sum(k.shape[0] for k in keys)
    position = torch.arange(context + m, device=q.device)
    visible = (position[None, :] < limits[:, None]) | (
        (position[None, :] >= context) & (position[None, :] <= context + torch.arange(m, device=q.device)[:, None]))
    rows = q.float().view(q.shape[0], m, HKV, HQ // HKV, D)
    s = torch.cat([torch.einsum("mhgd,nhd->hgmn", rows[c], k.float()) for c, k in enumerate(keys + [own_k])], -1)
    p = torch.softmax((s * D ** -0.5).masked_fill(~visible, float("-inf")), -1)
    ref = torch.einsum("hgmn,nhd->mhgd", p, torch.cat(values + [own_v]).float()).reshape(m, HQ, D)
    return (call().float() - ref).abs().max().item()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cascade_rag.benchmarks.tune_recompute", description=__doc__)
    p.add_argument("--json")
    p.add_argument("--quick", action="store_true", help="4K and 32K with 64 tokens a passage, pipelines of 2")
    args = p.parse_args(argv)
    off = replace(DEFAULT_KERNELS, long_prefill=replace(DEFAULT_KERNELS.long_prefill, min_rows=0))
    grid = list(itertools.product((128,), (32, 64), (4, 8), (2, 3), (1, 2), (256,)))
    if args.quick:
        grid = [s for s in grid if s[3] == 2]
    results = []
    for context, passages, prefix in CASES[::2] if args.quick else CASES:
        label = f"{context} tokens, {passages} passages x {prefix}"
        base_calls, first = calls(context, passages, prefix, off)
        base = gpu_s(base_calls, reps=5)
        print(f"{label}: row tiles of 64 {base * 1e6:.1f} us, error {error(base_calls[0], first):.4f}", flush=True)
        row = dict(case=label, tiles64_us=base * 1e6, settings=[])
        for block_m, block_n, warps, stages, pps, min_split in grid:
            tuning = LongPrefillTuning(block_n=block_n, num_warps=warps, num_stages=stages, programs_per_sm=pps,
                                       min_split=min_split, block_m=block_m, min_rows=1)
            options = replace(DEFAULT_KERNELS, long_prefill=tuning)
            try:
                these, _ = calls(context, passages, prefix, options)
                t = gpu_s(these, reps=5)
                err = error(these[0], first)
            except Exception as e:  # out of shared memory and the like
                print(f"  {tuning}: {type(e).__name__}: {str(e)[:100]}")
                continue
            row["settings"].append(dict(asdict(tuning), us=t * 1e6, error=err))
        row["settings"].sort(key=lambda r: r["us"])
        for r in row["settings"][:5]:
            print(f"  {r['us']:.1f} us ({base / (r['us'] * 1e-6):.2f}x), error {r['error']:.4f}: "
                  f"{ {k: v for k, v in r.items() if k not in ('us', 'error')} }", flush=True)
        results.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), default=asdict(DEFAULT_KERNELS.long_prefill),
                           cases=results), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
