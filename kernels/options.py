"""How the kernels are launched, as one frozen value passed to every launcher: programmatic dependent launch,
the cached launch of compiled kernels, and each kernel's launch settings (tuning), with the measured defaults
(how they were measured: docs/BENCHMARKS.md, "Kernel launch settings"; `cascade_rag.benchmarks.bench_kernels --tune`
sweeps them and returns the winners)."""
from dataclasses import dataclass, field, fields, is_dataclass, replace


@dataclass(frozen=True)
class AttentionTuning:
    """Chunk attention with several query rows (_attn_kernel): KV block, warps, pipeline depth, programs per SM
    to aim for, shortest split (in keys), and the most registers a thread may hold (0: the compiler's choice; fewer
    let more programs stay on an SM, at the cost of spills)."""
    block_n: int = 32
    num_warps: int = 2
    num_stages: int = 2
    programs_per_sm: int = 4
    min_split: int = 32
    max_registers: int = 0


@dataclass(frozen=True)
class DecodeTuning:
    """Chunk attention of one query (the decode kernel): AttentionTuning's settings, then merge_elements (partial
    values the merging program reads at once: splits a pass x query heads x head_dim) and piece_tiles (the longest
    split, in KV blocks, that is cut at chunk boundaries; 0: never)."""
    block_n: int = 32
    num_warps: int = 2
    num_stages: int = 3
    programs_per_sm: int = 2
    min_split: int = 32
    max_registers: int = 0
    merge_elements: int = 8192
    piece_tiles: int = 8


def compile_options(tuning: AttentionTuning | DecodeTuning) -> dict:
    """The Triton launch options of a chunk-attention kernel's tuning: warps, stages and, where set, maxnreg."""
    registers = {"maxnreg": tuning.max_registers} if tuning.max_registers else {}
    return {"num_warps": tuning.num_warps, "num_stages": tuning.num_stages} | registers


@dataclass(frozen=True)
class LinearTuning:
    """The GEMV of kernels.linear: outputs a program, input block, warps."""
    block_n: int = 4
    block_k: int = 4096
    num_warps: int = 4


@dataclass(frozen=True)
class HeadTuning:
    """kernels.lm_head: the first pass's rows and input block a program, warps and stages; the second pass's
    rows a program and warps."""
    block_n: int = 128
    block_k: int = 256
    num_warps: int = 4
    num_stages: int = 3
    exact_rows: int = 128
    exact_warps: int = 4


PREFILL = AttentionTuning(block_n=32, num_warps=4, num_stages=3, programs_per_sm=2, min_split=64)  # row tiles of 64
LIMITED_PREFILL = replace(PREFILL, programs_per_sm=8, min_split=1024)
WINDOWED_PREFILL = replace(PREFILL, programs_per_sm=2, min_split=1024)


@dataclass(frozen=True)
class KernelOptions:
    """pdl: programmatic dependent launch where the GPU has it (compute capability 9 and up: each kernel starts
    before the ones ahead of it finish, and waits for their results); cached_launch: compiled kernels launched
    from launcher.launch's cache (off: plain Triton launches, which bind every argument on each call). The
    tuning of each kernel: `attention` (up to 16 query rows), `prefill` (row tiles of 64), `decode`, `linear`,
    `linear_gated` (gate/up), `head` (the quantised LM head); `packed_prefill` and `packed_decode`: the row tiles
    of 64's and the decode kernel's over contexts with packed chunks (kernels.kv_quant), whose tiles cost more work
    and fewer bytes: twice the programs an SM for the decode kernel; `limited_prefill`: the row tiles of 64's under
    per-query key limits (a selective recompute, alone or before the question), whose tiles see contexts of
    different lengths, the question's the whole of it: four times `prefill`'s programs an SM, so more splits, of
    1,024 keys at least (a short context's merge of many splits costs more than they save); `windowed_prefill`:
    the same under a window as well (EPIC's lead within a window: a tile of its rows reads all it sees in its first
    split, the question's rows every key across the splits), whose splits are counted as for the question's one
    row tile (programs_per_sm over the KV heads), so the question's tile is split as finely as `cached`'s."""
    pdl: bool = True
    cached_launch: bool = True
    attention: AttentionTuning = field(default_factory=AttentionTuning)
    prefill: AttentionTuning = field(default_factory=lambda: PREFILL)
    packed_prefill: AttentionTuning = field(default_factory=lambda: PREFILL)
    limited_prefill: AttentionTuning = field(default_factory=lambda: LIMITED_PREFILL)
    windowed_prefill: AttentionTuning = field(default_factory=lambda: WINDOWED_PREFILL)
    decode: DecodeTuning = field(default_factory=DecodeTuning)
    packed_decode: DecodeTuning = field(default_factory=lambda: DecodeTuning(programs_per_sm=4))
    linear: LinearTuning = field(default_factory=LinearTuning)
    linear_gated: LinearTuning = field(default_factory=lambda: LinearTuning(block_n=8))
    head: HeadTuning = field(default_factory=HeadTuning)

    def decode_tuning(self, packed: bool) -> DecodeTuning:
        """The decode kernel's settings over a context with packed chunks or without."""
        return self.packed_decode if packed else self.decode


DEFAULT_KERNELS = KernelOptions()


def tuned(options: KernelOptions, settings: list[str]) -> KernelOptions:
    """options with settings of the form "kernel.field=value" (an integer), e.g. "windowed_prefill.min_split=256":
    a benchmark's sweep of one kernel's launch settings. A ValueError names a setting that is not one."""
    for setting in settings:
        name, _, value = setting.partition("=")
        kernel, _, attr = name.strip().partition(".")
        tuning = getattr(options, kernel) if kernel in {f.name for f in fields(KernelOptions)} else None
        if not is_dataclass(tuning):
            kernels = ", ".join(f.name for f in fields(KernelOptions) if f.name not in ("pdl", "cached_launch"))
            raise ValueError(f"unknown kernel {kernel!r} in {setting!r}; choose one of {kernels}")
        if attr not in {f.name for f in fields(tuning)}:
            raise ValueError(f"{kernel} has no setting {attr!r} (in {setting!r}); it has "
                             f"{', '.join(f.name for f in fields(tuning))}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{setting!r} sets {kernel}.{attr} to {value!r}, not a whole number") from None
        if number < 1:
            raise ValueError(f"{setting!r}: {kernel}.{attr} must be at least 1")
        options = replace(options, **{kernel: replace(tuning, **{attr: number})})
    return options
