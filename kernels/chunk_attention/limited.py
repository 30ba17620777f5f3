"""Chunk attention under per-query key limits, for selective recompute: query i sees the keys of the concatenated
range [0, limits[i]) of its chunks and no other, whatever chunk they are in (no own causal chunk). With the chunks
laid in position order (level 0, then each document's rows), limits[i] = position[i] + 1 is "everything before
the token and the token itself": a selection of a sequence's tokens, scattered anywhere in it, recomputed in one
launch over stored rows read in place and the recomputed rows beside them.

_limited_kernel walks the chunks like the prefill kernel (kernels.chunk_attention.prefill: a program per row tile
x KV head x split, its partials merged by log-sum-exp in _merge_kernel); a row tile stops at its largest limit,
so tokens sorted by position read about as many keys as a causal prefill of them would."""
import torch
from ..launcher import launch, wait_for_inputs  # before triton: it picks the interpreter without a GPU
import triton
import triton.language as tl

from ..dispatch import implementation, interpreted
from ..options import DEFAULT_KERNELS, KernelOptions, compile_options
from .common import HEAD_DIMS, LOG2E, attend_tile, chunk_span, num_sms, split_prologue, store_rows
from .prefill import launch_merge, row_tile, tuning
from .tables import chunk_table


@triton.jit(do_not_specialize=["num_chunks", "num_q", "split_len", "total_len", "stride_qc"])
def _limited_kernel(q_ptr, k_ptr, v_ptr, table_ptr, limit_ptr, out_ptr, part_ptr,
                    num_chunks, num_q, split_len, total_len, qk_scale, stride_qc,
                    HQ: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, CHUNKS_P2: tl.constexpr, SPLIT: tl.constexpr, ALIGNED: tl.constexpr,
                    DOT_F32: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr):
    pid_m = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    first, last, total_len, lo, hi, f_start, f_end, f_k, f_v, f_ks, f_vs = split_prologue(
        table_ptr, num_chunks, split, tl.num_programs(2), split_len, total_len, CHUNKS_P2, False, 0, ALIGNED)
    wait_for_inputs(PDL)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    qi = rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    row_ok = qi < num_q
    d = tl.arange(0, HEAD_DIM)
    q_rows = q_ptr + (qi * HQ + head)[:, None] * HEAD_DIM + d[None, :]
    limit = tl.load(limit_ptr + qi, mask=row_ok, other=0)
    hi = tl.minimum(hi, tl.max(limit, 0))  # no key past the tile's largest limit

    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for c in range(first, last):
        start, end, chunk_start, k_off, v_off, k_stride, v_stride = chunk_span(
            table_ptr, c, first, num_chunks, total_len, lo, hi, f_start, f_end, f_k, f_v, f_ks, f_vs, ALIGNED)
        if start < end:
            q = tl.load(q_rows + c * stride_qc, mask=row_ok[:, None], other=0.0)
            if DOT_F32:
                q = q.to(tl.float32)
            k_rows = k_ptr + k_off + kv_head * HEAD_DIM + d[None, :]
            v_rows = v_ptr + v_off + kv_head * HEAD_DIM + d[None, :]
            for n0 in range(start, end, BLOCK_N):
                pos = n0 + tl.arange(0, BLOCK_N)
                j = pos - chunk_start
                in_range = pos < end
                k = tl.load(k_rows + j[:, None] * k_stride, mask=in_range[:, None], other=0.0)
                v = tl.load(v_rows + j[:, None] * v_stride, mask=in_range[:, None], other=0.0)
                visible = in_range[None, :] & (pos[None, :] < limit[:, None])
                m_i, l_i, acc = attend_tile(q, k, v, visible, m_i, l_i, acc, qk_scale, DOT_F32, PRECISION)

    store_rows(out_ptr, part_ptr, qi * HQ + head, row_ok, split, num_q * HQ, acc, m_i, l_i, HEAD_DIM, SPLIT)


