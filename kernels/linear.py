"""The linear layers of a decode step, one GEMV kernel each: an optional RMSNorm of the input before the
projection (QKV, gate/up), an optional bias (Qwen2), an optional SiLU(gate) * up of the output's two halves
(the MLP) and an optional residual added to the output (o_proj, down).

A decode step's row is a GEMV: one program computes BLOCK_N outputs of one row (the weight is read once per
row). A question's rows (up to MAX_TRITON_ROWS) share each weight tile through one tl.dot. More rows go to
cuBLAS, which is compute-bound there anyway (after the Triton RMSNorm on CUDA).
"""
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import launch
from kernels.rmsnorm import rmsnorm, rmsnorm_ref

MAX_GEMV_ROWS = 16      # one program per row; up to MAX_TRITON_ROWS, tiles of rows share the weight tile
MAX_TRITON_ROWS = 64
# outputs per program, input block, warps (rag.bench_kernels --tune linear)
TUNING = dict(block_n=2, block_k=1024, num_warps=4)
# rows in a tile (16 to 64) share each weight tile through tl.dot: outputs per program, input block, warps, stages
ROWS_TUNING = dict(block_n=16, block_k=128, num_warps=4, num_stages=3)


def linear_ref(x, weight, bias=None, norm_weight=None, eps=1e-6, gated=False, residual=None):
    if norm_weight is not None:
        x = rmsnorm_ref(x, norm_weight, eps)
    y = F.linear(x, weight, bias) if residual is None else torch.addmm(residual, x, weight.t())
    if gated:
        gate, up = y.chunk(2, dim=-1)
        y = F.silu(gate) * up
    return y


