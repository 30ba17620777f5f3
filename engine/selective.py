"""Selective recompute: level 0, then the stored document chunks laid one after the other (as a full prefill lays
them), with a chosen part of the documents' tokens computed again over everything before them, so that they see
the documents ahead of them; the other rows keep their stored K/V. Two ways of choosing, alone or together:

- CacheBlend (Yao et al. 2025), `ratio`: every document token is recomputed through the second layer (the first
  whose KV depends on the context), where the deviation of its values from the stored ones is measured; at every
  later layer only the `ratio` share that deviates most is recomputed. The documents are copied (keys turned to
  their new positions) into a per-request buffer that the recomputed rows overwrite.
- EPIC (Hu et al. 2024), `prefix`: each document's first `prefix` tokens, at every layer, measured nothing (none of
  a first document placed where it was prefilled: prefix_counts). Only those rows are computed, into a per-request
  buffer of just them; the stored rows after them are read in place (their position shift applied to the query),
  so the documents are never copied.

Either way the selected tokens run in one pass per layer, each attending under a key limit of its own position
(kernels.chunk_attention.limited: the Triton kernel on CUDA), and the stored chunks are not modified. Given a
GraphRecompute (engine.recompute_graph), EPIC's pass replays its CUDA graph instead, the recomputed rows in its
buffer. The result is a list of chunks that the question is prefilled over as in `cached` (CUDA graphs included)."""
import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from cascade_rag.kernels.kv_quant import dense
from cascade_rag.kernels.rope import rotate

from .attention import AttentionContext, KVBuffer
from .kv_chunk import LEVEL_DOCUMENT, LEVEL_SYSTEM, KVChunk
from .model import Decoder
from .options import Recompute
from .recompute_graph import GraphRecompute


@dataclass
class PrefixPlan:
    """EPIC's recompute laid out: the context the recomputed tokens attend to (level 0 and the stored rows after each
    document's recomputed ones, dense, with their position shifts), the tokens (ids, placed positions, and limits:
    token i sees the context's first limits[i] keys, then the recomputed rows before it), and per document (the
    chunk, dense; its place; its recomputed rows; its stored rest or None; the rest's shift). Under a window,
    floors (int64 [tokens, 3], the table kernel's layout): token i sees none of the context keys from floors[i, 0]
    (level 0's end) to before floors[i, 1], nor the recomputed rows before floors[i, 2] (those at positions more than
    the window before it); None without one."""
    context: list[KVChunk]
    shifts: list[int]
    token_ids: list[int]
    positions: list[int]
    limits: list[int]
    documents: list[tuple]
    floors: np.ndarray | None = None

    @property
    def end(self) -> int:
        """The position after the last document."""
        chunk, place, *_ = self.documents[-1]
        return place + chunk.length


def prefix_counts(chunks: list[KVChunk], prefix: int) -> list[int]:
    """EPIC's recomputed tokens of each document (chunks: level 0, then the documents laid one after it): its first
    `prefix`, and none of a document placed where it was prefilled, right after the same level 0 (its stored rows
    are the ones a full prefill computes)."""
    if not chunks:
        return []
    level0, counts, place = chunks[0], [], chunks[0].length
    for chunk in chunks[1:]:
        exact = place == chunk.start == level0.length and chunk.fingerprint == level0.fingerprint
        counts.append(0 if exact else min(prefix, chunk.length))
        place += chunk.length
    return counts


