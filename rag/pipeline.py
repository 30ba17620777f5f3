"""RAG: ingest, delete, retrieve and ask over one data directory. Safe to call from threads: one lock serialises
the engine, one the writers, and a document becomes visible to queries only once its passages, vectors and chunks
are all stored."""
import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from cascade_rag.engine import (LEVEL_DOCUMENT, LEVEL_SYSTEM, MODES, KVChunk, KVChunkError, LLMEngine, SamplingParams,
                    default_device, default_dtype, default_prefill_batch_tokens)
from cascade_rag.engine.kv_chunk import FORMAT_VERSION

from .chunking import split_passages
from .ingest import Document, Fields, IngestReport, InputError, read_paths, records, skipped_message
from .ingest_cost import IngestEstimate, check_disk
from .ingest_progress import IngestProgress
from .prompt import DEFAULT_SYSTEM_PROMPT, PromptTemplate
from .store import NoDocuments, Passage, Store, StoreError, chunk_key, ingest_hint, titled
from .lexical_index import LexicalIndex, fuse
from .vector_index import VectorIndex

log = logging.getLogger("cascade_rag")
DEFAULT_DATA_DIR = "./cascade-data"
# retrieval fuses the best RETRIEVAL_DEPTH passages by vector similarity and by BM25 (reciprocal rank fusion):
# recall@4 on squad-dev 0.885 by vectors alone, 0.96 fused (docs/EVALUATION.md)
RETRIEVAL_DEPTH = 50
# passages embedded in one call at ingestion: the progress bar moves between calls, and their chunks are prefilled
# before the next slice is embedded
EMBED_SLICE = 32


def default_data_dir() -> Path:
    return Path(os.environ.get("CASCADE_RAG_DATA") or DEFAULT_DATA_DIR)


@dataclass
class Source:
    doc_id: str
    title: str
    score: float
    passage_id: int
    text: str


@dataclass
class Answer:
    question: str
    mode: str
    sources: list[Source]
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    retrieval_s: float = 0.0
    chunks_s: float = 0.0              # fetching (or recomputing) the level-1 chunks
    ttft_s: float = 0.0                # prefill of the rest and the first token, as the engine measures it
    first_token_s: float = 0.0         # from the call to the first text, retrieval and chunks included
    total_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    tiers: dict[str, int] = field(default_factory=dict)   # chunks served from gpu / cpu / disk / recomputed
    warnings: list[str] = field(default_factory=list)


class AnswerStream:
    """Iterate for text deltas; `answer` holds text, sources and timings (complete once iteration ends).
    Consume it or call close(): the engine is held while it runs."""

    def __init__(self, answer: Answer, deltas: Iterator[str]):
        self.answer, self._deltas = answer, deltas

    def __iter__(self) -> Iterator[str]:
        return self._deltas

    def result(self) -> Answer:
        for _ in self._deltas:
            pass
        return self.answer

    def close(self) -> None:
        self._deltas.close()


def _crash_point(name: str) -> None:
    """Fault injection for the crash-safety tests: CASCADE_RAG_CRASH_AT=name:n exits at the n-th pass here."""
    spec = os.environ.get("CASCADE_RAG_CRASH_AT", "")
    if spec.split(":")[0] != name:
        return
    _crash_point.hits = getattr(_crash_point, "hits", 0) + 1
    if _crash_point.hits >= int(spec.split(":")[1] if ":" in spec else 1):
        os._exit(137)


