"""Chunk attention, eager and over a decode step's chunk table, against its reference, CPU and CUDA."""

import pytest
import torch

from dataclasses import replace

import cascade_rag.kernels.chunk_attention as ca  # kernels.dispatch sets TRITON_INTERPRET=1 when there is no GPU
from cascade_rag.kernels.options import DEFAULT_KERNELS, AttentionTuning, DecodeTuning, KernelOptions, compile_options

from .kernel_cases import make_chunks


def decode_options(**tuning) -> KernelOptions:
    """The default kernel options with these decode settings."""
    return replace(DEFAULT_KERNELS, decode=replace(DEFAULT_KERNELS.decode, **tuning))


# (chunk lengths, Nq, Hq, Hkv, D, forced splits, odd chunks); the last chunk is the causal level-2 chunk
ATTENTION_CASES = [
    ([150, 1, 200, 69], 1, 2, 2, 64, None, ()),       # 4 chunks totalling 420, decode, GQA 1
    ([150, 1, 200, 69], 1, 4, 2, 128, 3, ()),         # GQA 2, forced splits: merge path; even cut
    ([37, 90, 5], 1, 8, 2, 64, 4, ()),                # GQA 4
    ([150, 1, 200, 69], 1, 4, 2, 64, 20, ()),         # 20 splits, cut at the chunks' boundaries
    ([37, 90, 5], 1, 16, 2, 128, 1, ()),              # GQA 8, one split
    ([100, 1, 0], 1, 4, 2, 64, 2, ()),                # empty level-2 chunk
    ([1], 1, 4, 4, 64, None, ()),                     # a single chunk of length 1
    ([60, 45, 30], 17, 4, 2, 64, 1, ()),              # prefill, causal last chunk
    ([60, 45, 30], 17, 8, 1, 128, 3, ()),             # prefill, GQA 8: 136 rows in 3 tiles, splits
    ([80, 17], 17, 4, 4, 64, 2, ()),                  # prefill, level-2 chunk = the queries
    ([150, 1, 200, 69], 5, 4, 2, 64, 140, ()),        # prefill, 140 splits: merged in two blocks of 128
    ([70, 3, 40], 5, 4, 2, 64, 2, (0, 2)),            # strided views at odd offsets (unaligned path)
    ([50], 12, 2, 1, 64, None, ()),                   # only the request's own chunk
    ([40, 9], 1, 32, 1, 64, 2, ()),                   # GQA 32: decode through the general kernel
    ([64, 0, 50, 7], 1, 4, 2, 64, 5, ()),             # decode: an empty chunk between others; 5 pieces
    ([70, 3, 40], 1, 4, 2, 64, 3, (0, 2)),            # decode over strided views at odd offsets
]


def check_attention(case, dtype, device, atol, options=DEFAULT_KERNELS):
    lengths, nq, hq, hkv, d, splits, odd = case
    torch.manual_seed(sum(lengths) + nq + hq + d)
    keys, values = make_chunks(lengths, hkv, d, dtype, device, odd=odd)
    q = torch.randn(len(lengths), nq, hq, d, dtype=dtype, device=device)
    scale = d ** -0.5
    out = ca.chunk_attention(q, keys, values, scale, impl="triton", num_splits=splits, options=options)
    assert torch.equal(out, ca.chunk_attention(q, keys, values, scale, impl="triton", num_splits=splits,
                                               options=options))
    ref = ca.chunk_attention_ref(q.float(), [k.float() for k in keys], [v.float() for v in values], scale)
    assert out.shape == (nq, hq, d) and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max().item() <= atol


@pytest.mark.interpreter
@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_chunk_attention_interpreted(case):
    check_attention(case, torch.float32, "cpu", 1e-3)


@pytest.mark.interpreter
def test_decode_merges_partials_in_several_passes():
    options = decode_options(merge_elements=4 * 2 * 64)  # 4 splits a pass at GQA 2, D 64
    check_attention(([150, 1, 200, 69], 1, 4, 2, 64, 18, ()), torch.float32, "cpu", 1e-3, options)  # 5 passes


