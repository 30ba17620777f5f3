"""Chunks packed in a compressed KV format (kernels.kv_quant) read by the chunk-attention kernels: their codes and
float16 parameters loaded a K/V tile at a time and dequantised in registers.

A packed chunk's table entries (tables.py) are its codes' byte offsets and row strides from the uint8 bases
`kq`/`vq`, and its parameters' offsets (in float16 elements) from the bases `ks`/`vs` in two more columns (-1 for a
chunk in the model's dtype). The dequantisation folds into the products, so that each element costs one
conversion: a key channel's scale multiplies the query's channel (q' = q * scale, per tile: a tile lies in one
group of GROUP tokens) and its zero adds q . zero to every score of the tile; a value's per-token scale
multiplies the token's probability and, for int4, its zero adds p . zero to every channel of the output. int4
levels become float16 by the exponent trick ((level | 0x6400) as float16 is 1024 + level)."""
from dataclasses import dataclass

import torch
from ..launcher import wait_for_inputs  # noqa: F401 (before triton: it picks the interpreter without a GPU)
import triton
import triton.language as tl

from ..kv_quant import GROUP, PackedKV

FORMAT_CODES = {"fp8": 1, "int4": 2}  # the kernels' FORMAT (0: every chunk in the model's dtype)
GROUP_TOKENS = tl.constexpr(GROUP)
# the parameter offset of a chunk in the model's dtype (offsets from a base may be negative: never this low)
NOT_PACKED = -(1 << 62)
NOT_PACKED_C = tl.constexpr(NOT_PACKED)


@dataclass(frozen=True)
class PackedBases:
    """The format of a launch's packed chunks (FORMAT_CODES; 0: none) and the four base tensors their table
    offsets count from (codes of keys and values, parameters of keys and values)."""
    format: int
    kq: torch.Tensor | None = None
    vq: torch.Tensor | None = None
    ks: torch.Tensor | None = None
    vs: torch.Tensor | None = None

    @classmethod
    def of(cls, keys: list, values: list) -> "PackedBases":
        """The bases of a launch over these chunks: the first packed chunk's tensors."""
        packed = [(k, v) for k, v in zip(keys, values) if isinstance(k, PackedKV)]
        if not packed:
            return NO_PACKED
        formats = {k.format for k, _ in packed} | {v.format for _, v in packed}
        if len(formats) > 1:
            raise ValueError(f"chunks of several packed KV formats in one attention: {', '.join(sorted(formats))}")
        k, v = packed[0]
        return cls(FORMAT_CODES[k.format], k.codes, v.codes, k.params, v.params)

    def pointers(self, dummy: torch.Tensor) -> tuple:
        if not self.format:
            return (dummy,) * 4
        return self.kq, self.vq, self.ks, self.vs


NO_PACKED = PackedBases(0)


def fixed_bases(device) -> dict[int, PackedBases]:
    """Bases that stay put (a CUDA graph's, captured once), by format code (0: NO_PACKED)."""
    u8, f16 = (torch.zeros(16, dtype=d, device=device) for d in (torch.uint8, torch.float16))
    return {0: NO_PACKED} | {code: PackedBases(code, u8, u8, f16, f16) for code in FORMAT_CODES.values()}


def packed_columns(keys: PackedKV, values: PackedKV, bases: PackedBases) -> tuple[int, int, int, int, int, int]:
    """A packed chunk (one layer, or all: the layer strides are then its tensors' first strides) in a table: codes
    offsets and row strides in bytes from the code bases, parameter offsets in float16 elements from theirs."""
    if keys.params.dtype != torch.float16 or values.params.dtype != torch.float16:
        raise ValueError("packed KV parameters must be float16")
    k_off = keys.codes.data_ptr() - bases.kq.data_ptr()
    v_off = values.codes.data_ptr() - bases.vq.data_ptr()
    ks_off, vs_off = keys.params.data_ptr() - bases.ks.data_ptr(), values.params.data_ptr() - bases.vs.data_ptr()
    if ks_off % 2 or vs_off % 2:
        raise ValueError("packed KV parameters must be whole float16 elements apart")
    return k_off, v_off, keys.codes.stride(-3), values.codes.stride(-3), ks_off // 2, vs_off // 2


def check_packed(t: PackedKV, hkv: int, head_dim: int) -> None:
    """What the kernels assume of a packed chunk: rows of [Hkv, bytes] contiguous codes, contiguous parameters
    ([groups, Hkv, P, D] for keys, [n, Hkv, P] for values, a layer's or all)."""
    if (t.head_dim != head_dim or t.codes.shape[-2] != hkv or t.codes.stride(-1) != 1
            or t.codes.stride(-2) != t.codes.shape[-1] or not t.params.is_contiguous()
            or t.params.shape[-3 if t.keys else -2] != hkv):
        raise ValueError("packed keys and values must be [n, Hkv, D] with contiguous rows and parameters")


def check_tiles(block_n: int) -> None:
    """A K/V tile of a packed chunk lies in one group of keys."""
    if GROUP % block_n:
        raise ValueError(f"packed KV needs K/V tiles that divide its groups of {GROUP} tokens, got {block_n}")