@triton.jit(do_not_specialize=["stride_x", "stride_res"])
def _linear_kernel(x_ptr, norm_ptr, w_ptr, bias_ptr, res_ptr, out_ptr, eps, stride_x, stride_res,
                   N: tl.constexpr, K: tl.constexpr, NORM: tl.constexpr, BIAS: tl.constexpr, GATED: tl.constexpr,
                   RESIDUAL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[row, n] for BLOCK_N outputs n; GATED: the weight's rows N + n are the up projection of gate row n."""
    pid = tl.program_id(0)
    row = tl.program_id(1)
    dtype = out_ptr.dtype.element_ty
    x_row = x_ptr + row * stride_x
    cols = tl.arange(0, BLOCK_K)
    if NORM:
        sq = tl.zeros([BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            xf = tl.load(x_row + k0 + cols, mask=k0 + cols < K, other=0.0).to(tl.float32)
            sq += xf * xf
        rstd = tl.rsqrt(tl.sum(sq, 0) / K + eps)
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    acc_up = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = k0 + cols < K
        x = tl.load(x_row + k0 + cols, mask=k_ok, other=0.0)
        if NORM:
            nw = tl.load(norm_ptr + k0 + cols, mask=k_ok, other=0.0).to(tl.float32)
            x = nw * (x.to(tl.float32) * rstd).to(dtype).to(tl.float32)
        x = x.to(dtype).to(tl.float32)[None, :]
        w_tile = w_ptr + n[:, None] * K + k0 + cols[None, :]
        w_ok = n_ok[:, None] & k_ok[None, :]
        acc += tl.load(w_tile, mask=w_ok, other=0.0).to(tl.float32) * x
        if GATED:
            acc_up += tl.load(w_tile + N * K, mask=w_ok, other=0.0).to(tl.float32) * x
    _output(tl.sum(acc, 1), tl.sum(acc_up, 1), bias_ptr + n, res_ptr + row * stride_res + n, out_ptr + row * N + n,
            n_ok, BIAS, GATED, RESIDUAL)


@triton.jit(do_not_specialize=["num_rows", "stride_x", "stride_res"])
def _linear_rows_kernel(x_ptr, norm_ptr, w_ptr, bias_ptr, res_ptr, out_ptr, eps, num_rows, stride_x, stride_res,
                        N: tl.constexpr, K: tl.constexpr, NORM: tl.constexpr, BIAS: tl.constexpr,
                        GATED: tl.constexpr, RESIDUAL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        ROWS: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """The same for a tile of ROWS rows (16 or more) as a tl.dot: the weight tile is read once for all of them."""
    pid = tl.program_id(0)
    dtype = out_ptr.dtype.element_ty
    r = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    r_ok = r < num_rows
    x_rows = x_ptr + r[:, None] * stride_x
    cols = tl.arange(0, BLOCK_K)
    if NORM:
        sq = tl.zeros([ROWS, BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            xf = tl.load(x_rows + k0 + cols[None, :], mask=r_ok[:, None] & (k0 + cols < K)[None, :],
                         other=0.0).to(tl.float32)
            sq += xf * xf
        rstd = tl.rsqrt(tl.sum(sq, 1) / K + eps)[:, None]
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    acc = tl.zeros([ROWS, BLOCK_N], tl.float32)
    acc_up = tl.zeros([ROWS, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = k0 + cols < K
        x = tl.load(x_rows + k0 + cols[None, :], mask=r_ok[:, None] & k_ok[None, :], other=0.0)
        if NORM:
            nw = tl.load(norm_ptr + k0 + cols, mask=k_ok, other=0.0).to(tl.float32)
            x = nw[None, :] * (x.to(tl.float32) * rstd).to(dtype).to(tl.float32)
        x = x.to(dtype)
        w_tile = w_ptr + n[:, None] * K + k0 + cols[None, :]
        w_ok = n_ok[:, None] & k_ok[None, :]
        w = tl.load(w_tile, mask=w_ok, other=0.0)
        if DOT_F32:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc += tl.dot(x, tl.trans(w), input_precision=PRECISION)
        if GATED:
            w_up = tl.load(w_tile + N * K, mask=w_ok, other=0.0)
            if DOT_F32:
                w_up = w_up.to(tl.float32)
            acc_up += tl.dot(x, tl.trans(w_up), input_precision=PRECISION)
    mask = r_ok[:, None] & n_ok[None, :]
    _output(acc, acc_up, bias_ptr + n[None, :], res_ptr + r[:, None] * stride_res + n[None, :],
            out_ptr + r[:, None] * N + n[None, :], mask, BIAS, GATED, RESIDUAL)


@triton.jit
def _output(y, y_up, bias_ptrs, res_ptrs, out_ptrs, mask, BIAS: tl.constexpr, GATED: tl.constexpr,
            RESIDUAL: tl.constexpr):
    """Bias, SiLU(gate) * up (rounded like F.silu(gate) * up on the projection's output), residual, store."""
    dtype = out_ptrs.dtype.element_ty
    if BIAS:
        y += tl.load(bias_ptrs, mask=mask, other=0.0).to(tl.float32)
    if GATED:
        gate = y.to(dtype).to(tl.float32)
        up = y_up.to(dtype).to(tl.float32)
        y = (gate * tl.sigmoid(gate)).to(dtype).to(tl.float32) * up
    if RESIDUAL:
        y += tl.load(res_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptrs, y.to(dtype), mask=mask)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _linear_triton(x, weight, bias, norm_weight, eps, gated, residual):
    rows, k = x.shape
    n = weight.shape[0] // 2 if gated else weight.shape[0]
    assert weight.shape[1] == k and weight.is_contiguous() and x.stride(1) == 1
    assert residual is None or residual.stride(1) == 1
    out = torch.empty((rows, n), dtype=weight.dtype, device=x.device)
    flags = (norm_weight is not None, bias is not None, gated, residual is not None)
    pointers = (x, norm_weight if flags[0] else x, weight, bias if flags[1] else x, residual if flags[3] else x, out)
    strides = (x.stride(0), residual.stride(0) if flags[3] else 0)
    key = ("linear", x.device.index, tuple(p.dtype for p in pointers), tuple(p.data_ptr() % 16 == 0 for p in pointers))
    if rows <= MAX_GEMV_ROWS:
        cfg = TUNING
        args = pointers + (eps,) + strides + (n, k) + flags + (
            cfg["block_n"], min(cfg["block_k"], triton.next_power_of_2(k)))
        launch(_linear_kernel, (triton.cdiv(n, cfg["block_n"]), rows), args, key + args[9:] + (cfg["num_warps"],),
               num_warps=cfg["num_warps"])
    else:
        cfg, tile = ROWS_TUNING, min(64, max(16, triton.next_power_of_2(rows)))
        precision = "ieee" if x.dtype == torch.float32 else "tf32"
        args = pointers + (eps, rows) + strides + (n, k) + flags + (
            cfg["block_n"], min(cfg["block_k"], triton.next_power_of_2(k)), tile, _interpreting(), precision)
        launch(_linear_rows_kernel, (triton.cdiv(n, cfg["block_n"]), triton.cdiv(rows, tile)), args,
               key + args[10:] + (cfg["num_warps"], cfg["num_stages"]), num_warps=cfg["num_warps"],
               num_stages=cfg["num_stages"])
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           norm_weight: torch.Tensor | None = None, eps: float = 1e-6, gated: bool = False,
           residual: torch.Tensor | None = None, impl: str | None = None) -> torch.Tensor:
    """x [rows, K] -> y [rows, N]: y = weight @ rmsnorm(x) + bias (the norm when norm_weight is given); gated:
    weight is [2N, K] (gate rows, then up rows) and y = silu(gate) * up; residual [rows, N]: y + residual.

    impl: None (Triton on CUDA for up to MAX_TRITON_ROWS rows, cuBLAS otherwise), "triton" (also on CPU under
    TRITON_INTERPRET=1) or "ref".
    """
    if gated and (bias is not None or residual is not None):
        raise ValueError("a gated linear layer takes no bias and no residual")
    if impl is None:
        impl = "triton" if x.is_cuda and x.shape[0] <= MAX_TRITON_ROWS else "ref"
        if impl == "ref" and x.is_cuda and norm_weight is not None:
            x, norm_weight = rmsnorm(x, norm_weight, eps), None
    if impl == "ref":
        return linear_ref(x, weight, bias, norm_weight, eps, gated, residual)
    if not x.is_cuda and not _interpreting():
        raise RuntimeError("the Triton linear needs CUDA tensors or TRITON_INTERPRET=1")
    return _linear_triton(x, weight, bias, norm_weight, eps, gated, residual)
