"""RMSNorm of the hidden state fused with the QKV projection and its bias (Qwen2): the `linear` kernel with its
norm (its reference: kernels.linear.linear_ref), split into heads. Qwen3's q/k RMSNorm is applied after, by
kernels.rope.rope_store (in a CUDA-graph decode step, by the attention kernel), which reads whole heads anyway
(here a program holds only a few output features).
"""
import torch

from .linear import linear
from .options import DEFAULT_KERNELS, KernelOptions


def rmsnorm_qkv(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, w_qkv: torch.Tensor,
                bias: torch.Tensor | None, num_q_heads: int, num_kv_heads: int, head_dim: int,
                impl: str | None = None,
                options: KernelOptions = DEFAULT_KERNELS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [n, hidden] -> q [n, Hq, D], k [n, Hkv, D], v [n, Hkv, D] (views of one [n, qkv_dim] tensor) from the
    weight [qkv_dim, hidden]. impl: as kernels.linear.linear."""
    n = x.shape[0]
    qkv = linear(x, w_qkv, bias, norm_weight, eps, impl=impl, options=options)
    q, k, v = qkv.split([num_q_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    return q.view(n, num_q_heads, head_dim), k.view(n, num_kv_heads, head_dim), v.view(n, num_kv_heads, head_dim)
