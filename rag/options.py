"""RAGOptions: how a RAG is set up, one frozen object handed to each of its parts."""
from dataclasses import dataclass, replace
from pathlib import Path

from cascade_rag.engine import default_device, default_dtype, default_prefill_batch_tokens

from .ingest_limits import IngestLimits
from .prompt import DEFAULT_SYSTEM_PROMPT


@dataclass(frozen=True)
class RAGOptions:
    model: Path | str | None = None        # a Hugging Face checkpoint folder; None: the embedded model
    device: str | None = None              # None: cuda when available
    dtype: str | None = None               # None: fp32 on a CPU (slow bf16 there), bf16 on a GPU
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    embedder: str | None = None            # None: the embedded sentence embedder
    index: str | None = None               # flat or hnsw; None: the data directory's, else flat
    passage_tokens: int = 256
    overlap: int = 32
    cache_bytes: int | None = None         # the device tier; None: 2 GiB on a CPU, 8 GiB on a GPU
    cpu_cache_bytes: int = 8 << 30         # the pinned CPU tier (GPU devices only)
    # ingestion prefills passages in batches of up to this many tokens (a longer passage goes alone; 1: one at a
    # time); None: smaller on a CPU, where attention scores are materialised
    prefill_batch_tokens: int | None = None
    # passages embedded in one call at ingestion: the progress bar moves between calls, and their chunks are
    # prefilled before the next slice is embedded
    embed_slice: int = 32
    # the limits of one ingestion (rag/ingest_limits.py); none by default, `serve` sets its own
    ingest_limits: IngestLimits = IngestLimits()

    def resolved(self, stored_index: str | None = None) -> "RAGOptions":
        """Defaults filled in (`stored_index`: the data directory's index type), values checked."""
        if self.prefill_batch_tokens is not None and self.prefill_batch_tokens < 1:
            raise ValueError(f"prefill_batch_tokens must be at least 1, got {self.prefill_batch_tokens}")
        if self.embed_slice < 1:
            raise ValueError(f"embed_slice must be at least 1, got {self.embed_slice}")
        device = self.device or default_device()
        return replace(
            self, device=device, dtype=self.dtype or default_dtype(device),
            index=self.index or stored_index or "flat",
            cache_bytes=self.cache_bytes if self.cache_bytes is not None else (2 << 30 if device == "cpu" else 8 << 30),
            prefill_batch_tokens=self.prefill_batch_tokens or default_prefill_batch_tokens(device))
