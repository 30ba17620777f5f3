"""Batch-size-1 question prefill and decode steps replayed as CUDA graphs, one graph per context-length bucket
(and, for the prefill, per question length padded to a power of two).

Everything a step reads lives in static buffers: the input token, its position and own-buffer slot, the
position shift of every chunk, the request's own (level-2) KV buffer, and a per-layer chunk table (element
offsets of every chunk's K/V from the own buffer's base, row strides, cumulative lengths). A request fills
them once (`prepare`: the tables, shifts, scales and the padded question are written on the host into one
pinned buffer and copied with one asynchronous copy); each step then only replays the graph. Chunks are
padded with empty ones to the options' graph_max_chunks so every request of a bucket uses the same graph. The table's last entry
is the context's length; the attention kernel adds the own chunk's (the padded question, or the slot + 1 of a
decode step). In a decode step the attention kernel also does rope_store's work (chunk_attention_table).

A decode step advances its position and slot itself (its first kernel, kernels.greedy.next_input), so the
host writes them once a request (begin). A greedy step also takes its token from the previous step's argmax
keys, which its LM head fills in turn, and ends by writing its token into a pinned host buffer (kernels.greedy
.publish_token, at the step's slot): the host then copies nothing between steps and writes nothing at all.
Its LM head reads an int8 copy of the weight and recomputes only the rows that can hold the argmax
(kernels.lm_head): the same token from half the bytes.
"""
from dataclasses import dataclass, replace

import numpy as np
import torch

from cascade_rag.kernels.chunk_attention import (NO_PACKED, DecodeWorkspace, PackedBases, chunk_tables, decode_workspace,
                                                fixed_bases)
from cascade_rag.kernels.greedy import EMPTY, SLOTS, next_input, publish_token, token_keys
from cascade_rag.kernels.lm_head import quantize_rows, supported

from .attention import AttentionContext, KVBuffer
from .graph_capture import StagedInputs, capture
from .model import Decoder
from .options import EngineOptions


