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
def lead_tile(floors_ptr, qi, row_ok):
    """A row tile under windows: its rows' sinks, floors and own floors, and whether every row is a lead's (a sink
    each: such a tile sees few keys, and reads them all in one program). Reads only what is written before the
    launch (the floors)."""
    sink = tl.load(floors_ptr + qi * 3, mask=row_ok, other=0)
    floor = tl.load(floors_ptr + qi * 3 + 1, mask=row_ok, other=0)
    own_floor = tl.load(floors_ptr + qi * 3 + 2, mask=row_ok, other=0)
    return sink, floor, own_floor, tl.min(tl.where(row_ok, sink, 1), 0) > 0
