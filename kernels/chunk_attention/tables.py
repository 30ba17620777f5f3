"""The chunk tables of chunk attention (element offsets of every chunk's K and V from a base, row strides, starts in
the concatenated range): one for eager calls, cached on the device, and every layer's for a CUDA graph; and the
fixed split layout and buffers (DecodeWorkspace) of a graph's calls."""
from dataclasses import dataclass

import numpy as np
import torch
import triton

from ..options import DEFAULT_KERNELS, KernelOptions
from ..kv_quant import PackedKV
from .common import num_sms
from .packed import NO_PACKED, NOT_PACKED, PackedBases, check_packed, packed_columns
from .decode import decode_splits, longest_piece
from .prefill import row_tile, tuning

_tables = {}


def chunk_table(keys, values, hkv, head_dim, dtype, device):
    """The device table [K offsets, V offsets, K row strides, V row strides, chunk starts, (a slot for the total),
    K parameter offsets, V parameter offsets (NOT_PACKED: none)] of the chunks, the total length, whether every
    offset and stride is a multiple of 16, the base tensors of the chunks in the model's dtype (keys, values: the
    first such chunk's) and the packed ones' (packed.PackedBases). Offsets and strides count elements of the model's
    dtype from the bases, bytes from the code bases for packed chunks, whose parameter offsets count float16
    elements.
    The table leaves out the total (which grows with the request's own chunk at every decode step) so that it is
    cached."""
    packed = PackedBases.of(keys, values)
    plain = [(k, v) for k, v in zip(keys, values) if not isinstance(k, PackedKV)]
    if not plain:
        raise ValueError("chunk attention needs a chunk in the model's dtype (the request's own) among its chunks")
    k_base, v_base = plain[0]
    size = k_base.element_size()
    kb, vb = k_base.data_ptr(), v_base.data_ptr()
    k_offs, v_offs, k_strides, v_strides, starts, k_params, v_params = [], [], [], [], [], [], []
    total = 0
    for k, v in zip(keys, values):
        if isinstance(k, PackedKV) or isinstance(v, PackedKV):
            if not (isinstance(k, PackedKV) and isinstance(v, PackedKV) and k.keys and not v.keys
                    and k.shape == v.shape):
                raise ValueError("a packed chunk needs packed keys and values of one shape")
            for t in (k, v):
                check_packed(t, hkv, head_dim)
            k_off, v_off, k_stride, v_stride, k_param, v_param = packed_columns(k, v, packed)
        else:
            ks, vs, k_stride, v_stride = k.shape, v.shape, k.stride(), v.stride()
            if (k.dtype is not dtype or v.dtype is not dtype or ks[0] != vs[0] or ks[1] != hkv or vs[1] != hkv
                    or ks[2] != head_dim or vs[2] != head_dim or k_stride[1] != head_dim or v_stride[1] != head_dim
                    or k_stride[2] != 1 or v_stride[2] != 1):
                raise ValueError("keys and values must be [n, Hkv, D] in q's dtype with contiguous rows")
            k_off, v_off = (k.data_ptr() - kb) // size, (v.data_ptr() - vb) // size
            if k_off * size != k.data_ptr() - kb or v_off * size != v.data_ptr() - vb:
                raise ValueError("chunk addresses must be whole elements apart")
            k_stride, v_stride, k_param, v_param = k_stride[0], v_stride[0], NOT_PACKED, NOT_PACKED
        k_offs.append(k_off)
        v_offs.append(v_off)
        k_strides.append(k_stride)
        v_strides.append(v_stride)
        k_params.append(k_param)
        v_params.append(v_param)
        starts.append(total)
        total += k.shape[0]
    content = tuple(k_offs + v_offs + k_strides + v_strides + starts + [0] + k_params + v_params)
    bases = [kb, vb] + ([packed.kq.data_ptr(), packed.vq.data_ptr()] if packed.format else [])
    aligned = all(b % 16 == 0 for b in bases) and all(x % 16 == 0 for x in content[:4 * len(keys)])
    key = (device, content, packed.format)
    table = _tables.get(key)
    if table is None:
        if len(_tables) > 4096:
            _tables.clear()
        if device.type == "cuda":
            table = torch.tensor(content, dtype=torch.int64, pin_memory=True).to(device, non_blocking=True)
        else:
            table = torch.tensor(content, dtype=torch.int64)
        _tables[key] = table
    return table, total, aligned, k_base, v_base, packed


