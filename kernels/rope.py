"""Rotary embedding of the new tokens, in one kernel: the query rotated once per chunk (to its position minus
the chunk's shift, see docs/DESIGN.md "Positions") and scaled by the chunk's query scale, and the key rotated and
stored with the value in the request's own KV buffer at its slot. Qwen3's per-head q/k RMSNorm is applied first.
The decode step of a CUDA graph does the same inside the attention kernel (kernels.chunk_attention), with the
jit helpers below.
"""
from dataclasses import dataclass

import torch
from .launcher import launch, wait_for_inputs  # before triton: it picks the interpreter without a GPU
import triton
import triton.language as tl

from .dispatch import implementation
from .options import DEFAULT_KERNELS, KernelOptions
from .rmsnorm import normed, rmsnorm_ref
from .windows import seen_chunks


@dataclass(frozen=True)
class RotaryInputs:
    """What rope_store needs besides the projections: the new tokens' positions [n] and own-buffer slots [n], the
    context chunks' position shifts [C] (and query scales [C] fp32, their scores' 1 / temperature), the own
    buffer's keys and values [capacity, Hkv, D] that receive the new ones, the cos/sin tables [P, D] fp32, and
    Qwen3's per-head q/k RMSNorm weights [D] with their eps; padding ([1] int64, a CUDA graph's): the number of
    leading context chunks that are empty (the graph's padding), for which no query is rotated; table (a layer's
    chunk table, int64, chunk_tables' layout: its chunk starts), limits [n] and floors [n, 3] (int64: a prefill
    under key limits and windows, as chunk attention takes them; floors optional): a token's query is rotated only
    for the own chunk and the context chunks holding keys it sees (kernels.windows)."""
    positions: torch.Tensor
    shifts: torch.Tensor
    slots: torch.Tensor
    own_keys: torch.Tensor
    own_values: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None
    qk_eps: float = 1e-6
    scales: torch.Tensor | None = None
    padding: torch.Tensor | None = None
    table: torch.Tensor | None = None
    limits: torch.Tensor | None = None
    floors: torch.Tensor | None = None


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., heads, D] rotated by cos/sin [..., D] (fp32 tables, applied in x's dtype)."""
    cos, sin = cos.unsqueeze(-2).to(x.dtype), sin.unsqueeze(-2).to(x.dtype)
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def rope_store_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rotary: RotaryInputs) -> torch.Tensor:
    positions, shifts, slots, cos, sin = rotary.positions, rotary.shifts, rotary.slots, rotary.cos, rotary.sin
    q_norm, k_norm, qk_eps, scales = rotary.q_norm, rotary.k_norm, rotary.qk_eps, rotary.scales
    own_keys, own_values = rotary.own_keys, rotary.own_values
    if q_norm is not None:
        q = rmsnorm_ref(q, q_norm, qk_eps)
    if k_norm is not None:
        k = rmsnorm_ref(k, k_norm, qk_eps)
    query_positions = torch.cat(((positions.unsqueeze(0) - shifts.unsqueeze(1)).clamp(min=0), positions.unsqueeze(0)))
    cos, sin = cos[query_positions], sin[query_positions]  # the last row: the tokens' own positions
    own_keys.index_copy_(0, slots, rotate(k, cos[-1], sin[-1]))
    own_values.index_copy_(0, slots, v)
    out = rotate(q.unsqueeze(0).expand(query_positions.shape[0], -1, -1, -1), cos, sin)
    if scales is not None:
        out[:-1] *= scales.view(-1, 1, 1, 1).to(out.dtype)
    return out