@triton.jit
def _levels(codes, FORMAT: tl.constexpr, TRANSPOSED: tl.constexpr):
    """uint8 codes [R, B] as float16 [R, D]: fp8 values, or int4 levels (byte b: channels 2b, 2b + 1); TRANSPOSED:
    codes [B, R] as levels [D, R]."""
    if FORMAT == 1:  # one return: Triton checks the types of every return, also under a constant branch
        levels = codes.to(tl.float8e4nv, bitcast=True).to(tl.float16)
    else:
        low = (codes & 15).to(tl.int16)
        high = (codes >> 4).to(tl.int16)
        pairs = tl.join(low, high)
        if TRANSPOSED:  # [B, R, 2] -> [B, 2, R] -> [D, R]
            levels = tl.reshape(tl.permute(pairs, (0, 2, 1)), (2 * pairs.shape[0], pairs.shape[1]))
        else:
            levels = tl.reshape(pairs, (pairs.shape[0], 2 * pairs.shape[1]))
        levels = (levels | 0x6400).to(tl.float16, bitcast=True) - 1024.0
    return levels


@triton.jit
def packed_tile(kq_ptr, vq_ptr, ks_ptr, vs_ptr, k_off, v_off, k_stride, v_stride, ks_off, vs_off, r0, j, in_range,
                kv_head, HKV: tl.constexpr, HEAD_DIM: tl.constexpr, FORMAT: tl.constexpr, V_T: tl.constexpr):
    """One tile of a packed chunk, its rows j (chunk-relative, from r0, a multiple of the tile): the keys' and
    values' levels [N, D] in float16 (V_T: the values' [D, N], loaded transposed as attend_keys wants them, so
    that no transposition goes through shared memory), the key scale and zero [D] of the tile's group and the
    values' scale and zero [N] (fp32; the values' zero 0 for fp8)."""
    CODE_BYTES: tl.constexpr = HEAD_DIM if FORMAT == 1 else HEAD_DIM // 2
    PV: tl.constexpr = 1 if FORMAT == 1 else 2  # a value's parameters (a key channel's: scale and zero)
    b = tl.arange(0, CODE_BYTES)
    d = tl.arange(0, HEAD_DIM)
    kc = tl.load(kq_ptr + k_off + j[:, None] * k_stride + kv_head * CODE_BYTES + b[None, :], mask=in_range[:, None],
                 other=0)
    if V_T:
        vc = tl.load(vq_ptr + v_off + j[None, :] * v_stride + kv_head * CODE_BYTES + b[:, None],
                     mask=in_range[None, :], other=0)
    else:
        vc = tl.load(vq_ptr + v_off + j[:, None] * v_stride + kv_head * CODE_BYTES + b[None, :],
                     mask=in_range[:, None], other=0)
    group_params = ks_ptr + ks_off + (r0 // GROUP_TOKENS) * (HKV * 2 * HEAD_DIM) + kv_head * 2 * HEAD_DIM
    k_scale = tl.load(group_params + d).to(tl.float32)
    k_zero = tl.load(group_params + HEAD_DIM + d).to(tl.float32)
    token_params = vs_ptr + vs_off + j * (HKV * PV) + kv_head * PV
    v_scale = tl.load(token_params, mask=in_range, other=0.0).to(tl.float32)
    if FORMAT == 2:
        v_zero = tl.load(token_params + 1, mask=in_range, other=0.0).to(tl.float32)
    else:
        v_zero = tl.zeros(j.shape, tl.float32)
    return _levels(kc, FORMAT, False), _levels(vc, FORMAT, V_T), k_scale, k_zero, v_scale, v_zero



@triton.jit
def attend_packed_keys(q, k, v_t, k_scale, k_zero, v_scale, v_zero, visible, m_i, l_i, acc_t, qk_scale,
                       FORMAT: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """attend_keys (decode: the keys are the products' rows) over a packed tile: q [R, D] (its rotation and
    scale applied), k [N, D] and v_t [D, N] levels, the parameters of packed_tile; acc_t [D, R]."""
    q_t = tl.trans(q.to(tl.float32))  # the same for every tile of the loop
    scaled = q_t * k_scale[:, None]
    if DOT_F32:
        k = k.to(tl.float32)
        v_t = v_t.to(tl.float32)
    else:
        scaled = scaled.to(tl.float16)
    s = tl.dot(k, scaled, input_precision=PRECISION) + tl.sum(q_t * k_zero[:, None], 0)[None, :]
    s = tl.where(visible[:, None], s * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 0))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[None, :])
    l_i = l_i * alpha + tl.sum(p, 0)
    acc_t = acc_t * alpha[None, :] + tl.dot(v_t, (p * v_scale[:, None]).to(v_t.dtype), input_precision=PRECISION)
    if FORMAT == 2:
        acc_t += tl.sum(p * v_zero[:, None], 0)[None, :]
    return m_new, l_i, acc_t


@triton.jit
def attend_packed_tile(q, k, v, k_scale, k_zero, v_scale, v_zero, visible, m_i, l_i, acc, qk_scale,
                       FORMAT: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """attend_tile (query rows) over a packed tile: q [M, D], k and v [N, D] levels; acc [M, D]. The tile's keys are
    dequantised (in float16, or fp32 with DOT_F32), not the queries scaled: a tile has fewer keys than query rows,
    and the scores then need no sum of the queries against the zeros (a reduction across the row's threads)."""
    if DOT_F32:
        k = k.to(tl.float32) * k_scale[None, :] + k_zero[None, :]
        q = q.to(tl.float32)
        v = v.to(tl.float32)
    else:
        k = k * k_scale.to(tl.float16)[None, :] + k_zero.to(tl.float16)[None, :]
        q = q.to(tl.float16)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    s = tl.where(visible, s * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot((p * v_scale[None, :]).to(v.dtype), v, input_precision=PRECISION)
    if FORMAT == 2:
        acc += tl.sum(p * v_zero[None, :], 1)[:, None]
    return m_new, l_i, acc
