"""The chunk tables of chunk attention (element offsets of every chunk's K and V from a base, row strides, starts in
the concatenated range): one for eager calls, cached on the device, and every layer's for a CUDA graph; and the
fixed split layout and buffers (DecodeWorkspace) of a graph's calls."""
from dataclasses import dataclass

import numpy as np
import torch
import triton

from ..options import DEFAULT_KERNELS, KernelOptions
from .common import num_sms
from .decode import decode_splits, longest_piece
from .prefill import row_tile, tuning

_tables = {}


def chunk_table(keys, values, hkv, head_dim, dtype, device):
    """The device table [K offsets, V offsets, K row strides, V row strides, chunk starts] in elements, the
    total length and whether every offset and stride is a multiple of 16. The table leaves out the total
    (which grows with the request's own chunk at every decode step) so that it is cached."""
    size = keys[0].element_size()
    kb, vb = keys[0].data_ptr(), values[0].data_ptr()
    k_offs, v_offs, k_strides, v_strides, starts = [], [], [], [], []
    total = 0
    for k, v in zip(keys, values):
        ks, vs, k_stride, v_stride = k.shape, v.shape, k.stride(), v.stride()
        if (k.dtype is not dtype or v.dtype is not dtype or ks[0] != vs[0] or ks[1] != hkv or vs[1] != hkv
                or ks[2] != head_dim or vs[2] != head_dim or k_stride[1] != head_dim or v_stride[1] != head_dim
                or k_stride[2] != 1 or v_stride[2] != 1):
            raise ValueError("keys and values must be [n, Hkv, D] in q's dtype with contiguous rows")
        k_offs.append(k.data_ptr() - kb)
        v_offs.append(v.data_ptr() - vb)
        k_strides.append(k_stride[0])
        v_strides.append(v_stride[0])
        starts.append(total)
        total += ks[0]
    offsets = [o // size for o in k_offs + v_offs]
    if any(o * size != b for o, b in zip(offsets, k_offs + v_offs)):
        raise ValueError("chunk addresses must be whole elements apart")
    content = tuple(offsets + k_strides + v_strides + starts)
    aligned = (kb | vb) % 16 == 0 and all(x % 16 == 0 for x in content[:4 * len(keys)])  # starts need not be
    table = _tables.get((device, content))
    if table is None:
        if len(_tables) > 4096:
            _tables.clear()
        if device.type == "cuda":
            table = torch.tensor(content, dtype=torch.int64, pin_memory=True).to(device, non_blocking=True)
        else:
            table = torch.tensor(content, dtype=torch.int64)
        _tables[(device, content)] = table
    return table, total, aligned


def chunk_tables(chunks: list, own_keys: torch.Tensor, own_values: torch.Tensor, num_chunks: int) -> np.ndarray:
    """Every layer's table for chunk_attention_table, [layers, 5 * num_chunks + 1] int64 (built with NumPy: a
    dozen small torch ops would cost more host time than the table is worth).

    chunks: (keys, values) pairs of [layers, n, Hkv, D] tensors, after empty chunks that pad them to
    num_chunks - 1 (first, so that every split skips them with the chunks ending before it); the request's
    own buffer [layers, capacity, Hkv, D] comes last. Offsets are from the own buffer's layer,
    computed from each tensor's address and strides (no per-layer views). The last entry is the context's
    length, to which chunk_attention_table adds the own chunk's."""
    size = own_keys.element_size()
    pad = num_chunks - 1 - len(chunks)
    row = own_keys.stride(1)
    columns = [(0, 0, own_keys.stride(0), own_values.stride(0), row, row, 0)] * pad
    # per chunk: K offset, V offset (layer 0), K, V layer strides, K, V row strides, length
    for k, v in chunks:
        columns.append(((k.data_ptr() - own_keys.data_ptr()) // size, (v.data_ptr() - own_values.data_ptr()) // size,
                        k.stride(0), v.stride(0), k.stride(1), v.stride(1), k.shape[1]))
    columns.append((0, 0, own_keys.stride(0), own_values.stride(0), row, own_values.stride(1), 0))
    k_off, v_off, k_layer, v_layer, k_row, v_row, length = np.array(columns, dtype=np.int64).T
    layers = np.arange(own_keys.shape[0])[:, None]
    k_offs = k_off + layers * (k_layer - own_keys.stride(0))
    v_offs = v_off + layers * (v_layer - own_values.stride(0))
    starts = np.cumsum(length) - length
    shared = (k_row, v_row, starts, length.sum(keepdims=True))  # the same for every layer
    rows = [k_offs, v_offs] + [np.broadcast_to(t, (len(layers), len(t))) for t in shared]
    return np.concatenate(rows, axis=1)


@dataclass(frozen=True)
class DecodeWorkspace:
    """The fixed split layout and buffers of chunk_attention_table calls over at most a given number of keys:
    decode (one query and at most 16 query heads a KV head: the decode kernel, which also does rope_store's work;
    else the several-query kernel and its merge), the splits and their shortest length, the row tile, whether
    short splits are cut at chunk boundaries (pieces), whether the table's offsets and strides are multiples of
    16 (aligned), the partials' buffer and the decode kernel's arrival counters."""
    decode: bool
    num_splits: int
    split_len: int
    block_m: int
    pieces: bool
    aligned: bool
    part: torch.Tensor
    lock: torch.Tensor


def decode_workspace(num_q: int, hq: int, head_dim: int, hkv: int, capacity: int, device, aligned: bool = False,
                     options: KernelOptions = DEFAULT_KERNELS) -> DecodeWorkspace:
    """The DecodeWorkspace of num_q queries of hq heads over at most `capacity` keys in tables whose offsets and
    strides are all multiples of 16 or not (`aligned`: chunk_tables' first 4 * chunks columns)."""
    group = hq // hkv
    block_m = row_tile(num_q, group)
    m_tiles = triton.cdiv(num_q * group, block_m)
    decode = num_q == 1 and group <= 16  # the decode kernel; else the several-query kernel and its merge
    if decode:
        cfg = options.decode
        num_splits = decode_splits(hkv, group, head_dim, capacity, device, cfg)
    else:
        cfg = tuning(block_m, options)
        num_splits = triton.cdiv(cfg.programs_per_sm * num_sms(torch.device(device)), m_tiles * hkv)
        num_splits = max(2, min(num_splits, triton.cdiv(capacity, cfg.min_split)))
    n_rows = num_q * hq
    return DecodeWorkspace(
        decode=decode, num_splits=num_splits, split_len=cfg.min_split,  # the kernels share the length among splits
        block_m=block_m, pieces=decode and triton.cdiv(capacity, num_splits) <= longest_piece(options.decode),
        aligned=aligned, part=torch.empty(num_splits * n_rows * (head_dim + 2), dtype=torch.float32, device=device),
        lock=torch.zeros(hkv, dtype=torch.int32, device=device))
