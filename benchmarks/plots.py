"""PNG plots of `cascade_rag.benchmarks.bench --contexts ... --json F` results: time to first token and decode
tokens/s against context.

    python -m cascade_rag.benchmarks.plots docs/bench/qwen3-0.6b-h100.json docs/bench/smollm2-135m-h100.json --out docs
"""
import argparse
import json
from pathlib import Path

TTFT = {"full_ttft_ms": "full (ours)", "cached_gpu_ttft_ms": "cached, GPU", "cached_cpu_ttft_ms": "cached, CPU memory",
        "cached_disk_ttft_ms": "cached, disk", "hf_full_ttft_ms": "transformers"}
DECODE = {"ours_tokens_per_s": "ours (CUDA graphs)", "hf_dynamic_tokens_per_s": "transformers, dynamic cache",
          "hf_static_tokens_per_s": "transformers, static cache compiled", "limit_tokens_per_s": "bandwidth limit"}


def plot(results: list[dict], series: dict, ylabel: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, result in zip(axes[0], results):
        rows = result["rows"]
        for key, label in series.items():
            points = [(r["context_tokens"], r[key]) for r in rows if r.get(key)]
            if points:
                ax.plot(*zip(*points), marker="o", label=label, linestyle="--" if key.startswith("limit") else "-")
        ax.set(xscale="log", yscale="log", xlabel="context tokens", ylabel=ylabel, title=result["model"])
        ax.set_xticks([r["context_tokens"] for r in rows], [str(r["context_tokens"]) for r in rows])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cascade_rag.benchmarks.plots", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="JSON files written by cascade_rag.benchmarks.bench --contexts ... --json")
    p.add_argument("--out", type=Path, default=Path("docs"))
    args = p.parse_args(argv)
    results = [json.loads(f.read_text()) for f in args.results]
    plot(results, TTFT, "time to first token (ms)", args.out / "ttft.png")
    plot(results, DECODE, "decode tokens/s (batch size 1)", args.out / "decode.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
