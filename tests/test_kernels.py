"""Triton kernels against their PyTorch references: under TRITON_INTERPRET=1 on the CPU, and on CUDA when present."""
import os

import pytest
import torch

import kernels.chunk_attention as ca  # kernels/__init__ sets TRITON_INTERPRET=1 when there is no GPU
import kernels.fused_rmsnorm_qkv as fr

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

interpreter = pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET=1")
gpu = pytest.mark.skipif(INTERPRET or not torch.cuda.is_available(), reason="needs CUDA (and no interpreter)")


def make_chunks(lengths, hkv, d, dtype, device, layers=3, layer=1, odd=()):
    """Per-chunk K and V as slices of [layers, n, Hkv, D] tensors; chunks named in `odd` are views with a
    doubled row stride starting at an odd element offset."""
    keys, values = [], []
    for c, n in enumerate(lengths):
        for out in (keys, values):
            if c in odd:
                flat = torch.randn(1 + 2 * n * hkv * d, dtype=dtype, device=device)
                out.append(flat[1:].view(2 * n, hkv, d)[::2])
            else:
                out.append(torch.randn(layers, n, hkv, d, dtype=dtype, device=device)[layer])
    return keys, values


# (chunk lengths, Nq, Hq, Hkv, D, forced splits, odd chunks); the last chunk is the causal level-2 chunk
ATTENTION_CASES = [
    ([150, 1, 200, 69], 1, 2, 2, 64, None, ()),       # 4 chunks totalling 420, decode, GQA 1
    ([150, 1, 200, 69], 1, 4, 2, 128, 3, ()),         # GQA 2, forced splits: merge path
    ([37, 90, 5], 1, 8, 2, 64, 4, ()),                # GQA 4
    ([150, 1, 200, 69], 1, 4, 2, 64, 20, ()),         # more splits than one merge block
    ([37, 90, 5], 1, 16, 2, 128, 1, ()),              # GQA 8, one split
    ([100, 1, 0], 1, 4, 2, 64, 2, ()),                # empty level-2 chunk
    ([1], 1, 4, 4, 64, None, ()),                     # a single chunk of length 1
    ([60, 45, 30], 17, 4, 2, 64, 1, ()),              # prefill, causal last chunk
    ([60, 45, 30], 17, 8, 1, 128, 3, ()),             # prefill, GQA 8: 136 rows in 3 tiles, splits
    ([80, 17], 17, 4, 4, 64, 2, ()),                  # prefill, level-2 chunk = the queries
    ([70, 3, 40], 5, 4, 2, 64, 2, (0, 2)),            # strided views at odd offsets (unaligned path)
    ([50], 12, 2, 1, 64, None, ()),                   # only the request's own chunk
    ([40, 9], 1, 32, 1, 64, 2, ()),                   # GQA 32: decode through the general kernel
    ([64, 0, 50, 7], 1, 4, 2, 64, 5, ()),             # decode: an empty chunk between others
    ([70, 3, 40], 1, 4, 2, 64, 3, (0, 2)),            # decode over strided views at odd offsets
]


def check_attention(case, dtype, device, atol):
    lengths, nq, hq, hkv, d, splits, odd = case
    torch.manual_seed(sum(lengths) + nq + hq + d)
    keys, values = make_chunks(lengths, hkv, d, dtype, device, odd=odd)
    q = torch.randn(len(lengths), nq, hq, d, dtype=dtype, device=device)
    scale = d ** -0.5
    out = ca.chunk_attention(q, keys, values, scale, impl="triton", num_splits=splits)
    assert torch.equal(out, ca.chunk_attention(q, keys, values, scale, impl="triton", num_splits=splits))
    ref = ca.chunk_attention_ref(q.float(), [k.float() for k in keys], [v.float() for v in values], scale)
    assert out.shape == (nq, hq, d) and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max().item() <= atol


@interpreter
@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_chunk_attention_interpreted(case):
    check_attention(case, torch.float32, "cpu", 1e-3)


@interpreter
def test_chunk_attention_without_keys_is_an_error():
    keys, values = make_chunks([0, 0], 2, 64, torch.float32, "cpu")
    with pytest.raises(ValueError, match="at least one key"):
        ca.chunk_attention(torch.randn(2, 1, 4, 64), keys, values, 0.125, impl="triton")


