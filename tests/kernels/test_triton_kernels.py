"""Triton kernels against their PyTorch references: under TRITON_INTERPRET=1 on the CPU, and on CUDA when present."""

import pytest
import torch

from dataclasses import replace

import cascade_rag.kernels.chunk_attention as ca  # kernels.dispatch sets TRITON_INTERPRET=1 when there is no GPU
import cascade_rag.kernels.fused_rmsnorm_qkv as fr
import cascade_rag.kernels.greedy as greedy
import cascade_rag.kernels.linear as lin
import cascade_rag.kernels.lm_head as lm_head
from cascade_rag.kernels.options import DEFAULT_KERNELS, AttentionTuning, HeadTuning, KernelOptions
from cascade_rag.kernels.rmsnorm import rmsnorm_ref


def decode_options(**tuning) -> KernelOptions:
    """The default kernel options with these decode settings."""
    return replace(DEFAULT_KERNELS, decode=replace(DEFAULT_KERNELS.decode, **tuning))



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
# row tiles of 64 (prefill)
TUNED = [(([60, 45, 30], 5, 4, 2, 64, None, ()), "attention",
          AttentionTuning(block_n=16, num_warps=4, num_stages=1, programs_per_sm=8, min_split=16)),
         (([60, 45, 30], 17, 8, 1, 128, None, ()), "prefill",
          AttentionTuning(block_n=64, num_warps=2, num_stages=2, programs_per_sm=6, min_split=32))]


@pytest.mark.interpreter
@pytest.mark.parametrize("case,table,tuning", TUNED, ids=["attention", "prefill"])
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


# (rows, K, N, RMSNorm before, bias, gated, residual); K 96 and 200 leave a partial input block of 64, N 22 and 28 a
# partial block of outputs
LINEAR_CASES = [(rows, k, n, norm, bias, False, residual)
                for rows in (1, 3) for k, n in ((64, 48), (96, 22)) for norm in (False, True)
                for bias, residual in ((False, False), (True, False), (False, True))]
LINEAR_CASES += [(rows, k, n, norm, False, True, False) for rows in (1, 2) for k, n in ((64, 40), (200, 28))
                 for norm in (False, True)]
LINEAR_CASES += [(3, 512, 12, True, False, False, True), (2, 512, 10, True, False, True, False)]  # warp rows, 2 pieces


def linear_options(block_k: int) -> KernelOptions:
    """The default kernel options with this input block for both GEMVs."""
    return replace(DEFAULT_KERNELS, linear=replace(DEFAULT_KERNELS.linear, block_k=block_k),
                   linear_gated=replace(DEFAULT_KERNELS.linear_gated, block_k=block_k))


def check_linear(case, dtype, device, atol, options=DEFAULT_KERNELS):
    rows, k, n, norm, bias, gated, residual = case
    torch.manual_seed(rows + k + n)

    def rand(*shape, mean=0.0, std=1.0):
        return (mean + std * torch.randn(*shape, device=device)).to(dtype)
    x = rand(rows, 2 * k)[:, k:] if residual else rand(rows, k)  # rows apart by more than K
    args = (x, rand((2 if gated else 1) * n, k, std=k ** -0.5), rand(n, std=0.5) if bias else None,
            rand(k, mean=1, std=0.5) if norm else None, 1e-6, gated, rand(rows, n) if residual else None)
    got = lin.linear(*args, impl="triton", options=options)
    assert torch.equal(got, lin.linear(*args, impl="triton", options=options))  # cached launch
    plain = replace(options, cached_launch=False, pdl=False)
    assert torch.equal(got, lin.linear(*args, impl="triton", options=plain))  # a plain Triton launch, no PDL
    ref = lin.linear_ref(*args)
    assert got.shape == (rows, n) and got.dtype == dtype
    torch.testing.assert_close(got.float(), ref.float(), atol=atol, rtol=atol)


@pytest.mark.interpreter
@pytest.mark.parametrize("block_k", [4096, 64])  # the whole input in one block (weights read first) or a loop
@pytest.mark.parametrize("case", LINEAR_CASES)
def test_linear_interpreted(case, block_k):
    check_linear(case, torch.float32, "cpu", 1e-3, linear_options(block_k))


