"""Generation steppers: prefill the prompt, then step token by token, each giving the next token as a Pending
(its device tensor and a wait for it on the host). EagerStepper runs the decoder's forward pass; GraphStepper
replays a GraphDecoder's CUDA graphs and, with `ahead`, lets the generation queue the next step before the host
waits for this token."""
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from .attention import AttentionContext
from .cuda_graph import GraphDecoder
from .model import Decoder
from .sampling import Sampler


@dataclass
class Pending:
    """A token being computed: its device tensor (None where a greedy graph step keeps it on the device) and a
    function that waits for it and gives it on the host."""
    tensor: torch.Tensor | None
    wait: Callable[[], int]


class Stepper(Protocol):
    ahead: bool  # whether the next step may be queued before the host waits for the token before it

    def prefill(self) -> Pending:
        """Runs the prompt; the first token."""

    def step(self, previous: Pending) -> Pending:
        """Queues the decode step whose input is `previous`'s token; the token after it."""


def _device_inputs(prompt: list[int], start: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor(prompt, dtype=torch.int64, device=device)
    return ids, torch.arange(start, start + len(prompt), device=device)


class EagerStepper:
    """The decoder's forward pass for the prompt and for every step; the host waits for each token."""
    ahead = False

    def __init__(self, model: Decoder, ctx: AttentionContext, prompt: list[int], start: int, sampler: Sampler,
                 device: str):
        self.model, self.ctx, self.prompt, self.start, self.sampler, self.device = \
            model, ctx, prompt, start, sampler, device
        self.position = torch.full((1,), start + len(prompt), dtype=torch.int64, device=device)

    def prefill(self) -> Pending:
        token = self.sampler(self.model(*_device_inputs(self.prompt, self.start, self.device), self.ctx)[-1])
        return Pending(token, token.item)

    def step(self, previous: Pending) -> Pending:
        logits = self.model(previous.tensor.view(1), self.position, self.ctx)
        self.position = self.position + 1
        token = self.sampler(logits[-1])
        return Pending(token, token.item)


class GraphStepper:
    """Decode steps replayed as CUDA graphs (graphs.prepare done), the prompt prefilled by a graph where
    `graph_prefill` and the prompt allow it (else by the decoder), after the lead's rows if prepare was given one
    (graphs.lead; then the graph must prefill). Greedy steps keep their tokens on the GPU (kernels.greedy): the
    host only reads them."""

    def __init__(self, graphs: GraphDecoder, model: Decoder, ctx: AttentionContext, prompt: list[int], start: int,
                 sampler: Sampler, graph_prefill: bool):
        self.graphs, self.model, self.ctx, self.prompt, self.start = graphs, model, ctx, prompt, start
        self.sampler, self.graph_prefill = sampler, graph_prefill
        self.keep = sampler.greedy
        self.ahead, self.copies, self.begun = False, None, False

    def prefill(self) -> Pending:
        n = len(self.prompt)
        logits = self.graphs.prefill(n) if self.graph_prefill else None
        if logits is None:
            if self.graphs.lead:
                raise ValueError(f"a lead of {self.graphs.lead} rows needs the graph's prefill")
            device = self.graphs.own.keys.device
            logits = self.model(*_device_inputs(self.prompt, self.start, device), self.ctx)
        else:
            self.ctx.own.length = self.graphs.lead + n
        # the next step is queued before the host waits for this token, so the GPU keeps working while the host
        # streams the token out (a step is wasted when the token ends the generation); not before the first token,
        # whose wait is the time to first token
        self.ahead = logits.is_cuda
        self.copies = HostCopies() if self.ahead and not self.keep else None
        token = self.sampler(logits[-1])
        return Pending(token, token.item)

    def step(self, previous: Pending) -> Pending:
        if not self.begun:  # the first step (after the first token's wait)
            n = len(self.prompt)
            self.graphs.begin(previous.tensor, self.start + n - 1, self.graphs.lead + n - 1, self.keep)
            self.begun = True
        logits = self.graphs.step(None if self.keep else previous.tensor)
        self.ctx.own.length += 1
        if self.keep:
            return Pending(None, self.graphs.greedy_token())
        token = self.sampler(logits[-1])
        if self.ahead:
            host = self.copies.copy(token.view(1))
            return Pending(token, lambda: int(host()[0]))
        return Pending(token, token.item)


class HostCopies:
    """Copies of a one-element int64 device tensor into two pinned buffers in turn: copy() queues one and returns
    a function that waits for it and gives the host array (call it before queueing the copy after next)."""

    def __init__(self):
        self.buffers = [torch.empty(1, dtype=torch.int64, pin_memory=True) for _ in range(2)]
        self.events = [torch.cuda.Event() for _ in range(2)]
        self.turn = 0

    def copy(self, t: torch.Tensor):
        self.turn ^= 1
        buffer, event = self.buffers[self.turn], self.events[self.turn]
        buffer.copy_(t, non_blocking=True)
        event.record()

        def wait():
            event.synchronize()
            return buffer.numpy()
        return wait
