"""rope_store under a graph prefill's key limits and windows (kernels.windows): each query rotated only for the
chunks holding keys it sees, which is all the attention reads; under the interpreter on the CPU and compiled on
CUDA."""
from dataclasses import replace

import pytest
import torch

import cascade_rag.kernels.chunk_attention as ca
from cascade_rag.kernels.options import DEFAULT_KERNELS

from .test_limited_table import CASES, FINE_SPLITS, WINDOW_CASES, limited_table, window_floors


def seen_pairs(lengths, pad, limits, floors):
    """[chunks, queries] bool: chunk c holds a context key query i sees (or is the own chunk, the last)."""
    starts = torch.tensor([0] * pad + list(torch.tensor(lengths).cumsum(0) - torch.tensor(lengths)))
    ends = torch.tensor([0] * pad + list(torch.tensor(lengths).cumsum(0)))
    j = torch.arange(int(ends[-1]))
    sees = (j[None, :] < limits[:, None].cpu()) & ((j[None, :] < floors[:, :1].cpu()) |
                                                   (j[None, :] >= floors[:, 1:2].cpu()))  # [queries, keys]
    inside = (j[None, :] >= starts[:, None]) & (j[None, :] < ends[:, None])  # [chunks, keys]
    pairs = (inside.float() @ sees.float().T) > 0
    return torch.cat((pairs, torch.ones(1, len(limits), dtype=torch.bool)))


def check_rotations_seen(case, window, dtype, device, atol, attention_atol):
    """rope_store under a table's limits and floors rotates each query for the chunks holding keys it sees (and its
    own) as the reference does; the attention reads no other: with NaN for every other rotation it equals the
    reference over the full rotations, across splits and in the lead's tiles."""
    from cascade_rag.engine.model import Rotary
    from cascade_rag.kernels.rope import RotaryInputs, rope_store
    q, own_k, own_v, table, bases, limits, keys, values = limited_table(case, dtype, device)
    chunks, nq, hq, d = q.shape
    floors = window_floors(limits, case[0][0], window, 3)
    torch.manual_seed(7)
    raw = torch.randn(nq, hq, d, device=device).to(dtype)
    k_new, v_new = (torch.randn(nq, own_k.shape[1], d, device=device).to(dtype) for _ in range(2))
    rotary = Rotary(d, 10000.0, 512).to(device)
    shifts = torch.arange(chunks - 1, device=device) * 3 - 4
    rotated = []
    for impl, seen in (("triton", dict(table=table, limits=limits, floors=floors.contiguous())), ("ref", {})):
        rotated.append(rope_store(raw, k_new, v_new, RotaryInputs(limits + 100, shifts, torch.arange(nq, device=device),
                                                                  own_k.clone(), own_v.clone(), rotary.cos,
                                                                  rotary.sin, **seen), impl=impl))
    got, want = rotated
    pairs = seen_pairs(case[0], chunks - 1 - len(case[0]), limits, floors).to(device)
    assert not pairs.all() and pairs[-1].all()
    torch.testing.assert_close(got[pairs].float(), want[pairs].float(), atol=atol, rtol=atol)
    got[~pairs] = float("nan")
    for options in (DEFAULT_KERNELS, FINE_SPLITS):
        workspace = ca.decode_workspace(nq, hq, d, own_k.shape[1], 256, device, options=options, limited=True,
                                        windowed=options is FINE_SPLITS)
        out = ca.chunk_attention_table(got, own_k, own_v, table, d ** -0.5, workspace, limits=limits, floors=floors,
                                       options=options)
        ref = ca.chunk_attention_ref(want.float(), keys, values, d ** -0.5, limits, floors)
        assert torch.isfinite(out).all() and (out.float() - ref).abs().max().item() <= attention_atol


@pytest.mark.interpreter
@pytest.mark.parametrize("case,window", WINDOW_CASES)
def test_queries_rotated_for_the_chunks_they_see_interpreted(case, window):
    check_rotations_seen(case, window, torch.float32, "cpu", 1e-5, 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("case,window", WINDOW_CASES)
def test_queries_rotated_for_the_chunks_they_see_gpu(case, window):
    check_rotations_seen(case, window, torch.bfloat16, "cuda", 2e-2, 2e-2)


@pytest.mark.interpreter
def test_rotations_under_limits_need_the_table_limits_and_floors_of_their_shape():
    from cascade_rag.engine.model import Rotary
    from cascade_rag.kernels.rope import RotaryInputs, rope_store
    q, own_k, own_v, table, _, limits, _, _ = limited_table(CASES[0], torch.float32, "cpu")
    chunks, nq, hq, d = q.shape
    rotary = Rotary(d, 10000.0, 512)
    floors = window_floors(limits, 7, 4, 1)
    base = RotaryInputs(limits + 100, torch.zeros(chunks - 1, dtype=torch.int64), torch.arange(nq), own_k, own_v,
                        rotary.cos, rotary.sin)
    raw, new = torch.randn(nq, hq, d), torch.randn(nq, own_k.shape[1], d)
    for seen, message in ((dict(limits=limits), "chunk table of 6 chunks"),
                          (dict(table=table[:-1], limits=limits), "chunk table of 6 chunks"),
                          (dict(table=table, limits=limits.int()), r"int64 limits \[9\]"),
                          (dict(table=table, limits=limits, floors=floors[:-1]), r"int64 floors \[9, 3\]")):
        with pytest.raises(ValueError, match=message):
            rope_store(raw, new, new, replace(base, **seen), impl="triton")
