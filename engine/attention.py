"""What the new tokens attend to and how: the request's own KV buffer, the attention context (context chunks, their
position shifts and query scales, an optional explicit mask) and the attention backends that the decoder is given
through the context: chunk attention over a list of chunks, masked and causal SDPA, and (engine.cuda_graph) a
CUDA graph's prebuilt chunk table."""
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from cascade_rag.kernels.kv_quant import dense
from cascade_rag.kernels.rope import RotaryInputs

from .config import ModelConfig
from .ops import Ops


@dataclass
class KVBuffer:
    """The request's own (level-2) keys and values: [layers, capacity, kv_heads, head_dim], filled to `length`."""
    keys: torch.Tensor
    values: torch.Tensor
    length: int = 0

    @classmethod
    def empty(cls, config: ModelConfig, capacity: int, dtype, device) -> "KVBuffer":
        shape = (config.num_layers, capacity, config.num_kv_heads, config.head_dim)
        return cls(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))

    @property
    def capacity(self) -> int:
        return self.keys.shape[1]


class AttentionBackend(Protocol):
    def attend(self, ctx: "AttentionContext", layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               rotary: RotaryInputs, ops: Ops) -> torch.Tensor:
        """The attention output [n, Hq, D] of the new tokens' projections q [n, Hq, D], k, v [n, Hkv, D] at
        `layer`, their rotated key and value stored in the own buffer (rotary: rope_store's inputs)."""


@dataclass
class AttentionContext:
    """What the new tokens attend to: context chunks (per-layer keys/values and position shifts), then `own`.

    backend: how they attend (None: the eager choice of backend(): masked with a mask, causal for a first pass
    over nothing but the new tokens, chunk attention otherwise)."""
    keys: list[torch.Tensor]      # each [layers, n_c, kv_heads, D], rotated at the chunk's canonical positions
    values: list[torch.Tensor]
    shifts: torch.Tensor          # [C] int64, placed start - canonical start
    own: KVBuffer
    # [n, context + own keys] bool, True where a new token attends (several sequences in one pass, block-diagonal
    # causal in `own`; CacheBlend: some tokens among the own keys); needs all shifts zero: the query rotated at its
    # own position serves every context chunk
    mask: torch.Tensor | None = None
    scales: torch.Tensor | None = None  # [C] fp32: each context chunk's query scale (its scores' 1 / temperature)
    backend: AttentionBackend | None = None
    arrivals: list = field(default_factory=list)  # context chunks' layers still arriving (engine.chunk_stream)

    def arrive(self, layer: int) -> None:
        """Waits until every context chunk's `layer` is in place on the device."""
        for arrival in self.arrivals:
            arrival.wait(layer)

    @property
    def pending(self) -> bool:
        return any(a.pending for a in self.arrivals)

    def attention(self) -> AttentionBackend:
        """The backend of the next forward pass."""
        if self.backend is not None:
            return self.backend
        if self.mask is not None:
            return MASKED
        if not self.keys and self.own.length == 0:
            return CAUSAL
        return CHUNKS


def _sdpa(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, **kwargs) -> torch.Tensor:
    """SDPA of the own-chunk queries [n, Hq, D] over keys/values [T, Hkv, D], the KV heads repeated (SDPA's flash
    path takes no GQA)."""
    group = queries.shape[1] // keys.shape[1]
    keys, values = (t.repeat_interleave(group, dim=1).transpose(0, 1)[None] for t in (keys, values))
    out = F.scaled_dot_product_attention(queries.transpose(0, 1)[None], keys, values, scale=queries.shape[-1] ** -0.5,
                                         **kwargs)
    return out[0].transpose(0, 1)


class ChunkAttention:
    """The new tokens over the context chunks read in place, then the own buffer's keys so far (causal)."""

    def attend(self, ctx, layer, q, k, v, rotary, ops):
        queries = ops.rope_store(q, k, v, rotary)
        end = ctx.own.length + q.shape[0]
        keys = [chunk[layer] for chunk in ctx.keys] + [ctx.own.keys[layer, :end]]
        values = [chunk[layer] for chunk in ctx.values] + [ctx.own.values[layer, :end]]
        return ops.chunk_attention(queries, keys, values, q.shape[-1] ** -0.5)


class MaskedAttention:
    """The new tokens under ctx.mask over [context keys, the own buffer's first keys] (SDPA)."""

    def attend(self, ctx, layer, q, k, v, rotary, ops):
        queries = ops.rope_store(q, k, v, rotary)
        end = ctx.mask.shape[1] - sum(chunk.shape[1] for chunk in ctx.keys)
        keys, values = (torch.cat([dense(chunk[layer], q.dtype) for chunk in chunks] + [buffer[layer, :end]])
                        for chunks, buffer in ((ctx.keys, ctx.own.keys), (ctx.values, ctx.own.values)))
        return _sdpa(queries[-1], keys, values, attn_mask=ctx.mask)


class CausalAttention:
    """A plain causal prefill over nothing but the new tokens (full mode, level 0): SDPA's flash attention."""

    def attend(self, ctx, layer, q, k, v, rotary, ops):
        queries = ops.rope_store(q, k, v, rotary)
        n = q.shape[0]
        return _sdpa(queries[-1], ctx.own.keys[layer, :n], ctx.own.values[layer, :n], is_causal=True)


CHUNKS, MASKED, CAUSAL = ChunkAttention(), MaskedAttention(), CausalAttention()
