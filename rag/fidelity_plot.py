"""The fidelity-vs-TTFT plot (PNG) of `cascade-rag eval --plot`: for every mode and setting, the top-1 agreement
with `full` and the KL from it (95% bootstrap intervals as error bars) against the median time to first token.
Needs matplotlib (the dev extra)."""
from pathlib import Path


def plot(summaries: list[dict], path: Path, titles: list[str] | None = None,
         ttft_ms: list[dict] | None = None) -> None:
    """One column per eval summary (its "fidelity"); ttft_ms: per summary, TTFTs by setting name that replace the
    measured ones (e.g. GPU timings beside CPU fidelity)."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError("the fidelity plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(summaries), figsize=(6.5 * len(summaries), 8), squeeze=False)
    for column, summary in enumerate(summaries):
        times = (ttft_ms or [{}] * len(summaries))[column]
        for name, m in summary["fidelity"].items():
            ms = times.get(name, m.get("engine_ttft_median_s", float("nan")) * 1e3)
            agreement = (m.get("top1_agreement", 1.0), m.get("top1_agreement_interval", (1.0, 1.0)))
            kl = (m.get("kl", 0.0), m.get("kl_interval", (0.0, 0.0)))
            for row, (value, (low, high)) in enumerate((agreement, kl)):
                ax = axes[row][column]
                ax.errorbar([ms], [value], yerr=[[value - low], [high - value]], marker="o", capsize=3)
                ax.annotate(name, (ms, value), textcoords="offset points", xytext=(4, 4), fontsize=7)
        for row, label in enumerate(("top-1 agreement with full", "KL from full")):
            ax = axes[row][column]
            ax.set(xscale="log", xlabel="time to first token, median (ms)", ylabel=label)
            if titles:
                ax.set_title(titles[column])
            ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
