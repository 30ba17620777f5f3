"""Compressed keys and values of stored KV chunks (PackedKV) and their PyTorch quantisation and dequantisation.

Two formats beside the model's dtype:

- `fp8`: e4m3 with float16 parameters. Keys: a scale and a zero per channel (and head) for each group of GROUP
  tokens, the zero the middle of the group's range, so that e4m3's relative error applies to the distance from it
  (a key channel's values share an offset, on which e4m3 would spend its precision: docs/EVALUATION.md); values:
  a scale per token (and head). A scale divides the half-range (keys) or the absolute maximum
  (values) by 448, e4m3's largest value. x = code * scale (+ zero).
- `int4`: 4 bits, KIVI-style (Liu et al. 2024) with a float16 scale and zero: keys per channel (and head) for each
  group of GROUP tokens, values per token (and head) over the head's channels. x = q * scale + zero, q in 0..15.

Layout (what the chunk-attention kernels read): the codes [..., n, H, B] uint8, B = D for fp8 and D / 2 for int4
(byte i holds channel 2i in its low nibble and channel 2i + 1 in its high one); the parameters in float16, keys
[..., ceil(n / GROUP), H, 2, D] (scale, zero) and values [..., n, H, P], P = 1 (scale) for fp8 and 2 (scale,
zero) for int4.
Leading dimensions (layers) index both alike: packed[layer] is one layer's view."""
from dataclasses import dataclass, replace

import torch

PACKED_FORMATS = ("fp8", "int4")
GROUP = 32  # tokens sharing a key channel's parameters; the kernels' K/V tiles must divide it
FP8_MAX = 448.0
INT4_LEVELS = 15


def params_per_group(fmt: str, keys: bool) -> int:
    """Parameters of a key channel's group or a value's token: a scale and a zero, but a scale alone for fp8 values."""
    return 1 if fmt == "fp8" and not keys else 2


def code_bytes(fmt: str, head_dim: int) -> int:
    return head_dim if fmt == "fp8" else head_dim // 2


@dataclass(frozen=True)
class PackedKV:
    """The keys (`keys=True`) or values of a chunk in a compressed format: codes and float16 parameters (see the
    module's docstring). Behaves like the [..., n, H, D] tensor it stands for where chunks are handled whole: shape,
    device, nbytes, to(), cpu(), pin_memory(), is_pinned(), and [layer]."""
    format: str
    keys: bool
    codes: torch.Tensor
    params: torch.Tensor
    head_dim: int

    def __post_init__(self):
        if self.format not in PACKED_FORMATS:
            raise ValueError(f"unknown packed KV format {self.format!r}; choose one of {', '.join(PACKED_FORMATS)}")

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.codes.shape[:-1] + (self.head_dim,))

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.params.nbytes

    def __getitem__(self, layer: int) -> "PackedKV":
        return replace(self, codes=self.codes[layer], params=self.params[layer])

    def to(self, device, non_blocking: bool = False) -> "PackedKV":
        return replace(self, codes=self.codes.to(device, non_blocking=non_blocking),
                       params=self.params.to(device, non_blocking=non_blocking))

    def cpu(self) -> "PackedKV":
        return self.to("cpu")

    def pin_memory(self) -> "PackedKV":
        return replace(self, codes=self.codes.pin_memory(), params=self.params.pin_memory())

    def is_pinned(self) -> bool:
        return self.codes.is_pinned() and self.params.is_pinned()

    def contiguous(self) -> "PackedKV":
        return replace(self, codes=self.codes.contiguous(), params=self.params.contiguous())


def _groups(x: torch.Tensor) -> torch.Tensor:
    """x [..., n, H, D] as [..., ceil(n / GROUP), GROUP, H, D], the last group padded with its last token (which
    leaves every minimum and maximum as it is)."""
    n = x.shape[-3]
    pad = -n % GROUP
    if pad:
        x = torch.cat([x, x[..., -1:, :, :].expand(*x.shape[:-3], pad, *x.shape[-2:])], dim=-3)
    return x.view(*x.shape[:-3], x.shape[-3] // GROUP, GROUP, *x.shape[-2:])


def _scale(span: torch.Tensor, levels: float) -> torch.Tensor:
    scale = (span / levels).to(torch.float16)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize(x: torch.Tensor, fmt: str, keys: bool) -> PackedKV:
    """x [..., n, H, D] (any float dtype, any device) in format `fmt`: keys per channel in groups of GROUP tokens,
    values per token."""
    if fmt not in PACKED_FORMATS:
        raise ValueError(f"unknown packed KV format {fmt!r}; choose one of {', '.join(PACKED_FORMATS)}")
    n, head_dim = x.shape[-3], x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"packed KV needs an even head_dim, got {head_dim}")
    x = x.float()
    # over what the parameters are shared: [..., G, GROUP, H, D] reduced over GROUP, or [..., n, H, D] over D
    grouped, dim = (_groups(x), -3) if keys else (x, -1)
    if fmt == "fp8" and not keys:
        scale = _scale(grouped.abs().amax(dim=dim, keepdim=True), FP8_MAX)
        zero = None
    else:
        low, high = grouped.amin(dim=dim, keepdim=True), grouped.amax(dim=dim, keepdim=True)
        if fmt == "fp8":
            scale, zero = _scale((high - low) / 2, FP8_MAX), ((low + high) / 2).to(torch.float16)
        else:
            scale, zero = _scale(high - low, INT4_LEVELS), low.to(torch.float16)
    y = (grouped - (zero.float() if zero is not None else 0)) / scale.float()
    if keys:
        y = y.flatten(-4, -3)[..., :n, :, :]
    if fmt == "fp8":
        codes = y.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).view(torch.uint8)
    else:
        q = y.round().clamp(0, INT4_LEVELS).to(torch.uint8)
        codes = q[..., 0::2] | (q[..., 1::2] << 4)
    parts = [scale] if zero is None else [scale, zero]
    if keys:  # [..., G, 1, H, D] each -> [..., G, H, P, D]
        params = torch.stack([p.squeeze(-3) for p in parts], dim=-2)
    else:  # [..., n, H, 1] each -> [..., n, H, P]
        params = torch.cat(parts, dim=-1)
    return PackedKV(fmt, keys, codes.contiguous(), params.contiguous(), head_dim)


def unpack_codes(packed: PackedKV) -> torch.Tensor:
    """The codes as float32 [..., n, H, D]: fp8 values, or int4 levels 0..15."""
    c = packed.codes
    if packed.format == "fp8":
        return c.view(torch.float8_e4m3fn).float()
    return torch.stack([c & 15, c >> 4], dim=-1).flatten(-2).float()


def dequantize(packed: PackedKV, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The [..., n, H, D] tensor that `packed` stands for, in `dtype` (the reference of the kernels' dequantisation
    in registers)."""
    q = unpack_codes(packed)
    p = packed.params.float()
    if packed.keys:  # [..., G, H, P, D] -> per token [..., n, H, P, D]
        p = p.repeat_interleave(GROUP, dim=-4)[..., :q.shape[-3], :, :, :]
        scale, zero = p[..., 0, :], (p[..., 1, :] if p.shape[-2] > 1 else None)
    else:  # [..., n, H, P] -> [..., n, H, 1]
        scale, zero = p[..., 0:1], (p[..., 1:2] if p.shape[-1] > 1 else None)
    x = q * scale
    return (x + zero if zero is not None else x).to(dtype)


def dense(x, dtype: torch.dtype) -> torch.Tensor:
    """x as a tensor of `dtype`: dequantised if packed, as it is otherwise."""
    return dequantize(x, dtype) if isinstance(x, PackedKV) else x
