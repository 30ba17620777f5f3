"""LLMEngine: loads a checkpoint, prefills KV chunks and generates at batch size 1 over composed chunks."""
import copy
import hashlib
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from cascade_rag.kernels.chunk_attention import HEAD_DIMS

from .composition import DEFAULT_MODE, Composer
from .cuda_graph import GraphDecoder
from .recompute_graph import GraphRecompute
from .selective import prefix_counts
from .embedded import embedded_model_path
from .generation import Generation
from .chunk_format import FORMAT_VERSION
from .kv_chunk import LEVEL_DOCUMENT, KVChunk, kv_bytes_per_token
from .loader import load_model, model_identity
from .ops import Ops
from .options import BLEND_RATIO, EngineOptions, Recompute
from .sampling import Sampler, SamplingParams
from .stepper import EagerStepper, GraphStepper
from .tokenizer import TextStream, Tokenizer


class LLMEngine:
    """One model at batch size 1. Owns the decoder (weights and kernels), the tokenizer, the checkpoint's identity,
    the composition of chunks (engine.composition) and, on CUDA, the CUDA-graph decoder (which runs EPIC's recompute
    in the question's prefill where it fits) and EPIC's own recompute graph for the rest (engine.recompute_graph, in
    `generate` and `stream`); configured by one
    EngineOptions (`options`, resolved for the machine), given whole or as keyword arguments naming its fields:
    LLMEngine(path, EngineOptions(device="cuda")) or LLMEngine(path, device="cuda", use_cuda_graphs=False)."""

    def __init__(self, model_path: Path | str | None = None, options: EngineOptions | None = None, **fields):
        self.options = replace(options or EngineOptions(), **fields).resolved()
        self.model_path = Path(model_path) if model_path else embedded_model_path()
        self.device, self.dtype = self.options.device, self.options.dtype
        ops = Ops(self.options.use_custom_kernels, self.options.kernels)
        self.model = load_model(self.model_path, self.dtype, self.device, ops)
        self.config = self.model.config
        self.tokenizer = Tokenizer(self.model_path, self.config.eos_token_ids)
        self.model_id = model_identity(self.model_path)
        self.composer = Composer(self.model, self.dtype, self.device, self.options.document_temperature)
        self.graphs, self._recompute_graph = None, None
        on_device = self.device.startswith("cuda") or self.options.graph_steps_off_cuda
        if self.options.use_cuda_graphs and on_device and self.config.head_dim in HEAD_DIMS:
            self.graphs = GraphDecoder(self.model, self.options, self.dtype, self.device)

    def recompute_graph(self) -> GraphRecompute | None:
        """EPIC's graphed recompute where there are graphs (its buffers allocated at the first `blend` request)."""
        if self.graphs is not None and self._recompute_graph is None:
            self._recompute_graph = GraphRecompute(self.model, self.options, self.dtype, self.device)
        return self._recompute_graph

    def variant(self, **fields) -> "LLMEngine":
        """This engine, its model, tokenizer and graphs shared, with other composition options (fields of
        EngineOptions: document_temperature, blend, stream_prefill); for measuring settings side by side."""
        unknown = set(fields) - {"document_temperature", "blend", "stream_prefill"}
        if unknown:
            raise ValueError(f"a variant changes the composition only, not {', '.join(sorted(unknown))}")
        other = copy.copy(self)
        other.options = replace(self.options, **fields)
        other.composer = Composer(self.model, self.dtype, self.device, other.options.document_temperature)
        return other

    def fingerprint(self, system_prompt: str) -> str:
        """Identity of stored chunks: weights, tokenizer, dtype, system prompt and chunk-format version."""
        key = json.dumps([self.model_id, str(self.dtype), system_prompt, FORMAT_VERSION])
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def kv_bytes_per_token(self) -> int:
        """Bytes of a token's keys and values in a stored chunk (options.kv_format), rounded up."""
        c = self.config
        return math.ceil(kv_bytes_per_token(self.options.kv_format, c.num_layers, c.num_kv_heads, c.head_dim,
                                            torch.finfo(self.dtype).bits // 8))

    def _stored(self, chunk: KVChunk) -> KVChunk:
        """A passage's chunk in options.kv_format (other levels as they are)."""
        return chunk.packed(self.options.kv_format) if chunk.level == LEVEL_DOCUMENT else chunk

    def prefill_chunk(self, token_ids: list[int], context: list[KVChunk], level: int, fingerprint: str,
                      start: int | None = None) -> KVChunk:
        """KV of token_ids at canonical position `start` (default: the context's total length), attending to the
        context chunks laid consecutively right before it; a passage's (LEVEL_DOCUMENT) in options.kv_format."""
        if not token_ids:
            raise ValueError("cannot prefill an empty token sequence")
        ctx, start = self.composer.context(context, len(token_ids), start)
        self.composer.check_length(start + len(token_ids))
        self.model(*self._device_inputs(token_ids, start), ctx)
        return self._stored(KVChunk(level=level, token_ids=list(token_ids), start=start, keys=ctx.own.keys,
                                    values=ctx.own.values, fingerprint=fingerprint))

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
        batch = self.composer.batched(token_lists, context) if len(token_lists) > 1 else None
        if batch is None:  # one pass per sequence
            return [self.prefill_chunk(ids, context, level, fingerprint) for ids in token_lists]
        ctx, ids, positions, start = batch
        self.model(ids, positions, ctx)
        chunks, offset = [], 0
        for seq in token_lists:
            keys, values = (t[:, offset:offset + len(seq)].clone(memory_format=torch.contiguous_format)
                            for t in (ctx.own.keys, ctx.own.values))
            chunks.append(self._stored(KVChunk(level=level, token_ids=seq, start=start, keys=keys, values=values,
                                               fingerprint=fingerprint)))
            offset += len(seq)
        return chunks

    def blend(self, chunks: list[KVChunk], ratio: float | None = BLEND_RATIO, prefix: int = 0) -> list[KVChunk]:
        """Level 0 and the documents laid after it, their KV partly recomputed so that they see each other
        (engine.selective: CacheBlend's `ratio`, None for none; EPIC's first `prefix` tokens of each document); the
        stored chunks are not modified. Laid one after the other, the chunks returned compose as `blend` does (the
        mode recomputes as the options' `blend` says)."""
        return self.composer.blend(chunks, Recompute(ratio, prefix))

    def logits(self, chunks: list[KVChunk], token_ids: list[int], mode: str = DEFAULT_MODE,
               recompute: Recompute | None = None) -> torch.Tensor:
        """Logits of every token of token_ids after the chunks ([n, vocab], fp32); `blend` recomputes as
        `recompute` says (default: the options' blend); for tests and evaluation."""
        chunks = self.composer.compose(chunks, mode, recompute or self.options.blend)
        ctx, prompt, start = self.composer.prefill_inputs(chunks, token_ids, mode, 0)
        return self.model(*self._device_inputs(prompt, start), ctx, all_logits=True)[-len(token_ids):]

    def _device_inputs(self, prompt: list[int], start: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor(prompt, dtype=torch.int64, device=self.device)
        return ids, torch.arange(start, start + len(prompt), device=self.device)

    def stream(self, token_ids: list[int], params: SamplingParams = SamplingParams(),
               chunks: list[KVChunk] = (), mode: str = DEFAULT_MODE) -> Generation:
        """Generates after [chunks..., token_ids]; `cached` reuses the chunks' KV, `full` prefills everything,
        `blend` recomputes part of the documents' KV first (see blend; chunks[0] must be level 0): in graphs, each
        document's first tokens (EPIC) run in the question's prefill, before it.

        At batch size 1 one generation runs at a time: starting another abandons the previous one."""
        began = time.perf_counter()
        if not self.options.stream_prefill:  # every streamed layer first: the question's graph can then run
            for chunk in chunks:
                chunk.wait_arrived()
        sampler = Sampler(params, torch.device(self.device))
        stepper = self._lead_stepper(chunks, token_ids, params, sampler) if mode == "blend" else None
        if stepper is None:
            stepper = self._stepper(chunks, token_ids, params, mode, sampler)
        prompt_tokens = len(token_ids) + sum(c.length for c in chunks)
        return Generation.run(stepper, prompt_tokens, params, TextStream(self.tokenizer, params.stop),
                              self.tokenizer.eos_token_ids, began)

    def _stepper(self, chunks, token_ids, params: SamplingParams, mode: str, sampler: Sampler):
        graph = self.recompute_graph() if mode == "blend" and self.options.blend.ratio is None else None
        chunks = self.composer.compose(chunks, mode, self.options.blend, graph)
        context_tokens = sum(c.length for c in chunks)
        own_tokens = len(token_ids) + params.max_new_tokens + (context_tokens if mode == "full" else 0)
        graphs = self.graphs if self.graphs is not None and self.graphs.fits(
            len(chunks) if mode != "full" else 0, own_tokens) else None
        ctx, prompt, start = self.composer.prefill_inputs(chunks, token_ids, mode, params.max_new_tokens,
                                                          own=graphs.own if graphs else None)
        if not graphs:
            return EagerStepper(self.model, ctx, prompt, start, sampler, self.device)
        graphs.prepare(ctx, own_tokens, prompt, start)
        # chunks still arriving: the prefill runs eagerly, waiting for each layer before its attention
        return GraphStepper(graphs, self.model, ctx, prompt, start, sampler,
                            graph_prefill=mode != "full" and not ctx.pending)

    def _lead_stepper(self, chunks, token_ids, params: SamplingParams, sampler: Sampler) -> GraphStepper | None:
        """EPIC's recompute and the question in one graphed prefill (Composer.lead_inputs); None where the options
        ask for another recompute or it does not fit the graphs."""
        blend, graphs = self.options.blend, self.graphs
        if graphs is None or blend.ratio is not None or not token_ids:
            return None
        # sized from the lengths first, so that a request that does not fit is laid out once, by the other path
        counts = prefix_counts(list(chunks), blend.prefix)
        m = sum(counts)
        context_chunks = 1 + sum(k < c.length for c, k in zip(list(chunks)[1:], counts))  # level 0, the stored rests
        own_tokens = m + len(token_ids) + params.max_new_tokens
        if not (graphs.fits(context_chunks, own_tokens) and graphs.fits_prompt(m + len(token_ids))):
            return None
        inputs = self.composer.lead_inputs(chunks, blend.prefix, graphs.own, blend.window)
        if inputs is None:
            return None
        ctx, lead, start = inputs
        self.composer.check_length(start + len(token_ids) + params.max_new_tokens)
        graphs.prepare(ctx, own_tokens, list(token_ids), start, lead)
        return GraphStepper(graphs, self.model, ctx, list(token_ids), start, sampler, graph_prefill=True)

    def generate(self, token_ids: list[int], params: SamplingParams = SamplingParams(),
                 chunks: list[KVChunk] = (), mode: str = DEFAULT_MODE) -> Generation:
        return self.stream(token_ids, params, chunks, mode).result()

    def chat_ids(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.encode(self.tokenizer.chat(messages))
