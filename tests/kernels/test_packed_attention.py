"""Chunk attention over packed chunks (fp8, int4) read and dequantised in the kernels, against the PyTorch reference
over the same chunks (which dequantises them first): eager decode and prefill, and the CUDA graphs' table entry
point; under TRITON_INTERPRET=1 on the CPU and compiled on CUDA."""
from dataclasses import replace

import pytest
import torch

import cascade_rag.kernels.chunk_attention as ca  # kernels.dispatch sets TRITON_INTERPRET=1 when there is no GPU
from cascade_rag.kernels.kv_quant import quantize
from cascade_rag.kernels.options import DEFAULT_KERNELS, DecodeTuning
from cascade_rag.kernels.rope import RotaryInputs

# (context lengths, which are packed, queries, query heads, KV heads, head_dim, splits); the own chunk comes last
CASES = [
    ([5, 70, 33], "dpp", 1, 4, 2, 64, 3),       # decode: level 0 unpacked, groups cut across tiles and splits
    ([65, 33], "pp", 1, 8, 2, 64, 1),           # two packed chunks (their parameters below each other's base)
    ([100, 7, 40], "pdp", 1, 4, 2, 64, 6),      # splits cut at chunk boundaries (pieces)
    ([60, 45], "dp", 9, 4, 2, 64, 2),           # prefill (query rows), splits
    ([70, 3, 40], "ppp", 17, 8, 1, 128, 1),     # prefill, GQA 8 in several row tiles, head_dim 128
]


def packed_chunks(case, fmt, dtype, device):
    lengths, kinds, nq, hq, hkv, d, _ = case
    torch.manual_seed(sum(lengths) + nq + d)
    keys, values = [], []
    for n, kind in zip(lengths + [nq + 4], kinds + "d"):
        k, v = (torch.randn(3, n, hkv, d, device=device) * 2 + 0.3 for _ in range(2))  # layer 1 of three
        keys.append(quantize(k, fmt, True)[1] if kind == "p" else k[1].to(dtype))
        values.append(quantize(v, fmt, False)[1] if kind == "p" else v[1].to(dtype))
    return keys, values, torch.randn(len(lengths) + 1, nq, hq, d, dtype=dtype, device=device)


def check(case, fmt, dtype, device, atol):
    keys, values, q = packed_chunks(case, fmt, dtype, device)
    scale = q.shape[-1] ** -0.5
    out = ca.chunk_attention(q, keys, values, scale, impl="triton", num_splits=case[-1])
    ref = ca.chunk_attention_ref(q.float(), keys, values, scale)
    assert out.shape == ref.shape and out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max().item() <= atol


@pytest.mark.interpreter
@pytest.mark.parametrize("fmt", ["fp8", "int4"])
@pytest.mark.parametrize("case", CASES)
def test_packed_chunk_attention_interpreted(case, fmt):
    check(case, fmt, torch.float32, "cpu", 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["fp8", "int4"])
@pytest.mark.parametrize("case", CASES)
def test_packed_chunk_attention_gpu(case, fmt):
    check(case, fmt, torch.bfloat16, "cuda", 2e-2)


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.interpreter),
                                    pytest.param("cuda", marks=pytest.mark.gpu)])
