"""The LM head's greedy token, the next input and the published token against their references, CPU and CUDA."""

import pytest
import torch

from dataclasses import replace

import cascade_rag.kernels.greedy as greedy
import cascade_rag.kernels.linear as lin  # kernels.dispatch sets TRITON_INTERPRET=1 when there is no GPU
import cascade_rag.kernels.lm_head as lm_head
from cascade_rag.kernels.options import DEFAULT_KERNELS, HeadTuning
from cascade_rag.kernels.rmsnorm import rmsnorm_ref


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
