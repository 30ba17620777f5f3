"""Shared by the kernel tests: per-chunk keys and values as the engine holds them, contiguous or strided."""
import torch


def make_chunks(lengths, hkv, d, dtype, device, layers=3, layer=1, odd=()):
    """Per-chunk K and V as slices of [layers, n, Hkv, D] tensors; chunks named in `odd` are views with a
    doubled row stride starting at an odd element offset."""
    keys, values = [], []
    for c, n in enumerate(lengths):
        for out in (keys, values):
            if c in odd:
                flat = torch.randn(1 + 2 * n * hkv * d, dtype=dtype, device=device)
                out.append(flat[1:].view(2 * n, hkv, d)[::2])
            else:
                out.append(torch.randn(layers, n, hkv, d, dtype=dtype, device=device)[layer])
    return keys, values
