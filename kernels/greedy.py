"""Greedy decoding inside a CUDA graph, with no argmax kernel and no host copies a token: the LM head's GEMV
folds each program's best logit and its index into one of SLOTS int64 keys by atomic max (kernels.linear), and
the next step's first kernel (next_input) takes the token from those keys, clears them, embeds the token and
advances the step's position and slot. The step's last kernel (publish_token) writes the token into pinned host
memory, where the host reads it after the step with no copy between steps; best_token reads a host copy of the
keys.

A key is the logit's fp32 bits made order-preserving as an int32, shifted left 32 bits, over MAX_INDEX minus
the vocabulary index: the largest key is the largest logit, and among equal logits the lowest index, as
torch.argmax chooses.
"""
import numpy as np
import torch
from .launcher import launch, wait_for_inputs  # before triton: it picks the interpreter without a GPU
import triton
import triton.language as tl

from .options import DEFAULT_KERNELS, KernelOptions

SLOTS = 64
MAX_INDEX = 2 ** 31 - 1
EMPTY = -2 ** 63  # a slot no key has reached
# the same as constexprs, for the kernels (kernels.linear and kernels.lm_head use them too)
SLOTS_C, MAX_INDEX_C, EMPTY_C = tl.constexpr(SLOTS), tl.constexpr(MAX_INDEX), tl.constexpr(EMPTY)


@triton.jit
def logit_keys(y, n):
    """The keys of the fp32 logits y at the vocabulary indices n (int32, of y's shape)."""
    bits = (y + 0.0).to(tl.int32, bitcast=True)  # + 0.0: -0.0 ties with 0.0
    order = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (order.to(tl.int64) << 32) - n.to(tl.int64) + MAX_INDEX_C


@triton.jit
def key_token(key):
    return ((key >> 32) << 32) - key + MAX_INDEX_C


@triton.jit
def key_logit(key):
    """The fp32 logit of a key."""
    order = (key >> 32).to(tl.int32)
    return tl.where(order < 0, order ^ 0x7FFFFFFF, order).to(tl.float32, bitcast=True)


def keys_ref(logits: torch.Tensor) -> torch.Tensor:
    """logit_keys of a row of fp32 logits, in PyTorch."""
    bits = (logits.float() + 0.0).view(torch.int32)
    order = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()
    return (order << 32) + (MAX_INDEX - torch.arange(logits.numel(), device=logits.device))


def token_keys(token: torch.Tensor, best: torch.Tensor) -> None:
    """Fills the slots `best` so that they hold `token` (a 0-d device tensor) and nothing else."""
    best.fill_(EMPTY)
    best[:1].copy_(MAX_INDEX - token.view(1))


def best_token(keys: np.ndarray) -> int:
    """The token held by a host copy of the slots."""
    return MAX_INDEX - int(keys.max() & 0xFFFFFFFF)


@triton.jit
def _next_input_kernel(best_ptr, token_ptr, pos_ptr, slot_ptr, embed_ptr, x_ptr, HIDDEN: tl.constexpr,
                       BLOCK: tl.constexpr, GREEDY: tl.constexpr, CLEAR: tl.constexpr):
    if GREEDY:
        token = key_token(tl.max(tl.load(best_ptr + tl.arange(0, SLOTS_C)), 0))
        tl.store(best_ptr + tl.arange(0, CLEAR), tl.full([CLEAR], EMPTY_C, tl.int64))
        tl.store(token_ptr, token)
    else:
        token = tl.load(token_ptr)
    tl.store(pos_ptr, tl.load(pos_ptr) + 1)
    tl.store(slot_ptr, tl.load(slot_ptr) + 1)
    cols = tl.arange(0, BLOCK)
    ok = cols < HIDDEN
    tl.store(x_ptr + cols, tl.load(embed_ptr + token * HIDDEN + cols, mask=ok), mask=ok)


def next_input(embed: torch.Tensor, token: torch.Tensor, position: torch.Tensor, slot: torch.Tensor,
               best: torch.Tensor | None = None) -> torch.Tensor:
    """The input [1, hidden] of a decode step whose token is `token` ([1] int64), or, given the slots `best`, the
    one they hold (then written to `token`, and the slots cleared, with the SLOTS after them if best has 2 * SLOTS:
    kernels.lm_head's lower bounds); position and slot ([1] int64) advance by one.

    The kernel is launched without programmatic dependent launch, so the step's next kernel starts after it
    has ended: kernels read the position and slot before they wait for their inputs."""
    hidden = embed.shape[1]
    x = torch.empty((1, hidden), dtype=embed.dtype, device=embed.device)
    greedy = best is not None
    assert embed.is_contiguous() and (not greedy or best.numel() in (SLOTS, 2 * SLOTS))
    _next_input_kernel[(1,)](best if greedy else token, token, position, slot, embed, x, hidden,
                             triton.next_power_of_2(hidden), greedy, best.numel() if greedy else SLOTS, num_warps=4)
    return x


@triton.jit
def _publish_kernel(best_ptr, slot_ptr, out_ptr, PDL: tl.constexpr):
    slot = tl.load(slot_ptr)  # next_input wrote it, and it ends before the step's other kernels start
    wait_for_inputs(PDL)
    s = tl.arange(0, SLOTS_C)
    tl.store(out_ptr + slot, key_token(tl.max(tl.load(best_ptr + s), 0)))


def publish_token(best: torch.Tensor, slot: torch.Tensor, out: torch.Tensor,
                  options: KernelOptions = DEFAULT_KERNELS) -> None:
    """out[slot] = the token that the slots `best` hold; out may be pinned host memory, which the kernel writes
    directly (slot: [1] int64 on the device, out: int64)."""
    assert best.numel() in (SLOTS, 2 * SLOTS) and out.dtype == torch.int64 and slot.dtype == torch.int64
    launch(_publish_kernel, (1,), (best, slot, out), ("publish", best.device.index), options, num_warps=1)


def next_input_ref(embed, token, position, slot, best=None):
    if best is not None:
        token.copy_(MAX_INDEX - best[:SLOTS].max().view(1) % 2 ** 32)
        best.fill_(EMPTY)
    position += 1
    slot += 1
    return embed[token]
