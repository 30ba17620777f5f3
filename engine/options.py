"""EngineOptions: everything that configures an LLMEngine, as one frozen value passed down to the decoder, the
CUDA-graph decoder and the kernel launchers (no module-level switch is read at run time)."""
from dataclasses import dataclass, field, replace

import torch

from cascade_rag.kernels.options import DEFAULT_KERNELS, KernelOptions

from .kv_chunk import check_kv_format

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
# `cached` divides the new tokens' attention scores over documents sharing positions by this temperature (APE,
# Yang et al. 2025): chosen on squad-dev questions 1-100, checked on 101-200 (docs/EVALUATION.md)
DOCUMENT_TEMPERATURE = 0.9
BLEND_RATIO = 0.15  # share of document tokens that `blend` recomputes at every layer (CacheBlend's default)


@dataclass(frozen=True)
class Recompute:
    """Which document tokens a selective recompute computes again. ratio: CacheBlend's share (None: no layer
    recomputes every token, nothing is measured); prefix: each document's first tokens (EPIC). Neither: the
    documents laid one after the other, nothing recomputed. ratio 1: exactly a full prefill's KV. window (EPIC's
    alone): a recomputed token sees level 0 and the document tokens of the last `window` positions before it only
    (0: every token before it), so that its attention reads about as many keys at any context length."""
    ratio: float | None = BLEND_RATIO
    prefix: int = 0
    window: int = 0

    def __post_init__(self):
        if self.ratio is not None and not 0 <= self.ratio <= 1:
            raise ValueError(f"the blend ratio must be within [0, 1], got {self.ratio}")
        if self.prefix < 0:
            raise ValueError(f"the recomputed prefix must be at least 0 tokens, got {self.prefix}")
        if self.window < 0:
            raise ValueError(f"the recompute window must be at least 0 positions (0: none), got {self.window}")
        if self.window and (self.ratio is not None or not self.prefix):
            raise ValueError("a recompute window applies to EPIC's prefixes alone (a prefix and no CacheBlend ratio)")

    @property
    def label(self) -> str:
        parts = ([] if self.ratio is None else [f"{self.ratio:.0%}"]) + ([f"first {self.prefix}"] if self.prefix
                                                                         else [])
        return " + ".join(parts) + (f" (window {self.window})" if self.window else "") or "none"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> str:
    """The dtype of the pipeline, the CLI and bench: fp32 on a CPU (whose bf16 matmuls are slow), bf16 on a GPU."""
    return "fp32" if device == "cpu" else "bf16"


def default_prefill_batch_tokens(device: str) -> int:
    """Passage tokens prefilled in one forward pass at ingestion. The batch attends under one block-diagonal mask,
    so its attention grows with the square of the batch: on a CPU, beyond about 2,048 tokens that costs more than
    batching saves."""
    return 2048 if device == "cpu" else 8192


def resolve_dtype(dtype) -> torch.dtype:
    """A torch dtype from a name of DTYPES or a torch dtype; None: bf16."""
    if dtype is None:
        return torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose one of fp32, bf16, fp16")
    return DTYPES[dtype]


@dataclass(frozen=True)
class EngineOptions:
    """How an LLMEngine runs. Fields left None are filled in by resolved() for the machine.

    - device: "cuda", "cpu", ... (default: CUDA where there is a GPU); dtype: fp32, bf16, fp16 or a torch dtype
      (default bf16; the pipeline and CLI pass default_dtype(device)).
    - use_custom_kernels: the Triton kernels (off: their PyTorch references, on every path; CUDA graphs run the
      Triton kernels, so off needs use_cuda_graphs=False).
    - use_cuda_graphs: on CUDA, decode steps and (in `cached` and `blend`) the question prefill replay CUDA graphs,
      within the limits graph_own_tokens (the request's own KV buffer: EPIC's recomputed rows, question, answer),
      graph_max_chunks (chunks + the own one), graph_max_question (the most tokens prefilled by a graph: the
      question and, in `blend`, the documents' first tokens that EPIC recomputes in the same pass) and
      graph_min_bucket (the shortest context bucket); larger requests run eagerly. Where EPIC's tokens do not fit
      the question's graph, their recompute replays a graph of its own, for up to graph_recompute_tokens tokens.
      Prefills are padded to a power of two (at least 16) up to 256 tokens, above to a multiple of 128.
      graph_steps_off_cuda: elsewhere than CUDA, run the graph decoder's static steps uncaptured (slow; for tests
      of the graph path and its options on a CPU).
    - quantized_head: greedy graph steps read the LM head's int8 copy (kernels.lm_head; the token is the same).
    - document_temperature: divides the new tokens' scores over documents that share positions (`cached`).
    - blend: which document tokens `blend` recomputes (engine.selective; default CacheBlend's 15%).
    - stream_prefill: with chunks still arriving (streamed from the store, engine.chunk_stream), the question's
      prefill runs eagerly, each layer waiting for the chunks' layer (on: the first layers compute while the later
      ones arrive), or waits for every layer, then replays the question's graph where it fits (off: no overlap,
      no eager launches).
    - prefill_batch_tokens: passage tokens prefilled in one forward pass at ingestion (default by device).
    - kv_format: how the passage (level-1) chunks it prefills hold their keys and values, and so which variant of
      the chunk-attention kernels reads them: "dtype" (the model's), "fp8" or "int4" (kernels.kv_quant, read and
      dequantised in registers). Level 0 and the request's own tokens stay in the model's dtype.
    - kernels: programmatic dependent launch, cached launches and the kernels' tuning (kernels.options).
    """
    device: str | None = None
    dtype: str | torch.dtype | None = None
    use_custom_kernels: bool = True
    use_cuda_graphs: bool = True
    graph_own_tokens: int = 4096
    graph_max_chunks: int = 63  # with the own chunk 64: the kernels search as wide a power of two as at 33
    graph_max_question: int = 2048
    graph_min_bucket: int = 1024
    graph_recompute_tokens: int = 1024
    graph_steps_off_cuda: bool = False
    quantized_head: bool = True
    document_temperature: float = DOCUMENT_TEMPERATURE
    blend: Recompute = Recompute()
    stream_prefill: bool = True
    prefill_batch_tokens: int | None = None
    kv_format: str = "dtype"
    kernels: KernelOptions = field(default_factory=lambda: DEFAULT_KERNELS)

    def __post_init__(self):
        if self.document_temperature <= 0:
            raise ValueError(f"the document temperature must be positive, got {self.document_temperature}")
        if self.use_cuda_graphs and not self.use_custom_kernels:
            raise ValueError("CUDA graphs run the Triton kernels: use_custom_kernels=False needs use_cuda_graphs=False")
        if self.dtype is not None:
            resolve_dtype(self.dtype)
        check_kv_format(self.kv_format)
        for name in ("graph_own_tokens", "graph_max_chunks", "graph_max_question", "graph_min_bucket",
                     "graph_recompute_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.prefill_batch_tokens is not None and self.prefill_batch_tokens < 1:
            raise ValueError(f"prefill_batch_tokens must be at least 1, got {self.prefill_batch_tokens}")

    def resolved(self) -> "EngineOptions":
        """These options with the device, the dtype (a torch dtype) and the prefill batch filled in."""
        device = self.device or default_device()
        return replace(self, device=device, dtype=resolve_dtype(self.dtype),
                       prefill_batch_tokens=self.prefill_batch_tokens or default_prefill_batch_tokens(device))
