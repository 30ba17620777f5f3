"""Attention of one request's queries over a list of KV chunks read in place (no concatenation).

Chunk c holds keys[c], values[c] of shape [n_c, Hkv, D] (rows may have any stride, each row's [Hkv, D] is
contiguous); the queries q[c] ([Nq, Hq, D]) are the request's queries already rotated for chunk c's
position shift. The last chunk is the request's own (level-2) chunk and is causal: with L its length, query i
sees its key j iff j <= i + L - Nq. Every other chunk is fully visible. One online softmax runs over all
chunks (running max and sum, one normalisation at the end).

Zero copy: the kernel gets the base pointers keys[0] and values[0] and a small int64 chunk table holding,
for every chunk, the element offset of its first K and V row from those bases, its K and V row strides and
its start in the concatenated range. Chunks live in separate allocations, so the offsets are differences of
raw addresses; this works on the GPU (one virtual address space) and under TRITON_INTERPRET=1 with CPU
tensors, which the interpreter reads in place through their addresses. The total length, which grows with
the request's own chunk at every decode step, is a scalar argument, so the table of a layer's chunks stays
the same from step to step and is cached on the device (no host-to-device copy per call).

Flash-decoding: the global concatenated KV range [0, T) is cut into S splits so that row tiles x KV heads x
splits fill the GPU; each program walks the chunks overlapping its split and keeps an unnormalised partial
(acc, m, l). At decode short splits are cut at chunk boundaries where S allows it (each chunk in pieces, a
piece a split), so that a program reads one chunk. The query heads sharing one KV head (and, at prefill, the
queries) are the rows of each tl.dot (at decode its columns, with the keys as rows), so K and V are read once
per KV head and row tile. At decode (one query, _decode_kernel) the program that finishes a KV head's splits
last merges them by log-sum-exp in the same launch; with several queries (_attn_kernel) a second kernel merges
them, one program per row.

chunk_attention_table serves CUDA graphs: the tables of every layer are built once per request (chunk_tables),
and a decode step's kernel also does rope_store's work (q/k norm, the query rotated for each chunk, the new key
and value stored at their slot), so a step has no separate rotary kernel.
"""
import functools
import os

import numpy as np
import torch
from .launcher import launch, wait_for_inputs  # before triton: it picks the interpreter without a GPU
import triton
import triton.language as tl

from .rope import cos_sin, normed_heads, rotated

LOG2E = 1.4426950408889634


def chunk_attention_ref(q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor],
                        scale: float) -> torch.Tensor:
    """One softmax over the scores of all chunks; each KV head serves its group of query heads by a batched
    matmul, so no chunk is copied (repeated per head or concatenated)."""
    num_chunks, num_q, hq, d = q.shape
    hkv = keys[0].shape[1]
    group = hq // hkv
    rows = q.float().reshape(num_chunks, num_q, hkv, group, d).permute(0, 2, 3, 1, 4).reshape(num_chunks, hkv, -1, d)
    s = torch.cat([rows[c] @ k.float().permute(1, 2, 0) for c, k in enumerate(keys)], dim=-1) * scale
    own = keys[-1].shape[0]
    i = torch.arange(num_q, device=q.device)[:, None]
    j = torch.arange(own, device=q.device)[None, :]
    s.view(hkv, group, num_q, -1)[..., s.shape[-1] - own:].masked_fill_(j > i + own - num_q, float("-inf"))
    p = torch.softmax(s, dim=-1).split([k.shape[0] for k in keys], dim=-1)
    out = sum(p_c @ v.float().transpose(0, 1) for p_c, v in zip(p, values))  # [Hkv, group * Nq, D]
    return out.view(hkv, group, num_q, d).permute(2, 0, 1, 3).reshape(num_q, hq, d).to(q.dtype)


