"""`python -m cascade_rag.benchmarks.bench_kernels [--json PATH] [--tune [KERNELS]]`: the Triton kernels against
PyTorch on the GPU.

Chunk attention at decode (Qwen3-0.6B: 16 q heads, 8 KV heads, head_dim 128, bf16) over contexts split into
chunks plus a small level-2 chunk, against SDPA over the pre-concatenated KV; and the linear layers of a
decode step (RMSNorm + QKV, RMSNorm + gate/up + SiLU * up, o_proj and down with the residual) at one row
against the unfused PyTorch ops.

GPU time: many calls, each over its own copy of the inputs (together over 256 MB, so the 50 MB L2 holds none
of them), captured in one CUDA graph and replayed; the median replay over the number of calls. Our kernels
are launched as the engine launches them, with programmatic dependent launch on Hopper (a kernel may start
before the ones ahead of it have finished, and waits for them; here those are the previous calls), and also
timed without it. Host time:
wall time per call of back-to-back eager calls, which is what a call costs when the host is the bottleneck.
"""
import argparse
import dataclasses
import itertools
import json
import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
import triton

from cascade_rag.kernels import chunk_attention as ca
from cascade_rag.kernels import linear as lin
from cascade_rag.kernels.options import DEFAULT_KERNELS, KernelOptions

PEAK_BYTES_PER_S = 3.0e12
SWEEP_BYTES = 256 << 20
HQ, HKV, D = 16, 8, 128
OWN = 37  # tokens in the request's own (level-2) chunk
QUESTION = 32  # queries of the question prefill (--tune)
CONTEXTS = [(1024, 4), (4096, 8), (16384, 16), (32768, 16)]  # (total KV length, context chunks)
LINEAR_SHAPES = {  # name: (K, N, RMSNorm before, bias, gated, residual)
    "Qwen3-0.6B RMSNorm+QKV": (1024, 4096, True, False, False, False),
    "Qwen2-0.5B RMSNorm+QKV+bias": (896, 1152, True, True, False, False),
    "Qwen3-0.6B RMSNorm+gate/up+SiLU*up": (1024, 3072, True, False, True, False),
    "Qwen3-0.6B o_proj+residual": (2048, 1024, False, False, False, True),
    "Qwen3-0.6B down+residual": (3072, 1024, False, False, False, True),
}


