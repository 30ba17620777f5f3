"""Where a kernel runs: the one place that decides whether Triton is interpreted, and the one choice of
implementation behind every dispatcher's `impl` argument.

Without a GPU, Triton kernels can only run in Triton's interpreter, which must be chosen before triton is
imported: every kernel module imports this one first (through kernels.launcher). The dispatchers still use the
PyTorch references on the CPU unless asked otherwise."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # decided once, before triton is imported


def interpreted() -> bool:
    """Whether Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1, set here where there is no GPU)."""
    return _INTERPRETED


def implementation(impl: str | None, x: torch.Tensor, native: bool, name: str) -> str:
    """"triton" or "ref" for a dispatcher called with `impl` on the tensor x: None picks Triton on CUDA where the
    kernel takes the call (`native`) and the PyTorch reference elsewhere; "triton" on the CPU needs the
    interpreter."""
    if impl is None:
        impl = "triton" if x.is_cuda and native else "ref"
    if impl not in ("triton", "ref"):
        raise ValueError(f"unknown implementation {impl!r} of {name}; choose triton or ref")
    if impl == "triton" and not x.is_cuda and not _INTERPRETED:
        raise RuntimeError(f"the Triton {name} needs CUDA tensors or TRITON_INTERPRET=1")
    return impl
