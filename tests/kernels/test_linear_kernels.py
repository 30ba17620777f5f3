"""kernels.linear's fused GEMVs, SiLU * up and the split QKV projection against their references, CPU and CUDA."""

import pytest
import torch

from dataclasses import replace

import cascade_rag.kernels.fused_rmsnorm_qkv as fr
import cascade_rag.kernels.linear as lin  # kernels.dispatch sets TRITON_INTERPRET=1 when there is no GPU
from cascade_rag.kernels.options import DEFAULT_KERNELS, KernelOptions


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


def test_rmsnorm_qkv_splits_the_normed_projection_into_heads():
    x, w, b, norm = torch.randn(3, 32), torch.randn((4 + 2 * 2) * 8, 32), torch.randn(64), torch.rand(32) + 0.5
    q, k, v = fr.rmsnorm_qkv(x, norm, 1e-6, w, b, 4, 2, 8)
    assert q.shape == (3, 4, 8) and k.shape == v.shape == (3, 2, 8)
    torch.testing.assert_close(torch.cat([t.flatten(1) for t in (q, k, v)], 1), lin.linear_ref(x, w, b, norm, 1e-6))


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