# launch settings other than the defaults, for the kernel each case reaches: several query rows (attention),
# row tiles of 64 (prefill), one query (decode); a register cap passed to the launch
TUNED = [(([60, 45, 30], 5, 4, 2, 64, None, ()), "attention",
          AttentionTuning(block_n=16, num_warps=4, num_stages=1, programs_per_sm=8, min_split=16)),
         (([60, 45, 30], 17, 8, 1, 128, None, ()), "prefill",
          AttentionTuning(block_n=64, num_warps=2, num_stages=2, programs_per_sm=6, min_split=32, max_registers=168)),
         (([150, 1, 200, 69], 1, 4, 2, 128, None, ()), "decode", DecodeTuning(programs_per_sm=6, max_registers=168))]


def test_a_register_cap_is_a_launch_option():
    assert compile_options(AttentionTuning()) == {"num_warps": 2, "num_stages": 2}
    assert compile_options(DecodeTuning(max_registers=168)) == {"num_warps": 2, "num_stages": 3, "maxnreg": 168}


@pytest.mark.interpreter
@pytest.mark.parametrize("case,table,tuning", TUNED, ids=["attention", "prefill", "decode"])
def test_chunk_attention_under_other_tuning_interpreted(case, table, tuning):
    check_attention(case, torch.float32, "cpu", 1e-3, replace(DEFAULT_KERNELS, **{table: tuning}))


def test_decode_splits_are_whole_merge_passes():
    # 8 splits a pass (a power of two), 20 programs for the CPU's 4 "SMs"
    tuning = decode_options(merge_elements=12 * 2 * 64, programs_per_sm=5, min_split=32).decode
    assert ca.decode_splits(1, 2, 64, 10_000, "cpu", tuning) == 16
    assert ca.decode_splits(1, 2, 64, 64, "cpu", tuning) == 2  # splits of 32 keys at least: less than one pass
    assert ca.decode_splits(1, 2, 64, 10_000, "cpu", DEFAULT_KERNELS.decode) == 8  # the default: 2 a "SM"


@pytest.mark.interpreter
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


# (context chunk lengths, tokens already in the own chunk, Hq, Hkv, D, padding chunks, q/k RMSNorm, query scales)
DECODE_TABLE_CASES = [
    ([30, 7, 50], 5, 4, 2, 64, 2, True, True),
    ([100], 0, 8, 2, 64, 0, False, False),      # the new token alone in the own chunk
    ([40, 25, 9], 12, 16, 8, 128, 3, True, False),  # Qwen3-0.6B heads
]


def check_decode_table(case, dtype, device, atol, short_splits=True):
    """A decode step over a chunk table with the rotary embedding in the attention kernel against rope_store_ref
    and chunk_attention_ref: the output and the new key and value stored at the slot."""
    from cascade_rag.engine.model import Rotary
    from cascade_rag.kernels.rope import RotaryInputs, rope_store_ref
    lengths, slot, hq, hkv, d, pad, norm, scaled = case
    # many short splits (the new token's split varies), cut at the chunks' boundaries, or few of several tiles
    # and chunks, cut evenly
    options = decode_options(programs_per_sm=16 if short_splits else 1, min_split=8 if short_splits else 64,
                             piece_tiles=8 if short_splits else 0)
    torch.manual_seed(sum(lengths) + slot + hq)
    layers, layer, capacity = 2, 1, 32
    chunks = [tuple(torch.randn(layers, n, hkv, d, dtype=dtype, device=device) for _ in "kv") for n in lengths]
    own_keys, own_values = (torch.randn(layers, capacity, hkv, d, dtype=dtype, device=device) for _ in "kv")
    own_keys[layer, slot], own_values[layer, slot] = float("nan"), float("nan")  # stale memory is never read
    num_chunks = len(lengths) + 1 + pad
    table = torch.from_numpy(ca.chunk_tables(chunks, own_keys, own_values, num_chunks)).to(device)
    workspace = ca.decode_workspace(1, hq, d, hkv, sum(lengths) + capacity, device, options=options)
    assert workspace.decode and (workspace.num_splits > 4 or not short_splits)
    assert workspace.pieces == short_splits
    q, k, v = ((3 * torch.randn(1, h, d, device=device)).to(dtype) for h in (hq, hkv, hkv))
    shifts = torch.tensor([-3 * c for c in range(len(lengths))], dtype=torch.int64, device=device)
    rotary = Rotary(d, 10000.0, 512).to(device)
    position = sum(lengths) + slot + 40
    scales = torch.rand(len(lengths), device=device) + 0.5 if scaled else torch.ones(len(lengths), device=device)
    rope = dict(positions=torch.tensor([position], device=device), slots=torch.tensor([slot], device=device),
                cos=rotary.cos, sin=rotary.sin, qk_eps=1e-6, scales=scales,
                q_norm=(1 + 0.5 * torch.randn(d, device=device)).to(dtype) if norm else None,
                k_norm=(1 + 0.5 * torch.randn(d, device=device)).to(dtype) if norm else None)
    ref_keys, ref_values = own_keys[layer].clone(), own_values[layer].clone()
    queries = rope_store_ref(q, k, v, RotaryInputs(shifts=shifts, own_keys=ref_keys, own_values=ref_values, **rope))
    keys, values = ([c[i][layer].float() for c in chunks] + [own[:slot + 1].float()]
                    for i, own in ((0, ref_keys), (1, ref_values)))
    ref = ca.chunk_attention_ref(queries.float(), keys, values, d ** -0.5)
    padded = dict(rope, shifts=torch.cat((torch.zeros(pad, dtype=torch.int64, device=device), shifts)),
                  scales=torch.cat((torch.ones(pad, device=device), rope["scales"])))
    out = ca.chunk_attention_table(q, own_keys[layer], own_values[layer], table[layer], d ** -0.5, workspace,
                                   RotaryInputs(own_keys=own_keys[layer], own_values=own_values[layer], **padded),
                                   (k, v), options)
    assert out.shape == (1, hq, d) and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max().item() <= atol
    torch.testing.assert_close(own_keys[layer, slot].float(), ref_keys[slot].float(), atol=atol, rtol=atol)
    assert torch.equal(own_values[layer, slot], ref_values[slot])
    assert torch.equal(own_keys[layer, slot + 1:], ref_keys[slot + 1:])  # nothing else written