class RAG:
    def __init__(self, data_dir: Path | str | None = None, *, model: Path | str | None = None,
                 device: str | None = None, dtype: str | None = None, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
                 embedder: str | None = None, index: str | None = None, passage_tokens: int = 256,
                 overlap: int = 32, cache_bytes: int | None = None, cpu_cache_bytes: int = 8 << 30,
                 prefill_batch_tokens: int | None = None, create: bool = True):
        self.store = Store(data_dir or default_data_dir(), create=create)
        self.model_path, self.system_prompt, self.embedder_path = model, system_prompt, embedder
        self.device = device or default_device()
        # bf16 matrix products are slow on CPUs without bf16 units; fp32 there unless asked otherwise
        self.dtype = dtype or default_dtype(self.device)
        self.passage_tokens, self.overlap = passage_tokens, overlap
        self.index_kind = index or (self.store.manifest() or {}).get("index", "flat")
        self.cache_bytes = cache_bytes if cache_bytes is not None else (2 << 30 if self.device == "cpu" else 8 << 30)
        self.cpu_cache_bytes = cpu_cache_bytes
        # ingestion prefills passages in batches of up to this many tokens (a passage longer than it goes alone;
        # 1: one passage at a time); smaller on a CPU, where attention scores are materialised
        if prefill_batch_tokens is not None and prefill_batch_tokens < 1:
            raise ValueError(f"prefill_batch_tokens must be at least 1, got {prefill_batch_tokens}")
        self.prefill_batch_tokens = prefill_batch_tokens or default_prefill_batch_tokens(self.device)
        self._engine: LLMEngine | None = None
        self._embedder = None
        self._index: VectorIndex | None = None
        self._lexical: LexicalIndex | None = None
        self._engine_lock = threading.RLock()   # the model, the level-0 chunk and the chunk cache
        self._state_lock = threading.RLock()    # the store's rows and the vector index, changed together
        self._write_lock = threading.Lock()     # one ingestion or deletion at a time

    # --- models, loaded on first use ---------------------------------------------------------------------------
    @property
    def engine(self) -> LLMEngine:
        with self._engine_lock:
            if self._engine is None:
                from cascade_rag.engine import TieredChunkCache
                engine = LLMEngine(self.model_path, device=self.device, dtype=self.dtype)
                self.template = PromptTemplate.from_tokenizer(engine.tokenizer, self.system_prompt)
                self.fingerprint = engine.fingerprint(self.system_prompt)
                self._check_manifest("fingerprint", self.fingerprint, "the model, its dtype or the system prompt")
                self.level0 = engine.prefill_chunk(engine.tokenizer.encode(self.template.level0), [], LEVEL_SYSTEM,
                                                   self.fingerprint)
                self.cache = TieredChunkCache(self.device, self.cache_bytes, self.cpu_cache_bytes)
                self._engine = engine
            return self._engine

    @property
    def embedder(self):
        with self._engine_lock:
            if self._embedder is None:
                from .embedder import Embedder
                embedder = Embedder(self.embedder_path)
                self._check_manifest("embedder", embedder.name, "the embedder")
                self._check_manifest("dim", embedder.dim, "the embedder")
                self._embedder = embedder
            return self._embedder

    def _check_manifest(self, key: str, value, what: str) -> None:
        manifest = self.store.manifest()
        if manifest is not None and manifest.get(key) != value and self.store.counts()["documents"]:
            raise StoreError(
                f"data directory {self.store.dir} was built with another {key} ({manifest.get(key)}, model "
                f"{manifest.get('model')}, dtype {manifest.get('dtype')}); {what} differ now: use the same "
                f"--model/--dtype/embedder or another --data-dir")

    def _write_manifest(self) -> None:
        engine, embedder = self.engine, self.embedder
        manifest = {"model": str(engine.model_path), "model_id": engine.model_id, "dtype": self.dtype,
                    "fingerprint": self.fingerprint, "system_prompt": self.system_prompt,
                    "chunk_format": FORMAT_VERSION, "embedder": embedder.name, "dim": embedder.dim,
                    "index": self.index_kind, "kv_bytes_per_token": engine.kv_bytes_per_token()}
        if self.store.manifest() != manifest:
            self.store.write_manifest(manifest)

    # --- the vector index --------------------------------------------------------------------------------------
    def _current_index(self) -> VectorIndex | None:
        """The index of the store's current generation: in memory, from its file, or rebuilt from the vectors."""
        with self._state_lock:
            generation = self.store.generation()
            if self._index is not None and self._index.generation == generation:
                return self._index
            manifest = self.store.manifest()
            if manifest is None:
                return None
            dim = manifest["dim"]
            index = VectorIndex.load(self.store.dir, dim, self.index_kind, generation)
            if index is None:
                generation, ids, vectors = self.store.vectors()
                index = VectorIndex.build(dim, self.index_kind, generation, ids, vectors)
                if self.store.is_writer:
                    index.save(self.store.dir)
            self._index = index
            return index

    def _current_lexical(self) -> LexicalIndex:
        """BM25 over the passages of the store's current generation, rebuilt after every change."""
        with self._state_lock:
            if self._lexical is None or self._lexical.generation != self.store.generation():
                self._lexical = LexicalIndex(*self.store.texts())
            return self._lexical

    def _apply_to_index(self, removed: list[int], added: list[int], vectors, generation: int) -> None:
        index = self._index
        if index is None or index.generation != generation - 1 or (removed and not index.supports_remove):
            self._index = None
            self._current_index()
            return
        if removed:
            index.remove(removed)
        if added:
            index.add(added, vectors)
        index.generation = generation

    # --- ingestion ---------------------------------------------------------------------------------------------
    def ingest(self, paths: Iterable[Path | str] = (), documents: Iterable[dict | Document] = (),
               fields: Fields = Fields(), progress: bool = False, max_disk_bytes: int | None = None) -> IngestReport:
        """Ingests files and folders (.txt, .md, .jsonl) and records ({id, title, text} or Document). Unchanged
        documents are skipped, changed ones replaced; bad inputs are reported in the result, not raised, and files
        of other types in folders are named in a warning and the result's `skipped`. See ingest_documents for
        `progress` and `max_disk_bytes`."""
        documents, skipped = list(documents), []
        items = list(read_paths(paths, fields, skipped)) + [d for d in documents if isinstance(d, Document)]
        items += records([d for d in documents if not isinstance(d, Document)], fields)
        if skipped:
            log.warning(skipped_message(skipped))
        report = self.ingest_documents(items, progress, max_disk_bytes)
        report.skipped = skipped
        return report

    def ingest_documents(self, items: list[Document | InputError], progress: bool = False,
                         max_disk_bytes: int | None = None) -> IngestReport:
        """Ingests documents (InputErrors are reported in the result). Before anything is embedded, prefilled or
        written, the cost is estimated (report.estimate: passages, tokens, bytes of the new KV chunks and rows) and
        the ingestion refused with IngestTooLarge when its bytes exceed the free space of the data directory's
        filesystem or `max_disk_bytes`. `progress`: on stderr, the estimate in one line (its time measured on
        the first slice embedded and the first batch prefilled), then a bar over the passages' tokens."""
        with self._write_lock:
            self.store.lock_for_writing()
            if any(isinstance(item, Document) for item in items):
                self.engine, self.embedder  # loads the models (and checks them against the manifest)
            report = IngestReport()
            plan, seen = [], set()
            for item in items:
                if isinstance(item, InputError):
                    report.errors.append(item)
                elif item.id in seen:
                    report.errors.append(InputError(item.source or "input", f"document {item.id} given twice; "
                                                                             f"the first one was kept"))
                else:
                    seen.add(item.id)
                    digest = self._content_hash(item)
                    if self.store.document_hash(item.id) == digest:
                        report.unchanged.append(item.id)
                    else:
                        plan.append((item, digest, self._passages(item)))
            prefill = _BatchPrefill(self, [p for _, _, passages in plan for p in passages])
            if plan:
                report.estimate = IngestEstimate.of([passages for _, _, passages in plan],
                                                    [ids for _, ids in prefill.queue],
                                                    self._engine.kv_bytes_per_token(), self._embedder.dim)
                check_disk(report.estimate, self.store.dir, max_disk_bytes)  # nothing written before
            if any(isinstance(item, Document) for item in items):
                self._write_manifest()
            bar = IngestProgress(report.estimate, progress and bool(plan))
            try:
                first = self._calibrate(plan, prefill, bar) if bar.enabled else []
                for document, digest, passages in plan:
                    self._ingest_one(document, digest, passages, report, bar, prefill, first)
                    first = []
            finally:
                bar.close()
            self.store.collect_garbage()
            if self._current_index() is not None:
                self._index.save(self.store.dir)
            report.seconds = time.perf_counter() - report.began
            return report

    def _content_hash(self, document: Document) -> str:
        key = [document.title, document.text, self.passage_tokens, self.overlap]
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()

    def _passages(self, document: Document) -> list[tuple[str, list[int]]]:
        tok = self._engine.tokenizer
        texts = split_passages(document.text, lambda s: len(tok.encode(s)), tok.encode, tok.decode,
                               self.passage_tokens, self.overlap)
        return [(text, tok.encode(self.template.passage(document.title, text))) for text in texts]

    def _calibrate(self, plan, prefill: "_BatchPrefill", bar: IngestProgress) -> list[np.ndarray]:
        """Times the first slice of passages embedded and the first batch prefilled (both kept) for the time of
        the estimate line, which it ends; returns the slice's vectors."""
        bar.announce()
        document, _, passages = plan[0]
        began = time.perf_counter()
        vectors = self._embed(document, passages[:EMBED_SLICE])
        embed_s = time.perf_counter() - began
        tokens, prefill_s = prefill.prefill_next() if prefill.queue else (0, 0.0)
        bar.calibrated(sum(len(ids) for _, ids in passages[:EMBED_SLICE]), embed_s, tokens, prefill_s)
        return vectors

    def _embed(self, document: Document, passages) -> list[np.ndarray]:
        return list(self._embedder.encode([titled(document.title, text) for text, _ in passages]))

    def _ingest_one(self, document: Document, digest: str, passages, report: IngestReport, bar: IngestProgress,
                    prefill: "_BatchPrefill", vectors: list[np.ndarray]) -> None:
        """Embeds the passages slice by slice (after `vectors`, embedded ahead), each slice's chunks prefilled and
        saved before the next slice, then commits the document."""
        vectors, rows = list(vectors), []
        for text, ids in passages:
            if len(rows) == len(vectors):
                part = passages[len(rows):len(rows) + EMBED_SLICE]
                vectors += self._embed(document, part)
                bar.embedded(sum(len(i) for _, i in part))
            key = chunk_key(self.fingerprint, ids)
            if not self.store.has_chunk(key):
                self.store.save_chunk(key, prefill.take(key, ids))
                report.prefilled += 1
                _crash_point("chunk_saved")
            rows.append((text, ids, key, vectors[len(rows)]))
            report.tokens += len(ids)
            report.kv_bytes += len(ids) * self._engine.kv_bytes_per_token()
            bar.stored(len(ids))
        _crash_point("before_commit")
        with self._state_lock:
            existed = self.store.document_hash(document.id) is not None
            removed, added = self.store.put_document(document.id, document.title, document.source, digest, rows)
            self._apply_to_index(removed, added, np.stack(vectors), self.store.generation())
        (report.updated if existed else report.added).append(document.id)
        report.passages += len(rows)
        _crash_point("committed")

    def delete(self, doc_ids: Iterable[str]) -> list[str]:
        """Deletes documents with their passages, vectors and chunks, all or none: an unknown id raises
        UnknownDocuments and deletes nothing. Returns the deleted ids."""
        with self._write_lock:
            self.store.lock_for_writing()
            with self._state_lock:
                deleted, removed = self.store.delete_documents(list(doc_ids))
                if deleted and self.store.manifest() is not None:
                    self._apply_to_index(removed, [], None, self.store.generation())
                    self._index.save(self.store.dir)
            self.store.collect_garbage()
            return deleted

    # --- answering ---------------------------------------------------------------------------------------------
    def retrieve(self, question: str, top_k: int = 4) -> list[Source]:
        return [source for source, _ in self._retrieve(question, top_k)]

    @staticmethod
    def _check_query(question: str, top_k: int) -> None:
        if not question.strip():
            raise ValueError("the question is empty")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")

    def _require_documents(self) -> None:
        if not self.store.counts()["documents"] or self._current_index() is None:
            raise NoDocuments(f"data directory {self.store.dir} has no documents: {ingest_hint(self.store.dir)}")

    def _retrieve(self, question: str, top_k: int) -> list[tuple[Source, Passage]]:
        self._check_query(question, top_k)
        self._require_documents()
        vector = self.embedder.encode([question])[0]
        depth = max(RETRIEVAL_DEPTH, top_k)
        with self._state_lock:
            index = self._current_index()
            pids = fuse([index.search(vector, depth), self._current_lexical().search(question, depth)])[:top_k]
            scores = index.similarity(vector, pids)
            passages = self.store.passages(pids)
        return [(Source(p.doc_id, p.title, score, pid, p.text), p)
                for pid, score in zip(pids, scores) if (p := passages.get(pid)) is not None]

    def ask(self, question: str, top_k: int = 4, mode: str = "cached",
            params: SamplingParams = SamplingParams(max_new_tokens=128)) -> AnswerStream:
        """Retrieves the top_k passages now and returns a stream that composes level 0, their chunks and the
        question (`cached`: stored KV; `full`: one prefill of the same tokens; `blend`: stored KV partly
        recomputed, see LLMEngine.blend) and generates the answer."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        self._check_query(question, top_k)
        self._require_documents()
        began = time.perf_counter()
        self.engine  # loads the model here: a mismatch with the store raises from ask(), not from the stream
        hits = self._retrieve(question, top_k)
        answer = Answer(question, mode, [s for s, _ in hits], retrieval_s=time.perf_counter() - began)
        return AnswerStream(answer, self._answer(answer, [p for _, p in hits], params, began))

    def composition(self, question: str, top_k: int = 4) -> tuple[list[KVChunk], list[int]]:
        """What `ask` composes for a question: level 0 and the stored chunks of the top_k passages, and the
        question's level-2 token ids (for measurements: `cascade-rag eval --fidelity-tokens`)."""
        self._check_query(question, top_k)
        engine = self.engine
        hits = self._retrieve(question, top_k)
        with self._engine_lock:
            answer = Answer(question, "cached", [s for s, _ in hits])
            chunks = [self.level0] + [self._chunk(p, answer) for _, p in hits]
        return chunks, engine.tokenizer.encode(self.template.query(question))

    def _answer(self, answer: Answer, passages: list[Passage], params: SamplingParams, began: float):
        engine = self._engine
        with self._engine_lock:
            loaded = time.perf_counter()
            chunks = [self.level0] + [self._chunk(p, answer) if answer.mode != "full" else
                                      _tokens_only(p, self.level0.length, self.fingerprint) for p in passages]
            answer.chunks_s = time.perf_counter() - loaded
            ids = engine.tokenizer.encode(self.template.query(answer.question))
            generation = engine.stream(ids, params, chunks, answer.mode)
            answer.prompt_tokens = generation.prompt_tokens
            for delta in generation:
                if not answer.text:
                    answer.first_token_s = time.perf_counter() - began
                answer.text += delta
                yield delta
        answer.text = generation.text
        answer.token_ids, answer.finish_reason = generation.token_ids, generation.finish_reason
        answer.ttft_s, answer.decode_tokens_per_s = generation.ttft_s, generation.decode_tokens_per_s
        answer.total_s = time.perf_counter() - began

    def _chunk(self, passage: Passage, answer: Answer) -> KVChunk:
        recomputed = []

        def load() -> KVChunk:
            if not self.store.has_chunk(passage.chunk_key):
                message = f"KV chunk of passage {passage.pid} ({passage.doc_id}) is missing; recomputing it"
            else:
                try:
                    return self.store.load_chunk(passage.chunk_key, self.fingerprint, "cpu",
                                                 pin=self.cache.cpu_tier is not None)
                except KVChunkError as exc:
                    message = f"{exc}; recomputing it"
            log.warning(message)
            answer.warnings.append(message)
            recomputed.append(True)
            chunk = self._engine.prefill_chunk(passage.token_ids, [self.level0], LEVEL_DOCUMENT, self.fingerprint)
            try:
                self.store.save_chunk(passage.chunk_key, chunk)
            except OSError as exc:
                log.warning(f"could not store the recomputed chunk: {exc}")
            return chunk

        chunk, tier = self.cache.get(passage.chunk_key, load)
        tier = "recomputed" if recomputed else tier
        answer.tiers[tier] = answer.tiers.get(tier, 0) + 1
        return chunk

    # --- state -------------------------------------------------------------------------------------------------
    def documents(self) -> list[dict]:
        return self.store.documents()

    def stats(self) -> dict:
        files = self.store.chunk_files()
        stats = dict(self.store.counts(), chunk_files=len(files), chunk_bytes=sum(f.stat().st_size for f in files))
        if self._engine is not None:
            stats["cache"] = {name: dict(vars(tier.stats), chunks=len(tier), bytes=tier.used_bytes)
                              for name, tier in self.cache.tiers().items()}
        return stats

    def check(self) -> list[str]:
        """Inconsistencies between rows, chunk files and the vector index (empty when consistent)."""
        problems = []
        keys = self.store.chunk_keys()
        on_disk = {p.stem for p in self.store.chunk_files()}
        problems += [f"passage chunk {k} has no file" for k in sorted(keys - on_disk)]
        problems += [f"chunk file {k} belongs to no passage" for k in sorted(on_disk - keys)]
        generation, ids, _ = self.store.vectors()
        index = self._current_index()
        if index is not None and sorted(index.ids().tolist()) != ids.tolist():
            problems.append(f"vector index holds {len(index)} vectors, the store {len(ids)}")
        return problems

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "RAG":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _BatchPrefill:
    """The KV chunks of an ingestion's passages missing on disk, prefilled ahead in plan order (across documents)
    in batches of up to rag.prefill_batch_tokens tokens and handed out one by one: each document still saves its
    own chunks, then commits, as with one prefill per passage. At most one batch is held in memory."""

    def __init__(self, rag: "RAG", passages: list[tuple[str, list[int]]]):
        self.rag, self.ready, todo = rag, {}, {}
        for _, ids in passages:
            key = chunk_key(rag.fingerprint, ids)
            if key not in todo and not rag.store.has_chunk(key):
                todo[key] = ids
        self.queue, self.queued = deque(todo.items()), set(todo)

    def take(self, key: str, ids: list[int]) -> KVChunk:
        rag = self.rag
        while key not in self.ready and key in self.queued:  # documents ask in plan order: `key` heads the queue
            self.prefill_next()
        chunk = self.ready.pop(key, None)
        if chunk is None:  # not planned (its file was there when planning): on its own
            with rag._engine_lock:
                chunk = rag._engine.prefill_chunk(ids, [rag.level0], LEVEL_DOCUMENT, rag.fingerprint)
        return chunk

    def prefill_next(self) -> tuple[int, float]:
        """Prefills the next batch of the queue; returns its tokens and seconds."""
        rag, began = self.rag, time.perf_counter()
        batch = [self.queue.popleft()]
        tokens = len(batch[0][1])
        while self.queue and tokens + len(self.queue[0][1]) <= rag.prefill_batch_tokens:
            batch.append(self.queue.popleft())
            tokens += len(batch[-1][1])
        self.queued.difference_update(k for k, _ in batch)
        with rag._engine_lock:
            chunks = rag._engine.prefill_chunks([b for _, b in batch], [rag.level0], LEVEL_DOCUMENT, rag.fingerprint)
        self.ready.update(zip((k for k, _ in batch), chunks))
        return tokens, time.perf_counter() - began


def _tokens_only(passage: Passage, start: int, fingerprint: str) -> KVChunk:
    """A chunk with token ids and no KV: `full` mode prefills the tokens itself and never reads stored KV."""
    empty = torch.empty(0)
    return KVChunk(LEVEL_DOCUMENT, passage.token_ids, start, empty, empty, fingerprint)
