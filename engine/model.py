"""The decoder: Llama, Qwen2 (qkv bias) and Qwen3 (q/k RMSNorm) as one model with config switches.

Attention runs over a list of KV chunks (each read in place, its position shift applied by rotating the
query) followed by the request's own KV buffer, which receives the keys and values of the new tokens.
"""
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cascade_rag.kernels.chunk_attention import chunk_attention
from cascade_rag.kernels.fused_rmsnorm_qkv import rmsnorm_qkv
from cascade_rag.kernels.linear import linear
from cascade_rag.kernels.lm_head import greedy_head
from cascade_rag.kernels.rmsnorm import rmsnorm
from cascade_rag.kernels.rope import rope_store

from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x, use_custom_kernels: bool = False):
        return rmsnorm(x, self.weight, self.eps, impl=None if use_custom_kernels else "ref")


class Rotary(nn.Module):
    """cos and sin tables [max_position, head_dim] (fp32) for kernels.rope."""
    def __init__(self, head_dim: int, theta: float, max_position: int):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[positions], self.sin[positions]


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


@dataclass
class AttentionContext:
    """What the new tokens attend to: context chunks (per-layer keys/values and position shifts), then `own`."""
    keys: list[torch.Tensor]      # each [layers, n_c, kv_heads, D], rotated at the chunk's canonical positions
    values: list[torch.Tensor]
    shifts: torch.Tensor          # [C] int64, placed start - canonical start
    own: KVBuffer
    # plan(layer, q, k, v, rope) -> attention output over a prebuilt chunk table (CUDA graphs), from the QKV
    # projection and rope_store's other arguments
    plan: Callable | None = None
    # [n, context + own keys] bool, True where a new token attends (LLMEngine.prefill_chunks: several sequences in
    # one pass, block-diagonal causal in `own`; LLMEngine.blend: some tokens among the own keys); needs all shifts
    # zero: the query rotated at its own position serves every context chunk
    mask: torch.Tensor | None = None
    scales: torch.Tensor | None = None  # [C] fp32: each context chunk's query scale (its scores' 1 / temperature)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.config, self.layer = config, layer
        self.qkv_proj = nn.Linear(config.hidden_size, config.qkv_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.num_heads * config.head_dim, config.hidden_size, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)

    def forward(self, x, norm: RMSNorm, positions, slots, ctx: AttentionContext, rotary: Rotary,
                use_custom_kernels: bool):
        c, impl = self.config, None if use_custom_kernels else "ref"
        q, k, v = rmsnorm_qkv(x, norm.weight, norm.eps, self.qkv_proj.weight, self.qkv_proj.bias, c.num_heads,
                              c.num_kv_heads, c.head_dim, impl=impl)
        n, own = x.shape[0], ctx.own
        rope = dict(positions=positions, shifts=ctx.shifts, slots=slots, own_keys=own.keys[self.layer],
                    own_values=own.values[self.layer], cos=rotary.cos, sin=rotary.sin,
                    q_norm=self.q_norm.weight if c.qk_norm else None, k_norm=self.k_norm.weight if c.qk_norm else None,
                    qk_eps=c.rms_norm_eps, scales=ctx.scales)
        if ctx.plan is not None:
            return ctx.plan(self.layer, q, k, v, rope).reshape(n, -1)
        queries = rope_store(q, k, v, **rope, impl=impl)
        if ctx.mask is not None:  # explicit mask over [context keys, the own buffer's first keys]
            group = c.num_heads // c.num_kv_heads
            end = ctx.mask.shape[1] - sum(chunk.shape[1] for chunk in ctx.keys)
            keys, values = (torch.cat([chunk[self.layer] for chunk in chunks] + [buffer[self.layer, :end]])
                            .repeat_interleave(group, dim=1).transpose(0, 1)[None]
                            for chunks, buffer in ((ctx.keys, own.keys), (ctx.values, own.values)))
            out = F.scaled_dot_product_attention(queries[-1].transpose(0, 1)[None], keys, values, attn_mask=ctx.mask,
                                                 scale=c.head_dim ** -0.5)[0].transpose(0, 1)
        elif not ctx.keys and own.length == 0:  # a plain causal prefill (full mode, level 0): flash attention
            group = c.num_heads // c.num_kv_heads  # heads repeated: SDPA's flash path takes no GQA
            keys, values = (t[self.layer, :n].repeat_interleave(group, dim=1).transpose(0, 1)[None]
                            for t in (own.keys, own.values))
            out = F.scaled_dot_product_attention(queries[-1].transpose(0, 1)[None], keys, values, is_causal=True,
                                                 scale=c.head_dim ** -0.5)[0].transpose(0, 1)
        else:
            end = own.length + n
            keys = [chunk[self.layer] for chunk in ctx.keys] + [own.keys[self.layer, :end]]
            values = [chunk[self.layer] for chunk in ctx.values] + [own.values[self.layer, :end]]
            out = chunk_attention(queries, keys, values, c.head_dim ** -0.5, impl=impl)
        return out.reshape(n, -1)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x, norm: RMSNorm, use_custom_kernels: bool):
        """x + the MLP of norm(x)."""
        impl = None if use_custom_kernels else "ref"
        h = linear(x, self.gate_up_proj.weight, norm_weight=norm.weight, eps=norm.eps, gated=True, impl=impl)
        return linear(h, self.down_proj.weight, residual=x, impl=impl)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, positions, slots, ctx, rotary, use_custom_kernels):
        attn = self.self_attn(x, self.input_layernorm, positions, slots, ctx, rotary, use_custom_kernels)
        x = linear(attn, self.self_attn.o_proj.weight, residual=x, impl=None if use_custom_kernels else "ref")
        return self.mlp(x, self.post_attention_layernorm, use_custom_kernels)


