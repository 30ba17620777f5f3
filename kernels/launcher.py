"""How every Triton kernel of cascade_rag.kernels is launched: programmatic dependent launch and compiled kernels
cached by key, as the KernelOptions given say. (The kernels folder has no __init__.py on purpose: Hugging Face's
`kernels` package, which transformers imports, has the same bare name.)"""
import functools

import torch

from .dispatch import interpreted  # before triton: it picks the interpreter without a GPU
from .options import KernelOptions

import triton  # noqa: E402 (after the interpreter is chosen)
import triton.language as tl  # noqa: E402
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: E402

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


def launch(kernel, grid, args, key, options: KernelOptions, **triton_options):
    """kernel[grid](*args, PDL, **triton_options), all arguments positional, constexprs included; the kernel's
    last parameter is the constexpr PDL, and the kernel calls wait_for_inputs(PDL) before it reads its inputs, in
    every program. PDL is on where options.pdl and the device (CUDA, compute capability 9 and up) allow it.

    Triton binds and specialises every argument on each call, which costs tens of microseconds of host time.
    Here the compiled kernel is cached under `key` (with options.cached_launch), which the caller builds from
    everything that decides the compilation: the constexprs, the dtypes and the 16-byte alignment of the pointers
    (scalar arguments must be in the kernel's do_not_specialize list and fit in int32). key None: a plain Triton
    launch.
    """
    interpreting = interpreted()
    pdl = options.pdl and not interpreting and args[0].is_cuda and _has_pdl(args[0].device.index)
    args = args + (pdl,)
    if pdl:
        triton_options["launch_pdl"] = True
    if key is None or not options.cached_launch or interpreting:
        kernel[grid](*args, **triton_options)
        return
    key = key + (pdl,)
    compiled = _compiled.get(key)
    if compiled is None:
        _compiled[key] = kernel[grid](*args, **triton_options)
    else:
        compiled[grid + (1,) * (3 - len(grid))](*args)
