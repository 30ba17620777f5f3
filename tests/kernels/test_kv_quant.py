"""Packed KV formats (kernels.kv_quant): the round trip's error within each format's bound, the layout the kernels
read, and PackedKV handled like the tensor it stands for."""
import pytest
import torch

from cascade_rag.kernels.kv_quant import GROUP, PackedKV, dense, dequantize, quantize, unpack_codes


def sample(n: int = 45, seed: int = 0) -> torch.Tensor:
    """[layers, n, heads, D] with channels of very different ranges (as keys have) and an offset."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, n, 2, 16, generator=g) * torch.linspace(0.05, 8, 16) + 0.5


@pytest.mark.parametrize("keys", [True, False])
def test_int4_round_trip_is_within_half_a_step(keys):
    x = sample()
    packed = quantize(x, "int4", keys)
    assert packed.codes.dtype == torch.uint8 and packed.codes.shape == (3, 45, 2, 8)
    groups = -(-45 // GROUP)
    assert packed.params.shape == ((3, groups, 2, 2, 16) if keys else (3, 45, 2, 2))
    levels = unpack_codes(packed)
    assert levels.min() >= 0 and levels.max() <= 15 and torch.equal(levels, levels.round())
    scale = packed.params[..., 0, :] if keys else packed.params[..., 0:1]
    step = scale.float().repeat_interleave(GROUP, dim=1)[:, :45] if keys else scale.float()
    error = (dequantize(packed) - x).abs()
    assert (error <= step / 2 + 1e-3 * x.abs() + 1e-4).all()
    assert ((dequantize(packed) - x).norm() / x.norm()) < 0.1


@pytest.mark.parametrize("keys", [True, False])
def test_fp8_round_trip_is_within_e4m3_precision(keys):
    x = sample()
    packed = quantize(x, "fp8", keys)
    groups = -(-45 // GROUP)
    assert packed.codes.shape == x.shape and packed.params.shape == ((3, groups, 2, 2, 16) if keys else (3, 45, 2, 1))
    y = dequantize(packed)
    if keys:  # coded: the distance from the middle of the channel's group, whose half-range maps to 448
        zero = packed.params[..., 1, :].float().repeat_interleave(GROUP, dim=1)[:, :45]
        span = packed.params[..., 0, :].float().repeat_interleave(GROUP, dim=1)[:, :45] * 448
    else:
        zero, span = 0.0, x.abs().amax(dim=-1, keepdim=True)
    # e4m3 keeps 3 mantissa bits: a relative error of at most 1/16 above its subnormals
    assert ((y - x).abs() <= (x - zero).abs() / 16 + span / 448 * 2 ** -6 + 1e-3 * x.abs() + 1e-6).all()
    assert ((y - x).norm() / x.norm()) < 0.03


def test_fp8_keys_spend_their_precision_on_the_distance_from_the_channel_middle():
    g = torch.Generator().manual_seed(1)
    x = 20.0 + torch.randn(1, 64, 2, 16, generator=g)  # every channel around a large offset, as key channels are
    as_keys = (dequantize(quantize(x, "fp8", True)) - x).abs().max()
    as_values = (dequantize(quantize(x, "fp8", False)) - x).abs().max()  # a scale alone: e4m3's step at 20
    half_range = (x.amax(dim=1) - x.amin(dim=1)).max() / 2
    assert as_keys <= half_range / 16 + 1e-2 and as_keys * 3 < as_values


def test_keys_share_parameters_per_group_and_channel_values_per_token():
    x = sample(n=70)
    y = x.clone()
    y[:, 40, :, 3] = 100.0  # one outlier: in the keys only its group's channel 3 changes, in the values its token
    k_x, k_y = (dequantize(quantize(t, "int4", True)) for t in (x, y))
    v_x, v_y = (dequantize(quantize(t, "int4", False)) for t in (x, y))
    changed_k = (k_x != k_y).any(dim=(0, 2))  # [n, D]
    assert changed_k.any() and not changed_k[:32].any() and not changed_k[64:].any()
    assert not changed_k[:, :3].any() and not changed_k[:, 4:].any()
    changed_v = (v_x != v_y).any(dim=(0, 2, 3))  # [n]
    assert changed_v.nonzero().flatten().tolist() == [40]


def test_constant_and_zero_inputs_survive():
    for fmt in ("fp8", "int4"):
        for keys in (True, False):
            zero = torch.zeros(1, 5, 1, 8)
            assert torch.equal(dequantize(quantize(zero, fmt, keys)), zero)
            const = torch.full((1, 5, 1, 8), 0.75)
            assert torch.allclose(dequantize(quantize(const, fmt, keys)), const, atol=1e-3)


def test_packed_kv_acts_like_its_tensor():
    x = sample()
    p = quantize(x.to(torch.bfloat16), "int4", True)
    assert p.shape == x.shape and p.device == x.device and p.nbytes == p.codes.nbytes + p.params.nbytes
    layer = p[1]
    assert layer.shape == x[1].shape and torch.equal(dequantize(layer), dequantize(p)[1])
    assert torch.equal(dense(p, torch.bfloat16), dequantize(p, torch.bfloat16))
    assert dense(x, torch.float32) is x
    assert isinstance(p.cpu(), PackedKV) and p.contiguous().codes.is_contiguous()
    with pytest.raises(ValueError, match="unknown packed KV format 'int3'"):
        quantize(x, "int3", True)
