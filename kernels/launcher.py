"""How every Triton kernel of cascade_rag.kernels is launched: the interpreter chosen where there is no GPU,
programmatic dependent launch, and compiled kernels cached by key. (The kernels folder has no __init__.py on
purpose: Hugging Face's `kernels` package, which transformers imports, has the same bare name.)"""
import functools
import os

import torch

if not torch.cuda.is_available():
    # Without a GPU, Triton kernels can only run in Triton's interpreter, which must be chosen before triton is
    # imported (every kernel module imports this one first). The dispatchers still use the PyTorch references
    # on the CPU unless asked otherwise.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402 (after TRITON_INTERPRET is chosen)
import triton.language as tl  # noqa: E402
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: E402

FAST_LAUNCH = True
PDL = True  # programmatic dependent launch where the GPU has it (cascade_rag.benchmarks.bench_kernels turns it off to compare)
_compiled = {}


@functools.lru_cache(maxsize=None)
def _has_pdl(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9


@triton.jit
def wait_for_inputs(PDL: tl.constexpr):
    """Under programmatic dependent launch a kernel starts while the one before it in the stream runs: here it
    lets the next kernel start, then waits until the one before has completed and its writes are visible. As
    every kernel waits so, a kernel past this point runs after all the earlier ones have completed, however
    early it started. What a kernel does before this may only read what none of the kernels launched so
    (chained by this early start) writes: weights, chunk tables, stored chunks, a CUDA graph's inputs copied
    before its launch. A kernel that does not call this (torch's) starts only after the previous one ends."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()


def launch(kernel, grid, args, key=None, **options):
    """kernel[grid](*args, PDL, **options), all arguments positional, constexprs included; the kernel's last
    parameter is the constexpr PDL, and the kernel calls wait_for_inputs(PDL) before it reads its inputs, in
    every program. PDL is on for CUDA devices of compute capability 9 and up.

    Triton binds and specialises every argument on each call, which costs tens of microseconds of host time.
    Here the compiled kernel is cached under `key`, which the caller builds from everything that decides the
    compilation: the constexprs, the dtypes and the 16-byte alignment of the pointers (scalar arguments must
    be in the kernel's do_not_specialize list and fit in int32). key None: a plain Triton launch.
    """
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    pdl = PDL and not interpreting and args[0].is_cuda and _has_pdl(args[0].device.index)
    args = args + (pdl,)
    if pdl:
        options["launch_pdl"] = True
    if key is None or not FAST_LAUNCH or interpreting:
        kernel[grid](*args, **options)
        return
    key = key + (pdl,)
    compiled = _compiled.get(key)
    if compiled is None:
        _compiled[key] = kernel[grid](*args, **options)
    else:
        compiled[grid + (1,) * (3 - len(grid))](*args)
