"""The LM head of a greedy decode step from an int8 copy of its weight, with the token exactly the one the full
head gives (kernels.linear with argmax keys: the largest logit rounded to the model's dtype, the lowest index
among equal ones).

quantize_rows keeps each weight row as int8 times a scale and an error bound e: |w . x - s q . x| <= |x| e for
every x (the quantisation error's norm by Cauchy-Schwarz, plus the fp32 sums' rounding). The first pass (the
GEMV of kernels.linear, SCALED) reads the int8 rows, half the bytes, writes the approximate logits a and folds
their lower bounds a - |x| e into argmax keys of their own; the second (_exact_rows_kernel) recomputes from the
full weight only the rows whose upper bound a + |x| e, rounded to the model's dtype, reaches the largest lower
bound rounded: no other row can be the argmax or tie with it. Those rows are a handful where the logits have a
clear winner; where many rows are within the bounds of the best (flat logits) the second pass reads them one
at a time, slower than the full head but the same token.
"""
import torch
import triton
import triton.language as tl

from kernels import launch, wait_for_inputs
from kernels.greedy import _EMPTY, _SLOTS, SLOTS, _key_logit, logit_keys
from kernels.linear import SCALED_TUNING, linear
from kernels.rmsnorm import normed

QUANT_ROWS = 8192  # rows quantised at once (their fp32 copy is the transient memory)
TUNING = dict(block_r=128, num_warps=4)  # rows a program of the second pass checks


def supported(weight: torch.Tensor) -> bool:
    """Whether greedy_head takes this weight: its rows fit the GEMV's one block."""
    return weight.shape[1] <= SCALED_TUNING["block_k"]


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> int8 rows q [N, K] and [N, 2] fp32 (scale s, error bound e) with |w - s q| . x <= |x| e
    and room for the rounding of an fp32 dot product of K terms on both sides."""
    n, k = weight.shape
    q = torch.empty((n, k), dtype=torch.int8, device=weight.device)
    scales = torch.empty((n, 2), dtype=torch.float32, device=weight.device)
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
    return q, scales


@triton.jit
def _exact_rows_kernel(x_ptr, norm_ptr, w_ptr, approx_ptr, scale_ptr, best_ptr, eps, N: tl.constexpr,
                       K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """For BLOCK_R rows: the full-weight logit of each row whose upper bound reaches the largest lower bound
    (the keys at best_ptr + SLOTS), folded into the argmax keys at best_ptr."""
    pid = tl.program_id(0)
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < N
    cols = tl.arange(0, BLOCK_K)
    k_ok = cols < K
    dtype = x_ptr.dtype.element_ty
    bound = tl.load(scale_ptr + 2 * r + 1, mask=r_ok, other=0.0)
    norm_w = tl.load(norm_ptr + cols, mask=k_ok, other=0.0)
    wait_for_inputs(PDL)
    x = tl.load(x_ptr + cols, mask=k_ok, other=0.0).to(tl.float32)
    x = normed(x, norm_w, tl.rsqrt(tl.sum(x * x, 0) / K + eps), dtype)  # as the head's GEMV rounds it
    x_norm = tl.sqrt(tl.sum(x * x, 0))
    low = _key_logit(tl.max(tl.load(best_ptr + _SLOTS + tl.arange(0, _SLOTS)), 0))
    high = tl.load(approx_ptr + r, mask=r_ok, other=float("-inf")) + x_norm * bound
    candidate = r_ok & (high.to(dtype).to(tl.float32) >= low.to(dtype).to(tl.float32))
    order = tl.cumsum(candidate.to(tl.int32), 0)
    count = tl.sum(candidate.to(tl.int32), 0)
    best = tl.full([1], _EMPTY, tl.int64)
    for i in range(count):
        row = tl.min(tl.where(candidate & (order == i + 1), r, N), 0)
        w = tl.load(w_ptr + row.to(tl.int64) * K + cols, mask=k_ok, other=0.0).to(tl.float32)
        y = tl.sum((w * x)[None, :], 1).to(dtype).to(tl.float32)
        best = tl.maximum(best, logit_keys(y, row + tl.zeros([1], tl.int32)))
    if count > 0:
        tl.atomic_max(best_ptr + pid % _SLOTS + tl.arange(0, 1), best, sem="relaxed")


def greedy_head(x: torch.Tensor, weight: torch.Tensor, quantized: tuple[torch.Tensor, torch.Tensor],
                norm_weight: torch.Tensor, eps: float, best: torch.Tensor) -> torch.Tensor:
    """The argmax keys (best[:SLOTS]) of the logits weight @ rmsnorm(x) for one row x [1, K], from quantize_rows'
    copy of the weight; best[SLOTS:] (cleared, as the first SLOTS, before the step) takes the lower bounds.
    Returns the approximate logits [1, N] (fp32)."""
    q, scales = quantized
    n, k = weight.shape
    if best.shape != (2 * SLOTS,) or best.dtype != torch.int64 or x.shape != (1, k) or not supported(weight):
        raise ValueError(f"the quantised head takes one row of at most {SCALED_TUNING['block_k']} and "
                         f"{2 * SLOTS} int64 slots")
    approx = linear(x, q, norm_weight=norm_weight, eps=eps, out_dtype=torch.float32, best=best[SLOTS:],
                    impl="triton", scales=scales)
    cfg = TUNING
    launch(_exact_rows_kernel, (triton.cdiv(n, cfg["block_r"]),),
           (x, norm_weight, weight, approx, scales, best, eps, n, k, cfg["block_r"], triton.next_power_of_2(k)),
           ("exact_rows", x.device.index, x.dtype, n, k, cfg["block_r"]), num_warps=cfg["num_warps"])
    return approx