@triton.jit
def _split_chunks(table_ptr, num_chunks, split, num_splits, split_len, total_len, CHUNKS_P2: tl.constexpr,
                  TOTAL_IN_TABLE: tl.constexpr, PIECE_TILE: tl.constexpr = 0):
    """From the table's chunk starts (read at once: one memory round trip, not one per chunk), split `split`'s
    range [lo, hi) of the concatenated keys and the range [first, last) of the chunks overlapping it (those
    ending after lo and starting before hi), and the total length. TOTAL_IN_TABLE (CUDA graphs): the table's
    last entry is the context's length and total_len the own chunk's, and the splits share the total evenly,
    split_len being the shortest split. PIECE_TILE (decode, its K/V tile; 0: the even cut): no split crosses a
    chunk boundary when the splits allow it. Every chunk is cut into pieces of split_len rounded up to whole
    tiles (a split reads as many tiles as before), numbered in chunk order, one a split (the splits past the
    last piece are empty); when there are more pieces than splits, the even cut stays. Nothing here waits for
    the previous kernel: the table is written before the launch."""
    idx = tl.arange(0, CHUNKS_P2)
    starts = tl.load(table_ptr + 4 * num_chunks + idx, mask=idx < num_chunks, other=0)
    ends = tl.load(table_ptr + 4 * num_chunks + idx + 1, mask=idx + 1 < num_chunks, other=0)
    if TOTAL_IN_TABLE:
        total_len = tl.load(table_ptr + 5 * num_chunks).to(tl.int32) + total_len
        split_len = tl.maximum(split_len, tl.cdiv(total_len, num_splits))
    lo = split * split_len
    hi = tl.minimum(lo + split_len, total_len)
    in_table = idx < num_chunks
    ends = tl.where(idx + 1 < num_chunks, ends, total_len)
    if PIECE_TILE > 0:
        piece = tl.cdiv(split_len, PIECE_TILE) * PIECE_TILE
        pieces = tl.cdiv(tl.where(in_table, ends - starts, 0), piece)
        ahead = tl.cumsum(pieces, 0) - pieces  # the pieces of the chunks before each chunk
        c = tl.sum((in_table & (ahead + pieces <= split)).to(tl.int32), 0)
        this = in_table & (idx == c)  # none past the last piece: an empty split
        piece_lo = tl.sum(tl.where(this, starts + (split - ahead) * piece, 0), 0).to(tl.int32)
        piece_hi = tl.minimum(piece_lo + piece, tl.sum(tl.where(this, ends, 0), 0)).to(tl.int32)
        fits = tl.sum(pieces, 0) <= num_splits  # (a select, not an if: Triton then still pipelines the K/V loads)
        lo = tl.where(fits, piece_lo, lo)
        hi = tl.where(fits, piece_hi, hi)
    first = tl.sum((in_table & (ends <= lo)).to(tl.int32), 0)
    last = tl.sum((in_table & (starts < hi)).to(tl.int32), 0)
    return first, last, total_len, lo, hi


