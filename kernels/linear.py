"""The linear layers of a decode step, one GEMV kernel each: an optional RMSNorm of the input before the
projection (QKV, gate/up), an optional bias (Qwen2), an optional SiLU(gate) * up of the output's two halves
(the MLP) and an optional residual added to the output (o_proj, down). The LM head is one too, with the final
RMSNorm, its logits written in fp32 and, for greedy decoding in a CUDA graph, folded into argmax keys
(kernels.greedy).

One program computes BLOCK_N outputs of one row, so the weight is read once per row; more rows than
MAX_TRITON_ROWS go to cuBLAS (after the Triton RMSNorm on CUDA), which reads it once for all of them.
"""
import torch
import torch.nn.functional as F
from .launcher import launch, wait_for_inputs  # before triton: it picks the interpreter without a GPU
import triton
import triton.language as tl

from .dispatch import implementation
from .greedy import EMPTY_C, SLOTS, SLOTS_C, keys_ref, logit_keys
from .options import DEFAULT_KERNELS, KernelOptions
from .rmsnorm import normed, rmsnorm, rmsnorm_ref

# rows up to which the GEMV beats cuBLAS (measured: docs/BENCHMARKS.md, "Kernel launch settings")
MAX_TRITON_ROWS = 3


def linear_ref(x, weight, bias=None, norm_weight=None, eps=1e-6, gated=False, residual=None, out_dtype=None,
               best=None):
    if norm_weight is not None:
        x = rmsnorm_ref(x, norm_weight, eps)
    y = F.linear(x, weight, bias) if residual is None else torch.addmm(residual, x, weight.t())
    if gated:
        gate, up = y.chunk(2, dim=-1)
        y = F.silu(gate) * up
    y = y.to(out_dtype or y.dtype)
    if best is not None:
        best[:1] = torch.maximum(best.max(), keys_ref(y[0]).max())
    return y


@triton.jit
def _input_block(x_row, norm_ptr, k0, cols, rstd, K: tl.constexpr, NORM: tl.constexpr, dtype):
    """Inputs k0 + cols of a row, RMS-normalised if NORM, as the [1, BLOCK_K] fp32 operand of the product."""
    k_ok = k0 + cols < K
    x = tl.load(x_row + k0 + cols, mask=k_ok, other=0.0)
    if NORM:
        x = normed(x.to(tl.float32), tl.load(norm_ptr + k0 + cols, mask=k_ok, other=0.0), rstd, dtype)
    return x.to(dtype).to(tl.float32)[None, :]


@triton.jit
def _silu_times(gate, up, dtype):
    """F.silu(gate) * up's rounding (gate and up fp32 holding dtype values): SiLU rounded to dtype, times up in
    fp32 (returned unrounded)."""
    return (gate * tl.sigmoid(gate)).to(dtype).to(tl.float32) * up