def window_floors(plan: PrefixPlan, sink: int, window: int) -> np.ndarray:
    """PrefixPlan's floors under a window, level 0 being the context's first `sink` rows: for each token, level 0's
    rows and then the context's stored rows at positions before its own minus `window` (the rests are runs of
    positions in order: those of the runs before the last one starting there, and that one's up to it), and the
    recomputed rows (in position order) before that position."""
    positions = np.asarray(plan.positions, dtype=np.int64)
    low = positions - window
    rests = [(place + k, rest.length) for _, place, k, rest, _ in plan.documents if rest is not None]
    floors = np.empty((len(positions), 3), dtype=np.int64)
    floors[:, 0] = sink
    floors[:, 1] = sink
    if rests:
        firsts, lengths = np.asarray(rests, dtype=np.int64).T
        before = np.cumsum(lengths) - lengths  # the rows of the runs before each
        run = np.searchsorted(firsts, low, side="right") - 1  # the last run starting at or before low, or -1
        at = np.maximum(run, 0)
        floors[:, 1] += np.where(run >= 0, before[at] + np.minimum(low - firsts[at], lengths[at]), 0)
    floors[:, 2] = np.searchsorted(positions, low)
    return floors


class LimitedAttention:
    """The attention backend of a selective recompute: the new tokens over the context chunks followed by the own
    buffer's first `own_rows` rows (none: the context alone), token i seeing the first limits[i] keys of that
    range (laid in position order: limits are positions + 1)."""

    def __init__(self, limits: torch.Tensor, own_rows: int):
        self.limits, self.own_rows = limits, own_rows

    def attend(self, ctx, layer, q, k, v, rotary, ops):
        queries = ops.rope_store(q, k, v, rotary)
        keys = [chunk[layer] for chunk in ctx.keys]
        values = [chunk[layer] for chunk in ctx.values]
        if self.own_rows:
            keys.append(ctx.own.keys[layer, :self.own_rows])
            values.append(ctx.own.values[layer, :self.own_rows])
        else:
            queries = queries[:-1]
        return ops.limited_attention(queries, keys, values, q.shape[-1] ** -0.5, self.limits)


