"""Ops: the kernels a decoder runs, as its options choose them (the Triton kernels or their PyTorch references,
launched with the kernel options), so that no layer takes a use_custom_kernels argument."""
from dataclasses import dataclass, field

import torch

from cascade_rag.kernels.chunk_attention import (NO_PACKED, DecodeWorkspace, PackedBases, chunk_attention,
                                                chunk_attention_table)
from cascade_rag.kernels.chunk_attention.limited import limited_attention
from cascade_rag.kernels.fused_rmsnorm_qkv import rmsnorm_qkv
from cascade_rag.kernels.linear import linear
from cascade_rag.kernels.lm_head import greedy_head
from cascade_rag.kernels.options import DEFAULT_KERNELS, KernelOptions
from cascade_rag.kernels.rmsnorm import rmsnorm
from cascade_rag.kernels.rope import RotaryInputs, rope_store


@dataclass(frozen=True)
class Ops:
    """custom: each kernel's dispatcher picks Triton where it takes the call (off: the PyTorch references);
    kernels: how the Triton kernels are launched."""
    custom: bool = True
    kernels: KernelOptions = field(default_factory=lambda: DEFAULT_KERNELS)

    @property
    def impl(self) -> str | None:
        return None if self.custom else "ref"

    def rmsnorm(self, x, weight, eps):
        return rmsnorm(x, weight, eps, impl=self.impl, options=self.kernels)

    def rmsnorm_qkv(self, x, norm_weight, eps, w_qkv, bias, num_q_heads, num_kv_heads, head_dim):
        return rmsnorm_qkv(x, norm_weight, eps, w_qkv, bias, num_q_heads, num_kv_heads, head_dim, impl=self.impl,
                           options=self.kernels)

    def linear(self, x, weight, **kwargs):
        return linear(x, weight, impl=self.impl, options=self.kernels, **kwargs)

    def rope_store(self, q, k, v, rotary: RotaryInputs):
        return rope_store(q, k, v, rotary, impl=self.impl, options=self.kernels)

    def chunk_attention(self, q, keys, values, scale):
        return chunk_attention(q, keys, values, scale, impl=self.impl, options=self.kernels)

    def limited_attention(self, q, keys, values, scale, limits):
        return limited_attention(q, keys, values, scale, limits, impl=self.impl, options=self.kernels)

    def chunk_attention_table(self, q, k_base, v_base, table, scale, workspace: DecodeWorkspace,
                              rotary: RotaryInputs | None = None, new_kv=None, packed: PackedBases = NO_PACKED,
                              limits: torch.Tensor | None = None, floors: torch.Tensor | None = None):
        """The Triton kernel always: a CUDA graph's tables exist for it alone (EngineOptions refuses graphs
        without custom kernels)."""
        if not self.custom:
            raise ValueError("chunk attention over a graph's table is a Triton kernel: it needs custom kernels")
        return chunk_attention_table(q, k_base, v_base, table, scale, workspace, rotary, new_kv, self.kernels, packed,
                                     limits, floors)

    def greedy_head(self, x, weight, quantized, norm_weight, eps, best) -> torch.Tensor:
        return greedy_head(x, weight, quantized, norm_weight, eps, best, self.kernels)
