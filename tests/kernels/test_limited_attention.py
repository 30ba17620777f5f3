"""Chunk attention under per-query key limits (selective recompute): the Triton kernel against its reference, and
the reference against masked SDPA over the concatenated keys."""
import pytest
import torch

from cascade_rag.kernels.chunk_attention.limited import limited_attention, limited_attention_ref

from .kernel_cases import make_chunks

# (chunk lengths, Hq, Hkv, D, forced splits, odd chunks, the queries' limits: sorted positions or scattered)
CASES = [
    ([40, 8, 60, 0, 25], 4, 2, 64, None, (), "sorted"),     # an empty chunk among them
    ([40, 8, 60, 25], 8, 2, 128, 5, (), "sorted"),          # splits: merged by log-sum-exp
    ([90, 33], 16, 8, 128, 1, (1,), "scattered"),           # Qwen3-0.6B heads, a strided view, one split
    ([17, 70, 3, 40], 4, 4, 64, 3, (0, 2), "scattered"),
]


def limits_for(total: int, kind: str, n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(total + n)
    positions = torch.randperm(total, generator=generator)[:n]
    positions = positions.sort().values if kind == "sorted" else positions
    return positions + 1


def masked_sdpa(q, keys, values, scale, limits):
    group = q.shape[2] // keys[0].shape[1]
    k, v = (torch.cat(t).repeat_interleave(group, 1).transpose(0, 1) for t in (keys, values))
    total = k.shape[1]
    mask = torch.arange(total)[None, :] < limits[:, None]
    out = torch.nn.functional.scaled_dot_product_attention(q[0].transpose(0, 1), k, v, attn_mask=mask, scale=scale)
    return out.transpose(0, 1)


def test_reference_is_masked_attention_over_the_concatenation():
    torch.manual_seed(0)
    keys, values = make_chunks([9, 14, 6], 2, 64, torch.float32, "cpu")
    q = torch.randn(1, 7, 4, 64).expand(3, -1, -1, -1)  # the same rotation for every chunk: plain attention
    limits = limits_for(29, "scattered", 7)
    torch.testing.assert_close(limited_attention_ref(q, keys, values, 0.125, limits),
                               masked_sdpa(q, keys, values, 0.125, limits))


def test_bad_arguments_are_named():
    keys, values = make_chunks([5, 4], 1, 64, torch.float32, "cpu")
    with pytest.raises(ValueError, match="as many query rotations as chunks"):
        limited_attention(torch.randn(3, 2, 1, 64), keys, values, 0.125, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="one limit per query"):
        limited_attention(torch.randn(2, 2, 1, 64), keys, values, 0.125, torch.tensor([1]))


def check(case, dtype, device, atol):
    lengths, hq, hkv, d, splits, odd, kind = case
    torch.manual_seed(sum(lengths) + hq)
    keys, values = make_chunks(lengths, hkv, d, dtype, device, odd=odd)
    n = 19
    q = torch.randn(len(lengths), n, hq, d, dtype=dtype, device=device)
    limits = limits_for(sum(lengths), kind, n).to(device)
    out = limited_attention(q, keys, values, d ** -0.5, limits, impl="triton", num_splits=splits)
    ref = limited_attention_ref(q.float(), [k.float() for k in keys], [v.float() for v in values], d ** -0.5, limits)
    assert out.shape == (n, hq, d) and out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max().item() <= atol


@pytest.mark.interpreter
@pytest.mark.parametrize("case", CASES)
def test_limited_attention_interpreted(case):
    check(case, torch.float32, "cpu", 1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_limited_attention_on_the_gpu(case, dtype):
    check(case, dtype, "cuda", 1e-3 if dtype == torch.float32 else 2e-2)