class SelectiveRecompute:
    """Runs a Recompute for the decoder `model` in `dtype` on `device`. EPIC's pass runs in `graph` where it fits;
    else, `masked` (None: off CUDA), as one SDPA under a mask over the stored rows turned to their places (a
    per-request copy of their keys), or over the rows in place with their shifts (the limited-attention kernel)."""

    def __init__(self, model: Decoder, dtype: torch.dtype, device: str, graph: GraphRecompute | None = None,
                 masked: bool | None = None):
        self.model, self.config, self.dtype, self.device = model, model.config, dtype, device
        self.graph, self.masked = graph, masked
        self.weights_device = model.embed_tokens.weight.device  # (a module attribute costs microseconds a look)

    def __call__(self, chunks: list[KVChunk], recompute: Recompute) -> list[KVChunk]:
        if not chunks:
            return []  # a generation after no chunks: nothing to recompute
        level0, documents, places = self._placed(chunks)
        if not documents:
            return [level0]
        with torch.inference_mode():
            if recompute.ratio is not None:
                return self._blend(level0, documents, places, recompute)
            return self._prefixes(level0, documents, recompute.prefix, recompute.window)

    def _placed(self, chunks: list[KVChunk]) -> tuple[KVChunk, list[KVChunk], list[int]]:
        """Level 0, the documents and the position each is placed at (one after the other), checked; waits until the
        documents have arrived (they are read whole)."""
        if not chunks or chunks[0].level != LEVEL_SYSTEM or chunks[0].start != 0:
            raise ValueError("blend needs the level-0 chunk first, at position 0")
        level0, documents = chunks[0], chunks[1:]
        *places, end = itertools.accumulate((c.length for c in documents), initial=level0.length)
        if end > self.config.max_position:
            raise ValueError(f"sequence of {end} tokens exceeds the model's {self.config.max_position} positions")
        for chunk, place in zip(documents, places):
            if place < chunk.start:
                raise ValueError(f"a chunk at canonical position {chunk.start} cannot be placed before it")
        for chunk in documents:
            chunk.wait_arrived()
        return level0, documents, places

    def _run(self, token_ids, positions, slots, ctx, backend, measured=None, choose=None) -> None:
        """The tokens through every layer, their KV written at `slots` of ctx.own; after layer `measured`, on
        with the indices choose() gives (sorted)."""
        x = self.model.embed_tokens(token_ids)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, positions, slots, ctx, self.model.rotary)
            if i == measured:
                chosen = choose()
                if len(chosen) == 0:
                    return
                x, positions, slots = x[chosen], positions[chosen], slots[chosen]
                backend.limits = backend.limits[chosen]

    def _blend(self, level0, documents, places, recompute: Recompute) -> list[KVChunk]:
        n = sum(c.length for c in documents)
        start = places[0]
        own = KVBuffer.empty(self.config, n, self.dtype, self.device)
        cos, sin = self.model.rotary.cos, self.model.rotary.sin
        for chunk, place in zip(documents, places):  # the stored keys turned to their new positions
            shift, rows = place - chunk.start, slice(place - start, place - start + chunk.length)
            keys, values = (dense(t.to(self.device), self.dtype) for t in (chunk.keys, chunk.values))
            own.keys[:, rows] = rotate(keys, cos[shift], sin[shift])
            own.values[:, rows] = values
        measured = min(1, self.config.num_layers - 1)
        stored_values = own.values[measured].clone()
        first = torch.tensor([p - start + i for c, p in zip(documents, places) for i in range(min(recompute.prefix,
                              c.length))], dtype=torch.int64, device=self.device)

        def choose() -> torch.Tensor:  # the tokens whose values deviate most at the measured layer, and the prefixes
            deviation = (own.values[measured] - stored_values).float().square().sum(dim=(-2, -1))
            top = deviation.topk(math.ceil(recompute.ratio * n)).indices
            return torch.cat((top, first)).unique(sorted=True)
        positions = torch.arange(start, start + n, device=self.device)
        backend = LimitedAttention(positions + 1, own_rows=n)
        ctx = AttentionContext(keys=[level0.keys.to(self.device)], values=[level0.values.to(self.device)],
                               shifts=torch.zeros(1, dtype=torch.int64, device=self.device), own=own, backend=backend)
        token_ids = [t for c in documents for t in c.token_ids]
        self._run(torch.tensor(token_ids, dtype=torch.int64, device=self.device), positions,
                  torch.arange(n, device=self.device), ctx, backend, measured, choose)
        return [level0, KVChunk(level=LEVEL_DOCUMENT, token_ids=token_ids, start=start, keys=own.keys,
                                values=own.values, fingerprint=level0.fingerprint)]

    def _dense(self, chunk: KVChunk) -> KVChunk:
        """The chunk on the device in the model's dtype (a packed one dequantised: its rows are split below)."""
        device = self.weights_device
        if all(isinstance(t, torch.Tensor) and t.device == device for t in (chunk.keys, chunk.values)):
            return chunk  # nothing to move or dequantise (dense keeps a plain tensor as it is): no copy of the chunk
        chunk = chunk.to(device)
        return replace(chunk, keys=dense(chunk.keys, self.dtype), values=dense(chunk.values, self.dtype))

    def plan(self, chunks: list[KVChunk], prefix: int, turned: bool = False, window: int = 0) -> PrefixPlan | None:
        """EPIC's recompute of each document's first `prefix` tokens laid out (see PrefixPlan); None when nothing is
        recomputed. turned: the stored rows after them turned to their places (a copy), else read in place; window:
        each token sees the document rows of the last `window` positions before it only (0: all of them)."""
        if not chunks:
            return None
        level0, documents, places = self._placed(chunks)
        counts = prefix_counts(chunks, prefix)
        if sum(counts) == 0:
            return None
        cos, sin = self.model.rotary.cos, self.model.rotary.sin
        # a document's tokens see level 0 and the stored rows before it (limits) and the recomputed rows before them
        # (causally, in the own rows); the stored rows after them stay in place, their shift applied to the query
        plan = PrefixPlan([self._dense(level0)], [0], [], [], [], [])
        seen = level0.length  # the context rows before the document
        for chunk, place, k in zip(documents, places, counts):
            plan.limits += [seen] * k
            seen += chunk.length - k
            chunk = self._dense(chunk)
            plan.token_ids += chunk.token_ids[:k]
            plan.positions += range(place, place + k)
            rest = None
            if k < chunk.length:
                rest, shift = KVChunk(LEVEL_DOCUMENT, chunk.token_ids[k:], chunk.start + k, chunk.keys[:, k:],
                                      chunk.values[:, k:], chunk.fingerprint), place - chunk.start
                if turned and shift:
                    rest, shift = replace(rest, start=place + k, keys=rotate(rest.keys, cos[shift], sin[shift])), 0
                plan.context.append(rest)
                plan.shifts.append(shift)
            plan.documents.append((chunk, place, k, rest, shift if rest is not None else 0))
        if window:
            plan.floors = window_floors(plan, level0.length, window)
        return plan

    def _prefixes(self, level0, documents, prefix: int, window: int = 0) -> list[KVChunk]:
        m = sum(prefix_counts([level0, *documents], prefix))
        if m == 0:
            return [level0, *documents]
        graph = self.graph if self.graph is not None and self.graph.fits(1 + len(documents), m) else None
        # off CUDA (the limited-attention kernel's reference): the stored rows turned to their places, one masked SDPA
        turned = graph is None and torch.device(self.device).type != "cuda" if self.masked is None else self.masked
        turned = turned or (graph is None and window > 0)  # the limited-attention kernel has no window: the mask
        plan = self.plan([level0, *documents], prefix, turned, window)
        own = graph.buffer if graph else KVBuffer.empty(self.config, m, self.dtype, self.device)
        out, shifts, row = [level0], [0], 0
        for chunk, place, k, rest, shift in plan.documents:
            if k:  # the recomputed rows: keys rotated at their placed positions (shift 0)
                out.append(KVChunk(LEVEL_DOCUMENT, chunk.token_ids[:k], place, own.keys[:, row:row + k],
                                   own.values[:, row:row + k], chunk.fingerprint))
                shifts.append(0)
                row += k
            if rest is not None:
                out.append(rest)
                shifts.append(shift)
        context = plan.context
        if graph:
            graph.run([c.keys for c in context], [c.values for c in context], plan.shifts, plan.token_ids,
                      plan.positions, plan.limits, plan.floors)
            return out
        positions = torch.tensor(plan.positions, dtype=torch.int64, device=self.device)
        ids = torch.tensor(plan.token_ids, dtype=torch.int64, device=self.device)
        slots = torch.arange(m, device=self.device)
        if turned:
            seen, limits = sum(c.length for c in context), torch.tensor(plan.limits, device=self.device)
            keys = torch.arange(seen, device=self.device)[None, :]
            visible = keys < limits[:, None]
            causal = torch.ones(m, m, dtype=torch.bool, device=self.device).tril()
            if plan.floors is not None:  # the window: level 0, then nothing before the floors
                sink, floor, own_floor = torch.from_numpy(plan.floors).to(self.device).unbind(1)
                visible &= (keys < sink[:, None]) | (keys >= floor[:, None])
                causal &= torch.arange(m, device=self.device)[None, :] >= own_floor[:, None]
            ctx = AttentionContext(keys=[c.keys for c in context], values=[c.values for c in context],
                                   shifts=torch.zeros(len(context), dtype=torch.int64, device=self.device), own=own,
                                   mask=torch.cat((visible, causal), dim=1))
            self._run(ids, positions, slots, ctx, None)
            return out
        backend = LimitedAttention(positions + 1, own_rows=0)
        ctx = AttentionContext(keys=[c.keys.to(self.device) for c in out],
                               values=[c.values.to(self.device) for c in out],
                               shifts=torch.tensor(shifts, dtype=torch.int64, device=self.device), own=own,
                               backend=backend)
        self._run(ids, positions, slots, ctx, backend)
        return out
