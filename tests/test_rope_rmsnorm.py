"""kernels.rope (rotated queries per chunk, rotated key and value stored at their slots) and kernels.rmsnorm:
Triton under the interpreter on the CPU and on the GPU, against the PyTorch references."""
import pytest
import torch

from kernels import rmsnorm as rn
from kernels import rope

interpreter = pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter runs only without CUDA")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# (tokens, Hq, Hkv, D, chunk shifts)
ROPE_CASES = [(1, 4, 2, 16, [0, -3, 7]), (3, 4, 1, 32, []), (2, 14, 2, 64, [5]), (1, 16, 8, 128, list(range(-8, 9, 2)))]


def check_rope(case, dtype, device, atol):
    n, hq, hkv, d, shifts = case
    torch.manual_seed(n + hq + d)
    qkv = torch.randn(n, (hq + 2 * hkv) * d, device=device).to(dtype)
    q, k, v = (t.view(n, -1, d) for t in qkv.split([hq * d, hkv * d, hkv * d], dim=-1))
    positions = torch.arange(20, 20 + n, device=device)
    slots = torch.arange(4, 4 + n, device=device)
    shifts = torch.tensor(shifts, dtype=torch.int64, device=device)
    from engine.model import Rotary
    rotary = Rotary(d, 10000.0, 64).to(device)
    outputs = []
    for impl in ("triton", "ref"):
        own_k = torch.zeros(8, hkv, d, dtype=dtype, device=device)
        own_v = torch.zeros(8, hkv, d, dtype=dtype, device=device)
        queries = rope.rope_store(q, k, v, positions, shifts, slots, own_k, own_v, rotary.cos, rotary.sin, impl=impl)
        outputs.append((queries, own_k, own_v))
    (tq, tk, tv), (rq, rk, rv) = outputs
    assert tq.shape == (len(shifts) + 1, n, hq, d) and tq.dtype == dtype
    for got, want in ((tq, rq), (tk, rk), (tv, rv)):
        torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=atol)
    assert torch.equal(tv, rv) and not tk[:4].any() and not tk[4 + n:].any()


@interpreter
@pytest.mark.parametrize("case", ROPE_CASES)
def test_rope_store_interpreted(case):
    check_rope(case, torch.float32, "cpu", 1e-5)


@gpu
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("case", ROPE_CASES)
def test_rope_store_gpu(case, dtype, atol):
    check_rope(case, dtype, "cuda", atol)


def check_rmsnorm(n, hidden, dtype, device, atol):
    torch.manual_seed(hidden)
    x = (3 * torch.randn(n, hidden, device=device)).to(dtype)
    w = (1 + 0.5 * torch.randn(hidden, device=device)).to(dtype)
    got = rn.rmsnorm(x, w, 1e-6, impl="triton")
    assert got.shape == x.shape and got.dtype == dtype
    torch.testing.assert_close(got.float(), rn.rmsnorm_ref(x, w, 1e-6).float(), atol=atol, rtol=atol)


@interpreter
@pytest.mark.parametrize("n,hidden", [(1, 64), (3, 96), (2, 576)])
def test_rmsnorm_interpreted(n, hidden):
    check_rmsnorm(n, hidden, torch.float32, "cpu", 1e-5)


@gpu
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("n,hidden", [(1, 1024), (7, 896), (1, 576)])
def test_rmsnorm_gpu(n, hidden, dtype, atol):
    check_rmsnorm(n, hidden, dtype, "cuda", atol)


def test_dispatch_on_cpu_is_reference():
    x, w = torch.randn(2, 32), torch.randn(32)
    assert torch.equal(rn.rmsnorm(x, w, 1e-6), rn.rmsnorm_ref(x, w, 1e-6))