@pytest.mark.interpreter
@pytest.mark.parametrize("short_splits", [True, False])
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.float16, 2e-2)])  # (bf16: truncated here)
@pytest.mark.parametrize("case", DECODE_TABLE_CASES)
def test_decode_table_rotates_and_stores_the_new_token_interpreted(case, dtype, atol, short_splits):
    check_decode_table(case, dtype, "cpu", atol, short_splits)


@pytest.mark.interpreter
def test_decode_table_needs_the_projections_and_rope():
    workspace = ca.decode_workspace(1, 4, 64, 2, 64, "cpu")
    assert workspace.decode and not workspace.aligned
    keys = torch.zeros(8, 2, 64)
    with pytest.raises(ValueError, match="projections and rope"):
        ca.chunk_attention_table(torch.zeros(1, 4, 64), keys, keys, torch.zeros(11, dtype=torch.int64), 0.125,
                                 workspace)


def test_a_table_refuses_more_chunks_than_its_slots():
    own = torch.zeros(2, 8, 2, 64)
    chunk = (torch.zeros(2, 3, 2, 64), torch.zeros(2, 3, 2, 64))
    table = ca.chunk_tables([chunk] * 3, own, own, 4)
    assert table.shape == (2, 7 * 4 + 1) and list(table[0, 4 * 4:5 * 4 + 1]) == [0, 3, 6, 9, 9]  # starts, total
    with pytest.raises(ValueError, match="4 chunks and the own one do not fit a table of 4"):
        ca.chunk_tables([chunk] * 4, own, own, 4)


GPU_ATTENTION_CASES = ATTENTION_CASES + [
    ([1024, 3000, 17, 9], 1, 16, 8, 128, None, ()),   # Qwen3-0.6B decode, automatic splits
    ([500, 700, 300], 300, 14, 2, 64, None, ()),      # Qwen2-0.5B prefill of 300 queries
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-3), (torch.bfloat16, 2e-2), (torch.float16, 2e-2)])
@pytest.mark.parametrize("case", GPU_ATTENTION_CASES)
def test_chunk_attention_gpu(case, dtype, atol):
    check_attention(case, dtype, "cuda", atol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("short_splits", [True, False])
@pytest.mark.parametrize("case", DECODE_TABLE_CASES)
def test_decode_table_rotates_and_stores_the_new_token_gpu(case, dtype, atol, short_splits):
    check_decode_table(case, dtype, "cuda", atol, short_splits)
