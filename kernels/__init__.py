"""Triton kernels with their PyTorch references: chunk attention, the fused linear layers (RMSNorm + QKV,
RMSNorm + gate/up + SiLU * up, projections with the residual), RMSNorm, and rotary embedding + KV store."""
import os

import torch

if not torch.cuda.is_available():
    # Without a GPU, Triton kernels can only run in Triton's interpreter, which must be chosen before triton
    # is imported. The dispatchers still use the PyTorch references on the CPU unless asked otherwise.
    os.environ.setdefault("TRITON_INTERPRET", "1")

FAST_LAUNCH = True
_compiled = {}


def launch(kernel, grid, args, key, **options):
    """kernel[grid](*args, **options), all arguments positional, constexprs included.

    Triton binds and specialises every argument on each call, which costs tens of microseconds of host time.
    Here the compiled kernel is cached under `key`, which the caller builds from everything that decides the
    compilation: the constexprs, the dtypes and the 16-byte alignment of the pointers (scalar arguments must
    be in the kernel's do_not_specialize list and fit in int32).
    """
    if not FAST_LAUNCH or os.environ.get("TRITON_INTERPRET") == "1":
        kernel[grid](*args, **options)
        return
    compiled = _compiled.get(key)
    if compiled is None:
        _compiled[key] = kernel[grid](*args, **options)
    else:
        compiled[grid + (1,) * (3 - len(grid))](*args)