def limited_attention_ref(q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor], scale: float,
                          limits: torch.Tensor) -> torch.Tensor:
    """The PyTorch reference: one softmax over the concatenated keys, key j of the range visible to query i iff
    j < limits[i]; each KV head serves its group of query heads by a batched matmul (no chunk copied)."""
    num_chunks, num_q, hq, d = q.shape
    hkv = keys[0].shape[1]
    group = hq // hkv
    rows = q.float().reshape(num_chunks, num_q, hkv, group, d).permute(0, 2, 3, 1, 4).reshape(num_chunks, hkv, -1, d)
    s = torch.cat([rows[c] @ k.float().permute(1, 2, 0) for c, k in enumerate(keys)], dim=-1) * scale
    j = torch.arange(s.shape[-1], device=q.device)
    s.view(hkv, group, num_q, -1).masked_fill_(j[None, :] >= limits.to(q.device)[:, None], float("-inf"))
    p = torch.softmax(s, dim=-1).split([k.shape[0] for k in keys], dim=-1)
    out = sum(p_c @ v.float().transpose(0, 1) for p_c, v in zip(p, values))  # [Hkv, group * Nq, D]
    return out.view(hkv, group, num_q, d).permute(2, 0, 1, 3).reshape(num_q, hq, d).to(q.dtype)


def _limited_triton(q, keys, values, scale, limits, num_splits, options: KernelOptions):
    num_chunks, num_q, hq, head_dim = q.shape
    hkv = keys[0].shape[1]
    group = hq // hkv
    if q.stride()[1:] != (hq * head_dim, head_dim, 1):
        q = q.contiguous()
    device = q.device
    table, total, aligned, k_base, v_base, packed = chunk_table(keys, values, hkv, head_dim, q.dtype, device)
    if packed.format:
        raise ValueError("limited attention reads chunks in the model's dtype only (dequantise packed ones first)")
    limits = limits.to(device=device, dtype=torch.int32)
    block_m = row_tile(num_q, group)
    m_tiles = triton.cdiv(num_q * group, block_m)
    cfg = tuning(block_m, options, limited=True)
    if num_splits is None:
        num_splits = triton.cdiv(cfg.programs_per_sm * num_sms(device), m_tiles * hkv)
        num_splits = max(1, min(num_splits, triton.cdiv(total, cfg.min_split)))
    split_len = max(1, triton.cdiv(total, num_splits))
    num_splits = max(1, triton.cdiv(total, split_len))
    split = num_splits > 1
    out = torch.empty((num_q, hq, head_dim), dtype=q.dtype, device=device)
    part = torch.empty(num_splits * num_q * hq * (head_dim + 2), dtype=torch.float32, device=device) if split else out
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    args = (q, k_base, v_base, table, limits, out, part, num_chunks, num_q, split_len, total, scale * LOG2E,
            q.stride(0), hq, group, head_dim, block_m, cfg.block_n, triton.next_power_of_2(num_chunks + 1), split,
            aligned, interpreted(), precision)
    key = ("limited", device.index, q.dtype, tuple(t.data_ptr() % 16 == 0 for t in args[:7])) + args[13:] + (
        cfg.num_warps, cfg.num_stages, cfg.max_registers)
    launch(_limited_kernel, (m_tiles, hkv, num_splits), args, key, options, **compile_options(cfg))
    if split:
        launch_merge(part, out, num_splits, num_q * hq, head_dim, options)
    return out


def limited_attention(q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor], scale: float,
                      limits: torch.Tensor, impl: str | None = None, num_splits: int | None = None,
                      options: KernelOptions = DEFAULT_KERNELS) -> torch.Tensor:
    """q [C, Nq, Hq, D] (chunk c's queries rotated for its shift), keys[c]/values[c] [n_c, Hkv, D], limits [Nq]
    (each at least 1) -> [Nq, Hq, D] in q's dtype: query i over the first limits[i] keys of the chunks'
    concatenated range. impl and num_splits as chunk_attention's."""
    if len(keys) != len(values) or len(keys) != q.shape[0] or not keys:
        raise ValueError(f"limited attention takes as many query rotations as chunks, got {q.shape[0]} for "
                         f"{len(keys)} chunks")
    if limits.shape != (q.shape[1],):
        raise ValueError(f"limited attention takes one limit per query, got {tuple(limits.shape)} for {q.shape[1]}")
    if implementation(impl, q, q.shape[-1] in HEAD_DIMS, "limited attention") == "ref":
        return limited_attention_ref(q, keys, values, scale, limits)
    return _limited_triton(q, keys, values, scale, limits, num_splits, options)
