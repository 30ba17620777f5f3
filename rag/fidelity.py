"""Fidelity of a composition against `full`, the measure `cascade-rag eval` reports for every mode and setting:
`full`'s greedy answer is fed to each one teacher-forced; the share of its tokens the setting also ranks first
(top-1 agreement) and the mean KL divergence of the setting's next-token distributions from `full`'s, per question,
with percentile bootstrap intervals over the questions.

A setting is a mode, optionally with what it composes with: `cached:t1.0` (document temperature 1.0), `blend:0.3`
(CacheBlend's share), `blend:first16` (each passage's first 16 tokens, EPIC), `blend:first16w512` (the same, each
token seeing level 0 and the 512 positions before it only), `blend:0.15+first16` (both),
`blend:none` (the passages laid one after the other, nothing recomputed)."""
from dataclasses import dataclass

import numpy as np

from cascade_rag.engine import MODES, Recompute, SamplingParams

RESAMPLES = 10_000


@dataclass(frozen=True)
class Setting:
    """A mode and the engine options it runs with (None: the engine's own)."""
    name: str
    mode: str
    temperature: float | None = None
    recompute: Recompute | None = None

    def engine(self, engine):
        """The engine to run this setting on: `engine` itself, or a variant of it sharing its model."""
        fields = {}
        if self.temperature is not None:
            fields["document_temperature"] = self.temperature
        if self.recompute is not None:
            fields["blend"] = self.recompute
        return engine.variant(**fields) if fields else engine


def parse_setting(text: str) -> Setting:
    """A setting from its name (module docstring); a ValueError names what is wrong."""
    name = text.strip()
    mode, _, spec = name.partition(":")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} in setting {name!r}; choose one of {', '.join(MODES)}")
    if not spec:
        return Setting(name, mode)
    if mode == "cached" and spec.startswith("t"):
        try:
            return Setting(name, mode, temperature=float(spec[1:]))
        except ValueError:
            raise ValueError(f"setting {name!r}: a temperature is written t<number>, e.g. cached:t0.9") from None
    if mode == "blend":
        if spec == "none":
            return Setting(name, mode, recompute=Recompute(None, 0))
        ratio, prefix, window = None, 0, 0
        for part in spec.split("+"):
            try:
                if part.startswith("first"):
                    prefix, _, seen = part[len("first"):].partition("w")
                    prefix, window = int(prefix), int(seen) if seen else 0
                else:
                    ratio = float(part)
            except ValueError:
                raise ValueError(f"setting {name!r}: blend takes a ratio (0.15), first<N> (first<N>w<W>: within a "
                                 f"window of W positions) or both joined by +") from None
        try:
            return Setting(name, mode, recompute=Recompute(ratio, prefix, window))
        except ValueError as exc:
            raise ValueError(f"setting {name!r}: {exc}") from None
    raise ValueError(f"setting {name!r}: {mode} takes no {spec!r} (cached:t<temperature>; blend:<ratio>, "
                     f"blend:first<N>, blend:none)")


def interval(values, seed: int = 0, resamples: int = RESAMPLES) -> tuple[float, float]:
    """The 95% percentile bootstrap interval of the mean of per-question values (questions resampled)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    picks = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    means = values[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def measure(rag, question: str, settings: list[Setting], top_k: int, tokens: int, ttft: bool = True) -> dict:
    """Each setting (but `full`) against `full` for one question: top-1 agreement, KL and, with `ttft`, the
    engine's time to first token (composition and question prefill, chunks already loaded)."""
    chunks, ids = rag.composition(question, top_k)
    base = rag.model().engine
    answer = base.generate(ids, SamplingParams(max_new_tokens=tokens, ignore_eos=True), chunks, "full").token_ids
    sequence = ids + answer[:-1]

    def log_probs(engine, mode):
        return engine.logits(chunks, sequence, mode)[len(ids) - 1:].log_softmax(-1)
    full, result = log_probs(base, "full"), {}
    one = SamplingParams(max_new_tokens=1)
    for setting in settings:
        if setting.mode == "full" and setting.name == "full":
            continue
        engine = setting.engine(base)
        lp = log_probs(engine, setting.mode)
        result[setting.name] = {"top1_agreement": float((lp.argmax(-1) == full.argmax(-1)).float().mean()),
                                "kl": float((full.exp() * (full - lp)).sum(-1).mean())}
        if ttft:
            result[setting.name]["engine_ttft_s"] = engine.generate(ids, one, chunks, setting.mode).ttft_s
    if ttft:
        result["full"] = {"engine_ttft_s": base.generate(ids, one, chunks, "full").ttft_s}
    return result


def summarize(rows: list[dict], names: list[str]) -> dict:
    """Per setting: mean top-1 agreement and KL with their bootstrap intervals, the median engine TTFT."""
    out = {}
    for name in names:
        measured = [r["fidelity"][name] for r in rows if name in r.get("fidelity", {})]
        if not measured:
            continue
        entry = {"questions": len(measured)}
        if "kl" in measured[0]:
            agreement, kl = [m["top1_agreement"] for m in measured], [m["kl"] for m in measured]
            entry.update(top1_agreement=float(np.mean(agreement)), top1_agreement_interval=interval(agreement),
                         kl=float(np.mean(kl)), kl_interval=interval(kl))
        if "engine_ttft_s" in measured[0]:
            entry["engine_ttft_median_s"] = float(np.median([m["engine_ttft_s"] for m in measured]))
        out[name] = entry
    return out


def table(fidelity: dict) -> str:
    lines = ["| setting | questions | top-1 agreement with full (95% interval) | KL from full (95% interval) | "
             "engine TTFT median ms |", "|---|---|---|---|---|"]
    for name, m in fidelity.items():
        agreement = (f"{m['top1_agreement']:.3f} ({m['top1_agreement_interval'][0]:.3f} - "
                     f"{m['top1_agreement_interval'][1]:.3f})") if "kl" in m else "1"
        kl = f"{m['kl']:.4f} ({m['kl_interval'][0]:.4f} - {m['kl_interval'][1]:.4f})" if "kl" in m else "0"
        ttft = f"{m['engine_ttft_median_s'] * 1e3:.0f}" if "engine_ttft_median_s" in m else "n/a"
        lines.append(f"| {name} | {m['questions']} | {agreement} | {kl} | {ttft} |")
    return "\n".join(lines)

