"""Chunk attention of several queries (a prefill over stored chunks, or a decode step with more than 16 query heads
a KV head): _attn_kernel, a program per row tile x KV head x split, then, with several splits, _merge_kernel."""
import torch
from ..launcher import launch, wait_for_inputs  # before triton: it picks the interpreter without a GPU
import triton
import triton.language as tl

from ..dispatch import interpreted
from ..options import AttentionTuning, KernelOptions, compile_options
from ..windows import lead_tile, seen_chunks
from .common import (DONE_C, LOG2E, attend_tile, chunk_span, merge_partials, num_sms, split_prologue, store_done,
                     store_rows)
from .packed import NO_PACKED, NOT_PACKED_C, PackedBases, attend_packed_tile, packed_tile


@triton.jit
def _dense_chunk(q, k_ptr, v_ptr, k_off, v_off, k_stride, v_stride, kv_head, start, end, chunk_start, limit, m_i, l_i,
                 acc, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr,
                 PRECISION: tl.constexpr, lower=0, sink=0, WINDOW: tl.constexpr = False):
    """The query rows over rows start..end of a chunk in the model's dtype, row r seeing keys up to limit[r], and
    (WINDOW) none from sink[r] to before lower[r] (in the chunk's rows)."""
    d = tl.arange(0, HEAD_DIM)
    k_rows = k_ptr + k_off + kv_head * HEAD_DIM + d[None, :]
    v_rows = v_ptr + v_off + kv_head * HEAD_DIM + d[None, :]
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        j = pos - chunk_start
        in_range = pos < end
        k = tl.load(k_rows + j[:, None] * k_stride, mask=in_range[:, None], other=0.0)
        v = tl.load(v_rows + j[:, None] * v_stride, mask=in_range[:, None], other=0.0)
        visible = in_range[None, :] & (j[None, :] <= limit[:, None])
        if WINDOW:
            visible = visible & ((j[None, :] >= lower[:, None]) | (j[None, :] < sink[:, None]))
        m_i, l_i, acc = attend_tile(q, k, v, visible, m_i, l_i, acc, qk_scale, DOT_F32, PRECISION)
    return m_i, l_i, acc


