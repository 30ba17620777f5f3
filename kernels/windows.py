"""The chunks of a chunk table that query rows under key limits and windows (a selective recompute's: sinks, floors
and limits, kernels.chunk_attention's WINDOW) see, found from the table's chunk starts; one home for the attention
kernel, which reads only those, and the rotary kernel, which rotates a query for only those."""
from .launcher import wait_for_inputs  # noqa: F401 (before triton: it picks the interpreter without a GPU)
import triton
import triton.language as tl


@triton.jit
def seen_chunks(table_ptr, num_chunks, sink, floor, seen, CHUNKS_P2: tl.constexpr):
    """The context chunks (the table's first num_chunks - 1; the last is the own chunk) holding keys that rows seeing
    the keys before `sink` and those from `floor` to before `seen` (in the concatenated range) see: chunks
    a_first..a_last (those with keys before the sink, past the empty chunks of a graph's padding), then b_first..
    b_last (the later ones with keys from the floor to before `seen`), each range possibly empty. One load of the
    chunk starts (at table_ptr + 4 * num_chunks, chunk_table's layout)."""
    idx = tl.arange(0, CHUNKS_P2)
    context = idx < num_chunks - 1
    starts = tl.load(table_ptr + 4 * num_chunks + idx, mask=context, other=0)
    ends = tl.load(table_ptr + 4 * num_chunks + idx + 1, mask=context, other=0)
    a_first = tl.sum((context & (ends <= 0)).to(tl.int32), 0)
    a_last = tl.maximum(tl.sum((context & (starts < sink)).to(tl.int32), 0), a_first)
    b_first = tl.maximum(tl.sum((context & (ends <= floor)).to(tl.int32), 0), a_last)
    b_last = tl.maximum(tl.sum((context & (starts < seen)).to(tl.int32), 0), b_first)
    return a_first, a_last, b_first, b_last


@triton.jit
def lead_tile(floors_ptr, limits_ptr, table_ptr, qi, row_ok, num_chunks, num_q, split_len, total_len, num_splits):
    """A row tile under windows, in a chunk table's attention (TOTAL_IN_TABLE: total_len is the own chunk's): its
    rows' sinks, floors and own floors; whether every row is a lead's (a sink each); for such a tile the splits its
    keys fill at the splits' length (at most level 0, its window and its own rows up to its last row's: a bound),
    and that length. Reads only what is written before the launch (floors, limits, the table)."""
    sink = tl.load(floors_ptr + qi * 3, mask=row_ok, other=0)
    floor = tl.load(floors_ptr + qi * 3 + 1, mask=row_ok, other=0)
    own_floor = tl.load(floors_ptr + qi * 3 + 2, mask=row_ok, other=0)
    seen = tl.load(limits_ptr + qi, mask=row_ok, other=0)
    own_start = tl.load(table_ptr + 5 * num_chunks - 1)
    total_len = tl.load(table_ptr + 5 * num_chunks).to(tl.int32) + total_len
    length = tl.maximum(split_len, tl.cdiv(total_len, num_splits))
    lead = tl.min(tl.where(row_ok, sink, 1), 0) > 0
    own_end = tl.max(tl.where(row_ok, qi, -1), 0) + 1 + (total_len - own_start - num_q)  # causally
    keys = (tl.max(tl.where(row_ok, sink, 0), 0)
            + tl.maximum(tl.max(seen, 0) - tl.min(tl.where(row_ok, floor, total_len), 0), 0)
            + tl.maximum(own_end - tl.min(tl.where(row_ok, own_floor, total_len), 0), 0))
    return sink, floor, own_floor, lead, tl.maximum(tl.cdiv(keys, length), 1), length
