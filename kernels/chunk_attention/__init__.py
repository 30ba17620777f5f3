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

Packed chunks (kernels.kv_quant: fp8, int4) are read from their codes and parameters and dequantised in
registers (packed); a chunk's keys[c] and values[c] are then PackedKV layer views.

The package: reference (the PyTorch reference), common (the jit helpers the kernels share), packed (packed chunks'
tiles), prefill (several queries), decode (one query), tables (chunk tables and a CUDA graph's workspace), api
(the two entry points).
"""
from .api import chunk_attention, chunk_attention_table
from .common import HEAD_DIMS
from .decode import decode_splits
from .packed import NO_PACKED, PackedBases, fixed_bases
from .reference import chunk_attention_ref
from .tables import DecodeWorkspace, chunk_tables, decode_workspace

__all__ = ["chunk_attention", "chunk_attention_ref", "chunk_attention_table", "chunk_tables", "decode_workspace",
           "decode_splits", "DecodeWorkspace", "HEAD_DIMS", "NO_PACKED", "PackedBases", "fixed_bases"]
