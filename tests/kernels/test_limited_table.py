"""A prefill over a graph's chunk table in which each query sees only a prefix of the context (limits), as a
selective recompute's queries do, which sit among the context chunks: against the reference with the same limits,
over chunks in the model's dtype and packed ones; under TRITON_INTERPRET=1 on the CPU and compiled on CUDA."""
from dataclasses import replace

import pytest
import torch

import cascade_rag.kernels.chunk_attention as ca  # kernels.dispatch sets TRITON_INTERPRET=1 when there is no GPU
from cascade_rag.kernels.chunk_attention.common import DONE
from cascade_rag.kernels.kv_quant import quantize
from cascade_rag.kernels.options import DEFAULT_KERNELS

# (context lengths, which are packed ("d": model dtype, "p": the format), format, queries, Hq, Hkv, head_dim,
# limits in position order as a recompute's are)
CASES = [
    ([7, 40, 25], "ddd", None, 9, 4, 2, 64, False),     # limits inside chunks, at their ends, 0
    ([5, 70, 33], "dpp", "int4", 12, 4, 2, 64, False),  # packed context: the limit cuts a packed tile
    ([6, 50, 31], "dpd", "fp8", 20, 8, 1, 128, False),  # GQA 8 in several row tiles, head_dim 128
    ([9, 64, 40, 30], "dddd", None, 70, 4, 2, 64, True),  # tiles whose limits end before whole chunks and splits
]


def limited_table(case, dtype, device):
    lengths, kinds, fmt, nq, hq, hkv, d, ordered = case
    torch.manual_seed(sum(lengths) + nq)
    layers, layer, max_chunks = 2, 1, len(lengths) + 3  # padding chunks before the real ones
    chunks = []
    for n, kind in zip(lengths, kinds):
        k, v = (torch.randn(layers, n, hkv, d, device=device) * 2 + 0.3 for _ in range(2))
        chunks.append((quantize(k, fmt, True), quantize(v, fmt, False)) if kind == "p" else (k.to(dtype), v.to(dtype)))
    own_k, own_v = (torch.randn(layers, nq + 8, hkv, d, device=device).to(dtype) for _ in range(2))
    bases = ca.fixed_bases(device)[{"fp8": 1, "int4": 2}[fmt]] if fmt else ca.NO_PACKED
    tables = torch.tensor(ca.chunk_tables(chunks, own_k, own_v, max_chunks, bases), device=device)
    context = sum(lengths)
    limits = torch.randint(0, context + 1, (nq,), device=device)
    limits[:3] = torch.tensor([0, lengths[0], context], device=device)
    if ordered:
        limits = limits.sort().values
    q = torch.randn(max_chunks, nq, hq, d, dtype=dtype, device=device)
    empty = torch.zeros(0, hkv, d, dtype=dtype, device=device)
    pad = max_chunks - 1 - len(chunks)
    keys = [empty] * pad + [k[layer] for k, _ in chunks] + [own_k[layer, :nq]]
    values = [empty] * pad + [v[layer] for _, v in chunks] + [own_v[layer, :nq]]
    return q, own_k[layer], own_v[layer], tables[layer], bases, limits, keys, values


def check(case, dtype, device, atol):
    q, own_k, own_v, table, bases, limits, keys, values = limited_table(case, dtype, device)
    nq, hq, d = q.shape[1:]
    scale = d ** -0.5
    workspace = ca.decode_workspace(nq, hq, d, own_k.shape[1], 256, device, aligned=False, packed=bool(bases.format),
                                    limited=True)
    assert not workspace.decode
    out = ca.chunk_attention_table(q, own_k, own_v, table, scale, workspace, packed=bases, limits=limits)
    ref = ca.chunk_attention_ref(q.float(), keys, values, scale, limits)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max().item() <= atol
    unlimited = ca.chunk_attention_ref(q.float(), keys, values, scale)
    assert (ref - unlimited).abs().max() > 10 * atol  # the limits matter in these cases


