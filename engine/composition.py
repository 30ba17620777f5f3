"""Composition: how stored chunks are laid out for a request (positions and shifts, the document temperature, the
three modes), over a Decoder; `blend`'s selective recompute is engine.selective's."""
import itertools

import torch

from .attention import AttentionContext, KVBuffer
from .cuda_graph import Lead
from .kv_chunk import KVChunk
from .model import Decoder
from .options import Recompute
from .recompute_graph import GraphRecompute
from .selective import SelectiveRecompute

MODES = ("cached", "full", "blend")
DEFAULT_MODE = "cached"  # what a request that names no mode gets (docs/EVALUATION.md says why)


class Composer:
    """Lays chunks out for the decoder `model` (dtype, device, document temperature) and blends them."""

    def __init__(self, model: Decoder, dtype: torch.dtype, device: str, document_temperature: float):
        self.model, self.config = model, model.config
        self.dtype, self.device, self.temperature = dtype, device, document_temperature

    def context(self, chunks: list[KVChunk], capacity: int, start: int | None = None, own: KVBuffer | None = None,
                canonical: bool = False) -> tuple[AttentionContext, int]:
        """Lays the chunks at consecutive positions ending at `start` (default: from 0), or (canonical) each at its
        canonical position: chunks prefilled one after the other then compose exactly as one prefill, and chunks
        sharing positions (documents prefilled after the same level 0) sit side by side, the new tokens' scores
        over them divided by the document temperature. Returns the context and the next free position. The new
        tokens' KV goes to `own` (emptied) or a fresh buffer of `capacity`."""
        total = sum(c.length for c in chunks)
        if start is not None and start < total:
            raise ValueError(f"start {start} leaves no room for {total} context tokens before it")
        shifts, position = [], 0 if start is None else start - total
        for chunk in chunks:
            if chunk.kv_format == "dtype" and chunk.keys.dtype != self.dtype:
                raise ValueError(f"chunk dtype {chunk.keys.dtype} does not match the engine dtype {self.dtype}")
            shifts.append(0 if canonical else position - chunk.start)
            position = max(position, chunk.start + chunk.length) if canonical else position + chunk.length
        scales = None
        if canonical:
            spans = [(c.start, c.start + c.length) for c in chunks]
            shared = [any(i != j and a < d and c < b for j, (c, d) in enumerate(spans)) for i, (a, b) in enumerate(spans)]
            if any(shared):
                scales = self.device_tensor([1 / self.temperature if s else 1.0 for s in shared], torch.float32)
        if own is None:
            own = KVBuffer.empty(self.config, capacity, self.dtype, self.device)
        own.length = 0
        ctx = AttentionContext(
            keys=[c.keys.to(self.device) for c in chunks], values=[c.values.to(self.device) for c in chunks],
            shifts=self.device_tensor(shifts, torch.int64), own=own, scales=scales,
            arrivals=[c.arrival for c in chunks if c.arrival is not None and c.arrival.pending],
        )
        return ctx, position

    def device_tensor(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        """values in a tensor on the device; on CUDA copied from pinned memory in stream order, so that the host does
        not wait for the work queued before (an EPIC recompute's graph) as a copy from pageable memory would."""
        t = torch.tensor(values, dtype=dtype)
        if torch.device(self.device).type != "cuda":
            return t.to(self.device)
        return t.pin_memory().to(self.device, non_blocking=True)

    def check_length(self, total: int) -> None:
        if total > self.config.max_position:
            raise ValueError(f"sequence of {total} tokens exceeds the model's {self.config.max_position} positions")

    def compose(self, chunks, mode: str, recompute: Recompute = Recompute(),
                graph: GraphRecompute | None = None) -> list[KVChunk]:
        """The chunks to prefill over: for `blend`, level 0 and the documents partly recomputed by `recompute`
        (EPIC's pass in `graph` where it fits: the chunks returned then hold views of its buffer until its next
        run)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        return self.blend(list(chunks), recompute, graph) if mode == "blend" else list(chunks)

    def prefill_inputs(self, chunks, token_ids, mode, max_new_tokens, own=None):
        """The context, the tokens to prefill and the position of the first. `full`: every token prefilled in
        order; `cached`: the chunks at their canonical positions (context); `blend`: its blended documents after
        level 0."""
        if mode == "full":
            token_ids = [t for c in chunks for t in c.token_ids] + list(token_ids)
            chunks = []
        if not token_ids:
            raise ValueError("nothing to prefill: the prompt is empty")
        ctx, start = self.context(chunks, len(token_ids) + max_new_tokens, own=own, canonical=mode == "cached")
        self.check_length(start + len(token_ids) + max_new_tokens)
        return ctx, list(token_ids), start

    def lead_inputs(self, chunks: list[KVChunk], prefix: int, own: KVBuffer,
                    window: int = 0) -> tuple[AttentionContext, Lead, int] | None:
        """`blend`'s recompute of each document's first `prefix` tokens (EPIC) as the lead of the question's prefill,
        in its pass: the context (level 0 and the stored rows after those tokens, read in place; the new tokens' KV
        goes to `own`, emptied), the lead, and the position after the documents (the question's first); None when
        nothing is recomputed. window: Recompute's."""
        plan = SelectiveRecompute(self.model, self.dtype, self.device).plan(list(chunks), prefix, window=window)
        if plan is None:
            return None
        own.length = 0
        ctx = AttentionContext(keys=[c.keys for c in plan.context], values=[c.values for c in plan.context],
                               shifts=self.device_tensor(plan.shifts, torch.int64), own=own)
        return ctx, Lead(plan.token_ids, plan.positions, plan.limits, plan.floors), plan.end

    def batched(self, token_lists: list[list[int]], context: list[KVChunk]):
        """The context, the concatenated tokens, their positions and the start of several sequences prefilled in
        one pass at the canonical start, each attending to the context and causally to itself only (an explicit
        block-diagonal mask), never to the others; None when the context chunks are away from their canonical
        positions (their queries are rotated per chunk, which one masked attention cannot do)."""
        offsets = itertools.accumulate((c.length for c in context), initial=0)
        if any(chunk.start != offset for chunk, offset in zip(context, offsets)):
            return None
        lengths = [len(ids) for ids in token_lists]
        total = sum(lengths)
        ctx, start = self.context(context, total)
        self.check_length(start + max(lengths))
        ids = torch.tensor([t for seq in token_lists for t in seq], dtype=torch.int64, device=self.device)
        segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(self.device)
        index = torch.cat([torch.arange(n) for n in lengths]).to(self.device)  # position inside its own sequence
        own = (segment[:, None] == segment[None, :]) & (index[:, None] >= index[None, :])
        ctx.mask = torch.cat((torch.ones(total, start, dtype=torch.bool, device=self.device), own), dim=1)
        return ctx, ids, start + index, start

    def blend(self, chunks: list[KVChunk], recompute: Recompute = Recompute(),
              graph: GraphRecompute | None = None) -> list[KVChunk]:
        """Level 0 and the documents laid one after it, part of their KV recomputed (engine.selective); the
        stored chunks are not modified."""
        return SelectiveRecompute(self.model, self.dtype, self.device, graph)(chunks, recompute)