@pytest.mark.interpreter
@pytest.mark.parametrize("k", [64, 512, 96])  # warp rows in one piece, in two, and the padded block
def test_linear_input_rows_at_an_odd_stride(k):
    """The input's row stride decides whether its loads are vectorised: an odd one must not be rounded."""
    torch.manual_seed(k)
    x = torch.randn(3, 2 * k + 1)[:, :k]
    w, norm = torch.randn(20, k) / k ** 0.5, torch.rand(k) + 0.5
    torch.testing.assert_close(lin.linear(x, w, norm_weight=norm, impl="triton"),
                               lin.linear_ref(x, w, None, norm, 1e-6), atol=1e-4, rtol=1e-4)


def check_silu_mul(rows, n, dtype, device):
    torch.manual_seed(rows + n)
    y = (3 * torch.randn(rows, 2 * n + 8, device=device)).to(dtype)[:, 8:]  # a row stride that is not 2N
    gate, up = y.chunk(2, dim=-1)
    rtol = 1e-6 if dtype == torch.float32 else 2 ** -7  # bf16: within one rounding step of torch's
    torch.testing.assert_close(lin.silu_mul(y), torch.nn.functional.silu(gate) * up, atol=0, rtol=rtol)


@pytest.mark.interpreter
@pytest.mark.parametrize("rows,n", [(3, 40), (2, 1500)])  # one block a row, and two with a masked tail
def test_silu_mul_interpreted(rows, n):
    check_silu_mul(rows, n, torch.float32, "cpu")


def test_linear_dispatch_on_cpu_is_reference_and_gated_takes_no_residual():
    x, w, norm = torch.randn(2, 32), torch.randn(48, 32), torch.rand(32) + 0.5
    assert torch.equal(lin.linear(x, w, norm_weight=norm, gated=True), lin.linear_ref(x, w, None, norm, 1e-6, True))
    with pytest.raises(ValueError, match="no bias and no residual"):
        lin.linear(x, w, gated=True, residual=torch.zeros(2, 24))


