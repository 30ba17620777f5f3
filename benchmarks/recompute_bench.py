"""Time to first token of the selective-recompute settings beside `cached` and `full`, against context length, in
one run on one device (one new token, median of --repeat after a warm-up):

    python -m cascade_rag.benchmarks.recompute_bench --shape qwen3-0.6b --contexts 1024,4096,32768 \
        --settings blend:0.15,blend:first16 --json docs/bench/recompute-qwen3-0.6b-h100.json

The contexts are laid out as in `cascade-rag bench --contexts`: level 0, 4 to 16 passages, a 32-token question.
`--profile N` adds each setting's GPU time and kernels a call (all of them; TTFT less that time is roughly the GPU
waiting for the host) and its N costliest kernels (kernel_profile); `--tuning` runs the engine with other kernel
launch settings (kernels.options.tuned: `--tuning windowed_prefill.min_split=256`), and a setting ending in
@KERNEL.FIELD=N (one or more) runs on an engine of its own with those as well, over the same chunks, so that
launch settings compare in one run: `--settings blend:first64w1024,blend:first64w1024@windowed_prefill.block_n=64`."""
import argparse
import json
import sys
import tempfile

import torch

from cascade_rag.engine import LEVEL_DOCUMENT, LEVEL_SYSTEM, LLMEngine, SamplingParams, default_device, default_dtype
from cascade_rag.engine.options import EngineOptions
from cascade_rag.kernels.options import DEFAULT_KERNELS, tuned
from cascade_rag.rag.fidelity import parse_setting

from .bench import timed, tokens
from .checkpoints import SHAPES, shape_checkpoint
from .kernel_profile import kernel_times


def context_chunks(engine: LLMEngine, context: int, question_tokens: int):
    fp = engine.fingerprint("bench")
    level0 = engine.prefill_chunk(tokens(engine, 24, "system"), [], LEVEL_SYSTEM, fp)
    n_docs = min(16, max(4, context // 2048))
    doc_tokens = (context - level0.length - question_tokens) // n_docs
    docs = [engine.prefill_chunk(tokens(engine, doc_tokens, f"doc {i}"), [level0], LEVEL_DOCUMENT, fp)
            for i in range(n_docs)]
    return [level0] + docs, tokens(engine, question_tokens, "question")


def split_tuning(setting: str) -> tuple[str, tuple[str, ...]]:
    """A setting's name and the kernel launch settings after its @s (none: the engine's own)."""
    name, *tuning = setting.split("@")
    return name, tuple(tuning)


def run(engine: LLMEngine, contexts: list[int], settings: list[str], repeat: int, question_tokens: int = 32,
        profile: int = 0, tuned_engine=None):
    """Each setting's TTFT at each context; a setting with @tunings runs on tuned_engine(tunings)."""
    one = SamplingParams(max_new_tokens=1)
    named = ["full", "cached"] + [s for s in settings if s not in ("full", "cached")]
    parsed = []
    for text in named:
        name, tuning = split_tuning(text)
        parsed.append((text, parse_setting(name), tuned_engine(tuning) if tuning else engine))
    rows = []
    for context in contexts:
        chunks, question = context_chunks(engine, context, question_tokens)
        row = {"context_tokens": sum(c.length for c in chunks) + len(question), "passages": len(chunks) - 1,
               "ttft_ms": {}}
        for text, setting, runner in parsed:
            variant = setting.engine(runner)

            def call():
                return variant.generate(question, one, chunks, setting.mode)
            row["ttft_ms"][text] = 1e3 * timed(call, engine.device, repeat)
            if profile:
                row.setdefault("kernels_us", {})[text] = kernel_times(call, engine.device, top=profile)
        full = row["ttft_ms"]["full"]
        row["full_over"] = {name: full / ms for name, ms in row["ttft_ms"].items()}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del chunks
        if engine.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def print_table(rows: list[dict], title: str) -> None:
    names = list(rows[0]["ttft_ms"])
    print(f"\n{title}\n")
    print("| context | passages | " + " | ".join(f"{n} ms (full / it)" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for r in rows:
        cells = " | ".join(f"{r['ttft_ms'][n]:.1f} ({r['full_over'][n]:.1f}x)" for n in names)
        print(f"| {r['context_tokens']} | {r['passages']} | {cells} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cascade_rag.benchmarks.recompute_bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a checkpoint folder (default: --shape's random weights)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    p.add_argument("--tokenizer", help="tokenizer files for --shape (default: the embedded model's)")
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.add_argument("--contexts", default="1024,2048,4096,8192,16384,32768")
    p.add_argument("--settings", default="blend,blend:first16,blend:first64,blend:none",
                   help="settings besides full and cached (rag.fidelity's names: blend, blend:0.3, blend:first16, "
                   "...), each perhaps with @KERNEL.FIELD=N launch settings of its own")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--profile", type=int, default=0, metavar="N", help="each setting's N costliest kernels")
    p.add_argument("--tuning", action="append", default=[], metavar="KERNEL.FIELD=N",
                   help="a kernel launch setting (kernels.options.tuned), comma-separated or repeated")
    p.add_argument("--json")
    args = p.parse_args(argv)
    settings = args.settings.split(",")
    try:
        kernels = tuned(DEFAULT_KERNELS, [t for arg in args.tuning for t in arg.split(",") if t.strip()])
        for name, tuning in map(split_tuning, settings):
            parse_setting(name)
            tuned(kernels, list(tuning))
    except ValueError as exc:
        p.error(str(exc))
    model = args.model
    if not model:
        from cascade_rag.engine import embedded_model_path
        model = shape_checkpoint(args.shape, tempfile.mkdtemp(), args.tokenizer or embedded_model_path())
    device = args.device or default_device()
    dtype = args.dtype or default_dtype(device)
    engine = LLMEngine(model, device=device, dtype=dtype, options=EngineOptions(kernels=kernels))
    engines = {}

    def tuned_engine(tuning: tuple[str, ...]) -> LLMEngine:
        if tuning not in engines:  # the same weights (same fingerprint), other kernel launch settings
            engines[tuning] = LLMEngine(model, device=device, dtype=dtype,
                                        options=EngineOptions(kernels=tuned(kernels, list(tuning))))
        return engines[tuning]
    rows = run(engine, [int(c) for c in args.contexts.split(",")], settings, args.repeat, profile=args.profile,
               tuned_engine=tuned_engine)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print_table(rows, f"{args.model or args.shape}, {engine.dtype}, {name}")
    for r in rows:
        for setting, kernels in r.get("kernels_us", {}).items():
            print(f"\n{r['context_tokens']} tokens, {setting}: {kernels['total_us']:.0f} us in "
                  f"{kernels['launches']} kernels (TTFT {1e3 * r['ttft_ms'][setting]:.0f} us); " + "; ".join(
                      f"{k['name'][:48]} {k['us']:.0f} us x{k['launches']}" for k in kernels["top"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model or args.shape, "device": name, "dtype": str(engine.dtype),
                       "tuning": args.tuning, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