def chunk_tables(chunks: list, own_keys: torch.Tensor, own_values: torch.Tensor, num_chunks: int,
                 packed: PackedBases = NO_PACKED) -> np.ndarray:
    """Every layer's table for chunk_attention_table, [layers, 7 * num_chunks + 1] int64 (built with NumPy: a
    dozen small torch ops would cost more host time than the table is worth): chunk_table's columns, the total in
    its slot. Packed chunks count from the bases `packed` (which the graph keeps fixed).

    chunks: (keys, values) pairs of [layers, n, Hkv, D] tensors, after empty chunks that pad them to
    num_chunks - 1 (first, so that every split skips them with the chunks ending before it); the request's
    own buffer [layers, capacity, Hkv, D] comes last. Offsets are from the own buffer's layer,
    computed from each tensor's address and strides (no per-layer views). The last entry is the context's
    length, to which chunk_attention_table adds the own chunk's."""
    size = own_keys.element_size()
    pad = num_chunks - 1 - len(chunks)
    if pad < 0:
        raise ValueError(f"{len(chunks)} chunks and the own one do not fit a table of {num_chunks}")
    (own_k, row, _, _), own_v = own_keys.stride(), own_values.stride(0)
    plain = (NOT_PACKED, NOT_PACKED, 0, 0)  # no parameters
    own_kp, own_vp = own_keys.data_ptr(), own_values.data_ptr()
    columns = []
    # per chunk: K offset, V offset (layer 0), K, V layer strides, K, V row strides, length; K, V parameter offsets
    # (layer 0) and their layer strides. A packed chunk counts from the packed bases: its layer strides are stored
    # plus the own buffer's, which the offsets below subtract.
    for k, v in chunks:
        if isinstance(k, PackedKV):
            for t in (k, v):
                check_packed(t, own_keys.shape[2], own_keys.shape[3])
            k_off, v_off, k_row, v_row, k_param, v_param = packed_columns(k, v, packed)
            columns.append((k_off, v_off, k.codes.stride(0) + own_k, v.codes.stride(0) + own_v, k_row, v_row,
                            k.shape[1], k_param, v_param, k.params.stride(0), v.params.stride(0)))
        else:
            (k_layer, k_row, _, _), (v_layer, v_row, _, _) = k.stride(), v.stride()
            columns.append(((k.data_ptr() - own_kp) // size, (v.data_ptr() - own_vp) // size,
                            k_layer, v_layer, k_row, v_row, k.shape[1]) + plain)
    columns.append((0, 0, own_k, own_v, row, own_values.stride(1), 0) + plain)
    entries = np.empty((num_chunks, 11), dtype=np.int64)
    entries[:pad] = (0, 0, own_k, own_v, row, row, 0) + plain  # the padding: empty chunks
    entries[pad:] = columns
    k_off, v_off, k_layer, v_layer, k_row, v_row, length, k_param, v_param, kp_layer, vp_layer = entries.T
    starts = np.cumsum(length) - length
    # each column's layer-0 value and its step from layer to layer, in the table's order (the total in its slot)
    zero, total = np.zeros(num_chunks, dtype=np.int64), np.array([length.sum()])
    first = np.concatenate((k_off, v_off, k_row, v_row, starts, total, k_param, v_param))
    step = np.concatenate((k_layer - own_k, v_layer - own_v, zero, zero, zero, [0], kp_layer, vp_layer))
    table = first + np.arange(own_keys.shape[0])[:, None] * step
    return table


@dataclass(frozen=True)
class DecodeWorkspace:
    """The fixed split layout and buffers of chunk_attention_table calls over at most a given number of keys:
    decode (one query and at most 16 query heads a KV head: the decode kernel, which also does rope_store's work;
    else the several-query kernel and its merge), the splits and their shortest length, the row tile, whether
    short splits are cut at chunk boundaries (pieces), whether the table's offsets and strides are multiples of
    16 (aligned), the partials' buffer, the decode kernel's arrival counters, and whether a decode step's context
    holds packed chunks (its splits follow KernelOptions.decode_tuning)."""
    decode: bool
    num_splits: int
    split_len: int
    block_m: int
    pieces: bool
    aligned: bool
    part: torch.Tensor
    lock: torch.Tensor
    packed: bool = False


def decode_workspace(num_q: int, hq: int, head_dim: int, hkv: int, capacity: int, device, aligned: bool = False,
                     options: KernelOptions = DEFAULT_KERNELS, packed: bool = False,
                     limited: bool = False, windowed: bool = False) -> DecodeWorkspace:
    """The DecodeWorkspace of num_q queries of hq heads over at most `capacity` keys in tables whose offsets and
    strides are all multiples of 16 or not (`aligned`: chunk_tables' first 4 * chunks columns), holding packed chunks
    or not (the decode kernel's settings differ: KernelOptions.decode_tuning), for queries under key limits or not
    (a prefill's splits then follow KernelOptions.limited_prefill) and under windows (floors) as well or not
    (windowed_prefill's, its splits counted for one row tile: the question's, which reads every key)."""
    group = hq // hkv
    block_m = row_tile(num_q, group)
    m_tiles = triton.cdiv(num_q * group, block_m)
    decode = num_q == 1 and group <= 16  # the decode kernel; else the several-query kernel and its merge
    if decode:
        cfg = options.decode_tuning(packed)
        num_splits = decode_splits(hkv, group, head_dim, capacity, device, cfg)
    else:
        cfg = tuning(block_m, options, packed, limited, windowed)
        tiles = 1 if windowed else m_tiles
        num_splits = triton.cdiv(cfg.programs_per_sm * num_sms(torch.device(device)), tiles * hkv)
        num_splits = max(2, min(num_splits, triton.cdiv(capacity, cfg.min_split)))
    n_rows = num_q * hq
    return DecodeWorkspace(
        decode=decode, num_splits=num_splits, split_len=cfg.min_split,  # the kernels share the length among splits
        block_m=block_m, pieces=decode and triton.cdiv(capacity, num_splits) <= longest_piece(cfg),
        aligned=aligned, part=torch.empty(num_splits * n_rows * (head_dim + 2), dtype=torch.float32, device=device),
        lock=torch.zeros(hkv, dtype=torch.int32, device=device), packed=decode and packed)