@triton.jit
def normed_heads(x_ptr, rows, row_ok, d, partner, w_ptr, eps, HEAD_DIM: tl.constexpr, NORM: tl.constexpr):
    """Rows [R] of head vectors at x_ptr + rows * HEAD_DIM and the same with their halves swapped, in fp32,
    RMS-normalised with the weight at w_ptr if NORM and rounded like rmsnorm_ref."""
    dtype = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + rows[:, None] * HEAD_DIM + d[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    xr = tl.load(x_ptr + rows[:, None] * HEAD_DIM + partner[None, :], mask=row_ok[:, None], other=0.0)
    xr = xr.to(tl.float32)
    if NORM:  # the weight read in x's shape, so that it comes in x's layout (no exchange through shared memory)
        rstd = tl.rsqrt(tl.sum(x * x, 1) / HEAD_DIM + eps)[:, None]
        x = normed(x, tl.load(w_ptr + 0 * rows[:, None] + d[None, :]), rstd, dtype)
        xr = normed(xr, tl.load(w_ptr + 0 * rows[:, None] + partner[None, :]), rstd, dtype)
    return x, xr


@triton.jit
def cos_sin(cos_ptr, sin_ptr, position, cols, HEAD_DIM: tl.constexpr, dtype: tl.constexpr):
    """The rotation to `position`: cos and sin at the dimensions `cols` (in the shape of the rows they will
    rotate, so that they come in those rows' layout), rounded to dtype like rotate()."""
    cos = tl.load(cos_ptr + position * HEAD_DIM + cols).to(dtype).to(tl.float32)
    sin = tl.load(sin_ptr + position * HEAD_DIM + cols).to(dtype).to(tl.float32)
    return cos, sin


@triton.jit
def rotated(x, xr, d, cos, sin, HEAD_DIM: tl.constexpr, dtype: tl.constexpr):
    """normed_heads' rows rotated by cos_sin, in dtype, rounded like rotate()."""
    xr = xr * tl.where(d < HEAD_DIM // 2, -1.0, 1.0)[None, :]
    return ((x * cos).to(dtype).to(tl.float32) + (xr * sin).to(dtype).to(tl.float32)).to(dtype)


CHUNKS_A_PROGRAM = 8  # the queries of this many chunks a program rotates (a token's query loaded and normed once)


@triton.jit(do_not_specialize=["n", "num_shifts"])
def _rope_store_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, shift_ptr, slot_ptr, cos_ptr, sin_ptr, out_ptr, ok_ptr,
                       ov_ptr, q_norm_ptr, k_norm_ptr, scale_ptr, padding_ptr, table_ptr, limits_ptr, floors_ptr,
                       qk_eps, n, num_shifts, stride_q, stride_k, stride_v, HQ: tl.constexpr, HKV: tl.constexpr,
                       HEAD_DIM: tl.constexpr, HQ_P2: tl.constexpr, HKV_P2: tl.constexpr, Q_NORM: tl.constexpr,
                       K_NORM: tl.constexpr, HAS_SCALES: tl.constexpr, HAS_PADDING: tl.constexpr,
                       SEEN: tl.constexpr, WINDOW: tl.constexpr, CHUNKS_P2: tl.constexpr, BLOCK_C: tl.constexpr,
                       PDL: tl.constexpr):
    i = tl.program_id(0)       # token
    b = tl.program_id(1)       # chunks b * BLOCK_C.. of 0..num_shifts (the last: the own chunk); the last program K/V
    wait_for_inputs(PDL)
    position = tl.load(pos_ptr + i)
    dtype = q_ptr.dtype.element_ty
    d = tl.arange(0, HEAD_DIM)
    partner = (d + HEAD_DIM // 2) % HEAD_DIM
    padding = 0
    if HAS_PADDING:  # empty chunks: nothing reads their queries
        padding = tl.load(padding_ptr).to(tl.int32)
    first = tl.maximum(b * BLOCK_C, padding)
    last = tl.minimum(b * BLOCK_C + BLOCK_C, num_shifts + 1)
    if b * BLOCK_C <= num_shifts:
        if first < last:
            q_heads = tl.arange(0, HQ_P2)
            q_ok = q_heads < HQ
            x, xr = normed_heads(q_ptr + i * stride_q, q_heads, q_ok, d, partner, q_norm_ptr, qk_eps, HEAD_DIM,
                                 Q_NORM)
            if SEEN:  # the context chunks holding keys the token sees
                sink, floor = 0, 0
                if WINDOW:
                    sink = tl.load(floors_ptr + 3 * i)
                    floor = tl.load(floors_ptr + 3 * i + 1)
                a_first, a_last, b_first, b_last = seen_chunks(table_ptr, num_shifts + 1, sink, floor,
                                                               tl.load(limits_ptr + i), CHUNKS_P2)
            for c in range(first, last):
                rotate = True
                if SEEN:
                    rotate = ((c >= a_first) & (c < a_last)) | ((c >= b_first) & (c < b_last)) | (c == num_shifts)
                if rotate:
                    shift = tl.load(shift_ptr + c, mask=c < num_shifts, other=0)
                    cos, sin = cos_sin(cos_ptr, sin_ptr, tl.maximum(position - shift, 0),
                                       0 * q_heads[:, None] + d[None, :], HEAD_DIM, dtype)
                    rq = rotated(x, xr, d, cos, sin, HEAD_DIM, dtype)
                    if HAS_SCALES:  # the own chunk's scale is 1
                        scale = tl.load(scale_ptr + c, mask=c < num_shifts, other=1.0).to(rq.dtype).to(tl.float32)
                        rq = (rq.to(tl.float32) * scale).to(rq.dtype)
                    tl.store(out_ptr + ((c * n + i) * HQ + q_heads[:, None]) * HEAD_DIM + d[None, :], rq,
                             mask=q_ok[:, None])
    else:
        slot = tl.load(slot_ptr + i)
        kv_heads = tl.arange(0, HKV_P2)
        kv_ok = kv_heads < HKV
        # (names apart from the other branch's: Triton wants a name to keep its shape across branches)
        k_x, k_xr = normed_heads(k_ptr + i * stride_k, kv_heads, kv_ok, d, partner, k_norm_ptr, qk_eps, HEAD_DIM,
                                 K_NORM)
        k_cos, k_sin = cos_sin(cos_ptr, sin_ptr, position, 0 * kv_heads[:, None] + d[None, :], HEAD_DIM, dtype)
        rk = rotated(k_x, k_xr, d, k_cos, k_sin, HEAD_DIM, dtype)
        dst = (slot * HKV + kv_heads[:, None]) * HEAD_DIM + d[None, :]
        tl.store(ok_ptr + dst, rk, mask=kv_ok[:, None])
        v = tl.load(v_ptr + i * stride_v + kv_heads[:, None] * HEAD_DIM + d[None, :], mask=kv_ok[:, None], other=0.0)
        tl.store(ov_ptr + dst, v, mask=kv_ok[:, None])


def check_seen(rotary: RotaryInputs, n: int, num_chunks: int) -> None:
    """A ValueError unless rotary's table, limits and floors are a chunk table of num_chunks chunks and the int64
    limits [n] and floors [n, 3] (or None) of n tokens."""
    table, limits, floors = rotary.table, rotary.limits, rotary.floors
    if table is None or table.dtype != torch.int64 or table.shape != (7 * num_chunks + 1,):
        raise ValueError(f"rope_store under limits takes the layer's chunk table of {num_chunks} chunks, int64 "
                         f"[{7 * num_chunks + 1}]")
    if limits.dtype != torch.int64 or limits.shape != (n,):
        raise ValueError(f"rope_store takes int64 limits [{n}], got {limits.dtype} {tuple(limits.shape)}")
    if floors is not None and (floors.dtype != torch.int64 or floors.shape != (n, 3) or not floors.is_contiguous()):
        raise ValueError(f"rope_store takes contiguous int64 floors [{n}, 3], got {floors.dtype} {tuple(floors.shape)}")


def _rope_store_triton(q, k, v, rotary: RotaryInputs, options: KernelOptions):
    positions, shifts, slots, cos, sin = rotary.positions, rotary.shifts, rotary.slots, rotary.cos, rotary.sin
    q_norm, k_norm, qk_eps, scales = rotary.q_norm, rotary.k_norm, rotary.qk_eps, rotary.scales
    own_keys, own_values = rotary.own_keys, rotary.own_values
    n, hq, head_dim = q.shape
    hkv = k.shape[1]
    assert q.stride()[1:] == (head_dim, 1) and k.stride()[1:] == (head_dim, 1) and v.stride()[1:] == (head_dim, 1)
    assert own_keys.is_contiguous() and own_values.is_contiguous() and cos.is_contiguous() and sin.is_contiguous()
    assert all(t is None or t.is_contiguous() for t in (q_norm, k_norm, scales))
    num_shifts = shifts.shape[0]
    out = torch.empty((num_shifts + 1, n, hq, head_dim), dtype=q.dtype, device=q.device)
    has_scales = scales is not None and num_shifts > 0
    # absent tensors are never read: any pointer will do
    padding = rotary.padding if num_shifts else None
    seen = rotary.limits is not None and num_shifts > 0
    if seen:
        check_seen(rotary, n, num_shifts + 1)
    window = seen and rotary.floors is not None
    pointers = (q, k, v, positions, shifts if num_shifts else positions, slots, cos, sin, out, own_keys, own_values,
                q if q_norm is None else q_norm, k if k_norm is None else k_norm, scales if has_scales else cos,
                positions if padding is None else padding, rotary.table if seen else positions,
                rotary.limits if seen else positions, rotary.floors if window else positions)
    flags = (q_norm is not None, k_norm is not None, has_scales, padding is not None, seen, window,
             triton.next_power_of_2(num_shifts + 1) if seen else 1)
    args = pointers + (qk_eps, n, num_shifts, q.stride(0), k.stride(0), v.stride(0), hq, hkv, head_dim,
                       triton.next_power_of_2(hq), triton.next_power_of_2(hkv)) + flags + (CHUNKS_A_PROGRAM,)
    key = ("rope", q.device.index, tuple(p.dtype for p in pointers), tuple(p.data_ptr() % 16 == 0 for p in pointers),
           q.stride(0) % 16 == 0, k.stride(0) % 16 == 0, v.stride(0) % 16 == 0, hq, hkv, head_dim) + flags
    launch(_rope_store_kernel, (n, triton.cdiv(num_shifts + 1, CHUNKS_A_PROGRAM) + 1), args, key, options,
           num_warps=4)
    return out


def rope_store(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rotary: RotaryInputs, impl: str | None = None,
               options: KernelOptions = DEFAULT_KERNELS) -> torch.Tensor:
    """q [n, Hq, D], k/v [n, Hkv, D] at rotary.positions [n]; rotary.shifts [C] of the context chunks.

    q and k are first RMS-normalised per head by the weights q_norm/k_norm [D] (eps qk_eps), when given, as
    rmsnorm_ref does. Writes the rotated keys and the values to own_keys/own_values [capacity, Hkv, D] at slots
    [n] and returns the queries rotated for each chunk and for the own chunk (shift 0): [C + 1, n, Hq, D], those
    of chunk c multiplied by scales[c] (scales [C] fp32, rounded to q's dtype) when given; by the Triton kernel,
    those of the first rotary.padding[0] chunks left unwritten when it is given, and under rotary.limits those of
    the chunks holding no key the token sees. Without limits a query is rotated for every chunk, also for one
    placed after it (a selective recompute, whose key limits hide that chunk): its position minus the shift is then
    below 0, and it is rotated to position 0 (never to a row before the tables).
    impl: None (Triton on CUDA, the reference elsewhere), "triton" (also on CPU under TRITON_INTERPRET=1) or "ref".
    """
    if implementation(impl, q, q.shape[-1] & (q.shape[-1] - 1) == 0, "rope_store") == "ref":
        return rope_store_ref(q, k, v, rotary)
    return _rope_store_triton(q, k, v, rotary, options)