class Decoder(nn.Module):
    # checkpoint tensor name fragment -> (our parameter name fragment, shard index); shards are laid out in order
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = Rotary(config.head_dim, config.rope_theta, config.max_position)
        self.use_custom_kernels = True

    def shard_sizes(self, packed: str) -> list[int]:
        c = self.config
        if packed == "qkv_proj":
            return [c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.num_kv_heads * c.head_dim]
        return [c.intermediate_size, c.intermediate_size]

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext,
                all_logits: bool = False) -> torch.Tensor:
        """Runs the new tokens, appends their KV to ctx.own and returns logits (last token unless all_logits)."""
        n = input_ids.shape[0]
        if ctx.own.length + n > ctx.own.capacity:
            raise ValueError(f"KV buffer overflow: {ctx.own.length} + {n} tokens > capacity {ctx.own.capacity}")
        slots = torch.arange(ctx.own.length, ctx.own.length + n, device=input_ids.device)
        logits = self.step(input_ids, positions, slots, ctx, all_logits)
        ctx.own.length += n
        return logits

    @torch.inference_mode()
    def step(self, input_ids, positions, slots, ctx: AttentionContext, all_logits: bool = False,
             last: torch.Tensor | None = None) -> torch.Tensor:
        """The forward pass with the new tokens' own-buffer slots given (static shapes: CUDA-graph capturable).
        Logits of every token (all_logits), of the one at index `last` ([1] tensor), or of the last one."""
        return self.step_embedded(self.embed_tokens(input_ids), positions, slots, ctx, all_logits, last)

    @torch.inference_mode()
    def step_embedded(self, x, positions, slots, ctx: AttentionContext, all_logits: bool = False,
                      last: torch.Tensor | None = None, best: torch.Tensor | None = None,
                      head: tuple | None = None) -> torch.Tensor:
        """step() from the tokens' embeddings x; best: the argmax keys that the LM head fills (kernels.greedy,
        custom kernels only), from the head's quantised copy `head` if given (kernels.lm_head: the logits
        returned are then approximate)."""
        for layer in self.layers:
            x = layer(x, positions, slots, ctx, self.rotary, self.use_custom_kernels)
        if last is not None:
            x = x.index_select(0, last)
        elif not all_logits:
            x = x[-1:]
        if self.use_custom_kernels and head is not None and best is not None:
            return greedy_head(x, self.lm_head.weight, head, self.norm.weight, self.norm.eps, best)
        if self.use_custom_kernels:  # the final RMSNorm in the LM head's GEMV
            return linear(x, self.lm_head.weight, norm_weight=self.norm.weight, eps=self.norm.eps,
                          out_dtype=torch.float32, best=best)
        if best is not None:
            raise ValueError("the argmax keys come from the custom LM head")
        return self.lm_head(self.norm(x)).float()
