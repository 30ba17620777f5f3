"""The LM head of a greedy decode step from an int8 copy of its weight, with the token exactly the one the full
head gives (kernels.linear with argmax keys: the largest logit rounded to the model's dtype, the lowest index
among equal ones).

quantize_rows keeps each weight row w as int8 q times a scale s, with an error bound e (|w . x - s q . x| <=
|x| e for every x: the quantisation error's norm by Cauchy-Schwarz, plus the fp32 sums' rounding) and the norm
c of s q. The first pass (_approx_kernel) quantises the normalised input x too, a scale a block of BLOCK_K, so
that the products are int8 tensor-core dots, exact in int32: its logits are s q . x' for the quantised x', off
from w . x by at most |x| e + c |x - x'| (with a slack for the fp32 scaling). They and their lower bounds
(argmax keys of their own) come from half the full head's bytes, at the memory's speed: unpacking int8 in
registers for fp32 products made the GEMV bound by its conversions. The second pass (_exact_rows_kernel)
recomputes from the full weight only the rows whose upper bound, rounded to the model's dtype, reaches the
largest lower bound rounded: no other row can be the argmax or tie with it. Those rows are a handful where the
logits have a clear winner; where many rows are within the bounds of the best (flat logits) the second pass
reads them one at a time, slower than the full head but the same token. (The second pass normalises the input
as the full head's GEMV does but sums its squares in another order: where that fp32 sum rounds differently, an
input element can round to a neighbouring value of the model's dtype, which could change only a logit within
that much of a tie.)
"""
import torch
from .launcher import launch, wait_for_inputs  # before triton: it picks the interpreter without a GPU
import triton
import triton.language as tl

from .greedy import EMPTY_C, SLOTS, SLOTS_C, key_logit, logit_keys
from .options import DEFAULT_KERNELS, KernelOptions
from .rmsnorm import normed

QUANT_ROWS = 8192  # rows quantised at once (their fp64 copy is the transient memory)
SLACK = 2.0 ** -16  # of c |x|: the rounding of the first pass's fp32 scaling and sums, with a wide margin
_SLACK = tl.constexpr(SLACK)