@pytest.mark.interpreter
@pytest.mark.parametrize("case", CASES)
def test_limited_table_prefill_interpreted(case):
    check(case, torch.float32, "cpu", 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
def test_limited_table_prefill_gpu(case):
    check(case, torch.bfloat16, "cuda", 2e-2)


def window_floors(limits: torch.Tensor, sink: int, window: int, questions: int) -> torch.Tensor:
    """Floors as a windowed recompute's: each query sees level 0 (the first `sink` keys) and the context keys of
    the last `window` before its limit, and its own chunk's rows of the last `window` before it; the last
    `questions` queries see everything (a question's rows after a lead)."""
    n = len(limits)
    floors = torch.stack((torch.full_like(limits, sink), (limits - window).clamp(min=sink),
                          (torch.arange(n, device=limits.device) - window).clamp(min=0)), dim=1)
    floors[n - questions:] = 0
    return floors.contiguous()


# a windowed workspace's splits, short enough that a windowed row sees a few of them
FINE_SPLITS = replace(DEFAULT_KERNELS, windowed_prefill=replace(DEFAULT_KERNELS.windowed_prefill, programs_per_sm=8,
                                                                 min_split=16))


def check_window(case, window, dtype, device, atol, windowed=False):
    """windowed: the workspace of a windowed lead (fine splits), its partials buffer filled with NaN first: a split
    where a row sees no key must leave the row's partial sums unwritten, and the merge must not read them."""
    q, own_k, own_v, table, bases, limits, keys, values = limited_table(case, dtype, device)
    nq, hq, d = q.shape[1:]
    floors = window_floors(limits, case[0][0], window, 3)
    options = FINE_SPLITS if windowed else DEFAULT_KERNELS
    workspace = ca.decode_workspace(nq, hq, d, own_k.shape[1], 256, device, aligned=False, options=options,
                                    limited=True, windowed=windowed)
    workspace.part.fill_(float("nan"))
    out = ca.chunk_attention_table(q, own_k, own_v, table, d ** -0.5, workspace, packed=bases, limits=limits,
                                   floors=floors, options=options)
    ref = ca.chunk_attention_ref(q.float(), keys, values, d ** -0.5, limits, floors)
    assert torch.isfinite(out).all() and (out.float() - ref).abs().max().item() <= atol
    assert (ref - ca.chunk_attention_ref(q.float(), keys, values, d ** -0.5, limits)).abs().max() > 10 * atol
    if windowed:  # some rows saw no key in some split: their partial sums were never written
        assert workspace.num_splits > 4 and workspace.part.isnan().any()
        assert leads_done_whole(workspace, floors, hq // own_k.shape[1], hq, d)


def leads_done_whole(workspace, floors, group, hq, d) -> bool:
    """A tile of lead rows only (a sink each) reads every key it sees in split 0, which marks its rows done (their
    maximum there DONE); its other splits store nothing for them (their partials stay as filled: NaN). Every other
    row has a finite maximum at split 0."""
    nq, splits, block_m = len(floors), workspace.num_splits, workspace.block_m
    m = workspace.part[splits * nq * hq * d:][:splits * nq * hq].view(splits, nq, hq)
    tiles = [t.unique() for t in (torch.arange(nq * group, device=floors.device) // group).split(block_m)]
    leads = [t for t in tiles if (floors[t, 0] > 0).all()]
    assert leads  # the case has such a tile
    lead_rows = torch.cat(leads)
    others = torch.ones(nq, dtype=torch.bool, device=floors.device)
    others[lead_rows] = False
    return bool((m[0, lead_rows] == DONE).all() and m[1:, lead_rows].isnan().all()
                and (m[0, others].isfinite()).all())


# dense contexts (a window comes with EPIC's dense rows), limits in position order; windows shorter than a chunk
WINDOW_CASES = [(CASES[0], 5), (CASES[3], 16), (CASES[3], 50)]


@pytest.mark.interpreter
@pytest.mark.parametrize("case,window", WINDOW_CASES)
def test_windowed_table_prefill_interpreted(case, window):
    check_window(case, window, torch.float32, "cpu", 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("case,window", WINDOW_CASES)
def test_windowed_table_prefill_gpu(case, window):
    check_window(case, window, torch.bfloat16, "cuda", 2e-2)


@pytest.mark.interpreter
@pytest.mark.parametrize("case,window", WINDOW_CASES[1:])
def test_windowed_splits_interpreted(case, window):
    check_window(case, window, torch.float32, "cpu", 1e-4, windowed=True)


@pytest.mark.gpu
@pytest.mark.parametrize("case,window", WINDOW_CASES[1:])
def test_windowed_splits_gpu(case, window):
    check_window(case, window, torch.bfloat16, "cuda", 2e-2, windowed=True)


def test_reference_floors_hide_the_keys_between_sink_and_floor():
    """Floors (sink, floor, own floor) hide exactly the context keys sink..floor-1 and the first own-floor own rows:
    query 2 against a softmax over exactly the keys it sees, each scored by its chunk's query rotation."""
    torch.manual_seed(2)
    keys = [torch.randn(n, 1, 64) for n in (4, 6, 3)]
    values = [torch.randn(n, 1, 64) for n in (4, 6, 3)]
    q = torch.randn(3, 3, 2, 64)
    out = ca.chunk_attention_ref(q, keys, values, 0.125, torch.tensor([10, 10, 10]), torch.tensor([[2, 7, 1]] * 3))
    seen = [(0, keys[0][:2], values[0][:2]), (1, keys[1][3:], values[1][3:]), (2, keys[2][1:3], values[2][1:3])]
    scores = torch.cat([q[c, 2] @ k[:, 0].T for c, k, _ in seen], dim=-1) * 0.125  # [Hq, keys]
    expected = torch.softmax(scores, dim=-1) @ torch.cat([v[:, 0] for _, _, v in seen])
    assert torch.allclose(out[2], expected, atol=1e-5)
    assert not torch.allclose(out[2], ca.chunk_attention_ref(q, keys, values, 0.125, torch.tensor([10] * 3))[2])


def test_reference_limits_mask_the_context_alone():
    """Limit 0 leaves a query its own chunk only (causal); the full context's length changes nothing."""
    torch.manual_seed(1)
    keys = [torch.randn(n, 1, 64) for n in (10, 6, 3)]
    values = [torch.randn(n, 1, 64) for n in (10, 6, 3)]
    q = torch.randn(3, 3, 2, 64)
    full = ca.chunk_attention_ref(q, keys, values, 0.125)
    assert torch.allclose(ca.chunk_attention_ref(q, keys, values, 0.125, torch.tensor([16, 16, 16])), full)
    own = ca.chunk_attention_ref(q[2:], keys[2:], values[2:], 0.125)
    assert torch.allclose(ca.chunk_attention_ref(q, keys, values, 0.125, torch.tensor([0, 0, 0])), own, atol=1e-6)


@pytest.mark.interpreter
def test_limits_of_the_wrong_shape_are_refused():
    q, own_k, own_v, table, bases, limits, _, _ = limited_table(CASES[0], torch.float32, "cpu")
    workspace = ca.decode_workspace(q.shape[1], q.shape[2], q.shape[3], own_k.shape[1], 256, "cpu")
    with pytest.raises(ValueError, match="one per query"):
        ca.chunk_attention_table(q, own_k, own_v, table, 0.125, workspace, limits=limits[:-1])
    floors = window_floors(limits, 7, 4, 1)
    with pytest.raises(ValueError, match=r"int64 \[9, 3\]"):
        ca.chunk_attention_table(q, own_k, own_v, table, 0.125, workspace, limits=limits, floors=floors[:-1])
    with pytest.raises(ValueError, match="comes with limits"):
        ca.chunk_attention_table(q, own_k, own_v, table, 0.125, workspace, floors=floors)


def test_limited_prefills_take_their_own_settings():
    """A prefill under key limits (a selective recompute, alone or before the question) splits its context by
    KernelOptions.limited_prefill, one without by KernelOptions.prefill; over packed chunks both by packed_prefill."""
    plain = ca.decode_workspace(32, 4, 64, 2, 100_000, "cpu")
    limited = ca.decode_workspace(32, 4, 64, 2, 100_000, "cpu", limited=True)
    packed = ca.decode_workspace(32, 4, 64, 2, 100_000, "cpu", packed=True, limited=True)
    assert not limited.decode and limited.block_m == plain.block_m == 64
    assert limited.num_splits == 4 * plain.num_splits == 4 * packed.num_splits  # 8 programs an SM against 2
    fewer = replace(DEFAULT_KERNELS, limited_prefill=DEFAULT_KERNELS.prefill)
    assert ca.decode_workspace(32, 4, 64, 2, 100_000, "cpu", options=fewer, limited=True).num_splits == plain.num_splits
    assert ca.decode_workspace(32, 4, 64, 2, 8192, "cpu", limited=True).num_splits == 8  # of 1,024 keys at least


def test_windowed_prefills_split_as_for_the_question_tile():
    """A windowed lead's splits are counted for one row tile (the question's, which reads every key) by
    KernelOptions.windowed_prefill, whatever the rows of the lead: as many as one tile of `cached` gets."""
    few = ca.decode_workspace(64, 4, 64, 2, 100_000, "cpu", limited=True, windowed=True)
    many = ca.decode_workspace(2048, 4, 64, 2, 100_000, "cpu", limited=True, windowed=True)
    assert few.num_splits == many.num_splits == 4  # 2 programs an SM x 4 SMs over 2 KV heads
    assert ca.decode_workspace(2048, 4, 64, 2, 100_000, "cpu", limited=True).num_splits == 2  # 256 row tiles
    assert ca.decode_workspace(2048, 4, 64, 2, 2048, "cpu", limited=True, windowed=True).num_splits == 2


def test_merges_of_many_rows_take_several_rows_a_program():
    """A lead's thousands of rows merge several to a program (a few splits at a time); a question's few rows one to
    a program, all their splits at once."""
    from cascade_rag.kernels.chunk_attention.prefill import merge_block
    assert merge_block(33, 128, 512, 132) == (64, 1)
    assert merge_block(33, 128, 16_896, 132) == (4, 16)
    assert merge_block(4, 64, 64, 4) == (4, 16)
    assert merge_block(33, 128, 16_896, 132, marked=True) == (8, 8)  # most rows done: the rest over more programs
