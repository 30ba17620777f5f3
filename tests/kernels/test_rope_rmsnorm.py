"""kernels.rope (rotated queries per chunk, rotated key and value stored at their slots, with the q/k RMSNorm and
the query scales folded in) and kernels.rmsnorm:
Triton under the interpreter on the CPU and on the GPU, against the PyTorch references."""
import pytest
import torch

from cascade_rag.kernels import rmsnorm as rn
from cascade_rag.kernels import rope


# (tokens, Hq, Hkv, D, chunk shifts); the tokens sit at positions 20.., so that shifts 30 and 45 are those of chunks
# placed after them (a selective recompute's)
ROPE_CASES = [(1, 4, 2, 16, [0, -3, 7]), (3, 4, 1, 32, []), (2, 14, 2, 64, [5]), (1, 16, 8, 128, list(range(-8, 9, 2))),
              (2, 4, 2, 16, [0, 30, 45])]
# folded into rope_store: (per-head q/k RMSNorm, query scales per context chunk)
ROPE_OPTIONS = [(False, False), (True, False), (False, True), (True, True)]


def rope_inputs(case, dtype, device, norm, scaled, views=True):
    """q, k, v (views of one [n, qkv_dim] tensor, or separate tensors), positions, shifts, slots and the
    keyword arguments."""
    n, hq, hkv, d, shifts = case
    torch.manual_seed(n + hq + d)
    qkv = (3 * torch.randn(n, (hq + 2 * hkv) * d, device=device)).to(dtype)
    q, k, v = (t.view(n, -1, d) for t in qkv.split([hq * d, hkv * d, hkv * d], dim=-1))
    if not views:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    positions = torch.arange(20, 20 + n, device=device)
    slots = torch.arange(4, 4 + n, device=device)
    kwargs = {}
    if norm:
        kwargs.update(q_norm=(1 + 0.5 * torch.randn(d, device=device)).to(dtype),
                      k_norm=(1 + 0.5 * torch.randn(d, device=device)).to(dtype), qk_eps=1e-6)
    if scaled:
        kwargs["scales"] = torch.tensor([(1 / 0.9, 1.0, 0.7)[c % 3] for c in range(len(shifts))], device=device)
    return q, k, v, positions, torch.tensor(shifts, dtype=torch.int64, device=device), slots, kwargs


def check_rope(case, dtype, device, atol, norm=False, scaled=False, views=True, padding=0):
    """Triton against the reference; padding: the first chunks' queries are not rotated by the kernel (a graph's
    empty chunks), the others' compared."""
    n, hq, hkv, d, shifts = case
    q, k, v, positions, shifts, slots, kwargs = rope_inputs(case, dtype, device, norm, scaled, views)
    if padding:
        kwargs["padding"] = torch.tensor([padding], device=device)
    from cascade_rag.engine.model import Rotary
    rotary = Rotary(d, 10000.0, 64).to(device)
    outputs = []
    for impl in ("triton", "ref"):
        own_k = torch.zeros(8, hkv, d, dtype=dtype, device=device)
        own_v = torch.zeros(8, hkv, d, dtype=dtype, device=device)
        inputs = rope.RotaryInputs(positions, shifts, slots, own_k, own_v, rotary.cos, rotary.sin, **kwargs)
        queries = rope.rope_store(q, k, v, inputs, impl=impl)
        outputs.append((queries, own_k, own_v))
    (tq, tk, tv), (rq, rk, rv) = outputs
    assert tq.shape == (len(shifts) + 1, n, hq, d) and tq.dtype == dtype
    for got, want in ((tq[padding:], rq[padding:]), (tk, rk), (tv, rv)):
        torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=atol)
    assert torch.equal(tv, rv) and not tk[:4].any() and not tk[4 + n:].any()


@pytest.mark.interpreter
@pytest.mark.parametrize("norm,scaled", ROPE_OPTIONS)
@pytest.mark.parametrize("case", ROPE_CASES)
def test_rope_store_interpreted(case, norm, scaled):
    check_rope(case, torch.float32, "cpu", 1e-5, norm, scaled)


@pytest.mark.interpreter
@pytest.mark.parametrize("norm,scaled", ROPE_OPTIONS)
@pytest.mark.parametrize("case", ROPE_CASES)
def test_rope_store_interpreted_fp16_rounds_like_reference(case, norm, scaled):
    # (the interpreter truncates fp32 to bf16 instead of rounding, but rounds fp16 like the GPU)
    check_rope(case, torch.float16, "cpu", 0.0, norm, scaled)


@pytest.mark.interpreter
@pytest.mark.parametrize("case", ROPE_CASES[:2])
def test_rope_store_interpreted_separate_tensors(case):
    check_rope(case, torch.float32, "cpu", 1e-5, True, True, views=False)


