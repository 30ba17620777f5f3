"""`python -m rag.bench_kernels [--json PATH] [--tune]`: the Triton kernels against PyTorch on the GPU.

Chunk attention at decode (Qwen3-0.6B: 16 q heads, 8 KV heads, head_dim 128, bf16) over contexts split into
chunks plus a small level-2 chunk, against SDPA over the pre-concatenated KV; fused RMSNorm + QKV at one row
against the unfused PyTorch ops. Times are medians of triton.testing.do_bench (CUDA events, L2 flushed).
"""
import argparse
import itertools
import json
import time

import torch
import torch.nn.functional as F
import triton
import triton.testing

from kernels import chunk_attention as ca
from kernels import fused_rmsnorm_qkv as fr

PEAK_BYTES_PER_S = 3.0e12
HQ, HKV, D = 16, 8, 128
OWN = 37  # tokens in the request's own (level-2) chunk
CONTEXTS = [(1024, 4), (4096, 8), (16384, 16), (32768, 16)]  # (total KV length, context chunks)
RMSNORM_SHAPES = {  # name: (hidden, Hq, Hkv, D, bias, q/k norm)
    "Qwen3-0.6B": (1024, 16, 8, 128, False, True),
    "Qwen2-0.5B": (896, 14, 2, 64, True, False),
}


def median_s(fn, rep=200) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median") * 1e-3


def host_s(fn, n=300) -> float:
    """Wall time per call of back-to-back calls: the host's launch cost when it exceeds the GPU time."""
    fn()
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - began) / n


def decode_case(total: int, chunks: int):
    g = torch.Generator().manual_seed(total)
    weights = torch.rand(chunks, generator=g) + 0.5
    lengths = (weights / weights.sum() * (total - OWN)).long()
    lengths[-1] += total - OWN - lengths.sum()
    layers = 2  # each chunk is stored [layers, n, Hkv, D]; attention reads layer 1 in place
    keys = [torch.randn(layers, int(n), HKV, D, device="cuda", dtype=torch.bfloat16)[1] for n in lengths]
    values = [torch.randn(layers, int(n), HKV, D, device="cuda", dtype=torch.bfloat16)[1] for n in lengths]
    own_k = torch.randn(layers, 512, HKV, D, device="cuda", dtype=torch.bfloat16)
    own_v = torch.randn(layers, 512, HKV, D, device="cuda", dtype=torch.bfloat16)
    keys.append(own_k[1, :OWN])
    values.append(own_v[1, :OWN])
    q = torch.randn(1, 1, HQ, D, device="cuda", dtype=torch.bfloat16).expand(chunks + 1, -1, -1, -1)
    return q, keys, values