def supported(device: torch.device | str) -> bool:
    """Whether the first pass's int8 tensor-core dots run on `device`: CUDA of compute capability 8.0 and up, or
    the CPU under Triton's interpreter."""
    device = torch.device(device)
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 0)


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> int8 rows q [N, K] and [N, 3] fp32 (scale s, error bound e, norm c of s q) with
    |(w - s q) . x| <= |x| e, room for the rounding of an fp32 dot product of K terms on both sides, and c
    rounded up."""
    n, k = weight.shape
    q = torch.empty((n, k), dtype=torch.int8, device=weight.device)
    scales = torch.empty((n, 3), dtype=torch.float32, device=weight.device)
    gamma = 2 * k * 2.0 ** -24  # above k * u / (1 - k * u), the bound on a k-term fp32 sum's relative error
    for r0 in range(0, n, QUANT_ROWS):
        w = weight[r0:r0 + QUANT_ROWS].double()
        s = (w.abs().amax(1) / 127).float().double()
        rows = torch.round(w / s.clamp_min(1e-30)[:, None]).clamp(-127, 127)
        dequant = rows * s[:, None]
        err = (w - dequant).norm(dim=1) + gamma * (w.norm(dim=1) + dequant.norm(dim=1))
        q[r0:r0 + QUANT_ROWS] = rows.to(torch.int8)
        scales[r0:r0 + QUANT_ROWS, 0] = s.float()
        scales[r0:r0 + QUANT_ROWS, 1] = (err * (1 + 2.0 ** -10)).float()  # the fp32 products' and sums' slack
        scales[r0:r0 + QUANT_ROWS, 2] = (dequant.norm(dim=1) * (1 + 2.0 ** -10)).float()
    return q, scales


@triton.jit
def _rstd(x_ptr, eps, K: tl.constexpr, BLOCK_K: tl.constexpr):
    sq = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + k0 + tl.arange(0, BLOCK_K), mask=k0 + tl.arange(0, BLOCK_K) < K, other=0.0)
        sq += x.to(tl.float32) * x.to(tl.float32)
    return tl.rsqrt(tl.sum(sq, 0) / K + eps)


@triton.jit
def _quantized_block(x_ptr, norm_ptr, k, rstd, K: tl.constexpr):
    """The normalised input x at k (rounded as the full head's GEMV rounds it) as x' = s qx: qx integers of at
    most 127 in magnitude (as fp32) and s their scale, with the block's sums of x^2 and (x - x')^2."""
    ok = k < K
    x = normed(tl.load(x_ptr + k, mask=ok, other=0.0).to(tl.float32), tl.load(norm_ptr + k, mask=ok, other=0.0),
               rstd, x_ptr.dtype.element_ty)
    s = tl.maximum(tl.max(tl.abs(x), 0) / 127, 1e-30)
    qx = tl.floor(x / s + 0.5)
    return qx, s, tl.sum(x * x, 0), tl.sum((x - qx * s) * (x - qx * s), 0)


@triton.jit
def _input_norms(x_ptr, norm_ptr, rstd, K: tl.constexpr, BLOCK_K: tl.constexpr):
    """|x| and |x - x'| of _quantized_block's blocks."""
    x2 = 0.0
    dx2 = 0.0
    for k0 in range(0, K, BLOCK_K):
        _, _, block_x2, block_dx2 = _quantized_block(x_ptr, norm_ptr, k0 + tl.arange(0, BLOCK_K), rstd, K)
        x2 += block_x2
        dx2 += block_dx2
    return tl.sqrt(x2), tl.sqrt(dx2)


@triton.jit
def _bound(e, c, x_norm, dx_norm):
    return e * x_norm + c * (dx_norm + _SLACK * x_norm)


@triton.jit
def _approx_kernel(x_ptr, norm_ptr, q_ptr, scale_ptr, out_ptr, best_ptr, eps, N: tl.constexpr, K: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """The approximate logits s q . x' of BLOCK_N rows, their lower bounds folded into the keys at best_ptr."""
    pid = tl.program_id(0)
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    scale = tl.load(scale_ptr + 3 * n, mask=n_ok, other=0.0)
    e = tl.load(scale_ptr + 3 * n + 1, mask=n_ok, other=0.0)
    c = tl.load(scale_ptr + 3 * n + 2, mask=n_ok, other=0.0)
    wait_for_inputs(PDL)
    rstd = _rstd(x_ptr, eps, K, BLOCK_K)
    first_column = tl.arange(0, 16)[None, :] == 0  # the dot's narrowest right operand: x' and zeros
    acc = tl.zeros([BLOCK_N], tl.float32)
    x2 = 0.0
    dx2 = 0.0
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        qx, s, block_x2, block_dx2 = _quantized_block(x_ptr, norm_ptr, k, rstd, K)
        x2 += block_x2
        dx2 += block_dx2
        w = tl.load(q_ptr + n[:, None].to(tl.int64) * K + k[None, :], mask=n_ok[:, None] & (k < K)[None, :],
                    other=0)
        dots = tl.dot(w, tl.where(first_column, qx[:, None], 0.0).to(tl.int8), out_dtype=tl.int32)
        acc += tl.sum(dots, 1).to(tl.float32) * s
    y = acc * scale
    tl.store(out_ptr + n, y, mask=n_ok)
    low = y - _bound(e, c, tl.sqrt(x2), tl.sqrt(dx2))
    keys = tl.where(n_ok, logit_keys(low, n), EMPTY_C)
    tl.atomic_max(best_ptr + pid % SLOTS_C, tl.max(keys, 0), sem="relaxed")


