"""What the chunk-attention kernels share: the table entries of a chunk, the split of the concatenated keys a
program walks (and the chunk loop's prologue, written once here), one tile of the online softmax, the merge of
partials by log-sum-exp, and the GPU's size."""
import functools

import torch
from ..launcher import wait_for_inputs  # noqa: F401 (before triton: it picks the interpreter without a GPU)
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
DONE = float("inf")  # a row's maximum at split 0 that marks it computed whole (store_done)
DONE_C = tl.constexpr(DONE)
HEAD_DIMS = (64, 128)  # what the Triton kernels support


@functools.lru_cache(maxsize=None)
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of the device (4 for the CPU under the interpreter)."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit
def split_chunks(table_ptr, num_chunks, split, num_splits, split_len, total_len, CHUNKS_P2: tl.constexpr,
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
def chunk_entry(table_ptr, c, num_chunks, total_len, ALIGNED: tl.constexpr):
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
def split_prologue(table_ptr, num_chunks, split, num_splits, split_len, total_len, CHUNKS_P2: tl.constexpr,
                   TOTAL_IN_TABLE: tl.constexpr, PIECE_TILE: tl.constexpr, ALIGNED: tl.constexpr):
    """The prologue of a program's chunk loop: split_chunks, then the first chunk's entry (read before the program
    waits for its inputs, like the starts)."""
    first, last, total_len, lo, hi = split_chunks(table_ptr, num_chunks, split, num_splits, split_len, total_len,
                                                  CHUNKS_P2, TOTAL_IN_TABLE, PIECE_TILE)
    chunk_start, chunk_end, k_off, v_off, k_stride, v_stride = chunk_entry(table_ptr, first, num_chunks, total_len,
                                                                           ALIGNED)
    return first, last, total_len, lo, hi, chunk_start, chunk_end, k_off, v_off, k_stride, v_stride


@triton.jit
def chunk_span(table_ptr, c, first, num_chunks, total_len, lo, hi, first_start, first_end, first_k_off, first_v_off,
               first_k_stride, first_v_stride, ALIGNED: tl.constexpr):
    """Chunk c of a program's loop: the part [start, end) of its split that the chunk holds, the chunk's start, K
    and V offsets and row strides (the first chunk's from split_prologue, the others' read here)."""
    chunk_start, chunk_end, k_off, v_off, k_stride, v_stride = (first_start, first_end, first_k_off, first_v_off,
                                                                first_k_stride, first_v_stride)
    if c != first:
        chunk_start, chunk_end, k_off, v_off, k_stride, v_stride = chunk_entry(table_ptr, c, num_chunks, total_len,
                                                                               ALIGNED)
    return tl.maximum(lo, chunk_start), tl.minimum(hi, chunk_end), chunk_start, k_off, v_off, k_stride, v_stride


@triton.jit
def chunk_shift(shift_ptr, scale_ptr, c, num_chunks, dtype: tl.constexpr):
    """Chunk c's position shift and query scale (the own chunk, the last, has none: 0 and 1)."""
    context = c < num_chunks - 1
    shift = tl.load(shift_ptr + c, mask=context, other=0).to(tl.int32)
    scale = tl.load(scale_ptr + c, mask=context, other=1.0).to(dtype).to(tl.float32)
    return shift, scale


@triton.jit
def attend_tile(q, k, v, visible, m_i, l_i, acc, qk_scale, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
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
def attend_keys(q, k, v_t, visible, m_i, l_i, acc_t, qk_scale, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """attend_tile transposed for a few query rows (decode): the keys are the rows of the products, so that a
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
def merge_partials(m_all, l_all, acc, m_b, l_b, o_b):
    """Folds one block of splits' partials (m_b, l_b [BLOCK_S, R], o_b [BLOCK_S, R, D]) into the running max,
    sum and accumulator of R output rows by log-sum-exp."""
    m_new = tl.maximum(m_all, tl.max(m_b, 0))
    alpha = tl.exp2(m_all - m_new)
    w = tl.exp2(m_b - m_new[None, :])
    l_all = l_all * alpha + tl.sum(w * l_b, 0)
    acc = acc * alpha[:, None] + tl.sum(o_b * w[:, :, None], 0)
    return m_new, l_all, acc


@triton.jit
def store_rows(out_ptr, part_ptr, out_rows, row_ok, split, n_rows, acc, m_i, l_i, HEAD_DIM: tl.constexpr,
               SPLIT: tl.constexpr):
    """A tile's query rows (out_rows of n_rows): with SPLIT, its partial sums, maxima and sums at split `split`
    (partials [splits, n_rows, D], then m [splits, n_rows], then l), for the merge kernel, the partial sums only of
    the rows that saw a key in the split (m above -1e30: a windowed lead's rows see a few splits of many); else the
    output."""
    d = tl.arange(0, HEAD_DIM)
    if SPLIT:
        part = split * n_rows + out_rows
        ml_ptr = part_ptr + tl.num_programs(2) * n_rows * HEAD_DIM
        tl.store(part_ptr + part[:, None] * HEAD_DIM + d[None, :], acc, mask=(row_ok & (m_i > -1.0e30))[:, None])
        tl.store(ml_ptr + part, m_i, mask=row_ok)
        tl.store(ml_ptr + tl.num_programs(2) * n_rows + part, l_i, mask=row_ok)
    else:
        o = acc / l_i[:, None]
        tl.store(out_ptr + out_rows[:, None] * HEAD_DIM + d[None, :], o.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None])


@triton.jit
def store_done(out_ptr, part_ptr, out_rows, row_ok, n_rows, acc, l_i, HEAD_DIM: tl.constexpr):
    """A tile's query rows that split 0 computed whole (a windowed lead's, which see few keys): their output, and
    DONE for their maximum at split 0, which tells the merge (_merge_kernel's MARKED) to leave them as they are. The
    other splits store nothing for them."""
    d = tl.arange(0, HEAD_DIM)
    tl.store(out_ptr + out_rows[:, None] * HEAD_DIM + d[None, :], (acc / l_i[:, None]).to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None])
    ml_ptr = part_ptr + tl.num_programs(2) * n_rows * HEAD_DIM
    tl.store(ml_ptr + out_rows, tl.full(out_rows.shape, DONE_C, tl.float32), mask=row_ok)
