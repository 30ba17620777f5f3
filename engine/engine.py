"""LLMEngine: loads a checkpoint, prefills KV chunks and generates at batch size 1 over composed chunks."""
import hashlib
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from cascade_rag.kernels.chunk_attention import HEAD_DIMS
from cascade_rag.kernels.rope import rotate

from .config import ModelLoadError
from .embedded import embedded_model_path
from .chunk_format import FORMAT_VERSION
from .kv_chunk import LEVEL_DOCUMENT, LEVEL_QUERY, LEVEL_SYSTEM, KVChunk
from .loader import checkpoint_files, load_model
from .model import AttentionContext, KVBuffer
from .sampling import Sampler, SamplingParams
from .tokenizer import TextStream, Tokenizer

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
MODES = ("cached", "full", "blend")
BLEND_RATIO = 0.15  # share of document tokens that `blend` recomputes at every layer (CacheBlend's default)
# `cached` leaves every chunk at its canonical position, so documents prefilled after the same level 0 sit side by
# side, and divides the new tokens' attention scores over such chunks by this temperature (APE, Yang et al. 2025):
# chosen on squad-dev questions 1-100, checked on 101-200 (docs/EVALUATION.md)
DOCUMENT_TEMPERATURE = 0.9


def resolve_dtype(dtype, device: str) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose one of fp32, bf16, fp16")
    return DTYPES[dtype]


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


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> str:
    """The dtype of the pipeline, the CLI and bench: fp32 on a CPU (whose bf16 matmuls are slow), bf16 on a GPU."""
    return "fp32" if device == "cpu" else "bf16"


def default_prefill_batch_tokens(device: str) -> int:
    """Passage tokens prefilled in one forward pass at ingestion. The batch attends under one block-diagonal mask,
    so its attention grows with the square of the batch: on a CPU, beyond about 2,048 tokens that costs more than
    batching saves."""
    return 2048 if device == "cpu" else 8192