def question_bucket(n: int) -> int:
    """Tokens a prefill of n is padded to: a power of two (at least 16), and above 256 a multiple of 128."""
    return max(16, 1 << (n - 1).bit_length()) if n <= 256 else -(-n // 128) * 128


@dataclass(frozen=True)
class Lead:
    """Tokens prefilled before the question in its pass, into the own rows before it (EPIC's recomputed rows,
    engine.selective.PrefixPlan): their ids, placed positions and limits (token i sees the context's first limits[i]
    keys in the table's order, then the own rows before it; the question sees the whole context), and under a window
    their floors (PrefixPlan's, None without one)."""
    token_ids: list[int]
    positions: list[int]
    limits: list[int]
    floors: np.ndarray | None = None


def _input_sizes(layers: int, max_chunks: int, max_question: int) -> dict:
    """int64 elements of each input GraphDecoder stages (the float32 scales take half as many)."""
    return dict(tables=layers * (7 * max_chunks + 1), shifts=max_chunks - 1, scales=max_chunks // 2,
                prompt=max_question, prompt_positions=max_question, limits=max_question, floors=3 * max_question,
                last=1, padding=1)


def _typed(views: dict, layers: int, max_chunks: int) -> dict:
    """StagedInputs' flat int64 views as GraphDecoder reads them: tables per layer, scales as float32."""
    views = dict(views)
    views["tables"] = views["tables"].reshape(layers, 7 * max_chunks + 1)
    views["scales"] = views["scales"].view(torch.float32)[:max_chunks - 1]
    views["floors"] = views["floors"].view(-1, 3)
    return views


class TableAttention:
    """The attention backend of a graph's step: chunk attention over the decoder's prebuilt per-layer tables; in a
    decode step the attention kernel also rotates and stores the new token (no rotary kernel). limits (a prefill's):
    the context keys each new token sees, in the table's order (engine.recompute_graph), and floors their window
    (chunk_attention_table's); padding ([1] int64): the tables' leading empty chunks, for which a prefill rotates no
    query; under limits a prefill rotates a query for the chunks holding keys it sees only (kernels.rope)."""

    def __init__(self, tables: torch.Tensor, workspace: DecodeWorkspace, packed: PackedBases = NO_PACKED,
                 limits: torch.Tensor | None = None, padding: torch.Tensor | None = None,
                 floors: torch.Tensor | None = None):
        self.tables, self.workspace, self.packed, self.limits = tables, workspace, packed, limits
        self.padding, self.floors = padding, floors

    def attend(self, ctx, layer, q, k, v, rotary, ops):
        keys, values, scale = ctx.own.keys[layer], ctx.own.values[layer], q.shape[-1] ** -0.5
        if self.workspace.decode:
            return ops.chunk_attention_table(q, keys, values, self.tables[layer], scale, self.workspace, rotary,
                                             (k, v), self.packed)
        seen = {} if self.limits is None else dict(table=self.tables[layer], limits=self.limits, floors=self.floors)
        queries = ops.rope_store(q, k, v, replace(rotary, padding=self.padding, **seen))
        return ops.chunk_attention_table(queries, keys, values, self.tables[layer], scale,
                                         self.workspace, packed=self.packed, limits=self.limits, floors=self.floors)


class GraphDecoder:
    """Owns a request's static buffers (own KV buffer, chunk tables, shifts and scales, the padded question, the
    token, position and slot, the greedy steps' argmax keys and published tokens, the LM head's int8 copy) and the
    CUDA graphs captured over them, by bucket; runs the decoder's steps through TableAttention. Elsewhere than
    CUDA the same steps run eagerly (for tests). Refuses options without custom kernels: its tables exist for the
    Triton chunk attention alone."""

    def __init__(self, model: Decoder, options: EngineOptions, dtype: torch.dtype, device: str):
        if not options.use_custom_kernels or not model.ops.custom:
            raise ValueError("CUDA graphs run the Triton kernels: they need use_custom_kernels=True")
        c = model.config
        self.model, self.config, self.options = model, c, options
        self.max_chunks, self.max_question = options.graph_max_chunks, options.graph_max_question
        own_capacity = options.graph_own_tokens
        self.own = KVBuffer.empty(c, own_capacity, dtype, device)
        self.token = torch.zeros(1, dtype=torch.int64, device=device)
        self.position = torch.zeros(1, dtype=torch.int64, device=device)
        self.slot = torch.zeros(1, dtype=torch.int64, device=device)
        head = model.lm_head.weight.detach()
        self.head = quantize_rows(head) if options.quantized_head and supported(head.device) else None
        # argmax keys of greedy steps, then the quantised head's lower bounds
        self.best = torch.full((SLOTS if self.head is None else 2 * SLOTS,), EMPTY, dtype=torch.int64, device=device)
        self.capture = torch.device(device).type == "cuda"  # elsewhere the same steps run eagerly (for tests)
        # the token of the greedy step at each own slot, written by the step's last kernel
        self.published = torch.zeros(own_capacity, dtype=torch.int64, pin_memory=self.capture)
        self.published_events = [torch.cuda.Event() for _ in range(2)] if self.capture else None
        self.last_slot = 0  # the own slot of the last step queued
        self.prompt_slots = torch.arange(self.max_question, device=device)
        # what prepare writes: views of one int64 buffer, filled from its pinned host copy
        self.staged = StagedInputs(_input_sizes(c.num_layers, self.max_chunks, self.max_question), device,
                                   self.capture)
        views = _typed(self.staged.views, c.num_layers, self.max_chunks)
        self.host = {name: t.numpy() for name, t in _typed(self.staged.host, c.num_layers, self.max_chunks).items()}
        self.tables, self.shifts, self.scales = views["tables"], views["shifts"], views["scales"]
        self.prompt, self.prompt_positions, self.last = views["prompt"], views["prompt_positions"], views["last"]
        self.limits, self.padding, self.floors = views["limits"], views["padding"], views["floors"]
        self.lead = 0  # rows of the lead given to the last prepare, before the prompt's in the own buffer
        self.windowed = False  # whether that lead has a window (floors)
        self.graphs: dict[tuple, tuple] = {}
        # packed chunks' table offsets count from these, which stay put (the graphs hold their addresses)
        self.packed_bases, self.packed = fixed_bases(device), NO_PACKED
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None
        self.bucket, self.aligned = options.graph_min_bucket, False

    def fits(self, context_chunks: int, own_tokens: int) -> bool:
        """Whether a request over `context_chunks` chunks whose own chunk holds at most own_tokens tokens runs in
        graphs."""
        return context_chunks < self.max_chunks and own_tokens <= self.own.capacity

    def fits_prompt(self, n: int) -> bool:
        """Whether a graph prefills n tokens (a lead's and the question's)."""
        return question_bucket(n) <= self.max_question

    def prepare(self, ctx: AttentionContext, own_tokens: int, prompt: list[int], start: int,
                lead: Lead | None = None) -> None:
        """Fills the static buffers for a request over ctx's chunks (on the device: the table holds their
        addresses) whose own chunk will hold at most own_tokens tokens, the first of them the lead's (if any) and
        then the prompt at positions from `start`, prefilled by a graph if they are at most graph_max_question."""
        context = sum(k.shape[1] for k in ctx.keys)
        lead_ids = lead.token_ids if lead else []
        self.lead = len(lead_ids)
        self.windowed = lead is not None and lead.floors is not None
        n = self.lead + len(prompt)
        if self.fits_prompt(n):
            own_tokens = max(own_tokens, question_bucket(n))
        self.bucket = max(self.options.graph_min_bucket, 1 << (context + own_tokens - 1).bit_length())
        self.staged.wait()  # the previous request's copy has left the host buffer
        host = self.host
        packed = PackedBases.of(ctx.keys, ctx.values)
        self.packed = self.packed_bases[packed.format]
        tables = chunk_tables(list(zip(ctx.keys, ctx.values)), self.own.keys, self.own.values, self.max_chunks,
                              self.packed)
        host["tables"][:] = tables
        self.aligned = bool((tables[:, :4 * self.max_chunks] % 16 == 0).all())  # offsets, strides (not starts)
        host["shifts"][:] = 0
        host["scales"][:] = 1.0
        host["padding"][0] = len(self.shifts) - len(ctx.shifts)
        if self.fits_prompt(n):
            padded, end = question_bucket(n), start + len(prompt)
            host["prompt"][:n] = lead_ids + list(prompt)
            host["prompt"][n:padded] = 0
            top = self.model.config.max_position - 1
            host["prompt_positions"][:self.lead] = lead.positions if lead else []
            host["prompt_positions"][self.lead:padded] = np.minimum(np.arange(start, end + padded - n), top)
            host["limits"][:self.lead] = lead.limits if lead else []
            host["limits"][self.lead:n], host["limits"][n:padded] = context, 0
            if self.windowed:  # the question and the padding see every key: floors of 0
                host["floors"][:self.lead] = lead.floors
                host["floors"][self.lead:padded] = 0
            host["last"][0] = n - 1
        self.staged.send()
        # the chunks' shifts and scales are already on the device: after the padding, as in the tables
        self.shifts[len(self.shifts) - len(ctx.shifts):].copy_(ctx.shifts)
        if ctx.scales is not None:
            self.scales[len(self.scales) - len(ctx.scales):].copy_(ctx.scales)

    def _step(self, workspace, prompt: int = 0, greedy: bool = False, limited: bool = False,
              windowed: bool = False) -> torch.Tensor:
        """A decode step (greedy: its token from the argmax keys), or (prompt > 0) the prefill of a prompt padded
        to `prompt` tokens (limited: under the staged limits, a lead's; windowed: and floors): the padding comes
        after the real tokens, so causal masking keeps it out of their attention, and decoding overwrites its
        slots."""
        limits = self.limits[:prompt] if limited else None
        floors = self.floors[:prompt] if windowed else None
        ctx = AttentionContext([], [], self.shifts, self.own, scales=self.scales,
                               backend=TableAttention(self.tables, workspace, self.packed, limits, self.padding,
                                                      floors))
        if prompt:
            return self.model.step(self.prompt[:prompt], self.prompt_positions[:prompt], self.prompt_slots[:prompt],
                                   ctx, last=self.last)
        best = self.best if greedy else None
        x = next_input(self.model.embed_tokens.weight, self.token, self.position, self.slot, best)
        logits = self.model.step_embedded(x, self.position, self.slot, ctx, best=best, head=self.head)
        if greedy:
            publish_token(self.best, self.slot, self.published, self.options.kernels)
        return logits

    def prefill(self, n: int) -> torch.Tensor | None:
        """Logits after the lead given to prepare and the n-token prompt, written to own slots from 0; None when
        they are too long for a graph."""
        n += self.lead
        if not self.fits_prompt(n):
            return None
        padded = question_bucket(n)
        return self._replay(("prefill", self.bucket, self.aligned, self.packed.format, padded, self.lead > 0,
                             self.windowed), padded)

    def begin(self, token: torch.Tensor, position: int, slot: int, greedy: bool) -> None:
        """Decoding starts after the prompt, whose last token is at `position` in own slot `slot`, with `token` (a
        device tensor); greedy: for steps that take their tokens from the argmax keys (step(None))."""
        self.token.copy_(token.view(1))
        self.position.fill_(position)
        self.slot.fill_(slot)
        self.last_slot = slot
        if greedy:
            token_keys(token, self.best)

    def step(self, token: torch.Tensor | None) -> torch.Tensor:
        """Logits of the decode step after the last one (or after begin()) whose input is `token` (a device
        tensor), or with None the argmax of the last step's logits, which the step leaves in `best` in turn."""
        if token is not None:
            self.token.copy_(token.view(1))
        self.last_slot += 1
        return self._replay(("decode", self.bucket, self.aligned, self.packed.format, token is None), 0)

    def greedy_token(self):
        """A function that waits for the last greedy step queued (step(None)) and gives its token; call it before
        queueing the step after next."""
        slot = self.last_slot
        if not self.capture:
            return lambda: int(self.published[slot])
        event = self.published_events[slot % 2]
        event.record()

        def wait():
            event.synchronize()
            return int(self.published[slot])
        return wait

    def _replay(self, key: tuple, prompt: int) -> torch.Tensor:
        greedy = key[0] == "decode" and key[-1]
        limited, windowed = (key[0] == "prefill" and key[-2], key[0] == "prefill" and key[-1])
        if key not in self.graphs:
            self.graphs[key] = self._capture(prompt, greedy, limited, windowed)
        graph, workspace, logits = self.graphs[key]
        if graph is None:
            return self._step(workspace, prompt, greedy, limited, windowed)
        graph.replay()
        return logits

    def _capture(self, prompt: int, greedy: bool, limited: bool, windowed: bool):
        c = self.config
        workspace = decode_workspace(max(1, prompt), c.num_heads, c.head_dim, c.num_kv_heads, self.bucket,
                                     self.own.keys.device, self.aligned, self.options.kernels, bool(self.packed.format),
                                     limited, windowed)
        if not self.capture:
            return None, workspace, None
        graph, logits = capture(lambda: self._step(workspace, prompt, greedy, limited, windowed), self.pool,
                                keep=(self.token, self.position, self.slot, self.best))  # the warm-ups advance them
        return graph, workspace, logits
