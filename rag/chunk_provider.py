"""ChunkProvider: the language model and the chunks it reads. It loads the engine on first use, with the prompt
template, the fingerprint and the level-0 chunk; names chunks (chunk_key); and serves passage chunks from the
memory tiers, the chunk store, or (on a miss, the one place that decides it) a recompute that is stored again."""
import logging
import threading
from dataclasses import dataclass

import torch

from cascade_rag.engine import LEVEL_DOCUMENT, LEVEL_SYSTEM, KVChunk, LLMEngine, TieredChunkCache
from cascade_rag.engine.chunk_stream import ChunkStreamer

from .chunk_identity import identity_problem
from .collection import DEFAULT_COLLECTION
from .chunk_store import ChunkStore, ChunkWriteError, chunk_key
from .manifest import Manifest
from .options import RAGOptions
from .prompt import PromptTemplate

log = logging.getLogger("cascade_rag")
STREAM_WORKERS = 8  # threads that read, check and copy streamed chunks


@dataclass(frozen=True)
class Model:
    """The loaded engine and what is made with it once."""
    engine: LLMEngine
    template: PromptTemplate
    fingerprint: str
    level0: KVChunk
    tiers: TieredChunkCache


@dataclass(frozen=True)
class Served:
    """A passage's chunk on the engine's device, the tier it came from, and a warning when it was recomputed."""
    chunk: KVChunk
    tier: str
    warning: str | None = None


class ChunkProvider:
    def __init__(self, options: RAGOptions, chunks: ChunkStore, manifest: Manifest):
        self.options, self.chunks, self.manifest = options, chunks, manifest
        self.lock = threading.RLock()  # the engine, the level-0 chunk and the tiers
        self._model: Model | None = None
        self.streamer: ChunkStreamer | None = None  # threads of streamed loads, made on first use

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def model(self) -> Model:
        """The model, loaded on the first call (and checked against the manifest)."""
        with self.lock:
            if self._model is None:
                o = self.options
                engine = LLMEngine(o.model, device=o.device, dtype=o.dtype, kv_format=o.kv_format)
                template = PromptTemplate.from_tokenizer(engine.tokenizer, o.system_prompt)
                fingerprint = engine.fingerprint(o.system_prompt)
                self.manifest.check("fingerprint", fingerprint, "the model, its dtype or the system prompt")
                level0 = engine.prefill_chunk(engine.tokenizer.encode(template.level0), [], LEVEL_SYSTEM, fingerprint)
                tiers = TieredChunkCache(o.device, o.cache_bytes, o.cpu_cache_bytes)
                self._model = Model(engine, template, fingerprint, level0, tiers)
            return self._model

    def check_kv_format(self) -> None:
        """Raises KVFormatMismatch when the data directory's chunks are in another KV format than this process's
        (checked where chunks are read or written, not when the model loads: a server still starts, and refuses
        those calls)."""
        self.manifest.check_kv_format(self.options.kv_format)

    def key(self, token_ids: list[int], collection: str = DEFAULT_COLLECTION) -> str:
        """The chunk key of a passage of the collection (the default collection's keys are those of stores made
        before collections)."""
        return chunk_key(self.model().fingerprint, token_ids, collection, self.options.kv_format)

    def prefill(self, batch: list[list[int]]) -> list[KVChunk]:
        """The level-1 chunks of passages' token ids, prefilled together after level 0."""
        m = self.model()
        with self.lock:
            return m.engine.prefill_chunks(batch, [m.level0], LEVEL_DOCUMENT, m.fingerprint)

    def serve(self, key: str, token_ids: list[int], label: str, collection: str = DEFAULT_COLLECTION) -> Served:
        """The chunk of the passage `label` (its key, token ids and collection), from the tiers or the store; on a miss
        (absent, unreadable, or not this passage's own chunk: chunk_identity), prefilled again and stored again (a
        failure to store it is a warning: the answer goes on)."""
        m = self.model()
        with self.lock:
            chunk, tier = m.tiers.lookup(key)
            if chunk is not None:
                return Served(chunk, tier)
            found = self.chunks.get(key, m.fingerprint, "cpu", pin=m.tiers.pins)
            problem = found.problem
            if found.chunk is not None:
                problem = identity_problem(found.chunk, key, token_ids, collection, m.level0.length,
                                           f"KV chunk {key} of passage {label}")
                if problem is None:
                    return Served(m.tiers.admit(key, found.chunk), self.chunks.tier)
            return self._recompute(key, token_ids, label, problem)

    def serve_streamed(self, passages: list[tuple[str, list[int], str, str]]) -> list[Served]:
        """serve() of several passages (key, token ids, label, collection), those in neither tier loaded from the
        store together, streamed block by block to the device (engine.chunk_stream: the request's prefill starts
        while they arrive) and kept in the device tier; each checked to be its passage's own (chunk_identity) from
        its header, before any of its layers is used. A block that fails its check fails the layers it holds and the
        request that waits for them: `forget` the chunk, then serve it again (recomputed)."""
        m = self.model()
        with self.lock:
            served, misses = {}, []
            for i, (key, _, _, _) in enumerate(passages):
                chunk, tier = m.tiers.lookup(key)
                if chunk is not None:
                    served[i] = Served(chunk, tier)
                else:
                    misses.append(i)
            if self.streamer is None:
                self.streamer = ChunkStreamer(STREAM_WORKERS)
            found = self.chunks.stream([passages[i][0] for i in misses], m.fingerprint, m.engine.device,
                                       self.streamer) if misses else []
            for i, lookup in zip(misses, found):
                key, token_ids, label, collection = passages[i]
                problem = lookup.problem
                if lookup.chunk is not None:
                    problem = identity_problem(lookup.chunk, key, token_ids, collection, m.level0.length,
                                               f"KV chunk {key} of passage {label}")
                    if problem is None:
                        m.tiers.put(key, lookup.chunk)
                        served[i] = Served(lookup.chunk, self.chunks.tier)
                        continue
                served[i] = self._recompute(key, token_ids, label, problem)
            return [served[i] for i in range(len(passages))]

    def forget(self, key: str) -> None:
        """Drops a chunk found bad while it was used: from the tiers and the store (its next use recomputes it)."""
        with self.lock:
            self.model().tiers.discard(key)
            self.chunks.delete(key)

    def _recompute(self, key: str, token_ids: list[int], label: str, problem: str | None) -> Served:
        m = self.model()
        warning = f"{problem or f'KV chunk of passage {label} is missing'}; recomputing it"
        log.warning(warning)
        chunk = m.engine.prefill_chunk(token_ids, [m.level0], LEVEL_DOCUMENT, m.fingerprint)
        try:
            self.chunks.put(key, chunk)
        except ChunkWriteError as exc:
            log.warning(f"could not store the recomputed chunk: {exc}")
        return Served(m.tiers.admit(key, chunk), "recomputed", warning)

    def tokens_only(self, token_ids: list[int]) -> KVChunk:
        """A chunk with token ids and no KV: `full` mode prefills the tokens itself and never reads stored KV."""
        m, empty = self.model(), torch.empty(0)
        return KVChunk(LEVEL_DOCUMENT, token_ids, m.level0.length, empty, empty, m.fingerprint)

    def tier_stats(self) -> dict:
        """Per memory tier: hits, misses, evictions, chunks, bytes and budget_bytes (empty before the model is
        loaded)."""
        if self._model is None:
            return {}
        return {name: dict(vars(tier.stats), chunks=len(tier), bytes=tier.used_bytes, budget_bytes=tier.budget_bytes)
                for name, tier in self._model.tiers.tiers().items()}