@pytest.mark.interpreter
@pytest.mark.parametrize("padding", [1, 2, 3])
def test_rope_store_interpreted_leaves_out_a_graphs_padding(padding):
    check_rope(ROPE_CASES[0], torch.float32, "cpu", 1e-5, True, True, padding=padding)


@pytest.mark.parametrize("padding", [7, 8, 9])
def test_rope_store_interpreted_padding_across_a_programs_chunks(padding):
    """10 rotated queries a token, in programs of rope.CHUNKS_A_PROGRAM: the padding ends before, at and after the
    end of the first program's."""
    assert rope.CHUNKS_A_PROGRAM == 8
    check_rope(ROPE_CASES[3], torch.float32, "cpu", 1e-5, True, True, padding=padding)


@pytest.mark.gpu
@pytest.mark.parametrize("padding", [1, 8])
def test_rope_store_gpu_leaves_out_a_graphs_padding(padding):
    check_rope(ROPE_CASES[3], torch.bfloat16, "cuda", 2e-2, True, True, padding=padding)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("norm,scaled", ROPE_OPTIONS)
@pytest.mark.parametrize("case", ROPE_CASES)
def test_rope_store_gpu(case, norm, scaled, dtype, atol):
    check_rope(case, dtype, "cuda", atol, norm, scaled)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm,scaled", ROPE_OPTIONS[1:])
def test_rope_store_ref_equals_composition(norm, scaled, dtype):
    """The folded q/k-norm and scales give exactly what rmsnorm_ref on q and k, the plain rope_store_ref and the
    engine's former `queries[:-1] *= scales` gave."""
    case = ROPE_CASES[0]
    hkv, d = case[2], case[3]
    q, k, v, positions, shifts, slots, kwargs = rope_inputs(case, dtype, "cpu", norm, scaled)
    from cascade_rag.engine.model import Rotary
    rotary = Rotary(d, 10000.0, 64)
    buffers = [(torch.zeros(8, hkv, d, dtype=dtype), torch.zeros(8, hkv, d, dtype=dtype)) for _ in range(2)]
    folded = rope.rope_store_ref(q, k, v, rope.RotaryInputs(positions, shifts, slots, *buffers[0], rotary.cos,
                                                            rotary.sin, **kwargs))
    if norm:
        q, k = rn.rmsnorm_ref(q, kwargs["q_norm"], 1e-6), rn.rmsnorm_ref(k, kwargs["k_norm"], 1e-6)
    composed = rope.rope_store_ref(q, k, v, rope.RotaryInputs(positions, shifts, slots, *buffers[1], rotary.cos,
                                                              rotary.sin))
    if scaled:
        assert (kwargs["scales"] != 1).any()
        composed[:-1] *= kwargs["scales"].view(-1, 1, 1, 1).to(dtype)
    assert torch.equal(folded, composed)
    assert torch.equal(buffers[0][0], buffers[1][0]) and torch.equal(buffers[0][1], buffers[1][1])


def test_rope_store_ref_rotates_for_a_later_chunk_at_position_0():
    n, hq, hkv, d, shifts = ROPE_CASES[-1]
    q, k, v, positions, shifts, slots, _ = rope_inputs(ROPE_CASES[-1], torch.float32, "cpu", False, False)
    from cascade_rag.engine.model import Rotary
    rotary = Rotary(d, 10000.0, 64)
    own = (torch.zeros(8, hkv, d), torch.zeros(8, hkv, d))
    queries = rope.rope_store_ref(q, k, v, rope.RotaryInputs(positions, shifts, slots, *own, rotary.cos, rotary.sin))
    assert torch.equal(queries[1], rope.rotate(q, rotary.cos[0], rotary.sin[0]))
    assert torch.equal(queries[2], queries[1]) and torch.equal(queries[0], queries[-1])


def check_rmsnorm(n, hidden, dtype, device, atol):
    torch.manual_seed(hidden)
    x = (3 * torch.randn(n, hidden, device=device)).to(dtype)
    w = (1 + 0.5 * torch.randn(hidden, device=device)).to(dtype)
    got = rn.rmsnorm(x, w, 1e-6, impl="triton")
    assert got.shape == x.shape and got.dtype == dtype
    torch.testing.assert_close(got.float(), rn.rmsnorm_ref(x, w, 1e-6).float(), atol=atol, rtol=atol)


@pytest.mark.interpreter
@pytest.mark.parametrize("n,hidden", [(1, 64), (3, 96), (2, 576)])
def test_rmsnorm_interpreted(n, hidden):
    check_rmsnorm(n, hidden, torch.float32, "cpu", 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("n,hidden", [(1, 1024), (7, 896), (1, 576)])
def test_rmsnorm_gpu(n, hidden, dtype, atol):
    check_rmsnorm(n, hidden, dtype, "cuda", atol)


def test_dispatch_on_cpu_is_reference():
    x, w = torch.randn(2, 32), torch.randn(32)
    assert torch.equal(rn.rmsnorm(x, w, 1e-6), rn.rmsnorm_ref(x, w, 1e-6))