def bench_decode(total: int, chunks: int) -> dict:
    q, keys, values = decode_case(total, chunks)
    scale = D ** -0.5
    ours = lambda: ca.chunk_attention(q, keys, values, scale)  # noqa: E731
    k = torch.cat(keys).transpose(0, 1).unsqueeze(0).contiguous()  # [1, Hkv, T, D]
    v = torch.cat(values).transpose(0, 1).unsqueeze(0).contiguous()
    qs = q[0].transpose(0, 1).unsqueeze(0)  # [1, Hq, 1, D]
    k_rep, v_rep = k.repeat_interleave(HQ // HKV, 1), v.repeat_interleave(HQ // HKV, 1)
    sdpa_gqa = lambda: F.scaled_dot_product_attention(qs, k, v, scale=scale, enable_gqa=True)  # noqa: E731
    sdpa_rep = lambda: F.scaled_dot_product_attention(qs, k_rep, v_rep, scale=scale)  # noqa: E731
    error = (ours().float() - sdpa_gqa()[0].transpose(0, 1).float()).abs().max().item()
    t, t_gqa, t_rep = median_s(ours), median_s(sdpa_gqa), median_s(sdpa_rep)
    nbytes = 2 * total * HKV * D * 2
    return dict(context=total, chunks=chunks + 1, us=t * 1e6, tb_per_s=nbytes / t / 1e12,
                peak_fraction=nbytes / t / PEAK_BYTES_PER_S, sdpa_gqa_us=t_gqa * 1e6, sdpa_repeat_us=t_rep * 1e6,
                speedup_vs_sdpa=min(t_gqa, t_rep) / t, host_us=host_s(ours) * 1e6, max_abs_err=error)


def rmsnorm_case(hidden, hq, hkv, d, bias, qk):
    qkv_dim = (hq + 2 * hkv) * d

    def rand(*shape, mean=0.0, std=1.0):
        return (mean + std * torch.randn(*shape, device="cuda")).to(torch.bfloat16)
    return (rand(1, hidden), rand(hidden, mean=1, std=0.1), 1e-6, rand(qkv_dim, hidden, std=hidden ** -0.5),
            rand(qkv_dim, std=0.1) if bias else None, hq, hkv, d,
            rand(d, mean=1, std=0.1) if qk else None, rand(d, mean=1, std=0.1) if qk else None, 1e-6)


def bench_rmsnorm(name: str) -> dict:
    args = rmsnorm_case(*RMSNORM_SHAPES[name])
    fused = lambda: fr.rmsnorm_qkv(*args, impl="triton")  # noqa: E731
    unfused = lambda: fr.rmsnorm_qkv_ref(*args)  # noqa: E731
    error = max((a.float() - b.float()).abs().max().item() for a, b in zip(fused(), unfused()))
    t, t_ref = median_s(fused), median_s(unfused)
    nbytes = args[3].numel() * 2
    return dict(model=name, hidden=args[0].shape[1], us=t * 1e6, unfused_us=t_ref * 1e6, speedup=t_ref / t,
                tb_per_s=nbytes / t / 1e12, host_us=host_s(fused) * 1e6, unfused_host_us=host_s(unfused) * 1e6,
                max_abs_err=error)


def tune() -> dict:
    """Sweep the decode and GEMV launch settings; print the best per size and return everything."""
    results = {"decode": [], "rmsnorm": []}
    default = dict(ca.TUNING)
    for total, chunks in CONTEXTS:
        q, keys, values = decode_case(total, chunks)
        rows = []
        for bn, nw, ns, pps in itertools.product((32, 64, 128), (2, 4, 8), (2, 3, 4), (1, 2, 4)):
            ca.TUNING.update(block_n=bn, num_warps=nw, num_stages=ns, programs_per_sm=pps)
            try:
                t = median_s(lambda: ca.chunk_attention(q, keys, values, 0.1), rep=40)
            except Exception as e:  # out of shared memory and the like
                print(f"tune decode {total} {ca.TUNING}: {type(e).__name__}")
                continue
            rows.append(dict(context=total, **ca.TUNING, us=t * 1e6))
        rows.sort(key=lambda r: r["us"])
        print("best decode", total, rows[:3], flush=True)
        results["decode"] += rows
    ca.TUNING.clear()
    ca.TUNING.update(default)
    default = dict(fr.TUNING)
    for name in RMSNORM_SHAPES:
        args = rmsnorm_case(*RMSNORM_SHAPES[name])
        rows = []
        for heads, bk, nw in itertools.product((1, 2, 4), (64, 128, 256), (2, 4, 8)):
            if heads * args[7] * bk > 256 * 32 * nw:  # more than 256 accumulator registers a thread
                continue
            fr.TUNING.update(heads=heads, block_k=bk, num_warps=nw)
            t = median_s(lambda: fr.rmsnorm_qkv(*args, impl="triton"), rep=40)
            rows.append(dict(model=name, **fr.TUNING, us=t * 1e6))
        rows.sort(key=lambda r: r["us"])
        print("best rmsnorm", name, rows[:3], flush=True)
        results["rmsnorm"] += rows
    fr.TUNING.clear()
    fr.TUNING.update(default)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--tune", action="store_true", help="sweep launch settings first")
    args = parser.parse_args()
    device = torch.cuda.get_device_name()
    report = dict(device=device, torch=torch.__version__, triton=triton.__version__)
    if args.tune:
        report["tune"] = tune()
    report["decode"] = [bench_decode(total, chunks) for total, chunks in CONTEXTS]
    report["rmsnorm_qkv"] = [bench_rmsnorm(name) for name in RMSNORM_SHAPES]

    print(f"\n{device}, torch {torch.__version__}, triton {triton.__version__}\n")
    print("Chunk attention, decode, Qwen3-0.6B shape (16/8 heads, D=128), bf16, 1 query\n")
    print("| context | chunks | ours (us) | GB/s | of 3.0 TB/s | SDPA gqa (us) | SDPA repeat (us) | vs best SDPA "
          "| host us/call |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in report["decode"]:
        print(f"| {r['context']} | {r['chunks']} | {r['us']:.1f} | {r['tb_per_s'] * 1e3:.0f} | "
              f"{r['peak_fraction']:.0%} | {r['sdpa_gqa_us']:.1f} | {r['sdpa_repeat_us']:.1f} | "
              f"{r['speedup_vs_sdpa']:.2f}x | {r['host_us']:.1f} |")
    print("\nFused RMSNorm + QKV (+ bias / q,k norm), 1 row, bf16\n")
    print("| model | hidden | fused (us) | unfused (us) | speedup | weight GB/s | host us/call fused | unfused |")
    print("|---|---|---|---|---|---|---|---|")
    for r in report["rmsnorm_qkv"]:
        print(f"| {r['model']} | {r['hidden']} | {r['us']:.1f} | {r['unfused_us']:.1f} | {r['speedup']:.2f}x | "
              f"{r['tb_per_s'] * 1e3:.0f} | {r['host_us']:.1f} | {r['unfused_host_us']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
