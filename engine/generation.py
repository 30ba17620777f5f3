"""Generation: an answer being generated at batch size 1, driven by a Stepper (engine.stepper)."""
import time
from dataclasses import dataclass, field
from typing import Iterator

from .sampling import SamplingParams
from .stepper import Stepper
from .tokenizer import TextStream


@dataclass
class Generation:
    """An answer being generated: iterate for text deltas; then text, token_ids, finish_reason and timings hold."""
    _deltas: Iterator[str]
    prompt_tokens: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None   # "stop" (EOS or stop string) or "length"
    ttft_s: float = 0.0                # from the call to stream: composition (blend included), prefill, first token
    decode_s: float = 0.0

    @classmethod
    def run(cls, stepper: Stepper, prompt_tokens: int, params: SamplingParams, text: TextStream,
            eos: set[int] | frozenset[int] | list[int], began: float) -> "Generation":
        """The generation of `stepper`'s tokens until EOS, a stop string or max_new_tokens; began: when the
        request came (for ttft_s). Nothing runs until it is iterated."""
        generation = cls(_deltas=iter(()), prompt_tokens=prompt_tokens)
        generation._deltas = generation._decode(stepper, params, text, eos, began)
        return generation

    def _decode(self, stepper: Stepper, params: SamplingParams, text: TextStream, eos, began: float):
        pending, queued = stepper.prefill(), None
        while True:
            token = pending.wait()  # the one host synchronisation per token: it is streamed out
            if not self.token_ids:
                self.ttft_s = time.perf_counter() - began
                decode_began = time.perf_counter()
            self.token_ids.append(token)
            if token in eos and not params.ignore_eos:
                self.finish_reason = "stop"
                break
            delta, stopped = text.push(token)
            if delta:
                yield delta
            if stopped:
                self.finish_reason = "stop"
                break
            if len(self.token_ids) >= params.max_new_tokens:
                self.finish_reason = "length"
                break
            pending = queued if queued is not None else stepper.step(pending)
            queued = None
            if stepper.ahead and len(self.token_ids) < params.max_new_tokens - 1:
                queued = stepper.step(pending)
        self.decode_s = time.perf_counter() - decode_began
        tail = text.finish()
        if tail:
            yield tail

    def __iter__(self) -> Iterator[str]:
        for delta in self._deltas:
            self.text += delta
            yield delta

    def result(self) -> "Generation":
        for _ in self:
            pass
        return self

    @property
    def decode_tokens_per_s(self) -> float:
        steps = len(self.token_ids) - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0
