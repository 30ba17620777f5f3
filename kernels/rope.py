"""Rotary embedding of the new tokens, in one kernel: the query rotated once per chunk (to its position minus
the chunk's shift, see DESIGN.md "Positions"), and the key rotated and stored with the value in the request's
own KV buffer at its slot.
"""
import os

import torch
import triton
import triton.language as tl

from kernels import launch


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., heads, D] rotated by cos/sin [..., D] (fp32 tables, applied in x's dtype)."""
    cos, sin = cos.unsqueeze(-2).to(x.dtype), sin.unsqueeze(-2).to(x.dtype)
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def rope_store_ref(q, k, v, positions, shifts, slots, own_keys, own_values, cos, sin):
    query_positions = torch.cat((positions.unsqueeze(0) - shifts.unsqueeze(1), positions.unsqueeze(0)))
    cos, sin = cos[query_positions], sin[query_positions]  # the last row: the tokens' own positions
    own_keys.index_copy_(0, slots, rotate(k, cos[-1], sin[-1]))
    own_values.index_copy_(0, slots, v)
    return rotate(q.unsqueeze(0).expand(query_positions.shape[0], -1, -1, -1), cos, sin)


@triton.jit
def _rotated(x_ptr, rows, row_ok, d, partner, sign, cos_ptr, sin_ptr, position, HEAD_DIM: tl.constexpr):
    """Rows [R] of head vectors at x_ptr + rows * HEAD_DIM, rotated to `position`, rounded like rotate()."""
    dtype = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + rows[:, None] * HEAD_DIM + d[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    xr = tl.load(x_ptr + rows[:, None] * HEAD_DIM + partner[None, :], mask=row_ok[:, None], other=0.0)
    xr = xr.to(tl.float32) * sign[None, :]
    cos = tl.load(cos_ptr + position * HEAD_DIM + d).to(dtype).to(tl.float32)
    sin = tl.load(sin_ptr + position * HEAD_DIM + d).to(dtype).to(tl.float32)
    return ((x * cos[None, :]).to(dtype).to(tl.float32) + (xr * sin[None, :]).to(dtype).to(tl.float32)).to(dtype)


@triton.jit
def _rope_store_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, shift_ptr, slot_ptr, cos_ptr, sin_ptr, out_ptr, ok_ptr,
                       ov_ptr, n, num_shifts, stride_q, stride_k, stride_v,
                       HQ: tl.constexpr, HKV: tl.constexpr, HEAD_DIM: tl.constexpr, HQ_P2: tl.constexpr,
                       HKV_P2: tl.constexpr):
    i = tl.program_id(0)       # token
    c = tl.program_id(1)       # 0..num_shifts: a rotated query per chunk (the last: the own chunk); then K/V
    position = tl.load(pos_ptr + i)
    d = tl.arange(0, HEAD_DIM)
    half: tl.constexpr = HEAD_DIM // 2
    partner = (d + half) % HEAD_DIM
    sign = tl.where(d < half, -1.0, 1.0)
    if c <= num_shifts:
        shift = tl.load(shift_ptr + c, mask=c < num_shifts, other=0)
        q_heads = tl.arange(0, HQ_P2)
        q_ok = q_heads < HQ
        rq = _rotated(q_ptr + i * stride_q, q_heads, q_ok, d, partner, sign, cos_ptr, sin_ptr, position - shift,
                      HEAD_DIM)
        tl.store(out_ptr + ((c * n + i) * HQ + q_heads[:, None]) * HEAD_DIM + d[None, :], rq, mask=q_ok[:, None])
    else:
        slot = tl.load(slot_ptr + i)
        kv_heads = tl.arange(0, HKV_P2)
        kv_ok = kv_heads < HKV
        rk = _rotated(k_ptr + i * stride_k, kv_heads, kv_ok, d, partner, sign, cos_ptr, sin_ptr, position, HEAD_DIM)
        dst = (slot * HKV + kv_heads[:, None]) * HEAD_DIM + d[None, :]
        tl.store(ok_ptr + dst, rk, mask=kv_ok[:, None])
        v = tl.load(v_ptr + i * stride_v + kv_heads[:, None] * HEAD_DIM + d[None, :], mask=kv_ok[:, None], other=0.0)
        tl.store(ov_ptr + dst, v, mask=kv_ok[:, None])


def _rope_store_triton(q, k, v, positions, shifts, slots, own_keys, own_values, cos, sin):
    n, hq, head_dim = q.shape
    hkv = k.shape[1]
    assert q.stride()[1:] == (head_dim, 1) and k.stride()[1:] == (head_dim, 1) and v.stride()[1:] == (head_dim, 1)
    assert own_keys.is_contiguous() and own_values.is_contiguous() and cos.is_contiguous() and sin.is_contiguous()
    num_shifts = shifts.shape[0]
    out = torch.empty((num_shifts + 1, n, hq, head_dim), dtype=q.dtype, device=q.device)
    shift_ptr = shifts if num_shifts else positions  # never read when there is no shift
    args = (q, k, v, positions, shift_ptr, slots, cos, sin, out, own_keys, own_values, n, num_shifts,
            q.stride(0), k.stride(0), v.stride(0), hq, hkv, head_dim, triton.next_power_of_2(hq),
            triton.next_power_of_2(hkv))
    key = ("rope", q.device.index, q.dtype, k.data_ptr() % 16 == 0, v.data_ptr() % 16 == 0, hq, hkv, head_dim,
           q.stride(0) % 16 == 0, k.stride(0) % 16 == 0, v.stride(0) % 16 == 0)
    launch(_rope_store_kernel, (n, num_shifts + 2), args, key, num_warps=4)
    return out


def rope_store(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, shifts: torch.Tensor,
               slots: torch.Tensor, own_keys: torch.Tensor, own_values: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """q [n, Hq, D], k/v [n, Hkv, D] at positions [n]; shifts [C] of the context chunks; cos/sin [P, D] fp32.

    Writes the rotated keys and the values to own_keys/own_values [capacity, Hkv, D] at slots [n] and returns
    the queries rotated for each chunk and for the own chunk (shift 0): [C + 1, n, Hq, D].
    impl: None (Triton on CUDA, the reference elsewhere), "triton" (also on CPU under TRITON_INTERPRET=1) or "ref".
    """
    args = (q, k, v, positions, shifts, slots, own_keys, own_values, cos, sin)
    if impl is None:
        impl = "triton" if q.is_cuda and q.shape[-1] & (q.shape[-1] - 1) == 0 else "ref"
    if impl == "ref":
        return rope_store_ref(*args)
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the Triton rope_store needs CUDA tensors or TRITON_INTERPRET=1")
    return _rope_store_triton(*args)
