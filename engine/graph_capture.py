"""What the engine's CUDA graphs share (engine.cuda_graph's question and decode steps, engine.recompute_graph's
recompute): static int64 inputs written on the host into one pinned buffer and sent with one asynchronous copy,
and the capture of a step after its warm-up runs on a side stream."""
from typing import Callable

import torch


class StagedInputs:
    """Named int64 inputs of captured graphs: `views` of one device buffer (what the graphs read) and `host` the same
    views of its pinned host copy (what a request writes, once wait() has returned). On a device without graphs the
    host copy is unpinned and nothing waits."""

    def __init__(self, sizes: dict[str, int], device, capture: bool):
        total = sum(sizes.values())
        self.inputs = torch.zeros(total, dtype=torch.int64, device=device)
        self.staging = torch.zeros(total, dtype=torch.int64, pin_memory=capture)
        self.staged = torch.cuda.Event() if capture else None  # the last copy out of staging
        self.views: dict[str, torch.Tensor] = {}
        self.host: dict[str, torch.Tensor] = {}
        offset = 0
        for name, size in sizes.items():
            self.views[name] = self.inputs[offset:offset + size]
            self.host[name] = self.staging[offset:offset + size]
            offset += size

    def wait(self) -> None:
        """Returns once the previous send has left the host copy."""
        if self.staged is not None:
            self.staged.synchronize()

    def send(self) -> None:
        """The host copy to the device buffer, queued on the current stream."""
        self.inputs.copy_(self.staging, non_blocking=True)
        if self.staged is not None:
            self.staged.record()


def capture(step: Callable[[], object], pool, keep: tuple[torch.Tensor, ...] = ()):
    """A CUDA graph of step() and what the captured call returned: two warm-up calls on a side stream (which
    compile and load the kernels), the tensors `keep` restored after them (the warm-ups may advance them), then the
    capture into the memory pool `pool`."""
    saved = [t.clone() for t in keep]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    for t, value in zip(keep, saved):
        t.copy_(value)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        result = step()
    return graph, result
