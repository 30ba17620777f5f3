"""The decoder: Llama, Qwen2 (qkv bias) and Qwen3 (q/k RMSNorm) as one model with config switches.

Attention runs over a list of KV chunks (each read in place, its position shift applied by rotating the
query) followed by the request's own KV buffer, which receives the keys and values of the new tokens; how, the
attention context's backend decides (engine.attention). Which kernels run, the decoder's Ops decide.
"""
import torch
from torch import nn

from cascade_rag.kernels.rope import RotaryInputs

from .attention import AttentionContext
from .config import ModelConfig
from .ops import Ops


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, ops: Ops):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.ops = eps, ops

    def forward(self, x):
        return self.ops.rmsnorm(x, self.weight, self.eps)


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


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, ops: Ops):
        super().__init__()
        self.config, self.layer, self.ops = config, layer, ops
        self.qkv_proj = nn.Linear(config.hidden_size, config.qkv_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.num_heads * config.head_dim, config.hidden_size, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps, ops)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps, ops)

    def forward(self, x, norm: RMSNorm, positions, slots, ctx: AttentionContext, rotary: Rotary):
        c, ops, own = self.config, self.ops, ctx.own
        q, k, v = ops.rmsnorm_qkv(x, norm.weight, norm.eps, self.qkv_proj.weight, self.qkv_proj.bias, c.num_heads,
                                  c.num_kv_heads, c.head_dim)
        inputs = RotaryInputs(positions, ctx.shifts, slots, own.keys[self.layer], own.values[self.layer], rotary.cos,
                              rotary.sin, self.q_norm.weight if c.qk_norm else None,
                              self.k_norm.weight if c.qk_norm else None, c.rms_norm_eps, ctx.scales)
        ctx.arrive(self.layer)  # the context chunks' layer, if still being loaded
        return ctx.attention().attend(ctx, self.layer, q, k, v, inputs, ops).reshape(x.shape[0], -1)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, ops: Ops):
        super().__init__()
        self.ops = ops
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x, norm: RMSNorm):
        """x + the MLP of norm(x)."""
        h = self.ops.linear(x, self.gate_up_proj.weight, norm_weight=norm.weight, eps=norm.eps, gated=True)
        return self.ops.linear(h, self.down_proj.weight, residual=x)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, ops: Ops):
        super().__init__()
        self.ops = ops
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.self_attn = Attention(config, layer, ops)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.mlp = MLP(config, ops)

    def forward(self, x, positions, slots, ctx, rotary):
        attn = self.self_attn(x, self.input_layernorm, positions, slots, ctx, rotary)
        x = self.ops.linear(attn, self.self_attn.o_proj.weight, residual=x)
        return self.mlp(x, self.post_attention_layernorm)


class Decoder(nn.Module):
    """The model: owns the weights, the rotary tables and its Ops (which kernels run); runs new tokens over an
    attention context, whose own buffer receives their KV (forward, step, step_embedded; engine.selective runs the
    layers itself for a selective recompute)."""
    # checkpoint tensor name fragment -> (our parameter name fragment, shard index); shards are laid out in order
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: ModelConfig, ops: Ops = Ops()):
        super().__init__()
        self.config, self.ops = config, ops
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i, ops) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = Rotary(config.head_dim, config.rope_theta, config.max_position)

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
            x = layer(x, positions, slots, ctx, self.rotary)
        if last is not None:
            x = x.index_select(0, last)
        elif not all_logits:
            x = x[-1:]
        if self.ops.custom and head is not None and best is not None:
            return self.ops.greedy_head(x, self.lm_head.weight, head, self.norm.weight, self.norm.eps, best)
        if self.ops.custom:  # the final RMSNorm in the LM head's GEMV
            return self.ops.linear(x, self.lm_head.weight, norm_weight=self.norm.weight, eps=self.norm.eps,
                                   out_dtype=torch.float32, best=best)
        if best is not None:
            raise ValueError("the argmax keys come from the custom LM head")
        return self.lm_head(self.norm(x)).float()
