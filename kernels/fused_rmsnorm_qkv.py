"""RMSNorm, QKV projection, optional bias (Qwen2) and optional per-head q/k RMSNorm (Qwen3) in one kernel.

The kernel is a GEMV for decode (one program per block of whole heads and per row, so the q/k norm runs
in-kernel); the weight [qkv_dim, hidden] is read once per row. Larger batches of rows go to the reference,
whose matrix product is compute-bound anyway.
"""
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import launch
from kernels.rmsnorm import rmsnorm_ref

MAX_TRITON_ROWS = 16
# heads per program, hidden block, warps (rag.bench_kernels --tune)
TUNING = dict(heads=1, block_k=256, num_warps=8)


def rmsnorm_qkv_ref(x, norm_weight, eps, w_qkv, bias, num_q_heads, num_kv_heads, head_dim,
                    q_norm_weight=None, k_norm_weight=None, qk_eps=1e-6):
    n = x.shape[0]
    qkv = F.linear(rmsnorm_ref(x, norm_weight, eps), w_qkv, bias)
    q, k, v = qkv.split([num_q_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    q, k, v = q.view(n, num_q_heads, head_dim), k.view(n, num_kv_heads, head_dim), v.view(n, num_kv_heads, head_dim)
    if q_norm_weight is not None:
        q = rmsnorm_ref(q, q_norm_weight, qk_eps)
    if k_norm_weight is not None:
        k = rmsnorm_ref(k, k_norm_weight, qk_eps)
    return q, k, v


@triton.jit(do_not_specialize=["stride_x"])
def _rmsnorm_qkv_kernel(x_ptr, norm_w_ptr, w_ptr, bias_ptr, q_norm_ptr, k_norm_ptr, out_ptr,
                        eps, qk_eps, stride_x, HIDDEN: tl.constexpr, NUM_Q_HEADS: tl.constexpr,
                        NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HEADS: tl.constexpr,
                        BLOCK_K: tl.constexpr, HAS_BIAS: tl.constexpr, Q_NORM: tl.constexpr, K_NORM: tl.constexpr):
    pid = tl.program_id(0)
    row = tl.program_id(1)
    x_row = x_ptr + row * stride_x
    k_idx = tl.arange(0, BLOCK_K)

    sq = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(0, HIDDEN, BLOCK_K):
        x = tl.load(x_row + k0 + k_idx, mask=k0 + k_idx < HIDDEN, other=0.0).to(tl.float32)
        sq += x * x
    rstd = tl.rsqrt(tl.sum(sq, 0) / HIDDEN + eps)

    f = pid * HEADS * HEAD_DIM + tl.arange(0, HEADS * HEAD_DIM)
    qkv_dim = (NUM_Q_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM
    f_ok = f < qkv_dim
    acc = tl.zeros([HEADS * HEAD_DIM, BLOCK_K], tl.float32)
    for k0 in range(0, HIDDEN, BLOCK_K):
        k_ok = k0 + k_idx < HIDDEN
        x = tl.load(x_row + k0 + k_idx, mask=k_ok, other=0.0)
        nw = tl.load(norm_w_ptr + k0 + k_idx, mask=k_ok, other=0.0)
        h = (nw * (x.to(tl.float32) * rstd).to(x.dtype)).to(w_ptr.dtype.element_ty)
        w = tl.load(w_ptr + f[:, None] * HIDDEN + k0 + k_idx[None, :], mask=f_ok[:, None] & k_ok[None, :],
                    other=0.0)
        acc += w.to(tl.float32) * h.to(tl.float32)[None, :]
    y = tl.sum(acc, 1)
    if HAS_BIAS:
        y += tl.load(bias_ptr + f, mask=f_ok, other=0.0).to(tl.float32)
    y = y.to(out_ptr.dtype.element_ty)

    if Q_NORM or K_NORM:
        yh = tl.reshape(y.to(tl.float32), [HEADS, HEAD_DIM])
        heads = pid * HEADS + tl.arange(0, HEADS)
        d = tl.arange(0, HEAD_DIM)
        hrstd = tl.rsqrt(tl.sum(yh * yh, 1) / HEAD_DIM + qk_eps)
        normed = (yh * hrstd[:, None]).to(out_ptr.dtype.element_ty).to(tl.float32)
        is_q = heads < NUM_Q_HEADS
        is_k = (heads >= NUM_Q_HEADS) & (heads < NUM_Q_HEADS + NUM_KV_HEADS)
        if Q_NORM:
            qw = tl.load(q_norm_ptr + d).to(tl.float32)
            yh = tl.where(is_q[:, None], normed * qw[None, :], yh)
        if K_NORM:
            kw = tl.load(k_norm_ptr + d).to(tl.float32)
            yh = tl.where(is_k[:, None], normed * kw[None, :], yh)
        y = tl.reshape(yh, [HEADS * HEAD_DIM]).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * qkv_dim + f, y, mask=f_ok)


def _rmsnorm_qkv_triton(x, norm_weight, eps, w_qkv, bias, num_q_heads, num_kv_heads, head_dim,
                        q_norm_weight, k_norm_weight, qk_eps):
    n, hidden = x.shape
    qkv_dim = (num_q_heads + 2 * num_kv_heads) * head_dim
    assert w_qkv.shape == (qkv_dim, hidden) and w_qkv.is_contiguous() and x.stride(1) == 1
    out = torch.empty((n, qkv_dim), dtype=w_qkv.dtype, device=x.device)
    cfg = TUNING
    heads = cfg["heads"]
    grid = (triton.cdiv(num_q_heads + 2 * num_kv_heads, heads), n)
    has_bias, q_norm, k_norm = bias is not None, q_norm_weight is not None, k_norm_weight is not None
    pointers = (x, norm_weight, w_qkv, bias if has_bias else out, q_norm_weight if q_norm else out,
                k_norm_weight if k_norm else out, out)
    args = pointers + (eps, qk_eps, x.stride(0), hidden, num_q_heads, num_kv_heads, head_dim, heads, cfg["block_k"],
                       has_bias, q_norm, k_norm)
    key = ("rmsnorm_qkv", x.device.index, tuple(p.dtype for p in pointers),
           tuple(p.data_ptr() % 16 == 0 for p in pointers), args[10:], cfg["num_warps"])
    launch(_rmsnorm_qkv_kernel, grid, args, key, num_warps=cfg["num_warps"])
    q, k, v = out.split([num_q_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    return q.view(n, num_q_heads, head_dim), k.view(n, num_kv_heads, head_dim), v.view(n, num_kv_heads, head_dim)


def rmsnorm_qkv(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, w_qkv: torch.Tensor,
                bias: torch.Tensor | None, num_q_heads: int, num_kv_heads: int, head_dim: int,
                q_norm_weight: torch.Tensor | None = None, k_norm_weight: torch.Tensor | None = None,
                qk_eps: float = 1e-6, impl: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [n, hidden] -> q [n, Hq, D], k [n, Hkv, D], v [n, Hkv, D].

    impl: None (Triton on CUDA for up to MAX_TRITON_ROWS rows, the reference otherwise), "triton" (also on
    CPU under TRITON_INTERPRET=1) or "ref".
    """
    args = (x, norm_weight, eps, w_qkv, bias, num_q_heads, num_kv_heads, head_dim, q_norm_weight, k_norm_weight,
            qk_eps)
    if impl is None:
        small = x.shape[0] <= MAX_TRITON_ROWS and head_dim & (head_dim - 1) == 0
        impl = "triton" if x.is_cuda and small else "ref"
    if impl == "ref":
        return rmsnorm_qkv_ref(*args)
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the Triton rmsnorm_qkv needs CUDA tensors or TRITON_INTERPRET=1")
    return _rmsnorm_qkv_triton(*args)
