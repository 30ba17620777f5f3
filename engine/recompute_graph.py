"""The recompute of each document's first tokens (EPIC, engine.selective's `prefix`) replayed as a CUDA graph, one
per context-length bucket, number of recomputed tokens and number of table slots (each padded to a power of two:
the queries are rotated for every slot, so a graph has no more slots than its context needs).

The recomputed tokens are a prefill over a chunk table, as the question's is (engine.cuda_graph): the context is
level 0 and the rows of each document after its recomputed ones (read in place, their position shift applied to
the query), the own chunk is this object's buffer, which receives the recomputed rows in position order. Token i of
document d sees the context's first limits[i] keys (level 0 and the stored rows of the documents before d) and,
causally, the recomputed rows up to its own (those of the documents before d and its own first ones): the same
attention as the eager pass (engine.selective.LimitedAttention). Padding tokens come after the real ones with a
limit of 0, so that no real token sees them, and their rows are never referenced."""
import numpy as np
import torch

from cascade_rag.kernels.chunk_attention import chunk_tables, decode_workspace

from .attention import AttentionContext, KVBuffer
from .cuda_graph import TableAttention, question_bucket
from .graph_capture import StagedInputs, capture
from .model import Decoder
from .options import EngineOptions

_NAMES = ("tables", "shifts", "tokens", "positions", "limits", "floors")


class GraphRecompute:
    """Owns the recomputed rows' buffer (`buffer`, [layers, graph_recompute_tokens, Hkv, D]: the chunks that
    engine.selective returns are views of it, valid until the next run), the static inputs of a run (chunk tables,
    shifts, tokens, positions, limits: engine.graph_capture.StagedInputs)
    and the graphs captured over them. Elsewhere than CUDA the same steps run uncaptured (for tests)."""

    def __init__(self, model: Decoder, options: EngineOptions, dtype: torch.dtype, device: str):
        c = model.config
        self.model, self.config, self.options = model, c, options
        self.max_chunks = options.graph_max_chunks
        capacity = options.graph_recompute_tokens
        self.buffer = KVBuffer.empty(c, capacity, dtype, device)
        self.capture = torch.device(device).type == "cuda"
        sizes = (c.num_layers * (7 * self.max_chunks + 1), self.max_chunks - 1, capacity, capacity, capacity,
                 3 * capacity)
        self.staged = StagedInputs(dict(zip(_NAMES, sizes)), device, self.capture)
        self.views = dict(self.staged.views, floors=self.staged.views["floors"].view(-1, 3))
        self.host = {name: t.numpy() for name, t in self.staged.host.items()}
        self.host["floors"] = self.host["floors"].reshape(-1, 3)
        self.scales = torch.ones(self.max_chunks - 1, dtype=torch.float32, device=device)
        self.rows = torch.arange(capacity, device=device)  # the buffer's rows the tokens are written to
        self.graphs: dict[tuple, tuple] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None

    def fits(self, context_chunks: int, tokens: int) -> bool:
        """Whether a recompute of `tokens` tokens over `context_chunks` context chunks runs here."""
        return 0 < tokens and context_chunks < self.max_chunks and question_bucket(tokens) <= self.buffer.capacity

    def slots(self, context_chunks: int) -> int:
        """Table slots of a graph over `context_chunks` chunks: them and the own chunk, in a power of two (at least
        8), at most max_chunks."""
        return min(self.max_chunks, max(8, 1 << context_chunks.bit_length()))

    def run(self, keys: list[torch.Tensor], values: list[torch.Tensor], shifts: list[int], token_ids: list[int],
            positions: list[int], limits: list[int], floors: np.ndarray | None = None) -> None:
        """The tokens (at their positions, each seeing the first limits[i] keys of the context) through every layer,
        their KV written to the buffer's first rows. keys/values: the context chunks, [layers, n, Hkv, D] in the
        model's dtype on the device; shifts: each one's position shift; floors: a window (PrefixPlan's), None for
        none."""
        n, padded = len(token_ids), question_bucket(len(token_ids))
        if not self.fits(len(keys), n):
            raise ValueError(f"a recompute of {n} tokens over {len(keys)} chunks does not fit the graph's buffers")
        context = sum(k.shape[1] for k in keys)
        bucket = max(self.options.graph_min_bucket, 1 << (context + padded - 1).bit_length())
        self.staged.wait()  # the previous run's copy has left the host buffer
        host, slots = self.host, self.slots(len(keys))
        tables = chunk_tables(list(zip(keys, values)), self.buffer.keys, self.buffer.values, slots)
        host["tables"][:tables.size] = tables.reshape(-1)
        aligned = bool((tables[:, :4 * slots] % 16 == 0).all())
        host["shifts"][:slots - 1 - len(shifts)] = 0
        host["shifts"][slots - 1 - len(shifts):slots - 1] = shifts
        host["tokens"][:n], host["tokens"][n:padded] = token_ids, 0
        host["positions"][:n], host["positions"][n:padded] = positions, positions[-1]
        host["limits"][:n], host["limits"][n:padded] = limits, 0
        if floors is not None:
            host["floors"][:n] = floors
            host["floors"][n:padded] = 0
        self.staged.send()
        key = (bucket, aligned, padded, slots, floors is not None)
        if key not in self.graphs:
            self.graphs[key] = self._capture(*key)
        graph, workspace = self.graphs[key]
        if graph is None:
            self._step(workspace, padded, slots, floors is not None)
        else:
            graph.replay()

    def _step(self, workspace, padded: int, slots: int, windowed: bool) -> None:
        v, layers = self.views, self.config.num_layers
        tables = v["tables"][:layers * (7 * slots + 1)].view(layers, -1)
        ctx = AttentionContext([], [], v["shifts"][:slots - 1], self.buffer, scales=self.scales[:slots - 1],
                               backend=TableAttention(tables, workspace, limits=v["limits"][:padded],
                                                      floors=v["floors"][:padded] if windowed else None))
        x = self.model.embed_tokens(v["tokens"][:padded])
        positions, rows = v["positions"][:padded], self.rows[:padded]
        with torch.inference_mode():
            for layer in self.model.layers:
                x = layer(x, positions, rows, ctx, self.model.rotary)

    def _capture(self, bucket: int, aligned: bool, padded: int, slots: int, windowed: bool):
        c = self.config
        workspace = decode_workspace(padded, c.num_heads, c.head_dim, c.num_kv_heads, bucket, self.buffer.keys.device,
                                     aligned, self.options.kernels, limited=True, windowed=windowed)
        if not self.capture:
            return None, workspace
        graph, _ = capture(lambda: self._step(workspace, padded, slots, windowed), self.pool)
        return graph, workspace