@triton.jit
def _packed_chunk(q, kq_ptr, vq_ptr, ks_ptr, vs_ptr, k_off, v_off, k_stride, v_stride, ks_off, vs_off, kv_head, start,
                  end, chunk_start, limit, m_i, l_i, acc, qk_scale, HKV: tl.constexpr, HEAD_DIM: tl.constexpr,
                  BLOCK_N: tl.constexpr, FORMAT: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
                  LIMITED: tl.constexpr):
    """The query rows over rows start..end of a packed context chunk, dequantised in registers (packed.py): every
    key visible, or (LIMITED) row r seeing keys up to limit[r]."""
    lo_rel = start - chunk_start
    for r0 in range((lo_rel // BLOCK_N) * BLOCK_N, end - chunk_start, BLOCK_N):
        j = r0 + tl.arange(0, BLOCK_N)
        in_range = (j >= lo_rel) & (j < end - chunk_start)
        k, v, k_scale, k_zero, v_scale, v_zero = packed_tile(kq_ptr, vq_ptr, ks_ptr, vs_ptr, k_off, v_off, k_stride,
                                                             v_stride, ks_off, vs_off, r0, j, in_range, kv_head, HKV,
                                                             HEAD_DIM, FORMAT, False)
        if LIMITED:
            visible = in_range[None, :] & (j[None, :] <= limit[:, None])
        else:
            visible = in_range[None, :]
        m_i, l_i, acc = attend_packed_tile(q, k, v, k_scale, k_zero, v_scale, v_zero, visible, m_i, l_i, acc, qk_scale,
                                           FORMAT, DOT_F32, PRECISION)
    return m_i, l_i, acc


@triton.jit(do_not_specialize=["num_chunks", "num_q", "split_len", "total_len", "stride_qc"])
def _attn_kernel(q_ptr, k_ptr, v_ptr, table_ptr, out_ptr, part_ptr, kq_ptr, vq_ptr, ks_ptr, vs_ptr, limits_ptr,
                 floors_ptr, num_chunks, num_q, split_len, total_len, qk_scale, stride_qc,
                 HQ: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, CHUNKS_P2: tl.constexpr, SPLIT: tl.constexpr, ALIGNED: tl.constexpr,
                 DOT_F32: tl.constexpr, PRECISION: tl.constexpr, TOTAL_IN_TABLE: tl.constexpr, FORMAT: tl.constexpr,
                 LIMITED: tl.constexpr, WINDOW: tl.constexpr, PDL: tl.constexpr):
    """Query rows (query x head) of a tile over a split; FORMAT: as in _decode_kernel (packed context chunks).
    LIMITED: query i sees the context's first limits_ptr[i] keys (in the table's order) instead of all of them,
    and the own chunk causally as always (a selective recompute's queries, which sit among the context). WINDOW
    (with LIMITED, context chunks in the model's dtype): floors_ptr[i] = (sink, floor, own floor), and query i sees
    none of the context keys from sink to before floor nor the own rows before own floor; a tile skips what none of
    its rows sees, and a tile of lead rows only (each with a sink) reads all they see (level 0, the window and the
    own chunk) in split 0, which stores their output whole and marks them done for the merge (store_done); its
    programs of the other splits return at once."""
    pid_m = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    qi = rows // GROUP
    row_ok = qi < num_q
    sink, lead, go = 0, False, True
    if WINDOW:  # a tile of lead rows only (each with a sink) reads every key its rows see in split 0; its other
        # splits return at once
        sink, floor, own_floor, lead = lead_tile(floors_ptr, qi, row_ok)
        go = (split == 0) | ~lead
    if go:
        first, last, total_len, lo, hi, f_start, f_end, f_k, f_v, f_ks, f_vs = split_prologue(
            table_ptr, num_chunks, split, tl.num_programs(2), split_len, total_len, CHUNKS_P2, TOTAL_IN_TABLE, 0,
            ALIGNED)
        own_start = tl.load(table_ptr + 5 * num_chunks - 1)
        wait_for_inputs(PDL)
        head = kv_head * GROUP + rows % GROUP
        d = tl.arange(0, HEAD_DIM)
        q_rows = q_ptr + (qi * HQ + head)[:, None] * HEAD_DIM + d[None, :]
        causal_limit = qi + (total_len - own_start - num_q)
        if LIMITED:  # and the tile reads no key past its rows' last visible one, in the context or its own chunk
            seen = tl.load(limits_ptr + qi, mask=row_ok, other=0)
            tile_seen = tl.max(seen, 0)
            tile_own = own_start + tl.max(tl.where(row_ok, causal_limit, -1), 0) + 1
        else:
            seen = total_len
        preloaded, n_a, n_b, n_own, b_first = first, last - first, 0, 0, 0  # the loop: chunks first..last
        if WINDOW:
            tile_sink = tl.max(tl.where(row_ok, sink, 0), 0)
            tile_floor = tl.min(tl.where(row_ok, floor, total_len), 0)
            tile_own_floor = own_start + tl.min(tl.where(row_ok, own_floor, total_len), 0)
            a_first, a_last, b_first, b_last = seen_chunks(table_ptr, num_chunks, tile_sink, tile_floor, tile_seen,
                                                           CHUNKS_P2)
            preloaded = tl.where(lead, -1, first)  # (a lead's loop reads every chunk's entry)
            first = tl.where(lead, a_first, first)
            n_a = tl.where(lead, a_last - a_first, n_a)
            n_b = tl.where(lead, b_last - b_first, 0)
            n_own = tl.where(lead, 1, 0)
            lo = tl.where(lead, 0, lo)
            hi = tl.where(lead, total_len, hi)
        else:
            floor, own_floor = 0, 0

        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for i in range(0, n_a + n_b + n_own):
            c = first + i
            if WINDOW:  # a lead tile's: level 0's chunks, then its window's, then the own chunk
                c = tl.where(i < n_a, c, tl.where(i < n_a + n_b, b_first + i - n_a, num_chunks - 1))
            start, end, chunk_start, k_off, v_off, k_stride, v_stride = chunk_span(
                table_ptr, c, preloaded, num_chunks, total_len, lo, hi, f_start, f_end, f_k, f_v, f_ks, f_vs, ALIGNED)
            if LIMITED:
                end = tl.minimum(end, tl.where(c == num_chunks - 1, tile_own, tile_seen))
            if WINDOW:  # the keys that no row of the tile sees: between the sink and the floors
                start = tl.maximum(start, tl.where(c == num_chunks - 1, tile_own_floor,
                                                   tl.where(start >= tile_sink, tile_floor, start)))
            if start < end:  # padding chunks are empty: no loads, no pipeline prologue
                q = tl.load(q_rows + c * stride_qc, mask=row_ok[:, None], other=0.0)
                if DOT_F32:
                    q = q.to(tl.float32)
                limit = tl.where(c == num_chunks - 1, causal_limit, seen - 1 - chunk_start)
                if FORMAT != 0:  # the chunk's parameter offsets, NOT_PACKED for one in the model's dtype
                    ks_off = tl.load(table_ptr + 5 * num_chunks + 1 + c)
                    vs_off = tl.load(table_ptr + 6 * num_chunks + 1 + c)
                    if ks_off != NOT_PACKED_C:  # a context chunk: every key visible
                        m_i, l_i, acc = _packed_chunk(
                            q, kq_ptr, vq_ptr, ks_ptr, vs_ptr, k_off, v_off, k_stride, v_stride, ks_off, vs_off,
                            kv_head, start, end, chunk_start, limit, m_i, l_i, acc, qk_scale, HQ // GROUP, HEAD_DIM,
                            BLOCK_N, FORMAT, DOT_F32, PRECISION, LIMITED)
                    else:
                        m_i, l_i, acc = _dense_chunk(
                            q, k_ptr, v_ptr, k_off, v_off, k_stride, v_stride, kv_head, start, end, chunk_start, limit,
                            m_i, l_i, acc, qk_scale, HEAD_DIM, BLOCK_N, DOT_F32, PRECISION)
                elif WINDOW:  # (one branch each: Triton compiles a runtime branch on a constant False all the same)
                    own = c == num_chunks - 1
                    m_i, l_i, acc = _dense_chunk(
                        q, k_ptr, v_ptr, k_off, v_off, k_stride, v_stride, kv_head, start, end, chunk_start, limit,
                        m_i, l_i, acc, qk_scale, HEAD_DIM, BLOCK_N, DOT_F32, PRECISION,
                        tl.where(own, own_floor, floor - chunk_start), tl.where(own, 0, sink - chunk_start), True)
                else:
                    m_i, l_i, acc = _dense_chunk(
                        q, k_ptr, v_ptr, k_off, v_off, k_stride, v_stride, kv_head, start, end, chunk_start, limit,
                        m_i, l_i, acc, qk_scale, HEAD_DIM, BLOCK_N, DOT_F32, PRECISION)

        if WINDOW and SPLIT:
            if lead:  # every key its rows see, in split 0: the output whole, and done for the merge
                store_done(out_ptr, part_ptr, qi * HQ + head, row_ok, num_q * HQ, acc, l_i, HEAD_DIM)
            else:
                store_rows(out_ptr, part_ptr, qi * HQ + head, row_ok, split, num_q * HQ, acc, m_i, l_i, HEAD_DIM,
                           SPLIT)
        else:
            store_rows(out_ptr, part_ptr, qi * HQ + head, row_ok, split, num_q * HQ, acc, m_i, l_i, HEAD_DIM, SPLIT)


@triton.jit(do_not_specialize=["num_splits", "n_rows"])
def _merge_kernel(part_ptr, out_ptr, num_splits, n_rows, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr,
                  BLOCK_R: tl.constexpr, MARKED: tl.constexpr, PDL: tl.constexpr):
    """Output rows BLOCK_R * program.. from their splits' partials by log-sum-exp: one online pass, each block of
    BLOCK_S splits' m, l and accumulators of the rows loaded together (one memory round trip a block). A split
    where a row saw no key holds no accumulator for it (store_rows): only its maximum, -1e30, which masks the
    load. MARKED (a windowed lead's merge): rows whose maximum at split 0 is DONE were computed whole there
    (store_done) and are left as they are; a program whose rows all are returns after that one load."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    wait_for_inputs(PDL)
    ml_ptr = part_ptr + num_splits * n_rows * HEAD_DIM
    todo = row_ok
    if MARKED:
        todo = row_ok & (tl.load(ml_ptr + rows, mask=row_ok, other=DONE_C) != DONE_C)
    if tl.max(todo.to(tl.int32), 0) > 0:
        d = tl.arange(0, HEAD_DIM)
        m_all = tl.full([BLOCK_R], -1.0e30, tl.float32)
        l_all = tl.zeros([BLOCK_R], tl.float32)
        acc = tl.zeros([BLOCK_R, HEAD_DIM], tl.float32)
        for s0 in range(0, num_splits, BLOCK_S):
            sb = (s0 + tl.arange(0, BLOCK_S))[:, None]  # [BLOCK_S, 1]: the splits
            ok = (sb < num_splits) & todo[None, :]
            m_b = tl.load(ml_ptr + sb * n_rows + rows[None, :], mask=ok, other=-1.0e30)
            l_b = tl.load(ml_ptr + (num_splits + sb) * n_rows + rows[None, :], mask=ok, other=0.0)
            seen = ok & (m_b > -1.0e30)
            o_b = tl.load(part_ptr + ((sb * n_rows + rows[None, :]) * HEAD_DIM)[:, :, None] + d[None, None, :],
                          mask=seen[:, :, None], other=0.0)
            m_all, l_all, acc = merge_partials(m_all, l_all, acc, m_b, l_b, o_b)
        out = acc / tl.where(todo, l_all, 1.0)[:, None]
        tl.store(out_ptr + rows[:, None] * HEAD_DIM + d[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=todo[:, None])


def merge_block(num_splits: int, head_dim: int, n_rows: int = 0, sms: int = 1,
                marked: bool = False) -> tuple[int, int]:
    """Splits and rows a program of _merge_kernel loads at once, 8,192 values in all: rows enough for 4 programs an
    SM at most (up to 16; many rows, as a recompute's lead has, make too many programs of one row otherwise; up to
    8 where most rows are marked done: the few others then spread over more programs), then as many of the splits
    as that leaves room for (all of them where they fit: one memory round trip)."""
    most = 8 if marked else 16
    rows = max(1, min(most, n_rows // (4 * sms)))
    block_r = 1 << (rows.bit_length() - 1)  # a power of two
    block_s = min(triton.next_power_of_2(num_splits), max(1, 8192 // (head_dim * block_r)))
    return block_s, max(block_r, min(most, 8192 // (head_dim * block_s)))


def launch_merge(part: torch.Tensor, out: torch.Tensor, num_splits: int, n_rows: int, head_dim: int,
                 options: KernelOptions, marked: bool = False) -> None:
    """_merge_kernel: the rows of out [n_rows, D] from their partials in part (store_rows' layout); marked: rows
    marked done (store_done) are left as the attention stored them."""
    block_s, block_r = merge_block(num_splits, head_dim, n_rows, num_sms(out.device), marked)
    launch(_merge_kernel, (triton.cdiv(n_rows, block_r),),
           (part, out, num_splits, n_rows, head_dim, block_s, block_r, marked),
           ("merge", out.device.index, out.dtype, head_dim, block_s, block_r, marked), options, num_warps=4)


def row_tile(num_q: int, group: int) -> int:
    """Rows (query x query head) of a program's tile: 16 to 64."""
    return min(64, max(16, triton.next_power_of_2(num_q * group)))


def tuning(block_m: int, options: KernelOptions, packed: bool = False, limited: bool = False,
           windowed: bool = False) -> AttentionTuning:
    """The launch settings of _attn_kernel for row tiles of block_m, over a context with packed chunks or not,
    under per-query key limits or not, and windows (floors) or not (packed chunks take packed_prefill's either
    way)."""
    if block_m != 64:
        return options.attention
    if packed:
        return options.packed_prefill
    if windowed:
        return options.windowed_prefill
    return options.limited_prefill if limited else options.prefill


def launch_attn(q, k_base, v_base, table, out, part, num_chunks, split_len, total, scale, block_m, num_splits,
                aligned, total_in_table, options: KernelOptions, packed: PackedBases = NO_PACKED,
                limits: torch.Tensor | None = None, floors: torch.Tensor | None = None):
    """_attn_kernel over rotated queries q [C, Nq, Hq, D] in row tiles of block_m, then, with several splits, the
    merge of their partials (in part); packed: the bases and format of the table's packed chunks; limits: int64
    [Nq], the context keys each query sees (None: all); floors (with limits): int64 [Nq, 3], each query's window
    (sink, floor, own floor: _attn_kernel's WINDOW)."""
    num_q, hq, head_dim = q.shape[1:]
    assert floors is None or total_in_table, "windows (floors) come with a graph's table (seen_chunks reads its starts)"
    hkv = k_base.shape[-2]
    group = hq // hkv
    cfg = tuning(block_m, options, bool(packed.format), limits is not None, floors is not None)
    split = num_splits > 1
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    args = (q, k_base, v_base, table, out, part) + packed.pointers(q) + (table if limits is None else limits,) + (
        table if floors is None else floors, num_chunks, num_q, split_len, total, scale * LOG2E, q.stride(0), hq,
        group, head_dim, block_m, cfg.block_n, triton.next_power_of_2(num_chunks + 1), split, aligned, interpreted(),
        precision, total_in_table, packed.format, limits is not None, floors is not None)
    key = ("attn", q.device.index, q.dtype, tuple(t.data_ptr() % 16 == 0 for t in args[:12])) + args[18:] + (
        cfg.num_warps, cfg.num_stages, cfg.max_registers)
    launch(_attn_kernel, (triton.cdiv(num_q * group, block_m), hkv, num_splits), args, key, options,
           **compile_options(cfg))
    if split:
        launch_merge(part, out, num_splits, num_q * hq, head_dim, options, marked=floors is not None)