@triton.jit
def _chunk_entry(table_ptr, c, num_chunks, total_len, ALIGNED: tl.constexpr):
    """Chunk c's start and end in the concatenated range, K and V offsets and row strides: scalar loads (a
    selection from the whole table in registers would cost a reduction across the program for each)."""
    base = table_ptr + c
    ok = c < num_chunks  # c is num_chunks for an empty split past the last chunk
    k_off = tl.load(base, mask=ok, other=0)
    v_off = tl.load(base + num_chunks, mask=ok, other=0)
    k_stride = tl.load(base + 2 * num_chunks, mask=ok, other=0)
    v_stride = tl.load(base + 3 * num_chunks, mask=ok, other=0)
    chunk_start = tl.load(base + 4 * num_chunks, mask=ok, other=0)
    chunk_end = tl.load(base + 4 * num_chunks + 1, mask=c + 1 < num_chunks, other=0)
    chunk_end = tl.where(c + 1 < num_chunks, chunk_end, total_len)
    if ALIGNED:  # written as products of 16 (tl.multiple_of on these scalars is lost on some Triton versions,
        # and without it the K/V loads are neither vectorised nor pipelined)
        k_off = (k_off // 16) * 16
        v_off = (v_off // 16) * 16
        k_stride = (k_stride // 16) * 16
        v_stride = (v_stride // 16) * 16
    return chunk_start, chunk_end, k_off, v_off, k_stride, v_stride


@triton.jit
def _chunk_shift(shift_ptr, scale_ptr, c, num_chunks, dtype: tl.constexpr):
    """Chunk c's position shift and query scale (the own chunk, the last, has none: 0 and 1)."""
    context = c < num_chunks - 1
    shift = tl.load(shift_ptr + c, mask=context, other=0).to(tl.int32)
    scale = tl.load(scale_ptr + c, mask=context, other=1.0).to(dtype).to(tl.float32)
    return shift, scale


@triton.jit
def _attend_tile(q, k, v, visible, m_i, l_i, acc, qk_scale, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """One K/V tile of the online softmax: scores of the visible keys, running max m_i and sum l_i, the
    unnormalised accumulator acc rescaled to the new max."""
    if DOT_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _attend_keys(q, k, v_t, visible, m_i, l_i, acc_t, qk_scale, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """_attend_tile transposed for a few query rows (decode): the keys are the rows of the products, so that a
    tile's tensor-core work grows with its keys and not with 16 padded query rows. q [R, D], k [N, D], v_t [D, N]
    (loaded transposed, so that its copy to shared memory is pipelined like k's), visible [N], m_i and l_i [R],
    acc_t [D, R]."""
    if DOT_F32:
        k = k.to(tl.float32)
        v_t = v_t.to(tl.float32)
    s = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
    s = tl.where(visible[:, None], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 0))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[None, :])
    l_i = l_i * alpha + tl.sum(p, 0)
    acc_t = acc_t * alpha[None, :] + tl.dot(v_t, p.to(v_t.dtype), input_precision=PRECISION)
    return m_new, l_i, acc_t


@triton.jit
def _merge_partials(m_all, l_all, acc, m_b, l_b, o_b):
    """Folds one block of splits' partials (m_b, l_b [BLOCK_S, R], o_b [BLOCK_S, R, D]) into the running max,
    sum and accumulator of R output rows by log-sum-exp."""
    m_new = tl.maximum(m_all, tl.max(m_b, 0))
    alpha = tl.exp2(m_all - m_new)
    w = tl.exp2(m_b - m_new[None, :])
    l_all = l_all * alpha + tl.sum(w * l_b, 0)
    acc = acc * alpha[:, None] + tl.sum(o_b * w[:, :, None], 0)
    return m_new, l_all, acc


@triton.jit(do_not_specialize=["num_chunks", "num_q", "split_len", "total_len", "stride_qc"])
def _attn_kernel(q_ptr, k_ptr, v_ptr, table_ptr, out_ptr, part_ptr,
                 num_chunks, num_q, split_len, total_len, qk_scale, stride_qc,
                 HQ: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, CHUNKS_P2: tl.constexpr, SPLIT: tl.constexpr, ALIGNED: tl.constexpr,
                 DOT_F32: tl.constexpr, PRECISION: tl.constexpr, TOTAL_IN_TABLE: tl.constexpr, PDL: tl.constexpr):
    pid_m = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    first, last, total_len, lo, hi = _split_chunks(
        table_ptr, num_chunks, split, tl.num_programs(2), split_len, total_len, CHUNKS_P2, TOTAL_IN_TABLE)
    first_entry = _chunk_entry(table_ptr, first, num_chunks, total_len, ALIGNED)
    own_start = tl.load(table_ptr + 5 * num_chunks - 1)
    wait_for_inputs(PDL)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    qi = rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    row_ok = qi < num_q
    d = tl.arange(0, HEAD_DIM)
    q_rows = q_ptr + (qi * HQ + head)[:, None] * HEAD_DIM + d[None, :]
    causal_limit = qi + (total_len - own_start - num_q)

    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for c in range(first, last):
        chunk_start, chunk_end, k_off, v_off, k_stride, v_stride = first_entry
        if c != first:
            chunk_start, chunk_end, k_off, v_off, k_stride, v_stride = _chunk_entry(
                table_ptr, c, num_chunks, total_len, ALIGNED)
        start = tl.maximum(lo, chunk_start)
        end = tl.minimum(hi, chunk_end)
        if start < end:  # padding chunks are empty: no loads, no pipeline prologue
            q = tl.load(q_rows + c * stride_qc, mask=row_ok[:, None], other=0.0)
            if DOT_F32:
                q = q.to(tl.float32)
            limit = tl.where(c == num_chunks - 1, causal_limit, total_len)
            k_rows = k_ptr + k_off + kv_head * HEAD_DIM + d[None, :]
            v_rows = v_ptr + v_off + kv_head * HEAD_DIM + d[None, :]
            for n0 in range(start, end, BLOCK_N):
                pos = n0 + tl.arange(0, BLOCK_N)
                j = pos - chunk_start
                in_range = pos < end
                k = tl.load(k_rows + j[:, None] * k_stride, mask=in_range[:, None], other=0.0)
                v = tl.load(v_rows + j[:, None] * v_stride, mask=in_range[:, None], other=0.0)
                visible = in_range[None, :] & (j[None, :] <= limit[:, None])
                m_i, l_i, acc = _attend_tile(q, k, v, visible, m_i, l_i, acc, qk_scale, DOT_F32, PRECISION)

    out_rows = qi * HQ + head
    if SPLIT:
        n_rows = num_q * HQ
        part = split * n_rows + out_rows
        ml_ptr = part_ptr + tl.num_programs(2) * n_rows * HEAD_DIM
        tl.store(part_ptr + part[:, None] * HEAD_DIM + d[None, :], acc, mask=row_ok[:, None])
        tl.store(ml_ptr + part, m_i, mask=row_ok)
        tl.store(ml_ptr + tl.num_programs(2) * n_rows + part, l_i, mask=row_ok)
    else:
        o = acc / l_i[:, None]
        tl.store(out_ptr + out_rows[:, None] * HEAD_DIM + d[None, :], o.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None])


@triton.jit(do_not_specialize=["num_chunks", "split_len", "total_len", "stride_qc"])
def _decode_kernel(q_ptr, k_ptr, v_ptr, table_ptr, out_ptr, part_ptr, lock_ptr,
                   kn_ptr, vn_ptr, pos_ptr, slot_ptr, shift_ptr, scale_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr, qk_eps,
                   num_chunks, split_len, total_len, qk_scale, stride_qc,
                   HQ: tl.constexpr, GROUP: tl.constexpr, GROUP_P2: tl.constexpr, HEAD_DIM: tl.constexpr,
                   BLOCK_N: tl.constexpr, CHUNKS_P2: tl.constexpr, BLOCK_S: tl.constexpr,
                   ALIGNED: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
                   ROPE: tl.constexpr, QK_NORM: tl.constexpr, PIECE_TILE: tl.constexpr, PDL: tl.constexpr):
    """One query (decode): program (kv head, split) runs the GROUP query heads of its KV head (the columns
    of its products, _attend_keys) over its split; the program that finishes its KV head's splits last merges
    them by log-sum-exp, so one launch does the whole step.

    ROPE (CUDA graphs): q, kn, vn are the new token's projections, not yet normalised or rotated; the kernel
    does what rope_store does (the query rotated for each chunk, the key stored with the value at the own
    chunk's slot read from slot_ptr) and reads the total as context (the table's last entry) + slot + 1. The
    split holding the new token attends to it from registers after its loop (so no load waits for the store)."""
    kv_head = tl.program_id(0)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    d = tl.arange(0, HEAD_DIM)
    gp = tl.arange(0, GROUP_P2)
    head = kv_head * GROUP + gp
    g_ok = gp < GROUP
    dtype = q_ptr.dtype.element_ty
    if ROPE:  # position, slot, shifts and scales are written before the graph's launch: read before the wait
        slot = tl.load(slot_ptr).to(tl.int32)
        total_len = slot + 1
    first, last, total_len, lo, hi = _split_chunks(
        table_ptr, num_chunks, split, num_splits, split_len, total_len, CHUNKS_P2, ROPE, PIECE_TILE)
    first_entry = _chunk_entry(table_ptr, first, num_chunks, total_len, ALIGNED)
    if ROPE:
        position = tl.load(pos_ptr).to(tl.int32)
        partner = (d + HEAD_DIM // 2) % HEAD_DIM
        q_cols = 0 * gp[:, None] + d[None, :]  # the rotations in the shape (and layout) of what they rotate
        own_cos, own_sin = cos_sin(cos_ptr, sin_ptr, position, q_cols, HEAD_DIM, dtype)  # the new key, its query
        first_shift, first_scale = _chunk_shift(shift_ptr, scale_ptr, first, num_chunks, dtype)
        first_cos, first_sin = cos_sin(cos_ptr, sin_ptr, position - first_shift, q_cols, HEAD_DIM, dtype)
        _, _, own_k_off, own_v_off, own_k_stride, own_v_stride = _chunk_entry(
            table_ptr, num_chunks - 1, num_chunks, total_len, ALIGNED)  # where the new token goes
    wait_for_inputs(PDL)
    if ROPE:
        q_x, q_xr = normed_heads(q_ptr, head, g_ok, d, partner, qw_ptr, qk_eps, HEAD_DIM, QK_NORM)
        # the new key and value in the query rows' shape (each row the same), so that their layouts match
        k_x, k_xr = normed_heads(kn_ptr, kv_head + 0 * gp, gp >= 0, d, partner, kw_ptr, qk_eps, HEAD_DIM, QK_NORM)
        k_new = rotated(k_x, k_xr, d, own_cos, own_sin, HEAD_DIM, dtype)
        v_new = tl.load(vn_ptr + kv_head * HEAD_DIM + q_cols)

    m_i = tl.full([GROUP_P2], -1.0e30, tl.float32)
    l_i = tl.zeros([GROUP_P2], tl.float32)
    acc = tl.zeros([HEAD_DIM, GROUP_P2], tl.float32)  # transposed, as _attend_keys makes it
    for c in range(first, last):
        chunk_start, chunk_end, k_off, v_off, k_stride, v_stride = first_entry
        if c != first:
            chunk_start, chunk_end, k_off, v_off, k_stride, v_stride = _chunk_entry(
                table_ptr, c, num_chunks, total_len, ALIGNED)
        start = tl.maximum(lo, chunk_start)
        end = tl.minimum(hi, chunk_end)
        if ROPE:
            end = tl.minimum(end, total_len - 1)  # the new token is not in memory yet: it comes after the loop
        if start < end:  # padding chunks are empty: no loads, no pipeline prologue
            if ROPE:  # the query rotated for this chunk, as rope_store writes it
                q_cos, q_sin, q_scale = first_cos, first_sin, first_scale
                if c != first:
                    shift, q_scale = _chunk_shift(shift_ptr, scale_ptr, c, num_chunks, dtype)
                    q_cos, q_sin = cos_sin(cos_ptr, sin_ptr, position - shift, q_cols, HEAD_DIM, dtype)
                q = rotated(q_x, q_xr, d, q_cos, q_sin, HEAD_DIM, dtype)
                q = (q.to(tl.float32) * q_scale).to(dtype)
            else:
                q = tl.load(q_ptr + c * stride_qc + head[:, None] * HEAD_DIM + d[None, :], mask=g_ok[:, None],
                            other=0.0)
            if DOT_F32:
                q = q.to(tl.float32)
            k_rows = k_ptr + k_off + kv_head * HEAD_DIM + d[None, :]
            v_cols = v_ptr + v_off + kv_head * HEAD_DIM + d[:, None]
            for n0 in range(start, end, BLOCK_N):
                pos = n0 + tl.arange(0, BLOCK_N)
                in_range = pos < end
                k = tl.load(k_rows + (pos - chunk_start)[:, None] * k_stride, mask=in_range[:, None], other=0.0)
                v_t = tl.load(v_cols + (pos - chunk_start)[None, :] * v_stride, mask=in_range[None, :], other=0.0)
                m_i, l_i, acc = _attend_keys(q, k, v_t, in_range, m_i, l_i, acc, qk_scale, DOT_F32, PRECISION)

    if ROPE:
        if (lo < hi) & (hi == total_len):  # this split holds the new token: it attends to it, then stores it
            q = rotated(q_x, q_xr, d, own_cos, own_sin, HEAD_DIM, dtype).to(tl.float32)  # the own chunk: no shift
            s_new = tl.sum(q * k_new.to(tl.float32), 1) * qk_scale  # as in _attend_keys
            m_new = tl.maximum(m_i, s_new)
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s_new - m_new)
            l_i = l_i * alpha + p
            acc = acc * alpha[None, :] + p.to(dtype).to(tl.float32)[None, :] * tl.trans(v_new).to(tl.float32)
            m_i = m_new
            first_row = (gp == 0)[:, None]
            tl.store(k_ptr + own_k_off + slot * own_k_stride + kv_head * HEAD_DIM + q_cols, k_new, mask=first_row)
            tl.store(v_ptr + own_v_off + slot * own_v_stride + kv_head * HEAD_DIM + q_cols, v_new, mask=first_row)
    # partials [splits, HQ, D], then m [splits, HQ], then l [splits, HQ]
    ml_ptr = part_ptr + num_splits * HQ * HEAD_DIM
    tl.store(part_ptr + (split * HQ + head)[None, :] * HEAD_DIM + d[:, None], acc, mask=g_ok[None, :])
    tl.store(ml_ptr + split * HQ + head, m_i, mask=g_ok)
    tl.store(ml_ptr + (num_splits + split) * HQ + head, l_i, mask=g_ok)
    tl.debug_barrier()  # every thread's partial is written before the release below
    if tl.atomic_add(lock_ptr + kv_head, 1, sem="acq_rel") == num_splits - 1:
        # one pass over the partials, BLOCK_S splits at a time, each block's m, l and acc loaded together
        gm = tl.arange(0, GROUP_P2)
        rows = kv_head * GROUP + gm
        m_all = tl.full([GROUP_P2], -1.0e30, tl.float32)
        l_all = tl.zeros([GROUP_P2], tl.float32)
        acc_all = tl.zeros([GROUP_P2, HEAD_DIM], tl.float32)
        for s0 in range(0, num_splits, BLOCK_S):
            sb = s0 + tl.arange(0, BLOCK_S)
            ok = (sb < num_splits)[:, None] & (gm < GROUP)[None, :]
            m_b = tl.load(ml_ptr + sb[:, None] * HQ + rows[None, :], mask=ok, other=-1.0e30, cache_modifier=".cg")
            l_b = tl.load(ml_ptr + (num_splits + sb[:, None]) * HQ + rows[None, :], mask=ok, other=0.0,
                          cache_modifier=".cg")
            o_b = tl.load(part_ptr + ((sb[:, None] * HQ + rows[None, :]) * HEAD_DIM)[:, :, None] + d[None, None, :],
                          mask=ok[:, :, None], other=0.0, cache_modifier=".cg")
            m_all, l_all, acc_all = _merge_partials(m_all, l_all, acc_all, m_b, l_b, o_b)
        out = acc_all / l_all[:, None]
        tl.store(out_ptr + rows[:, None] * HEAD_DIM + d[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=(gm < GROUP)[:, None])
        # ready for the next launch (CUDA-graph replays included): every split has counted, and the next launch
        # reads the counter only after this one has completed, so a plain store does (an exchange would make
        # the program wait for its round trip before it exits)
        tl.store(lock_ptr + kv_head, 0)


@triton.jit(do_not_specialize=["num_splits", "n_rows"])
def _merge_kernel(part_ptr, out_ptr, num_splits, n_rows, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr,
                  PDL: tl.constexpr):
    """Output row `row` from its splits' partials by log-sum-exp: one online pass, each block of BLOCK_S
    splits' m, l and accumulators loaded together (one memory round trip a block)."""
    row = tl.program_id(0)
    wait_for_inputs(PDL)
    ml_ptr = part_ptr + num_splits * n_rows * HEAD_DIM
    d = tl.arange(0, HEAD_DIM)
    m_all = tl.full([1], -1.0e30, tl.float32)
    l_all = tl.zeros([1], tl.float32)
    acc = tl.zeros([1, HEAD_DIM], tl.float32)
    for s0 in range(0, num_splits, BLOCK_S):
        sb = (s0 + tl.arange(0, BLOCK_S))[:, None]  # [BLOCK_S, 1]: the splits of one row
        ok = sb < num_splits
        m_b = tl.load(ml_ptr + sb * n_rows + row, mask=ok, other=-1.0e30)
        l_b = tl.load(ml_ptr + (num_splits + sb) * n_rows + row, mask=ok, other=0.0)
        o_b = tl.load(part_ptr + ((sb * n_rows + row) * HEAD_DIM)[:, :, None] + d[None, None, :], mask=ok[:, :, None],
                      other=0.0)
        m_all, l_all, acc = _merge_partials(m_all, l_all, acc, m_b, l_b, o_b)
    out = acc / l_all[:, None]
    tl.store(out_ptr + row * HEAD_DIM + d[None, :], out.to(out_ptr.dtype.element_ty))


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


HEAD_DIMS = (64, 128)  # what the Triton kernel supports
# KV block, warps, pipeline depth, programs per SM to aim for, shortest split (cascade_rag.benchmarks.bench_kernels --tune):
# _attn_kernel with up to 16 rows (swept at decode on 2026-11-25, H100), with row tiles of 64 (a 32-token
# question, 2026-11-26, H200), and _decode_kernel (2026-11-26, H200; its min_split and merge_elements chosen
# later that day with the splits rounded to whole merge passes; the same settings stay fastest in the engine with
# the rotary work in the kernel, H100, and with the keys as the products' rows, H100, 2026-11-26)
TUNING = dict(block_n=32, num_warps=2, num_stages=2, programs_per_sm=4, min_split=32)
PREFILL_TUNING = dict(block_n=32, num_warps=4, num_stages=3, programs_per_sm=2, min_split=64)
# merge_elements: partial values the merging program reads at once (BLOCK_S splits x GROUP_P2 x D)
# piece_tiles: the longest split, in tiles, for which _decode_kernel cuts the splits at chunk boundaries (H100,
# 2026-11-26: 8 keeps the gain up to 4K and none of the cost at 16K and 32K)
DECODE_TUNING = dict(block_n=32, num_warps=2, num_stages=3, programs_per_sm=2, min_split=32, merge_elements=8192,
                     piece_tiles=8)


_tables = {}


def _chunk_table(keys, values, hkv, head_dim, dtype, device):
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


_locks = {}


def _lock(device, n: int) -> torch.Tensor:
    """Per-KV-head arrival counters of the decode kernel, shared by its eager launches on a device (which must
    therefore not overlap: one stream); each launch leaves them at zero. CUDA graphs get their own."""
    lock = _locks.get(device)
    if lock is None or lock.numel() < n:
        lock = _locks[device] = torch.zeros(max(n, 64), dtype=torch.int32, device=device)
    return lock


def _merge_block(num_splits: int, head_dim: int) -> int:
    """Splits a block of _merge_kernel loads at once: all of them, up to 8,192 values."""
    return min(triton.next_power_of_2(num_splits), 8192 // head_dim)


def _merge_pass(group: int, head_dim: int) -> int:
    """Splits whose partials the merging program of _decode_kernel reads at once (a power of two)."""
    return 1 << max(0, (DECODE_TUNING["merge_elements"] // (triton.next_power_of_2(group) * head_dim)).bit_length() - 1)


def _longest_piece() -> int:
    """Splits up to this many keys are cut at chunk boundaries where the splits allow it; longer ones never are
    (with passages of a few thousand tokens they rarely fit, and the plan costs the step time)."""
    return DECODE_TUNING["piece_tiles"] * DECODE_TUNING["block_n"]


def _decode_splits(hkv: int, group: int, head_dim: int, capacity: int, device) -> int:
    """programs_per_sm programs for every SM, rounded down to whole merge passes (each pass of the merge is a
    memory round trip on the step's critical path), and splits of at least min_split keys."""
    cfg = DECODE_TUNING
    splits = min(triton.cdiv(cfg["programs_per_sm"] * _num_sms(torch.device(device)), hkv),
                 triton.cdiv(capacity, cfg["min_split"]))
    per_pass = _merge_pass(group, head_dim)
    if splits > per_pass:
        splits -= splits % per_pass
    return max(1, splits)


def _launch_decode(q, k_base, v_base, table, out, part, lock, num_chunks, num_splits, split_len, total, scale,
                   aligned, pieces, rope=None):
    """_decode_kernel over rotated queries q [C, 1, Hq, D], or with rope (rope_store's arguments but q) over
    the new token's projections q [1, Hq, D]."""
    hq, head_dim = q.shape[-2], q.shape[-1]
    hkv = k_base.shape[-2]
    group = hq // hkv
    cfg = DECODE_TUNING
    block_s = min(triton.next_power_of_2(num_splits), _merge_pass(group, head_dim))
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    if rope is None:
        rope_pointers, qk_eps, qk_norm = (q,) * 10, 0.0, False  # never read
    else:
        assert rope["own_keys"].data_ptr() == k_base.data_ptr() and rope["own_values"].data_ptr() == v_base.data_ptr()
        assert rope["shifts"].shape[0] == num_chunks - 1 and rope["scales"] is not None
        assert q.is_contiguous() and rope["k"].is_contiguous() and rope["v"].is_contiguous()
        qk_norm = rope["q_norm"] is not None
        rope_pointers = tuple(rope[name] for name in ("k", "v", "positions", "slots", "shifts", "scales", "cos", "sin"))
        rope_pointers += (rope["q_norm"], rope["k_norm"]) if qk_norm else (q, q)
        qk_eps = rope["qk_eps"]
    pointers = (q, k_base, v_base, table, out, part, lock) + rope_pointers
    constexprs = (hq, group, triton.next_power_of_2(group), head_dim, cfg["block_n"],
                  triton.next_power_of_2(num_chunks + 1), block_s, aligned, _interpreting(), precision,
                  rope is not None, qk_norm, cfg["block_n"] if pieces else 0)
    args = pointers + (qk_eps, num_chunks, split_len, total, scale * LOG2E, q.stride(0)) + constexprs
    key = ("decode", q.device.index, tuple(p.dtype for p in pointers), tuple(p.data_ptr() % 16 == 0 for p in pointers),
           constexprs, cfg["num_warps"], cfg["num_stages"])
    launch(_decode_kernel, (hkv, num_splits), args, key, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def _launch_attn(q, k_base, v_base, table, out, part, num_chunks, split_len, total, scale, block_m, num_splits,
                 aligned, total_in_table):
    """_attn_kernel over rotated queries q [C, Nq, Hq, D] in row tiles of block_m, then, with several splits, the
    merge of their partials (in part)."""
    num_q, hq, head_dim = q.shape[1:]
    hkv = k_base.shape[-2]
    group = hq // hkv
    cfg = PREFILL_TUNING if block_m == 64 else TUNING
    split = num_splits > 1
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    args = (q, k_base, v_base, table, out, part, num_chunks, num_q, split_len, total, scale * LOG2E, q.stride(0), hq,
            group, head_dim, block_m, cfg["block_n"], triton.next_power_of_2(num_chunks + 1), split, aligned,
            _interpreting(), precision, total_in_table)
    key = ("attn", q.device.index, q.dtype, tuple(t.data_ptr() % 16 == 0 for t in args[:6])) + args[12:] + (
        cfg["num_warps"], cfg["num_stages"])
    launch(_attn_kernel, (triton.cdiv(num_q * group, block_m), hkv, num_splits), args, key,
           num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if split:
        _launch_merge(part, out, num_splits, num_q * hq, head_dim)


def _launch_merge(part, out, num_splits, n_rows, head_dim):
    block_s = _merge_block(num_splits, head_dim)
    launch(_merge_kernel, (n_rows,), (part, out, num_splits, n_rows, head_dim, block_s),
           ("merge", out.device.index, out.dtype, head_dim, block_s), num_warps=4)


def _chunk_attention_triton(q, keys, values, scale, num_splits=None):
    num_chunks, num_q, hq, head_dim = q.shape
    hkv = keys[0].shape[1]
    group = hq // hkv
    assert hq % hkv == 0 and head_dim in HEAD_DIMS and len(keys) == len(values) == num_chunks
    if q.stride()[1:] != (hq * head_dim, head_dim, 1):
        q = q.contiguous()
    device = q.device
    table, total, aligned = _chunk_table(keys, values, hkv, head_dim, q.dtype, device)
    assert total < 2 ** 31
    if total == 0:
        raise ValueError("chunk attention needs at least one key: every chunk is empty")
    if num_q == 1 and group <= 16:
        num_splits = num_splits or _decode_splits(hkv, group, head_dim, total, device)
        split_len = max(1, triton.cdiv(total, num_splits))
        num_splits = max(1, triton.cdiv(total, split_len))
        out = torch.empty((1, hq, head_dim), dtype=q.dtype, device=device)
        part = torch.empty(num_splits * hq * (head_dim + 2), dtype=torch.float32, device=device)
        _launch_decode(q, keys[0], values[0], table, out, part, _lock(device, hkv), num_chunks, num_splits,
                       split_len, total, scale, aligned, split_len <= _longest_piece())
        return out

    rows = num_q * group
    block_m = min(64, max(16, triton.next_power_of_2(rows)))
    m_tiles = triton.cdiv(rows, block_m)
    cfg = TUNING if block_m < 64 else PREFILL_TUNING
    if num_splits is None:
        num_splits = triton.cdiv(cfg["programs_per_sm"] * _num_sms(device), m_tiles * hkv)
        num_splits = max(1, min(num_splits, triton.cdiv(total, cfg["min_split"])))
    split_len = max(1, triton.cdiv(total, num_splits))
    num_splits = max(1, triton.cdiv(total, split_len))
    out = torch.empty((num_q, hq, head_dim), dtype=q.dtype, device=device)
    part = torch.empty(num_splits * num_q * hq * (head_dim + 2), dtype=torch.float32, device=device) \
        if num_splits > 1 else out
    _launch_attn(q, keys[0], values[0], table, out, part, num_chunks, split_len, total, scale, block_m, num_splits,
                 aligned, False)
    return out


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


def decode_workspace(num_q: int, hq: int, head_dim: int, hkv: int, capacity: int, device) -> dict:
    """Fixed split layout and buffers for decode calls of chunk_attention_table over at most `capacity` keys."""
    group = hq // hkv
    block_m = min(64, max(16, triton.next_power_of_2(num_q * group)))
    m_tiles = triton.cdiv(num_q * group, block_m)
    decode = num_q == 1 and group <= 16  # _decode_kernel; else _attn_kernel and _merge_kernel
    cfg = DECODE_TUNING if decode else PREFILL_TUNING if block_m == 64 else TUNING
    if decode:
        num_splits = _decode_splits(hkv, group, head_dim, capacity, device)
    else:
        num_splits = triton.cdiv(cfg["programs_per_sm"] * _num_sms(torch.device(device)), m_tiles * hkv)
        num_splits = max(2, min(num_splits, triton.cdiv(capacity, cfg["min_split"])))
    split_len = cfg["min_split"]  # the shortest split: the kernels share the current length among the splits
    n_rows = num_q * hq
    pieces = decode and triton.cdiv(capacity, num_splits) <= _longest_piece()
    return dict(decode=decode, num_splits=num_splits, split_len=split_len, block_m=block_m, pieces=pieces,
                part=torch.empty(num_splits * n_rows * (head_dim + 2), dtype=torch.float32, device=device),
                lock=torch.zeros(hkv, dtype=torch.int32, device=device))


def chunk_attention_table(q: torch.Tensor, k_base: torch.Tensor, v_base: torch.Tensor, table: torch.Tensor,
                          scale: float, workspace: dict, rope: dict | None = None) -> torch.Tensor:
    """chunk_attention over a prebuilt device table (chunk_tables) whose last entry is the context's length: every
    argument stays fixed from one decode step to the next, so the call can be captured in a CUDA graph.

    A prefill (q [C, Nq, Hq, D], rope_store's output) adds the own chunk's Nq tokens to the context. A decode
    step (workspace["decode"]) also does rope_store's work: q [1, Hq, D] is the new token's query as projected,
    and rope holds rope_store's other arguments (k and v the new token's key and value as projected,
    own_keys/own_values being k_base/v_base); the own chunk then ends after slots[0]."""
    head_dim = q.shape[-1]
    w = workspace
    if w["decode"]:
        if rope is None:
            raise ValueError("a decode step over a chunk table takes the new token's projections and rope")
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        _launch_decode(q, k_base, v_base, table, out, w["part"], w["lock"], (table.shape[0] - 1) // 5, w["num_splits"],
                       w["split_len"], 0, scale, w.get("aligned", False), w["pieces"], rope)
        return out
    num_chunks, num_q, hq, _ = q.shape
    if q.stride()[1:] != (hq * head_dim, head_dim, 1):
        q = q.contiguous()
    out = torch.empty((num_q, hq, head_dim), dtype=q.dtype, device=q.device)
    _launch_attn(q, k_base, v_base, table, out, w["part"], num_chunks, w["split_len"], num_q, scale, w["block_m"],
                 w["num_splits"], w.get("aligned", False), True)
    return out


def chunk_attention(q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor], scale: float,
                    impl: str | None = None, num_splits: int | None = None) -> torch.Tensor:
    """q [C, Nq, Hq, D], keys[c]/values[c] [n_c, Hkv, D] -> [Nq, Hq, D] in q's dtype.

    impl: None (Triton on CUDA, the reference elsewhere), "triton" (also on CPU under TRITON_INTERPRET=1) or
    "ref". num_splits forces the number of KV splits of the Triton path.
    """
    if impl is None:
        impl = "triton" if q.is_cuda and q.shape[-1] in HEAD_DIMS else "ref"
    if impl == "ref":
        return chunk_attention_ref(q, keys, values, scale)
    if not q.is_cuda and not _interpreting():
        raise RuntimeError("the Triton chunk attention needs CUDA tensors or TRITON_INTERPRET=1")
    return _chunk_attention_triton(q, keys, values, scale, num_splits)
