"""RMSNorm of the hidden state fused with the QKV projection and its bias (Qwen2): the `linear` kernel with its
norm, split into heads. Qwen3's q/k RMSNorm is applied after, by kernels.rope.rope_store, which reads whole
heads anyway (here a program holds only a few output features of a head).
"""
import torch

from kernels.linear import linear


def _heads(qkv: torch.Tensor, num_q_heads: int, num_kv_heads: int, head_dim: int):
    n = qkv.shape[0]
    q, k, v = qkv.split([num_q_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    return q.view(n, num_q_heads, head_dim), k.view(n, num_kv_heads, head_dim), v.view(n, num_kv_heads, head_dim)


def rmsnorm_qkv(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, w_qkv: torch.Tensor,
                bias: torch.Tensor | None, num_q_heads: int, num_kv_heads: int, head_dim: int,
                impl: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [n, hidden] -> q [n, Hq, D], k [n, Hkv, D], v [n, Hkv, D] (views of one [n, qkv_dim] tensor) from the
    weight [qkv_dim, hidden]. impl: as kernels.linear.linear."""
    return _heads(linear(x, w_qkv, bias, norm_weight, eps, impl=impl), num_q_heads, num_kv_heads, head_dim)


def rmsnorm_qkv_ref(x, norm_weight, eps, w_qkv, bias, num_q_heads, num_kv_heads, head_dim):
    return rmsnorm_qkv(x, norm_weight, eps, w_qkv, bias, num_q_heads, num_kv_heads, head_dim, impl="ref")
