"""The two entry points of chunk attention: chunk_attention (eager: a list of chunks, its table built and cached
here) and chunk_attention_table (CUDA graphs: a prebuilt table, every argument fixed from step to step)."""
import torch
import triton

from ..dispatch import implementation
from ..options import DEFAULT_KERNELS, KernelOptions
from ..rope import RotaryInputs
from .common import HEAD_DIMS, num_sms
from .decode import arrival_counters, decode_splits, launch_decode, longest_piece
from .prefill import launch_attn, row_tile, tuning
from .reference import chunk_attention_ref
from .packed import NO_PACKED, PackedBases, check_tiles
from .tables import DecodeWorkspace, chunk_table


def _chunk_attention_triton(q, keys, values, scale, num_splits, options: KernelOptions):
    num_chunks, num_q, hq, head_dim = q.shape
    hkv = keys[0].shape[1]
    group = hq // hkv
    assert hq % hkv == 0 and head_dim in HEAD_DIMS and len(keys) == len(values) == num_chunks
    if q.stride()[1:] != (hq * head_dim, head_dim, 1):
        q = q.contiguous()
    device = q.device
    table, total, aligned, k_base, v_base, packed = chunk_table(keys, values, hkv, head_dim, q.dtype, device)
    assert total < 2 ** 31
    if total == 0:
        raise ValueError("chunk attention needs at least one key: every chunk is empty")
    if num_q == 1 and group <= 16:
        cfg = options.decode_tuning(bool(packed.format))
        num_splits = num_splits or decode_splits(hkv, group, head_dim, total, device, cfg)
        split_len = max(1, triton.cdiv(total, num_splits))
        num_splits = max(1, triton.cdiv(total, split_len))
        out = torch.empty((1, hq, head_dim), dtype=q.dtype, device=device)
        part = torch.empty(num_splits * hq * (head_dim + 2), dtype=torch.float32, device=device)
        if packed.format:
            check_tiles(cfg.block_n)
        launch_decode(q, k_base, v_base, table, out, part, arrival_counters(device, hkv), num_chunks, num_splits,
                      split_len, total, scale, aligned, split_len <= longest_piece(cfg), options,
                      packed=packed)
        return out

    block_m = row_tile(num_q, group)
    m_tiles = triton.cdiv(num_q * group, block_m)
    cfg = tuning(block_m, options, bool(packed.format))
    if num_splits is None:
        num_splits = triton.cdiv(cfg.programs_per_sm * num_sms(device), m_tiles * hkv)
        num_splits = max(1, min(num_splits, triton.cdiv(total, cfg.min_split)))
    split_len = max(1, triton.cdiv(total, num_splits))
    num_splits = max(1, triton.cdiv(total, split_len))
    out = torch.empty((num_q, hq, head_dim), dtype=q.dtype, device=device)
    part = torch.empty(num_splits * num_q * hq * (head_dim + 2), dtype=torch.float32, device=device) \
        if num_splits > 1 else out
    if packed.format:
        check_tiles(cfg.block_n)
    launch_attn(q, k_base, v_base, table, out, part, num_chunks, split_len, total, scale, block_m, num_splits,
                aligned, False, options, packed)
    return out


def chunk_attention_table(q: torch.Tensor, k_base: torch.Tensor, v_base: torch.Tensor, table: torch.Tensor,
                          scale: float, workspace: DecodeWorkspace, rotary: RotaryInputs | None = None,
                          new_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                          options: KernelOptions = DEFAULT_KERNELS, packed: PackedBases = NO_PACKED,
                          limits: torch.Tensor | None = None, floors: torch.Tensor | None = None) -> torch.Tensor:
    """chunk_attention over a prebuilt device table (chunk_tables) whose last entry is the context's length: every
    argument stays fixed from one decode step to the next, so the call can be captured in a CUDA graph.

    A prefill (q [C, Nq, Hq, D], rope_store's output) adds the own chunk's Nq tokens to the context. A decode
    step (workspace.decode) also does rope_store's work: q [1, Hq, D] is the new token's query as projected,
    new_kv the new token's key and value as projected and rotary rope_store's other inputs (own_keys/own_values
    being k_base/v_base); the own chunk then ends after slots[0]. packed: the (fixed) bases of the table's packed
    chunks and their format. limits (a prefill's, int64 [Nq]): query i sees only the context's first limits[i] keys
    in the table's order (the own chunk causally as always); floors (with limits, context chunks in the model's
    dtype, int64 [Nq, 3]): a window, query i seeing none of the context keys from floors[i, 0] to before
    floors[i, 1] nor its own chunk's first floors[i, 2] rows."""
    if packed.format:
        check_tiles(options.packed_decode.block_n if workspace.decode else
                    tuning(workspace.block_m, options, True).block_n)
    head_dim = q.shape[-1]
    w = workspace
    if w.decode:
        if rotary is None or new_kv is None:
            raise ValueError("a decode step over a chunk table takes the new token's projections and rope")
        if w.packed != bool(packed.format):
            raise ValueError(f"a decode workspace made for {'packed' if w.packed else 'no packed'} chunks, given "
                             f"{'packed' if packed.format else 'no packed'} ones (decode_workspace(packed=...))")
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        launch_decode(q, k_base, v_base, table, out, w.part, w.lock, (table.shape[0] - 1) // 7, w.num_splits,
                      w.split_len, 0, scale, w.aligned, w.pieces, options, rotary, new_kv, packed)
        return out
    num_chunks, num_q, hq, _ = q.shape
    if q.stride()[1:] != (hq * head_dim, head_dim, 1):
        q = q.contiguous()
    out = torch.empty((num_q, hq, head_dim), dtype=q.dtype, device=q.device)
    if limits is not None and (limits.shape != (num_q,) or limits.dtype != torch.int64):
        raise ValueError(f"limits must be int64 [{num_q}] (one per query), not {limits.dtype} {list(limits.shape)}")
    if floors is not None:
        if limits is None or packed.format:
            raise ValueError("a window (floors) comes with limits, over context chunks in the model's dtype")
        if floors.shape != (num_q, 3) or floors.dtype != torch.int64 or not floors.is_contiguous():
            raise ValueError(f"floors must be contiguous int64 [{num_q}, 3] (sink, floor and own floor of each "
                             f"query), not {floors.dtype} {list(floors.shape)}")
    launch_attn(q, k_base, v_base, table, out, w.part, num_chunks, w.split_len, num_q, scale, w.block_m,
                w.num_splits, w.aligned, True, options, packed, limits, floors)
    return out


def chunk_attention(q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor], scale: float,
                    impl: str | None = None, num_splits: int | None = None,
                    options: KernelOptions = DEFAULT_KERNELS) -> torch.Tensor:
    """q [C, Nq, Hq, D], keys[c]/values[c] [n_c, Hkv, D] -> [Nq, Hq, D] in q's dtype.

    impl: None (Triton on CUDA, the reference elsewhere), "triton" (also on CPU under TRITON_INTERPRET=1) or
    "ref". num_splits forces the number of KV splits of the Triton path.
    """
    if implementation(impl, q, q.shape[-1] in HEAD_DIMS, "chunk attention") == "ref":
        return chunk_attention_ref(q, keys, values, scale)
    return _chunk_attention_triton(q, keys, values, scale, num_splits, options)
