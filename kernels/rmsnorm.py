"""RMSNorm of a few rows in one kernel (the post-attention and final norms of a decode step)."""
import torch
from .launcher import launch, wait_for_inputs  # before triton: it picks the interpreter without a GPU
import triton
import triton.language as tl

from .dispatch import implementation
from .options import DEFAULT_KERNELS, KernelOptions

def rmsnorm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@triton.jit
def normed(x, w, rstd, dtype):
    """rmsnorm_ref's rounding in a kernel: x * rstd rounded to dtype, times the weight w, rounded to dtype
    (returned in fp32)."""
    return (w.to(tl.float32) * (x * rstd).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)


@triton.jit(do_not_specialize=["stride_x"])
def _rmsnorm_kernel(x_ptr, w_ptr, out_ptr, eps, stride_x, HIDDEN: tl.constexpr, BLOCK: tl.constexpr,
                    PDL: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < HIDDEN
    w = tl.load(w_ptr + cols, mask=ok, other=0.0)
    wait_for_inputs(PDL)
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0)
    xf = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xf * xf, 0) / HIDDEN + eps)
    y = w.to(tl.float32) * (xf * rstd).to(x.dtype).to(tl.float32)
    tl.store(out_ptr + row * HIDDEN + cols, y.to(out_ptr.dtype.element_ty), mask=ok)


def _rmsnorm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float, options: KernelOptions) -> torch.Tensor:
    n, hidden = x.shape
    assert x.stride(1) == 1 and weight.is_contiguous()
    out = torch.empty((n, hidden), dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    args = (x, weight, out, eps, x.stride(0), hidden, triton.next_power_of_2(hidden))
    key = ("rmsnorm", x.device.index, x.dtype, weight.dtype, x.data_ptr() % 16 == 0, hidden)
    launch(_rmsnorm_kernel, (n,), args, key, options, num_warps=4)
    return out


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, impl: str | None = None,
            options: KernelOptions = DEFAULT_KERNELS) -> torch.Tensor:
    """x [n, hidden] -> weight * x / rms(x), normalised in fp32 and rounded to x's dtype before the weight.

    impl: None (Triton on CUDA, the reference elsewhere), "triton" (also on CPU under TRITON_INTERPRET=1) or "ref".
    """
    if implementation(impl, x, x.dim() == 2, "rmsnorm") == "ref":
        return rmsnorm_ref(x, weight, eps)
    return _rmsnorm_triton(x, weight, eps, options)