@triton.jit(do_not_specialize=["stride_x", "stride_res"])
def _linear_kernel(x_ptr, norm_ptr, w_ptr, bias_ptr, res_ptr, out_ptr, best_ptr, eps, stride_x, stride_res,
                   N: tl.constexpr, K: tl.constexpr, NORM: tl.constexpr, BIAS: tl.constexpr, GATED: tl.constexpr,
                   RESIDUAL: tl.constexpr, ARGMAX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   WARP_ROWS: tl.constexpr, X_VEC: tl.constexpr, PDL: tl.constexpr):
    """out[row, n] for BLOCK_N outputs n, rounded to the weight's dtype; GATED: the weight's rows N + n are the
    up projection of gate row n; ARGMAX (one row): the program's largest output folded into the argmax keys.
    The bias, and when one block spans the input (K <= BLOCK_K) the weights and the norm's, are loaded before
    waiting for the input, which is then read once.

    WARP_ROWS (one block): the block as [pieces of 256, BLOCK_N, 256], so that each warp holds whole weight
    rows and the norm's and the product's sums stay inside it (no exchange through shared memory); the input
    comes in the weights' shape, each warp reading its own copy in vectors of X_VEC (which divides stride_x)."""
    pid = tl.program_id(0)
    row = tl.program_id(1)
    dtype = w_ptr.dtype.element_ty
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    cols = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + n[:, None] * K + cols[None, :]
    ONE_BLOCK: tl.constexpr = K <= BLOCK_K
    if ONE_BLOCK:
        if WARP_ROWS:
            WIDTH: tl.constexpr = min(BLOCK_K, 256)
            k3 = (tl.arange(0, BLOCK_K // WIDTH)[:, None, None] * WIDTH + tl.arange(0, WIDTH)[None, None, :]
                  + 0 * n[None, :, None])
            k_ok = k3 < K
            w_ok = n_ok[None, :, None] & k_ok
            w3 = w_ptr + n[None, :, None] * K + k3
            w = tl.load(w3, mask=w_ok, other=0.0)
            if GATED:
                w_up = tl.load(w3 + N * K, mask=w_ok, other=0.0)
            if NORM:
                norm_w = tl.load(norm_ptr + k3, mask=k_ok, other=0.0)
        else:
            k_ok = cols < K
            w_ok = n_ok[:, None] & k_ok[None, :]
            w = tl.load(w_rows, mask=w_ok, other=0.0)
            if GATED:
                w_up = tl.load(w_rows + N * K, mask=w_ok, other=0.0)
            if NORM:
                norm_w = tl.load(norm_ptr + cols, mask=k_ok, other=0.0)
    if BIAS:
        bias = tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
    wait_for_inputs(PDL)
    if RESIDUAL:  # loaded with the input, not after the product's reduction
        residual = tl.load(res_ptr + row * stride_res + n, mask=n_ok, other=0.0).to(tl.float32)
    x_row = x_ptr + row * (stride_x // X_VEC * X_VEC)
    if ONE_BLOCK:  # the input read once: its sum of squares and the product from the same registers
        if WARP_ROWS:
            x = tl.load(x_row + k3, mask=k_ok, other=0.0).to(tl.float32)
            if NORM:
                rstd = tl.rsqrt(tl.sum(tl.sum(x * x, 2), 0) / K + eps)
                x = normed(x, norm_w, rstd[None, :, None], dtype)
            x = x.to(dtype).to(tl.float32)
            y = tl.sum(tl.sum(w.to(tl.float32) * x, 2), 0)
            if GATED:
                y_up = tl.sum(tl.sum(w_up.to(tl.float32) * x, 2), 0)
        else:
            x = tl.load(x_row + cols, mask=k_ok, other=0.0).to(tl.float32)
            if NORM:
                x = normed(x, norm_w, tl.rsqrt(tl.sum(x * x, 0) / K + eps), dtype)
            x = x.to(dtype).to(tl.float32)[None, :]
            y = tl.sum(w.to(tl.float32) * x, 1)
            if GATED:
                y_up = tl.sum(w_up.to(tl.float32) * x, 1)
    else:
        rstd = 0.0
        if NORM:
            sq = tl.zeros([BLOCK_K], tl.float32)
            for k0 in range(0, K, BLOCK_K):
                xf = tl.load(x_row + k0 + cols, mask=k0 + cols < K, other=0.0).to(tl.float32)
                sq += xf * xf
            rstd = tl.rsqrt(tl.sum(sq, 0) / K + eps)
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        acc_up = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            x = _input_block(x_row, norm_ptr, k0, cols, rstd, K, NORM, dtype)
            w_ok = n_ok[:, None] & (k0 + cols < K)[None, :]
            acc += tl.load(w_rows + k0, mask=w_ok, other=0.0).to(tl.float32) * x
            if GATED:
                acc_up += tl.load(w_rows + N * K + k0, mask=w_ok, other=0.0).to(tl.float32) * x
        y = tl.sum(acc, 1)
        y_up = tl.sum(acc_up, 1)
    if BIAS:
        y += bias
    if GATED:  # on the projection's output rounded to dtype, as F.linear gives it
        y = _silu_times(y.to(dtype).to(tl.float32), y_up.to(dtype).to(tl.float32), dtype)
    if RESIDUAL:
        y += residual
    y = y.to(dtype)
    tl.store(out_ptr + row * N + n, y.to(out_ptr.dtype.element_ty), mask=n_ok)
    if ARGMAX:
        keys = tl.where(n_ok, logit_keys(y.to(tl.float32), n), EMPTY_C)
        tl.atomic_max(best_ptr + pid % SLOTS_C, tl.max(keys, 0), sem="relaxed")


@triton.jit(do_not_specialize=["stride_y"])
def _silu_mul_kernel(y_ptr, out_ptr, stride_y, N: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """out = SiLU(gate) * up of a row of y = [gate, up], rounded as linear_ref rounds it."""
    row = tl.program_id(0).to(tl.int64)  # rows x row stride can pass 2^31 (a long prefill of a wide MLP)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < N
    dtype = out_ptr.dtype.element_ty
    wait_for_inputs(PDL)
    gate = tl.load(y_ptr + row * stride_y + cols, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(y_ptr + row * stride_y + N + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * N + cols, _silu_times(gate, up, dtype).to(dtype), mask=ok)


def silu_mul(y: torch.Tensor, options: KernelOptions = DEFAULT_KERNELS) -> torch.Tensor:
    """y [rows, 2N] (gate, then up) -> SiLU(gate) * up [rows, N] in one Triton kernel (torch takes two)."""
    rows, n = y.shape[0], y.shape[1] // 2
    assert y.stride(1) == 1 and y.shape[1] == 2 * n
    out = torch.empty((rows, n), dtype=y.dtype, device=y.device)
    block = min(1024, triton.next_power_of_2(n))
    key = ("silu_mul", y.device.index, y.dtype, y.data_ptr() % 16 == 0, n, block)
    launch(_silu_mul_kernel, (rows, triton.cdiv(n, block)), (y, out, y.stride(0), n, block), key, options,
           num_warps=4)
    return out


def _row_vector(x: torch.Tensor) -> int:
    """The elements that 16 bytes of x hold, if that many divide its row stride (else 1)."""
    vec = 16 // x.element_size()
    return vec if x.stride(0) % vec == 0 else 1


def _linear_triton(x, weight, bias, norm_weight, eps, gated, residual, out_dtype, best, options: KernelOptions):
    rows, k = x.shape
    n = weight.shape[0] // 2 if gated else weight.shape[0]
    assert weight.shape[1] == k and weight.is_contiguous() and x.stride(1) == 1
    assert residual is None or residual.stride(1) == 1
    out = torch.empty((rows, n), dtype=out_dtype or weight.dtype, device=x.device)
    cfg = options.linear_gated if gated else options.linear
    block_k = min(cfg.block_k, triton.next_power_of_2(k))
    # warp rows where the input is normalised (its sum of squares not exchanged across warps) and fills the block
    # (padding would cost every warp its own share of it): measured per projection at commit 70376fb
    warp_rows = norm_weight is not None and k == block_k
    flags = (norm_weight is not None, bias is not None, gated, residual is not None, best is not None)
    pointers = (x, norm_weight if flags[0] else x, weight, bias if flags[1] else x, residual if flags[3] else x, out,
                best if flags[4] else x)
    args = pointers + (eps, x.stride(0), residual.stride(0) if flags[3] else 0, n, k) + flags + (
        cfg.block_n, block_k, warp_rows, _row_vector(x) if warp_rows else 1)
    key = ("linear", x.device.index, tuple(p.dtype for p in pointers), tuple(p.data_ptr() % 16 == 0 for p in pointers),
           args[10:], cfg.num_warps)
    launch(_linear_kernel, (triton.cdiv(n, cfg.block_n), rows), args, key, options, num_warps=cfg.num_warps)
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           norm_weight: torch.Tensor | None = None, eps: float = 1e-6, gated: bool = False,
           residual: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
           best: torch.Tensor | None = None, impl: str | None = None,
           options: KernelOptions = DEFAULT_KERNELS) -> torch.Tensor:
    """x [rows, K] -> y [rows, N]: y = weight @ rmsnorm(x) + bias (the norm when norm_weight is given); gated:
    weight is [2N, K] (gate rows, then up rows) and y = silu(gate) * up; residual [rows, N]: y + residual. y is
    rounded to the weight's dtype, then given in out_dtype (default: the weight's). best (one row): the argmax
    keys of kernels.greedy (SLOTS int64), which take y's largest element and its index.

    impl: None (Triton on CUDA for up to MAX_TRITON_ROWS rows, cuBLAS otherwise, with the Triton RMSNorm and
    SiLU * up around it), "triton" (also on CPU under TRITON_INTERPRET=1) or "ref".
    """
    if gated and (bias is not None or residual is not None):
        raise ValueError("a gated linear layer takes no bias and no residual")
    if best is not None and (x.shape[0] != 1 or best.shape != (SLOTS,) or best.dtype != torch.int64):
        raise ValueError(f"the argmax keys take one row and {SLOTS} int64 slots")
    chosen = implementation(impl, x, x.shape[0] <= MAX_TRITON_ROWS, "linear")
    if chosen == "ref" and impl is None and x.is_cuda:  # many rows: cuBLAS, with the Triton norm and SiLU * up
        if norm_weight is not None:
            x, norm_weight = rmsnorm(x, norm_weight, eps, options=options), None
        if gated:  # cuBLAS's product, then SiLU(gate) * up in one kernel
            y = silu_mul(F.linear(x, weight), options)
            return y if out_dtype is None else y.to(out_dtype)
    if chosen == "ref":
        return linear_ref(x, weight, bias, norm_weight, eps, gated, residual, out_dtype, best)
    return _linear_triton(x, weight, bias, norm_weight, eps, gated, residual, out_dtype, best, options)