def gpu_s(calls, reps=15) -> float:
    """GPU seconds per call of the list `calls`, captured in one CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3 / len(calls))
    del graph
    return statistics.median(times)


NO_PDL = replace(DEFAULT_KERNELS, pdl=False)  # each kernel starts after the one before
PLAIN_LAUNCH = replace(DEFAULT_KERNELS, cached_launch=False)  # plain Triton launches, not launcher.launch's cache


def host_s(call, n=300) -> float:
    call()
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(n):
        call()
    torch.cuda.synchronize()
    return (time.perf_counter() - began) / n


def copies(nbytes: int) -> int:
    return max(2, min(64, SWEEP_BYTES // nbytes))


def decode_case(total: int, chunks: int, seed: int, num_q: int = 1):
    g = torch.Generator().manual_seed(total)
    weights = torch.rand(chunks, generator=g) + 0.5
    lengths = (weights / weights.sum() * (total - OWN)).long()
    lengths[-1] += total - OWN - lengths.sum()
    torch.manual_seed(seed)
    layers = 2  # each chunk is stored [layers, n, Hkv, D]; attention reads layer 1 in place

    def stored(n):
        return torch.randn(layers, n, HKV, D, device="cuda", dtype=torch.bfloat16)[1]
    keys, values = [stored(int(n)) for n in lengths], [stored(int(n)) for n in lengths]
    own_k, own_v = (torch.randn(layers, 512, HKV, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    keys.append(own_k[1, :OWN])
    values.append(own_v[1, :OWN])
    q = torch.randn(1, num_q, HQ, D, device="cuda", dtype=torch.bfloat16).expand(chunks + 1, -1, -1, -1)
    return q, keys, values


def decode_calls(total: int, chunks: int, num_q: int = 1, options: KernelOptions = DEFAULT_KERNELS):
    """Our call (launched with `options`) and the two SDPA calls (GQA, and heads repeated beforehand) for each copy
    of the inputs."""
    scale = D ** -0.5
    ours, gqa, rep = [], [], []
    for i in range(copies(2 * total * HKV * D * 2)):
        q, keys, values = decode_case(total, chunks, seed=i, num_q=num_q)
        k = torch.cat(keys).transpose(0, 1).unsqueeze(0).contiguous()  # [1, Hkv, T, D]
        v = torch.cat(values).transpose(0, 1).unsqueeze(0).contiguous()
        qs = q[0].transpose(0, 1).unsqueeze(0)  # [1, Hq, 1, D]
        k_rep, v_rep = k.repeat_interleave(HQ // HKV, 1), v.repeat_interleave(HQ // HKV, 1)
        ours.append(lambda q=q, keys=keys, values=values: ca.chunk_attention(q, keys, values, scale, options=options))
        gqa.append(lambda qs=qs, k=k, v=v: F.scaled_dot_product_attention(qs, k, v, scale=scale, enable_gqa=True))
        rep.append(lambda qs=qs, k=k_rep, v=v_rep: F.scaled_dot_product_attention(qs, k, v, scale=scale))
    return ours, gqa, rep


def bench_decode(total: int, chunks: int) -> dict:
    ours, gqa, rep = decode_calls(total, chunks)
    error = (ours[0]().float() - gqa[0]()[0].transpose(0, 1).float()).abs().max().item()
    t, t_gqa, t_rep = gpu_s(ours), gpu_s(gqa), gpu_s(rep)
    t_plain = gpu_s(decode_calls(total, chunks, options=NO_PDL)[0])
    host, host_plain = host_s(ours[0]), host_s(decode_calls(total, chunks, options=PLAIN_LAUNCH)[0][0])
    nbytes = 2 * total * HKV * D * 2
    return dict(context=total, chunks=chunks + 1, us=t * 1e6, us_without_pdl=t_plain * 1e6, tb_per_s=nbytes / t / 1e12,
                peak_fraction=nbytes / t / PEAK_BYTES_PER_S, sdpa_gqa_us=t_gqa * 1e6, sdpa_repeat_us=t_rep * 1e6,
                speedup_vs_sdpa=min(t_gqa, t_rep) / t, host_us=host * 1e6, host_plain_launch_us=host_plain * 1e6,
                sdpa_host_us=host_s(gqa[0]) * 1e6, max_abs_err=error)


def linear_args(k, n, norm, bias, gated, residual):
    def rand(*shape, mean=0.0, std=1.0):
        return (mean + std * torch.randn(*shape, device="cuda")).to(torch.bfloat16)
    return (rand(1, k), rand((2 if gated else 1) * n, k, std=k ** -0.5), rand(n, std=0.1) if bias else None,
            rand(k, mean=1, std=0.1) if norm else None, 1e-6, gated, rand(1, n) if residual else None)


def linear_calls(name: str, options: KernelOptions = DEFAULT_KERNELS):
    shape = LINEAR_SHAPES[name]
    sets = [linear_args(*shape) for _ in range(copies((2 if shape[4] else 1) * shape[0] * shape[1] * 2))]
    fused = [lambda a=a: lin.linear(*a, impl="triton", options=options) for a in sets]
    unfused = [lambda a=a: lin.linear_ref(*a) for a in sets]
    return sets, fused, unfused


def bench_linear(name: str) -> dict:
    sets, fused, unfused = linear_calls(name)
    error = (fused[0]().float() - unfused[0]().float()).abs().max().item()
    t, t_ref = gpu_s(fused), gpu_s(unfused)
    t_plain = gpu_s([lambda a=a: lin.linear(*a, impl="triton", options=NO_PDL) for a in sets])
    host, host_plain = host_s(fused[0]), host_s(lambda: lin.linear(*sets[0], impl="triton", options=PLAIN_LAUNCH))
    host_unfused = host_s(unfused[0])
    nbytes = sets[0][1].numel() * 2
    return dict(layer=name, weight=list(sets[0][1].shape), us=t * 1e6, us_without_pdl=t_plain * 1e6,
                unfused_us=t_ref * 1e6, speedup=t_ref / t,
                tb_per_s=nbytes / t / 1e12, host_us=host * 1e6, host_plain_launch_us=host_plain * 1e6,
                unfused_host_us=host_unfused * 1e6, host_speedup=host_unfused / host, max_abs_err=error)


def sweep(name: str, field: str, settings: list[tuple], cases) -> tuple[object, list[dict]]:
    """Times each setting (values in the order of the fields of the KernelOptions field `field`, a tuning
    dataclass) on every case (cases(options) -> {label: calls}) and returns the tuning whose worst ratio to the
    best time of each case is smallest, with every timing."""
    default = getattr(DEFAULT_KERNELS, field)
    names = [f.name for f in dataclasses.fields(default)]
    times, results = {}, []
    for s in settings:
        tuning = replace(default, **dict(zip(names, s)))
        for label, calls in cases(replace(DEFAULT_KERNELS, **{field: tuning})).items():
            try:
                times[(label,) + s] = t = gpu_s(calls, reps=5)
                results.append(dict(case=label, **dataclasses.asdict(tuning), us=t * 1e6))
            except Exception as e:  # out of shared memory and the like
                print(f"tune {name} {label} {tuning}: {type(e).__name__}: {str(e)[:100]}")
    labels = sorted({k[0] for k in times}, key=str)
    best_at = {label: min(t for k, t in times.items() if k[0] == label) for label in labels}
    worst = {s: max(times.get((label,) + s, 1.0) / best_at[label] for label in labels) for s in settings}
    ranked = sorted(settings, key=worst.get)
    for s in ranked[:5]:
        print(name, s, f"worst ratio {worst[s]:.2f}", [round(times.get((label,) + s, 1.0) * 1e6, 1) for label in labels])
    print(name, "best per case (us)", {k: round(v * 1e6, 1) for k, v in best_at.items()},
          {label: min(settings, key=lambda s: times.get((label,) + s, 1.0)) for label in labels})
    return replace(default, **dict(zip(names, ranked[0]))), results


def settings(options: KernelOptions = DEFAULT_KERNELS) -> dict:
    return {name: dataclasses.asdict(getattr(options, name))
            for name in ("decode", "packed_decode", "prefill", "packed_prefill", "attention", "linear", "linear_gated",
                         "head")}


def tune(which: list[str]) -> tuple[KernelOptions, dict]:
    """Sweeps the launch settings of the kernels named in `which` by GPU time: chunk attention at decode (one
    query) and in the question prefill over stored chunks (QUESTION queries, row tiles of 64), and the linear
    layers' GEMV. Returns the kernel options with the winners (nothing global changes) and the timings."""
    def attention_cases(num_q):
        return lambda options: {total: decode_calls(total, chunks, num_q, options)[0] for total, chunks in CONTEXTS}

    def linear_cases(gated):
        return lambda options: {name: linear_calls(name, options)[1] for name, shape in LINEAR_SHAPES.items()
                                if shape[4] == gated}
    sweeps = {
        "decode": [("decode", "decode", list(itertools.product((32, 64), (2,), (3, 4), (2, 4), (32, 64), (4096, 8192))),
                    attention_cases(1))],
        "prefill": [("prefill", "prefill", list(itertools.product((32, 64, 128), (4, 8), (2, 3, 4), (1, 2, 4),
                                                                  (64, 256))), attention_cases(QUESTION))],
        "linear": [(name, field, list(itertools.product((2, 4, 8), (1024, 4096), (4, 8))), linear_cases(gated))
                   for name, field, gated in (("linear", "linear", False), ("linear gated", "linear_gated", True))],
    }
    chosen, results = {}, {}
    for which_name in which:
        for name, field, grid, cases in sweeps[which_name]:
            chosen[field], results[name] = sweep(name, field, grid, cases)
    options = replace(DEFAULT_KERNELS, **chosen)
    results["chosen"] = settings(options)
    print("chosen", results["chosen"], flush=True)
    return options, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--tune", nargs="?", const="decode,prefill,linear", metavar="KERNELS",
                        help="sweep the launch settings of these kernels first (default: decode,prefill,linear)")
    args = parser.parse_args()
    device = torch.cuda.get_device_name()
    report = dict(device=device, torch=torch.__version__, triton=triton.__version__)
    if args.tune:
        _, report["tune"] = tune(args.tune.split(","))  # the tables of record below stay at the defaults
    report["settings"] = settings()
    report["decode"] = [bench_decode(total, chunks) for total, chunks in CONTEXTS]
    report["linear"] = [bench_linear(name) for name in LINEAR_SHAPES]

    print(f"\n{device}, torch {torch.__version__}, triton {triton.__version__}\nsettings {report['settings']}\n")
    print("Chunk attention, decode (1 query), Qwen3-0.6B shape (16 q / 8 KV heads, D=128), bf16. "
          "GPU us: CUDA-graph replay, L2 cold; host us: eager call\n")
    print("| context | chunks | ours GPU us | (without PDL) | GB/s | of 3.0 TB/s | SDPA gqa GPU us | SDPA repeat GPU us "
          "| speedup vs best SDPA | ours host us | (plain Triton launch) | SDPA host us |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in report["decode"]:
        print(f"| {r['context']} | {r['chunks']} | {r['us']:.1f} | {r['us_without_pdl']:.1f} | {r['tb_per_s'] * 1e3:.0f} | "
              f"{r['peak_fraction']:.0%} | {r['sdpa_gqa_us']:.1f} | {r['sdpa_repeat_us']:.1f} | "
              f"{r['speedup_vs_sdpa']:.2f}x | {r['host_us']:.1f} | {r['host_plain_launch_us']:.1f} | "
              f"{r['sdpa_host_us']:.1f} |")
    print("\nLinear layers of a decode step, 1 row, bf16: our GEMV kernel against the unfused PyTorch ops "
          "(RMSNorm, F.linear / addmm, SiLU * up)\n")
    print("| layer | weight | fused GPU us | (without PDL) | unfused GPU us | speedup | weight GB/s | fused host us | "
          "(plain Triton launch) | unfused host us | host speedup |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in report["linear"]:
        print(f"| {r['layer']} | {r['weight'][0]} x {r['weight'][1]} | {r['us']:.1f} | {r['us_without_pdl']:.1f} | "
              f"{r['unfused_us']:.1f} | "
              f"{r['speedup']:.2f}x | {r['tb_per_s'] * 1e3:.0f} | {r['host_us']:.1f} | "
              f"{r['host_plain_launch_us']:.1f} | {r['unfused_host_us']:.1f} | {r['host_speedup']:.2f}x |")
    print("\nmax abs error vs PyTorch:", [round(r["max_abs_err"], 4) for r in report["decode"] + report["linear"]])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