def test_chunk_attention_reference_masks_own_chunk():
    torch.manual_seed(0)
    keys, values = make_chunks([5, 4], 1, 64, torch.float32, "cpu")
    q = torch.randn(2, 2, 1, 64)
    out = ca.chunk_attention(q, keys, values, 0.125)  # CPU and no impl: the reference
    # query 0 sees keys 0..2 of the own chunk, query 1 all 4; check query 0 by hand
    k = torch.cat([q[0, 0, 0] @ keys[0][:, 0].T, q[1, 0, 0] @ keys[1][:3, 0].T]) * 0.125
    expected = torch.softmax(k, 0) @ torch.cat([values[0][:, 0], values[1][:3, 0]])
    torch.testing.assert_close(out[0, 0], expected)


def test_chunk_attention_reference_matches_sdpa():
    """Contiguous chunks with a fully visible prefix equal plain causal attention over the concatenation."""
    torch.manual_seed(1)
    keys, values = make_chunks([7, 9, 6], 2, 64, torch.float32, "cpu")
    q = torch.randn(4, 4, 64)
    out = ca.chunk_attention(q.expand(3, -1, -1, -1), keys, values, 0.125)
    k, v = torch.cat(keys).repeat_interleave(2, 1), torch.cat(values).repeat_interleave(2, 1)
    mask = torch.ones(4, 22, dtype=torch.bool).tril(22 - 4)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=0.125)
    torch.testing.assert_close(out, sdpa.transpose(0, 1))


# (n, hidden, Hq, Hkv, D, bias, q/k norm)
RMSNORM_CASES = [(n, hidden, hq, hkv, d, bias, qk)
                 for n in (1, 3) for hidden, hq, hkv, d in ((64, 4, 2, 16), (96, 4, 1, 32))
                 for bias in (False, True) for qk in (False, True)]


def check_rmsnorm_qkv(case, dtype, device, atol):
    n, hidden, hq, hkv, d, bias, qk = case
    torch.manual_seed(n + hidden + d)
    qkv_dim = (hq + 2 * hkv) * d

    def rand(*shape, mean=0.0, std=1.0):
        return (mean + std * torch.randn(*shape, device=device)).to(dtype)
    args = (rand(n, hidden), rand(hidden, mean=1, std=0.5), 1e-6, rand(qkv_dim, hidden, std=hidden ** -0.5),
            rand(qkv_dim, std=0.5) if bias else None, hq, hkv, d,
            rand(d, mean=1, std=0.5) if qk else None, rand(d, mean=1, std=0.5) if qk else None, 1e-6)
    got = fr.rmsnorm_qkv(*args, impl="triton")
    assert all(torch.equal(a, b) for a, b in zip(got, fr.rmsnorm_qkv(*args, impl="triton")))  # cached launch
    ref = fr.rmsnorm_qkv_ref(*args)
    for g, r, heads in zip(got, ref, (hq, hkv, hkv)):
        assert g.shape == (n, heads, d) and g.dtype == dtype
        torch.testing.assert_close(g.float(), r.float(), atol=atol, rtol=atol)


@interpreter
@pytest.mark.parametrize("case", RMSNORM_CASES)
def test_rmsnorm_qkv_interpreted(case):
    check_rmsnorm_qkv(case, torch.float32, "cpu", 1e-3)


def test_rmsnorm_qkv_dispatch_on_cpu_is_reference():
    x, w = torch.randn(2, 32), torch.randn(3 * 16, 32)
    got = fr.rmsnorm_qkv(x, torch.ones(32), 1e-6, w, None, 1, 1, 16)
    for g, r in zip(got, fr.rmsnorm_qkv_ref(x, torch.ones(32), 1e-6, w, None, 1, 1, 16)):
        assert torch.equal(g, r)


GPU_ATTENTION_CASES = ATTENTION_CASES + [
    ([1024, 3000, 17, 9], 1, 16, 8, 128, None, ()),   # Qwen3-0.6B decode, automatic splits
    ([500, 700, 300], 300, 14, 2, 64, None, ()),      # Qwen2-0.5B prefill of 300 queries
]


@gpu
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-3), (torch.bfloat16, 2e-2), (torch.float16, 2e-2)])
@pytest.mark.parametrize("case", GPU_ATTENTION_CASES)
def test_chunk_attention_gpu(case, dtype, atol):
    check_attention(case, dtype, "cuda", atol)


@gpu
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("case", RMSNORM_CASES + [(1, 1024, 16, 8, 128, False, True), (1, 896, 14, 2, 64, True, False),
                                                  (5, 896, 14, 2, 64, True, True)])
def test_rmsnorm_qkv_gpu(case, dtype, atol):
    check_rmsnorm_qkv(case, dtype, "cuda", atol)
