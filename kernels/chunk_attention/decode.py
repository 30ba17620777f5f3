"""Chunk attention of one query (a decode step), in one launch: _decode_kernel, a program per KV head x split; the
program that finishes a KV head's splits last merges them. In a CUDA graph's decode step it also does
rope_store's work (kernels.rope's jit helpers). How the splits are planned: decode_splits."""
import torch
from ..launcher import launch, wait_for_inputs  # before triton: it picks the interpreter without a GPU
import triton
import triton.language as tl

from ..dispatch import interpreted
from ..options import DecodeTuning, KernelOptions, compile_options
from ..rope import RotaryInputs, cos_sin, normed_heads, rotated
from .common import LOG2E, attend_keys, chunk_entry, chunk_shift, chunk_span, merge_partials, num_sms, split_prologue
from .packed import NO_PACKED, NOT_PACKED_C, PackedBases, attend_packed_keys, packed_tile


@triton.jit
def _dense_chunk(q, k_ptr, v_ptr, k_off, v_off, k_stride, v_stride, kv_head, start, end, chunk_start, m_i, l_i, acc,
                 qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr,
                 PRECISION: tl.constexpr):
    """The query heads over rows start..end of a chunk in the model's dtype."""
    d = tl.arange(0, HEAD_DIM)
    k_rows = k_ptr + k_off + kv_head * HEAD_DIM + d[None, :]
    v_cols = v_ptr + v_off + kv_head * HEAD_DIM + d[:, None]
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        in_range = pos < end
        k = tl.load(k_rows + (pos - chunk_start)[:, None] * k_stride, mask=in_range[:, None], other=0.0)
        v_t = tl.load(v_cols + (pos - chunk_start)[None, :] * v_stride, mask=in_range[None, :], other=0.0)
        m_i, l_i, acc = attend_keys(q, k, v_t, in_range, m_i, l_i, acc, qk_scale, DOT_F32, PRECISION)
    return m_i, l_i, acc