@triton.jit
def _exact_rows_kernel(x_ptr, norm_ptr, w_ptr, approx_ptr, scale_ptr, best_ptr, eps, N: tl.constexpr,
                       K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, QUANT_K: tl.constexpr,
                       PDL: tl.constexpr):
    """For BLOCK_R rows: the full-weight logit of each row whose upper bound reaches the largest lower bound
    (the keys at best_ptr + SLOTS), folded into the argmax keys at best_ptr."""
    pid = tl.program_id(0)
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < N
    cols = tl.arange(0, BLOCK_K)
    k_ok = cols < K
    dtype = x_ptr.dtype.element_ty
    e = tl.load(scale_ptr + 3 * r + 1, mask=r_ok, other=0.0)
    c = tl.load(scale_ptr + 3 * r + 2, mask=r_ok, other=0.0)
    norm_w = tl.load(norm_ptr + cols, mask=k_ok, other=0.0)
    wait_for_inputs(PDL)
    rstd = _rstd(x_ptr, eps, K, QUANT_K)
    x_norm, dx_norm = _input_norms(x_ptr, norm_ptr, rstd, K, QUANT_K)
    x = normed(tl.load(x_ptr + cols, mask=k_ok, other=0.0).to(tl.float32), norm_w, rstd, dtype)
    low = key_logit(tl.max(tl.load(best_ptr + SLOTS_C + tl.arange(0, SLOTS_C)), 0))
    high = tl.load(approx_ptr + r, mask=r_ok, other=float("-inf")) + _bound(e, c, x_norm, dx_norm)
    candidate = r_ok & (high.to(dtype).to(tl.float32) >= low.to(dtype).to(tl.float32))
    order = tl.cumsum(candidate.to(tl.int32), 0)
    count = tl.sum(candidate.to(tl.int32), 0)
    best = tl.full([1], EMPTY_C, tl.int64)
    for i in range(count):
        row = tl.min(tl.where(candidate & (order == i + 1), r, N), 0)
        w = tl.load(w_ptr + row.to(tl.int64) * K + cols, mask=k_ok, other=0.0).to(tl.float32)
        y = tl.sum((w * x)[None, :], 1).to(dtype).to(tl.float32)
        best = tl.maximum(best, logit_keys(y, row + tl.zeros([1], tl.int32)))
    if count > 0:
        tl.atomic_max(best_ptr + pid % SLOTS_C + tl.arange(0, 1), best, sem="relaxed")


def input_block(k: int, options: KernelOptions = DEFAULT_KERNELS) -> int:
    """The first pass's input block (each a scale of the quantised input) for an input of k."""
    return max(32, min(options.head.block_k, triton.next_power_of_2(k)))  # an int8 dot's shortest input


def greedy_head(x: torch.Tensor, weight: torch.Tensor, quantized: tuple[torch.Tensor, torch.Tensor],
                norm_weight: torch.Tensor, eps: float, best: torch.Tensor,
                options: KernelOptions = DEFAULT_KERNELS) -> torch.Tensor:
    """The argmax keys (best[:SLOTS]) of the logits weight @ rmsnorm(x) for one row x [1, K], from quantize_rows'
    copy of the weight; best[SLOTS:] (cleared, as the first SLOTS, before the step) takes the lower bounds.
    Returns the approximate logits [1, N] (fp32)."""
    q, scales = quantized
    n, k = weight.shape
    if best.shape != (2 * SLOTS,) or best.dtype != torch.int64 or x.shape != (1, k):
        raise ValueError(f"the quantised head takes one row of {k} and {2 * SLOTS} int64 slots")
    assert q.shape == (n, k) and scales.shape == (n, 3) and x.is_contiguous() and weight.is_contiguous()
    approx = torch.empty((1, n), dtype=torch.float32, device=x.device)
    cfg = options.head
    block_k = input_block(k, options)
    launch(_approx_kernel, (triton.cdiv(n, cfg.block_n),),
           (x, norm_weight, q, scales, approx, best[SLOTS:], eps, n, k, cfg.block_n, block_k),
           ("approx_head", x.device.index, x.dtype, n, k, cfg.block_n, block_k, cfg.num_warps, cfg.num_stages),
           options, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    launch(_exact_rows_kernel, (triton.cdiv(n, cfg.exact_rows),),
           (x, norm_weight, weight, approx, scales, best, eps, n, k, cfg.exact_rows, triton.next_power_of_2(k),
            block_k), ("exact_rows", x.device.index, x.dtype, n, k, cfg.exact_rows, block_k, cfg.exact_warps),
           options, num_warps=cfg.exact_warps)
    return approx