class LLMEngine:
    def __init__(self, model_path: Path | str | None = None, device: str | None = None, dtype=None,
                 use_custom_kernels: bool = True, use_cuda_graphs: bool = True, graph_own_tokens: int = 4096,
                 document_temperature: float = DOCUMENT_TEMPERATURE):
        if document_temperature <= 0:
            raise ValueError(f"the document temperature must be positive, got {document_temperature}")
        self.document_temperature = document_temperature
        self.model_path = Path(model_path) if model_path else embedded_model_path()
        self.device = device or default_device()
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = load_model(self.model_path, self.dtype, self.device)
        self.model.use_custom_kernels = use_custom_kernels
        self.config = self.model.config
        self.tokenizer = Tokenizer(self.model_path, self.config.eos_token_ids)
        self.model_id = _model_identity(self.model_path)
        self.graphs = None
        if use_cuda_graphs and self.device.startswith("cuda") and self.config.head_dim in HEAD_DIMS:
            from .cuda_graph import GraphDecoder
            self.graphs = GraphDecoder(self.model, graph_own_tokens, self.dtype, self.device)

    @property
    def use_custom_kernels(self) -> bool:
        return self.model.use_custom_kernels

    @use_custom_kernels.setter
    def use_custom_kernels(self, value: bool) -> None:
        self.model.use_custom_kernels = value

    def fingerprint(self, system_prompt: str) -> str:
        """Identity of stored chunks: weights, tokenizer, dtype, system prompt and chunk-format version."""
        key = json.dumps([self.model_id, str(self.dtype), system_prompt, FORMAT_VERSION])
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def kv_bytes_per_token(self) -> int:
        return self.config.kv_bytes_per_token(torch.finfo(self.dtype).bits // 8)

    def _context(self, chunks: list[KVChunk], capacity: int, start: int | None = None,
                 own: KVBuffer | None = None, canonical: bool = False) -> tuple[AttentionContext, int]:
        """Lays the chunks at consecutive positions ending at `start` (default: from 0), or (canonical) each at its
        canonical position: chunks prefilled one after the other then compose exactly as one prefill, and chunks
        sharing positions (documents prefilled after the same level 0) sit side by side, the new tokens' scores
        over them divided by the document temperature. Returns the context and the next free position. The new
        tokens' KV goes to `own` (emptied) or a fresh buffer of `capacity`."""
        total = sum(c.length for c in chunks)
        if start is not None and start < total:
            raise ValueError(f"start {start} leaves no room for {total} context tokens before it")
        shifts, position = [], 0 if start is None else start - total
        for chunk in chunks:
            if chunk.keys.dtype != self.dtype:
                raise ValueError(f"chunk dtype {chunk.keys.dtype} does not match the engine dtype {self.dtype}")
            shifts.append(0 if canonical else position - chunk.start)
            position = max(position, chunk.start + chunk.length) if canonical else position + chunk.length
        scales = None
        if canonical:
            spans = [(c.start, c.start + c.length) for c in chunks]
            shared = [any(i != j and a < d and c < b for j, (c, d) in enumerate(spans)) for i, (a, b) in enumerate(spans)]
            if any(shared):
                scales = torch.tensor([1 / self.document_temperature if s else 1.0 for s in shared],
                                      dtype=torch.float32, device=self.device)
        if own is None:
            own = KVBuffer.empty(self.config, capacity, self.dtype, self.device)
        own.length = 0
        ctx = AttentionContext(
            keys=[c.keys.to(self.device) for c in chunks], values=[c.values.to(self.device) for c in chunks],
            shifts=torch.tensor(shifts, dtype=torch.int64, device=self.device), own=own, scales=scales,
        )
        return ctx, position

    def _check_length(self, total: int) -> None:
        if total > self.config.max_position:
            raise ValueError(f"sequence of {total} tokens exceeds the model's {self.config.max_position} positions")

    def prefill_chunk(self, token_ids: list[int], context: list[KVChunk], level: int, fingerprint: str,
                      start: int | None = None) -> KVChunk:
        """KV of token_ids at canonical position `start` (default: the context's total length), attending to the
        context chunks laid consecutively right before it."""
        if not token_ids:
            raise ValueError("cannot prefill an empty token sequence")
        ctx, start = self._context(context, len(token_ids), start)
        self._check_length(start + len(token_ids))
        self.model(*self._device_inputs(token_ids, start), ctx)
        return KVChunk(level=level, token_ids=list(token_ids), start=start, keys=ctx.own.keys,
                       values=ctx.own.values, fingerprint=fingerprint)

    def prefill_chunks(self, token_lists: list[list[int]], context: list[KVChunk], level: int,
                       fingerprint: str) -> list[KVChunk]:
        """prefill_chunk of each token sequence at the canonical start (the context's total length), in one forward
        pass: the sequences are concatenated, each attending to the context and causally to itself only (an
        explicit block-diagonal mask), never to the others. Each returned chunk owns its keys and values."""
        token_lists = [list(ids) for ids in token_lists]
        if not token_lists:
            raise ValueError("no token sequences to prefill")
        for i, ids in enumerate(token_lists):
            if not ids:
                raise ValueError(f"cannot prefill an empty token sequence (sequence {i} of {len(token_lists)})")
        offsets = itertools.accumulate((c.length for c in context), initial=0)
        if len(token_lists) == 1 or any(chunk.start != offset for chunk, offset in zip(context, offsets)):
            # one sequence, or context chunks away from their canonical positions (their queries are rotated
            # per chunk, which one masked attention cannot do): one pass per sequence
            return [self.prefill_chunk(ids, context, level, fingerprint) for ids in token_lists]
        lengths = [len(ids) for ids in token_lists]
        total = sum(lengths)
        ctx, start = self._context(context, total)
        self._check_length(start + max(lengths))
        ids = torch.tensor([t for seq in token_lists for t in seq], dtype=torch.int64, device=self.device)
        segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(self.device)
        index = torch.cat([torch.arange(n) for n in lengths]).to(self.device)  # position inside its own sequence
        own = (segment[:, None] == segment[None, :]) & (index[:, None] >= index[None, :])
        ctx.mask = torch.cat((torch.ones(total, start, dtype=torch.bool, device=self.device), own), dim=1)
        self.model(ids, start + index, ctx)
        chunks, offset = [], 0
        for seq in token_lists:
            keys, values = (t[:, offset:offset + len(seq)].clone(memory_format=torch.contiguous_format)
                            for t in (ctx.own.keys, ctx.own.values))
            chunks.append(KVChunk(level=level, token_ids=seq, start=start, keys=keys, values=values,
                                  fingerprint=fingerprint))
            offset += len(seq)
        return chunks

    @torch.inference_mode()
    def blend(self, chunks: list[KVChunk], ratio: float = BLEND_RATIO) -> list[KVChunk]:
        """Level 0 and one chunk holding the documents' KV laid after it, where the tokens that the composition
        changes most see the documents before them (CacheBlend): every document token is recomputed over
        everything before it through the second layer (the first whose KV depends on the context), where the
        deviation of its values from the stored ones is measured; at the later layers the `ratio` share of
        tokens that deviate most is recomputed, the others keep their stored KV. ratio 1 gives exactly the KV of
        a full prefill. The stored chunks are not modified."""
        if not chunks or chunks[0].level != LEVEL_SYSTEM or chunks[0].start != 0:
            raise ValueError("blend needs the level-0 chunk first, at position 0")
        if not 0 <= ratio <= 1:
            raise ValueError(f"the blend ratio must be within [0, 1], got {ratio}")
        level0, documents = chunks[0], chunks[1:]
        if not documents:
            return [level0]
        n = sum(c.length for c in documents)
        ctx, start = self._context([level0], n)
        self._check_length(start + n)
        offsets = list(itertools.accumulate((c.length for c in documents), initial=0))
        cos, sin = self.model.rotary.cos, self.model.rotary.sin
        for chunk, offset in zip(documents, offsets):
            shift = start + offset - chunk.start  # the stored keys turned from canonical to placed positions
            if shift < 0:
                raise ValueError(f"a chunk at canonical position {chunk.start} cannot be placed before it")
            ctx.own.keys[:, offset:offset + chunk.length] = rotate(chunk.keys.to(self.device), cos[shift], sin[shift])
            ctx.own.values[:, offset:offset + chunk.length] = chunk.values.to(self.device)
        stored_values = ctx.own.values[min(1, self.config.num_layers - 1)].clone()
        token_ids = [t for c in documents for t in c.token_ids]
        ids = torch.tensor(token_ids, dtype=torch.int64, device=self.device)
        positions = torch.arange(start, start + n, device=self.device)
        slots = torch.arange(n, device=self.device)
        causal = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
        ctx.mask = torch.cat((torch.ones(n, start, dtype=torch.bool, device=self.device), causal), dim=1)
        x = self.model.embed_tokens(ids)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, positions, slots, ctx, self.model.rotary, self.model.use_custom_kernels)
            if i == 1:
                deviation = (ctx.own.values[1] - stored_values).float().square().sum(dim=(-2, -1))
                chosen = deviation.topk(math.ceil(ratio * n)).indices.sort().values
                if len(chosen) == 0:
                    break
                x, positions, slots, ctx.mask = x[chosen], positions[chosen], slots[chosen], ctx.mask[chosen]
        return [level0, KVChunk(level=LEVEL_DOCUMENT, token_ids=token_ids, start=start, keys=ctx.own.keys,
                                values=ctx.own.values, fingerprint=level0.fingerprint)]

    def logits(self, chunks: list[KVChunk], token_ids: list[int], mode: str = "cached") -> torch.Tensor:
        """Logits of every token of token_ids after the chunks ([n, vocab], fp32); for tests and evaluation."""
        chunks = self._compose(chunks, mode)
        ctx, prompt, start = self._prefill_inputs(chunks, token_ids, mode, 0)
        return self.model(*self._device_inputs(prompt, start), ctx, all_logits=True)[-len(token_ids):]

    def _compose(self, chunks, mode: str) -> list[KVChunk]:
        """The chunks to prefill over: for `blend`, level 0 and the blended documents."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        return self.blend(list(chunks)) if mode == "blend" else list(chunks)

    def _prefill_inputs(self, chunks, token_ids, mode, max_new_tokens, own=None):
        """The context, the tokens to prefill and the position of the first. `full`: every token prefilled in
        order; `cached`: the chunks at their canonical positions (_context); `blend`: its blended documents after
        level 0."""
        if mode == "full":
            token_ids = [t for c in chunks for t in c.token_ids] + list(token_ids)
            chunks = []
        if not token_ids:
            raise ValueError("nothing to prefill: the prompt is empty")
        ctx, start = self._context(chunks, len(token_ids) + max_new_tokens, own=own, canonical=mode == "cached")
        self._check_length(start + len(token_ids) + max_new_tokens)
        return ctx, list(token_ids), start

    def _device_inputs(self, prompt: list[int], start: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor(prompt, dtype=torch.int64, device=self.device)
        return ids, torch.arange(start, start + len(prompt), device=self.device)

    def stream(self, token_ids: list[int], params: SamplingParams = SamplingParams(),
               chunks: list[KVChunk] = (), mode: str = "cached") -> Generation:
        """Generates after [chunks..., token_ids]; `cached` reuses the chunks' KV, `full` prefills everything,
        `blend` recomputes part of the documents' KV first (see blend; chunks[0] must be level 0).

        At batch size 1 one generation runs at a time: starting another abandons the previous one."""
        began = time.perf_counter()
        chunks = self._compose(chunks, mode)
        context_tokens = sum(c.length for c in chunks)
        own_tokens = len(token_ids) + params.max_new_tokens + (context_tokens if mode == "full" else 0)
        graphs = self.graphs if self.graphs is not None and self.graphs.fits(
            chunks if mode != "full" else [], own_tokens) else None
        ctx, prompt, start = self._prefill_inputs(chunks, token_ids, mode, params.max_new_tokens,
                                                  own=graphs.own if graphs else None)
        if graphs:
            graphs.prepare(ctx, own_tokens, prompt, start)
        generation = Generation(_deltas=iter(()), prompt_tokens=len(prompt) + (context_tokens if mode != "full" else 0))
        generation._deltas = self._decode_loop(generation, ctx, prompt, start, params, graphs, mode, began)
        return generation

    def generate(self, token_ids: list[int], params: SamplingParams = SamplingParams(),
                 chunks: list[KVChunk] = (), mode: str = "cached") -> Generation:
        return self.stream(token_ids, params, chunks, mode).result()

    def chat_ids(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.encode(self.tokenizer.chat(messages))

    def _decode_loop(self, generation: Generation, ctx: AttentionContext, prompt: list[int], start: int,
                     params: SamplingParams, graphs, mode: str, began: float):
        sampler = Sampler(params, torch.device(self.device))
        text = TextStream(self.tokenizer, params.stop)
        eos = self.tokenizer.eos_token_ids
        logits = graphs.prefill(len(prompt)) if graphs is not None and mode != "full" else None
        if logits is None:
            logits = self.model(*self._device_inputs(prompt, start), ctx)
        else:
            ctx.own.length = len(prompt)
        token_tensor = sampler(logits[-1])
        # greedy steps of CUDA graphs keep their tokens on the GPU (kernels.greedy): the host only reads them
        keep = graphs is not None and sampler.greedy and self.model.use_custom_kernels
        position = None  # the eager path's (a graph step advances its own)
        if graphs is None:
            position = torch.full((1,), start + len(prompt), dtype=torch.int64, device=self.device)

        def advance(token_tensor):  # queues the step that follows token_tensor
            nonlocal position
            if graphs is not None:
                if ctx.own.length == len(prompt):  # the first step (after the first token's wait)
                    graphs.begin(token_tensor, start + len(prompt) - 1, len(prompt) - 1, keep)
                out = graphs.step(None if keep else token_tensor)
                ctx.own.length += 1
                return out
            out = self.model(token_tensor.view(1), position, ctx)
            position = position + 1
            return out

        # With CUDA graphs the next step is queued before the host waits for this token, so the GPU keeps working
        # while the host streams the token out (a step is wasted when the token ends the generation); not before
        # the first token, whose wait is the time to first token.
        ahead = graphs is not None and logits.is_cuda
        copies = _HostCopies() if ahead and not keep else None

        def sample(logits):  # the token after logits: a device tensor (None if kept) and a wait for it on the host
            if keep:
                return None, graphs.greedy_token()
            t = sampler(logits[-1])
            if ahead:
                host = copies.copy(t.view(1))
                return t, lambda: int(host()[0])
            return t, t.item

        wait, queued = token_tensor.item, None
        while True:
            token = wait()  # the one host synchronisation per token: it is streamed out
            if not generation.token_ids:
                generation.ttft_s = time.perf_counter() - began
                decode_began = time.perf_counter()
            generation.token_ids.append(token)
            if token in eos and not params.ignore_eos:
                generation.finish_reason = "stop"
                break
            delta, stopped = text.push(token)
            if delta:
                yield delta
            if stopped:
                generation.finish_reason = "stop"
                break
            if len(generation.token_ids) >= params.max_new_tokens:
                generation.finish_reason = "length"
                break
            logits = queued if queued is not None else advance(token_tensor)
            token_tensor, wait = sample(logits)
            queued = None
            if ahead and len(generation.token_ids) < params.max_new_tokens - 1:
                queued = advance(token_tensor)
        generation.decode_s = time.perf_counter() - decode_began
        tail = text.finish()
        if tail:
            yield tail


class _HostCopies:
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


def _model_identity(folder: Path) -> str:
    """Cheap identity of the weights and tokenizer: file sizes, safetensors headers and sampled blocks."""
    digest = hashlib.sha256()
    for file in checkpoint_files(folder):
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as f:
            for offset in range(0, size, max(1, size // 16)):
                f.seek(offset)
                digest.update(f.read(1 << 16))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"):
        path = folder / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


__all__ = ["LLMEngine", "Generation", "SamplingParams", "ModelLoadError", "LEVEL_QUERY"]