@triton.jit
def _packed_chunk(q, kq_ptr, vq_ptr, ks_ptr, vs_ptr, k_off, v_off, k_stride, v_stride, ks_off, vs_off, kv_head, start,
                  end, chunk_start, m_i, l_i, acc, qk_scale, HKV: tl.constexpr, HEAD_DIM: tl.constexpr,
                  BLOCK_N: tl.constexpr, FORMAT: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """The query heads over rows start..end of a packed chunk, dequantised in registers (packed.py)."""
    lo_rel = start - chunk_start
    for r0 in range((lo_rel // BLOCK_N) * BLOCK_N, end - chunk_start, BLOCK_N):
        j = r0 + tl.arange(0, BLOCK_N)
        in_range = (j >= lo_rel) & (j < end - chunk_start)
        k, v_t, k_scale, k_zero, v_scale, v_zero = packed_tile(kq_ptr, vq_ptr, ks_ptr, vs_ptr, k_off, v_off,
                                                               k_stride, v_stride, ks_off, vs_off, r0, j, in_range,
                                                               kv_head, HKV, HEAD_DIM, FORMAT, True)
        m_i, l_i, acc = attend_packed_keys(q, k, v_t, k_scale, k_zero, v_scale, v_zero, in_range, m_i, l_i, acc,
                                           qk_scale, FORMAT, DOT_F32, PRECISION)
    return m_i, l_i, acc


@triton.jit(do_not_specialize=["num_chunks", "split_len", "total_len", "stride_qc"])
def _decode_kernel(q_ptr, k_ptr, v_ptr, table_ptr, out_ptr, part_ptr, lock_ptr, kq_ptr, vq_ptr, ks_ptr, vs_ptr,
                   kn_ptr, vn_ptr, pos_ptr, slot_ptr, shift_ptr, scale_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr, qk_eps,
                   num_chunks, split_len, total_len, qk_scale, stride_qc,
                   HQ: tl.constexpr, GROUP: tl.constexpr, GROUP_P2: tl.constexpr, HEAD_DIM: tl.constexpr,
                   BLOCK_N: tl.constexpr, CHUNKS_P2: tl.constexpr, BLOCK_S: tl.constexpr,
                   ALIGNED: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
                   ROPE: tl.constexpr, QK_NORM: tl.constexpr, PIECE_TILE: tl.constexpr, FORMAT: tl.constexpr,
                   PDL: tl.constexpr):
    """One query (decode): program (kv head, split) runs the GROUP query heads of its KV head (the columns
    of its products, attend_keys) over its split; the program that finishes its KV head's splits last merges
    them by log-sum-exp, so one launch does the whole step.

    ROPE (CUDA graphs): q, kn, vn are the new token's projections, not yet normalised or rotated; the kernel
    does what rope_store does (the query rotated for each chunk, the key stored with the value at the own
    chunk's slot read from slot_ptr) and reads the total as context (the table's last entry) + slot + 1. The
    split holding the new token attends to it from registers after its loop (so no load waits for the store).

    FORMAT (packed.FORMAT_CODES; 0: none): the context chunks flagged packed in the table are read from their codes
    and parameters (bases kq, vq, ks, vs) and dequantised in registers, their tiles aligned to the chunk."""
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
    first, last, total_len, lo, hi, f_start, f_end, f_k, f_v, f_ks, f_vs = split_prologue(
        table_ptr, num_chunks, split, num_splits, split_len, total_len, CHUNKS_P2, ROPE, PIECE_TILE, ALIGNED)
    if ROPE:
        position = tl.load(pos_ptr).to(tl.int32)
        partner = (d + HEAD_DIM // 2) % HEAD_DIM
        q_cols = 0 * gp[:, None] + d[None, :]  # the rotations in the shape (and layout) of what they rotate
        own_cos, own_sin = cos_sin(cos_ptr, sin_ptr, position, q_cols, HEAD_DIM, dtype)  # the new key, its query
        first_shift, first_scale = chunk_shift(shift_ptr, scale_ptr, first, num_chunks, dtype)
        first_cos, first_sin = cos_sin(cos_ptr, sin_ptr, position - first_shift, q_cols, HEAD_DIM, dtype)
        _, _, own_k_off, own_v_off, own_k_stride, own_v_stride = chunk_entry(
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
    acc = tl.zeros([HEAD_DIM, GROUP_P2], tl.float32)  # transposed, as attend_keys makes it
    for c in range(first, last):
        start, end, chunk_start, k_off, v_off, k_stride, v_stride = chunk_span(
            table_ptr, c, first, num_chunks, total_len, lo, hi, f_start, f_end, f_k, f_v, f_ks, f_vs, ALIGNED)
        if ROPE:
            end = tl.minimum(end, total_len - 1)  # the new token is not in memory yet: it comes after the loop
        if start < end:  # padding chunks are empty: no loads, no pipeline prologue
            if ROPE:  # the query rotated for this chunk, as rope_store writes it
                q_cos, q_sin, q_scale = first_cos, first_sin, first_scale
                if c != first:
                    shift, q_scale = chunk_shift(shift_ptr, scale_ptr, c, num_chunks, dtype)
                    q_cos, q_sin = cos_sin(cos_ptr, sin_ptr, position - shift, q_cols, HEAD_DIM, dtype)
                q = rotated(q_x, q_xr, d, q_cos, q_sin, HEAD_DIM, dtype)
                q = (q.to(tl.float32) * q_scale).to(dtype)
            else:
                q = tl.load(q_ptr + c * stride_qc + head[:, None] * HEAD_DIM + d[None, :], mask=g_ok[:, None],
                            other=0.0)
            if DOT_F32:
                q = q.to(tl.float32)
            if FORMAT != 0:  # the chunk's parameter offsets, NOT_PACKED for one in the model's dtype
                ks_off = tl.load(table_ptr + 5 * num_chunks + 1 + c)
                vs_off = tl.load(table_ptr + 6 * num_chunks + 1 + c)
                if ks_off != NOT_PACKED_C:
                    m_i, l_i, acc = _packed_chunk(q, kq_ptr, vq_ptr, ks_ptr, vs_ptr, k_off, v_off, k_stride, v_stride,
                                                  ks_off, vs_off, kv_head, start, end, chunk_start, m_i, l_i, acc,
                                                  qk_scale, HQ // GROUP, HEAD_DIM, BLOCK_N, FORMAT, DOT_F32, PRECISION)
                else:
                    m_i, l_i, acc = _dense_chunk(q, k_ptr, v_ptr, k_off, v_off, k_stride, v_stride, kv_head, start, end,
                                                 chunk_start, m_i, l_i, acc, qk_scale, HEAD_DIM, BLOCK_N, DOT_F32,
                                                 PRECISION)
            else:  # (one branch each: Triton compiles a runtime branch on a constant False all the same)
                m_i, l_i, acc = _dense_chunk(q, k_ptr, v_ptr, k_off, v_off, k_stride, v_stride, kv_head, start, end,
                                             chunk_start, m_i, l_i, acc, qk_scale, HEAD_DIM, BLOCK_N, DOT_F32,
                                             PRECISION)

    if ROPE:
        if (lo < hi) & (hi == total_len):  # this split holds the new token: it attends to it, then stores it
            q = rotated(q_x, q_xr, d, own_cos, own_sin, HEAD_DIM, dtype).to(tl.float32)  # the own chunk: no shift
            s_new = tl.sum(q * k_new.to(tl.float32), 1) * qk_scale  # as in attend_keys
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
            m_all, l_all, acc_all = merge_partials(m_all, l_all, acc_all, m_b, l_b, o_b)
        out = acc_all / l_all[:, None]
        tl.store(out_ptr + rows[:, None] * HEAD_DIM + d[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=(gm < GROUP)[:, None])
        # ready for the next launch (CUDA-graph replays included): every split has counted, and the next launch
        # reads the counter only after this one has completed, so a plain store does (an exchange would make
        # the program wait for its round trip before it exits)
        tl.store(lock_ptr + kv_head, 0)


def merge_pass(group: int, head_dim: int, tuning: DecodeTuning) -> int:
    """Splits whose partials the merging program of _decode_kernel reads at once (a power of two)."""
    return 1 << max(0, (tuning.merge_elements // (triton.next_power_of_2(group) * head_dim)).bit_length() - 1)


def longest_piece(tuning: DecodeTuning) -> int:
    """Splits up to this many keys are cut at chunk boundaries where the splits allow it; longer ones never are
    (with passages of a few thousand tokens they rarely fit, and the plan costs the step time)."""
    return tuning.piece_tiles * tuning.block_n


def decode_splits(hkv: int, group: int, head_dim: int, capacity: int, device, tuning: DecodeTuning) -> int:
    """programs_per_sm programs for every SM, rounded down to whole merge passes (each pass of the merge is a
    memory round trip on the step's critical path), and splits of at least min_split keys."""
    splits = min(triton.cdiv(tuning.programs_per_sm * num_sms(torch.device(device)), hkv),
                 triton.cdiv(capacity, tuning.min_split))
    per_pass = merge_pass(group, head_dim, tuning)
    if splits > per_pass:
        splits -= splits % per_pass
    return max(1, splits)


_locks = {}


def arrival_counters(device, n: int) -> torch.Tensor:
    """Per-KV-head arrival counters of the decode kernel, shared by its eager launches on a device (which must
    therefore not overlap: one stream); each launch leaves them at zero. CUDA graphs get their own."""
    lock = _locks.get(device)
    if lock is None or lock.numel() < n:
        lock = _locks[device] = torch.zeros(max(n, 64), dtype=torch.int32, device=device)
    return lock


def launch_decode(q, k_base, v_base, table, out, part, lock, num_chunks, num_splits, split_len, total, scale,
                  aligned, pieces, options: KernelOptions, rotary: RotaryInputs | None = None, new_kv=None,
                  packed: PackedBases = NO_PACKED):
    """_decode_kernel over rotated queries q [C, 1, Hq, D], or with rotary (rope_store's inputs) and new_kv (the
    new token's key and value as projected) over the new token's projected query q [1, Hq, D]; packed: the bases
    and format of the table's packed chunks."""
    hq, head_dim = q.shape[-2], q.shape[-1]
    hkv = k_base.shape[-2]
    group = hq // hkv
    cfg = options.decode_tuning(bool(packed.format))
    block_s = min(triton.next_power_of_2(num_splits), merge_pass(group, head_dim, cfg))
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    if rotary is None:
        rope_pointers, qk_eps, qk_norm = (q,) * 10, 0.0, False  # never read
    else:
        k, v = new_kv
        assert rotary.own_keys.data_ptr() == k_base.data_ptr() and rotary.own_values.data_ptr() == v_base.data_ptr()
        assert rotary.shifts.shape[0] == num_chunks - 1 and rotary.scales is not None
        assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
        qk_norm = rotary.q_norm is not None
        rope_pointers = (k, v, rotary.positions, rotary.slots, rotary.shifts, rotary.scales, rotary.cos, rotary.sin)
        rope_pointers += (rotary.q_norm, rotary.k_norm) if qk_norm else (q, q)
        qk_eps = rotary.qk_eps
    pointers = (q, k_base, v_base, table, out, part, lock) + packed.pointers(q) + rope_pointers
    constexprs = (hq, group, triton.next_power_of_2(group), head_dim, cfg.block_n,
                  triton.next_power_of_2(num_chunks + 1), block_s, aligned, interpreted(), precision,
                  rotary is not None, qk_norm, cfg.block_n if pieces else 0, packed.format)
    args = pointers + (qk_eps, num_chunks, split_len, total, scale * LOG2E, q.stride(0)) + constexprs
    key = ("decode", q.device.index, tuple(p.dtype for p in pointers), tuple(p.data_ptr() % 16 == 0 for p in pointers),
           constexprs, cfg.num_warps, cfg.num_stages, cfg.max_registers)
    launch(_decode_kernel, (hkv, num_splits), args, key, options, **compile_options(cfg))