def check_head_argmax(n, device, dtype):
    """The LM head's fp32 logits and argmax keys: the token they hold is torch.argmax of the logits, the lowest
    index among equal maxima (planted: ties, -0.0 against 0.0, all-negative logits)."""
    torch.manual_seed(n)
    x, norm = torch.randn(1, 64, device=device).to(dtype), (torch.rand(64, device=device) + 0.5).to(dtype)
    for plant in ("random", "tie", "zeros", "negative"):
        w = torch.randn(n, 64, device=device).to(dtype) * 64 ** -0.5
        if plant == "tie":
            w[n // 3] = w[n - 2] = w.abs().sum(0) * torch.sign(x[0])  # the largest logit, twice
        elif plant == "zeros":
            w = w * 0
            w[n // 2] = -0.0
        elif plant == "negative":
            w = -(w.abs() + 0.1) * torch.sign(x[0])
        best = torch.full((greedy.SLOTS,), greedy.EMPTY, dtype=torch.int64, device=device)
        logits = lin.linear(x, w, norm_weight=norm, out_dtype=torch.float32, best=best, impl="triton")
        ref = lin.linear_ref(x, w, norm_weight=norm, out_dtype=torch.float32)
        assert logits.dtype == torch.float32
        torch.testing.assert_close(logits, ref, atol=2e-2, rtol=2e-2)
        assert greedy.best_token(best.cpu().numpy()) == int(logits[0].argmax()), plant
        ref_best = torch.full_like(best, greedy.EMPTY)
        lin.linear_ref(x, w, norm_weight=norm, out_dtype=torch.float32, best=ref_best)
        assert greedy.best_token(ref_best.cpu().numpy()) == int(ref[0].argmax()), plant


def check_quantized_head(n, k, device, dtype, options=DEFAULT_KERNELS):
    """kernels.lm_head's token equals the full head's argmax keys' (ties to the lower index), planted: a row
    repeated below the winner, a row a rounding step from it, all logits equal, all negative."""
    torch.manual_seed(n + k)
    norm = (torch.rand(k, device=device) + 0.5).to(dtype)
    for plant in ("random", "random", "tie", "near", "zeros", "negative"):
        w = (torch.randn(n, k, device=device) * k ** -0.5).to(dtype)
        x = torch.randn(1, k, device=device).to(dtype)
        if plant == "tie":
            x = (w[n - 2] * 4).to(dtype)[None]
            w[n // 3] = w[n - 2]
        elif plant == "near":
            x = (w[n - 2] * 4).to(dtype)[None]
            w[n // 3] = w[n - 2] * (1 - 2.0 ** -7)
        elif plant == "zeros":
            w = w * 0
        elif plant == "negative":
            w = -(w.abs() + 0.1) * torch.sign(x[0])
        full = torch.full((greedy.SLOTS,), greedy.EMPTY, dtype=torch.int64, device=device)
        logits = lin.linear(x, w, norm_weight=norm, out_dtype=torch.float32, best=full, impl="triton")
        best = torch.full((2 * greedy.SLOTS,), greedy.EMPTY, dtype=torch.int64, device=device)
        quantized = lm_head.quantize_rows(w)
        approx = lm_head.greedy_head(x, w, quantized, norm, 1e-6, best, options)
        token = greedy.best_token(best[:greedy.SLOTS].cpu().numpy())
        assert token == greedy.best_token(full.cpu().numpy()) == int(logits[0].argmax()), plant
        torch.testing.assert_close(approx, logits, atol=0.1, rtol=0.05)
        # the first pass's error bound, with the input quantised as the kernel does, a block at a time
        xn = rmsnorm_ref(x, norm, 1e-6)[0].double()
        block = lm_head.input_block(k, options)
        steps = [b.abs().max().clamp_min(1e-30) / 127 for b in xn.split(block)]
        xq = torch.cat([s * torch.floor(b / s + 0.5) for b, s in zip(xn.split(block), steps)])
        _, e, c = quantized[1].double().unbind(1)
        bound = e * xn.norm() + c * ((xn - xq).norm() + lm_head.SLACK * xn.norm())
        assert ((approx[0].double() - w.double() @ xn).abs() <= bound).all(), plant
        assert (bound <= 0.05 * w.double().norm(dim=1) * xn.norm() + 1e-6).all(), plant  # leaves few candidates


def test_quantized_rows_bound_the_product_error():
    torch.manual_seed(0)
    w = torch.randn(300, 96) * torch.rand(300, 1) * 3
    w[7] = 0
    q, scales = lm_head.quantize_rows(w)
    assert q.dtype == torch.int8 and scales.shape == (300, 3)
    x = torch.randn(96, 50).double()
    dequant = q.double() * scales[:, :1].double()
    err = (w.double() @ x - dequant @ x).abs()
    assert (err <= x.norm(dim=0)[None, :] * scales[:, 1:2].double()).all()
    assert (scales[:, 1] <= 0.02 * w.norm(dim=1) + 1e-6).all()  # a bound that leaves few candidates
    assert (scales[:, 2].double() >= dequant.norm(dim=1)).all()
    assert lm_head.supported("cpu")
    with pytest.raises(ValueError, match="one row of 96"):
        lm_head.greedy_head(torch.zeros(2, 96), w, (q, scales), w[0], 1e-6,
                            torch.zeros(2 * greedy.SLOTS, dtype=torch.int64))


def check_next_input(device):
    embed = torch.randn(300, 48, device=device)
    for keep in (False, True, "bounds"):
        states = []
        for impl in (greedy.next_input, greedy.next_input_ref):
            token, position, slot = (torch.tensor([v], device=device) for v in (7, 40, 3))
            best = None
            if keep:
                slots = 2 * greedy.SLOTS if keep == "bounds" else greedy.SLOTS  # the second half: lm_head's
                best = torch.full((slots,), greedy.EMPTY, dtype=torch.int64, device=device)
                greedy.token_keys(torch.tensor(123, device=device), best)
                best[17] = greedy.keys_ref(torch.tensor([1.0, 5.0, 2.0], device=device)).max()  # index 1 wins
                best[40] = greedy.keys_ref(torch.tensor([-1.0, 0, 0, 0, 5.0], device=device)).max()  # a tie: 1 wins
                if keep == "bounds":  # a larger key past the argmax slots: cleared, not taken
                    best[-1] = greedy.keys_ref(torch.tensor([9.0, 7.0], device=device)).max()
            x = impl(embed, token, position, slot, best)
            states.append((x, token, position, slot, best))
        (x, token, position, slot, best), ref = states
        assert torch.equal(x, ref[0]) and torch.equal(x, embed[[1 if keep else 7]])
        assert (int(token), int(position), int(slot)) == (1 if keep else 7, 41, 4)
        assert not keep or (bool((best == greedy.EMPTY).all()) and torch.equal(best, ref[4]))


def check_publish_token(device):
    best = torch.full((greedy.SLOTS,), greedy.EMPTY, dtype=torch.int64, device=device)
    best[5] = greedy.keys_ref(torch.tensor([0.0, 0, 2.5, 1.0], device=device)).max()  # index 2
    best[60] = greedy.keys_ref(torch.tensor([-3.0] * 7 + [2.5], device=device)).max()  # index 7 ties: 2 wins
    best[9] = greedy.keys_ref(torch.tensor([-1.0, 2.25], device=device)).max()  # lower: loses
    out = torch.full((8,), -1, dtype=torch.int64, pin_memory=device == "cuda")  # host memory, written by the kernel
    greedy.publish_token(best, torch.tensor([6], device=device), out)
    if device == "cuda":
        torch.cuda.synchronize()
    assert out.tolist() == [-1] * 6 + [greedy.best_token(best.cpu().numpy()), -1] and int(out[6]) == 2


@pytest.mark.interpreter
def test_publish_token_interpreted():
    check_publish_token("cpu")


@pytest.mark.interpreter
def test_head_argmax_keys_interpreted():
    check_head_argmax(200, "cpu", torch.float32)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [64, 96])
def test_quantized_head_gives_the_full_heads_token_interpreted(k, dtype):
    check_quantized_head(300, k, "cpu", dtype)


@pytest.mark.interpreter
def test_quantized_head_under_other_tuning_interpreted():
    """Smaller row tiles and input blocks (three scales over an input of 96) give the same token."""
    head = HeadTuning(block_n=32, block_k=32, num_warps=2, num_stages=1, exact_rows=64, exact_warps=2)
    check_quantized_head(300, 96, "cpu", torch.float32, replace(DEFAULT_KERNELS, head=head))


@pytest.mark.interpreter
def test_next_input_interpreted():
    check_next_input("cpu")


def test_argmax_keys_need_one_row_and_the_slots():
    with pytest.raises(ValueError, match="one row"):
        lin.linear(torch.randn(2, 8), torch.randn(5, 8), best=torch.zeros(greedy.SLOTS, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64 slots"):
        lin.linear(torch.randn(1, 8), torch.randn(5, 8), best=torch.zeros(3, dtype=torch.int64))


def test_rmsnorm_qkv_splits_the_normed_projection_into_heads():
    x, w, b, norm = torch.randn(3, 32), torch.randn((4 + 2 * 2) * 8, 32), torch.randn(64), torch.rand(32) + 0.5
    q, k, v = fr.rmsnorm_qkv(x, norm, 1e-6, w, b, 4, 2, 8)
    assert q.shape == (3, 4, 8) and k.shape == v.shape == (3, 2, 8)
    torch.testing.assert_close(torch.cat([t.flatten(1) for t in (q, k, v)], 1), lin.linear_ref(x, w, b, norm, 1e-6))


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


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [200, 151936])
def test_head_argmax_keys_gpu(n, dtype):
    check_head_argmax(n, "cuda", dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k", [(300, 96), (49152, 576), (151936, 1024)])  # SmolLM2's and Qwen3's heads
def test_quantized_head_gives_the_full_heads_token_gpu(n, k, dtype):
    check_quantized_head(n, k, "cuda", dtype)


@pytest.mark.gpu
def test_next_input_gpu():
    check_next_input("cuda")


@pytest.mark.gpu
def test_publish_token_gpu():
    check_publish_token("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("case", LINEAR_CASES + [(1, 1024, 4096, True, False, False, False),  # Qwen3-0.6B QKV
                                                 (1, 1024, 3072, True, False, True, False),   # gate/up
                                                 (1, 3072, 1024, False, False, False, True),  # down
                                                 (5, 896, 1152, True, True, False, False),    # Qwen2-0.5B QKV
                                                 (1, 1024, 151936, True, False, False, False)])  # final norm + head
@pytest.mark.parametrize("block_k", [4096, 64])
def test_linear_gpu(case, dtype, atol, block_k):
    check_linear(case, dtype, "cuda", atol, linear_options(block_k))


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [4, 32, 300])
def test_gated_linear_of_many_rows_gpu(rows):
    """Past MAX_TRITON_ROWS: the Triton RMSNorm, cuBLAS and the Triton SiLU * up, against linear_ref."""
    assert rows > lin.MAX_TRITON_ROWS
    check_silu_mul(rows, 3072, torch.bfloat16, "cuda")
    torch.manual_seed(rows)
    x = torch.randn(rows, 1024, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(6144, 1024, device="cuda") / 32).to(torch.bfloat16)
    norm = (torch.rand(1024, device="cuda") + 0.5).to(torch.bfloat16)
    got = lin.linear(x, w, norm_weight=norm, gated=True)
    ref = lin.linear_ref(x, w, None, norm, 1e-6, True)
    torch.testing.assert_close(got.float(), ref.float(), atol=2e-2, rtol=2e-2)