def test_packed_chunks_through_a_graph_table(device):
    """chunk_attention_table (a CUDA graph's entry point) over every layer's table with packed chunks at the
    graph's fixed bases: a prefill of 5 rotated queries, then a decode step that also rotates and stores the new
    token, each against the reference."""
    torch.manual_seed(0)
    layers, hq, hkv, d, max_chunks, fmt = 2, 4, 2, 64, 4, "int4"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    own_k, own_v = (torch.randn(layers, 16, hkv, d, device=device).to(dtype) for _ in range(2))
    plain = [t.to(dtype) for t in (torch.randn(layers, 6, hkv, d, device=device), torch.randn(layers, 6, hkv, d,
                                                                                                device=device))]
    packed = (quantize(torch.randn(layers, 50, hkv, d, device=device), fmt, True),
              quantize(torch.randn(layers, 50, hkv, d, device=device), fmt, False))
    chunks = [tuple(plain), packed]
    bases = ca.fixed_bases(device)[2]
    tables = torch.tensor(ca.chunk_tables(chunks, own_k, own_v, max_chunks, bases), device=device)
    keys = [torch.zeros(0, hkv, d, dtype=dtype, device=device)] * (max_chunks - 1 - len(chunks))
    values = list(keys)
    layer, scale = 1, d ** -0.5
    keys, values = keys + [plain[0][layer], packed[0][layer]], values + [plain[1][layer], packed[1][layer]]
    workspace = ca.decode_workspace(5, hq, d, hkv, 64, device, aligned=False)
    q = torch.randn(max_chunks, 5, hq, d, dtype=dtype, device=device)
    out = ca.chunk_attention_table(q, own_k[layer], own_v[layer], tables[layer], scale, workspace, packed=bases)
    ref = ca.chunk_attention_ref(q.float(), keys + [own_k[layer, :5]], values + [own_v[layer, :5]], scale)
    assert (out.float() - ref).abs().max() <= (1e-4 if device == "cpu" else 2e-2)
    # a decode step at own slot 5 (position 61): the kernel rotates the query for each chunk and stores the token
    step = ca.decode_workspace(1, hq, d, hkv, 64, device, aligned=False, packed=True)
    qn, kn, vn = (torch.randn(1, h, d, dtype=dtype, device=device) for h in (hq, hkv, hkv))
    cos, sin = (torch.ones(128, d, device=device), torch.zeros(128, d, device=device))  # rotation by 0: plain
    shifts = torch.zeros(max_chunks - 1, dtype=torch.int64, device=device)
    rotary = RotaryInputs(torch.tensor([61], device=device), shifts, torch.tensor([5], device=device),
                          own_k[layer], own_v[layer], cos, sin, None, None, 1e-6,
                          torch.ones(max_chunks - 1, device=device))
    with pytest.raises(ValueError, match="made for no packed chunks"):  # its splits follow the other settings
        ca.chunk_attention_table(qn, own_k[layer], own_v[layer], tables[layer], scale,
                                 ca.decode_workspace(1, hq, d, hkv, 64, device), rotary, (kn, vn), packed=bases)
    out = ca.chunk_attention_table(qn, own_k[layer], own_v[layer], tables[layer], scale, step, rotary, (kn, vn),
                                   packed=bases)
    assert torch.equal(own_k[layer, 5], kn[0]) and torch.equal(own_v[layer, 5], vn[0])
    ref = ca.chunk_attention_ref(qn[None].expand(max_chunks, 1, hq, d).float(), keys + [own_k[layer, :6]],
                                 values + [own_v[layer, :6]], scale)
    assert (out.float() - ref).abs().max() <= (1e-4 if device == "cpu" else 2e-2)


def test_packed_decode_steps_take_their_own_settings():
    """A decode step over packed chunks splits its context by KernelOptions.packed_decode (twice the programs an SM
    by default: their tiles cost more work and fewer bytes), one over dense chunks by KernelOptions.decode."""
    options = replace(DEFAULT_KERNELS, packed_decode=DecodeTuning(programs_per_sm=8))
    plain = ca.decode_workspace(1, 4, 64, 2, 100_000, "cpu", options=options)
    packed = ca.decode_workspace(1, 4, 64, 2, 100_000, "cpu", options=options, packed=True)
    assert packed.packed and not plain.packed
    assert packed.num_splits == 4 * plain.num_splits  # 8 programs an SM against 2, over 4 "SMs" on the CPU
    assert DEFAULT_KERNELS.decode_tuning(True) == DEFAULT_KERNELS.packed_decode != DEFAULT_KERNELS.decode


def test_packed_prefills_take_their_own_settings():
    """A question's prefill over packed chunks splits its context by KernelOptions.packed_prefill, one over dense
    chunks by KernelOptions.prefill."""
    options = replace(DEFAULT_KERNELS, packed_prefill=replace(DEFAULT_KERNELS.prefill, programs_per_sm=8))
    plain = ca.decode_workspace(32, 4, 64, 2, 100_000, "cpu", options=options)
    packed = ca.decode_workspace(32, 4, 64, 2, 100_000, "cpu", options=options, packed=True)
    assert not plain.decode and plain.block_m == packed.block_m == 64
    assert packed.num_splits == 4 * plain.num_splits  # 8 programs an SM against 2


@pytest.mark.interpreter
@pytest.mark.parametrize("fmt", ["fp8", "int4"])
@pytest.mark.parametrize("case", CASES)
def test_packed_attention_in_float16_as_on_a_gpu_interpreted(case, fmt, monkeypatch):
    """The kernels' float16 arithmetic (DOT_F32 off: the prefill's dequantised keys, the decode's scaled queries),
    which only a GPU runs otherwise, run by the interpreter over float16 queries."""
    from cascade_rag.kernels.chunk_attention import decode, prefill
    for module in (decode, prefill):
        monkeypatch.setattr(module, "interpreted", lambda: False)
    check(case, fmt, torch.float16, "cpu", 1e-2)
