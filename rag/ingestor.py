"""Ingestor: documents in, documents out. Plans an ingestion (unchanged documents skipped, its limits and cost
checked before anything is written), embeds and prefills its passages and stores their chunks, then commits: each
document in its own transaction, or the whole call in one (all or nothing). It runs as a series of small steps
(a document tokenised, a slice of passages embedded, a batch prefilled) through a `run` of the caller's choosing,
so that a server's model thread answers queries between them and a cancelled call stops at the next one; what an
ingestion that did not commit wrote is removed. Deletes all or nothing. One ingestion or deletion at a time."""
import logging
import threading
import time
from typing import Callable

import numpy as np

from .batch_prefill import BatchPrefill
from .chunk_provider import ChunkProvider
from .collection import DEFAULT_COLLECTION
from .crash_points import CrashHook, no_crash
from .document_passages import CallTally, changed_documents, manifest_fields, passages_of
from .document_store import DocumentStore, StoreError
from .ingest import Document, IngestReport, InputError
from .ingest_cost import IngestEstimate, check_disk
from .ingest_limits import check_call
from .ingest_progress import IngestProgress
from .manifest import Manifest
from .options import RAGOptions
from .retriever import Retriever

log = logging.getLogger("cascade_rag")
Run = Callable  # run(fn, *args) -> fn(*args), on the thread that does the model work (the server's model thread)
Stop = Callable[[], "str | None"]  # why to stop now, or None


class IngestStopped(StoreError):
    """An ingestion stopped between two steps before it committed (its call cancelled, the server shutting down)."""


def here(fn, *args):
    return fn(*args)


class Ingestor:
    def __init__(self, store: DocumentStore, provider: ChunkProvider, retriever: Retriever, manifest: Manifest,
                 options: RAGOptions, crash_hook: CrashHook = no_crash):
        self.store, self.provider, self.retriever, self.manifest = store, provider, retriever, manifest
        self.options, self.limits, self.crash = options, options.ingest_limits, crash_hook
        self.lock = threading.Lock()  # held by the calling thread, never by `run`'s between steps

    def ingest(self, items: list[Document | InputError], progress: bool = False, max_disk_bytes: int | None = None,
               collection: str = DEFAULT_COLLECTION, *, all_or_nothing: bool = False, run: Run = here,
               stop: Stop | None = None) -> IngestReport:
        """See RAG.ingest_documents."""
        with self.lock:
            report = IngestReport()
            steps = self._steps(items, report, progress, max_disk_bytes, collection, all_or_nothing)
            try:
                while run(next, steps, False):
                    reason = stop() if stop is not None else None
                    if reason:
                        raise IngestStopped(f"{reason}; nothing of this ingestion was stored")
            finally:
                try:
                    run(steps.close)  # the generator's cleanup, on the thread that ran its steps
                except RuntimeError:  # that thread is gone
                    steps.close()
            return report

    def _steps(self, *args):
        """The ingestion, yielding True after each step, by this process as the store's one writer (a shared store's
        writer lock given back at its end)."""
        with self.store.writing():
            yield from self._writer_steps(*args)

    def _writer_steps(self, items, report: IngestReport, progress: bool, max_disk_bytes: int | None, collection: str,
                      all_or_nothing: bool):
        if any(isinstance(item, Document) for item in items):
            self.provider.model(), self.retriever.embedder()  # loaded and checked against the manifest
            self.provider.check_kv_format()
        plan = []
        for planned in self._plan(items, report, collection):
            plan.append(planned)
            yield True
        prefill = BatchPrefill(self.provider, [ids for _, _, passages in plan for _, ids in passages],
                               self.options.prefill_batch_tokens, collection)
        if plan:
            report.estimate = e = IngestEstimate.of([passages for _, _, passages in plan], prefill.planned(),
                                                    self.provider.model().engine.kv_bytes_per_token(),
                                                    self.retriever.embedder().dim)
            check_call(self.limits, e.passages, e.tokens, e.chunk_bytes)
            check_disk(e, self.store.dir, max_disk_bytes, self.limits.disk_reserve_bytes)  # nothing written before
            self.manifest.update(self._manifest())
        bar = IngestProgress(report.estimate, progress and bool(plan))
        try:
            vectors = self._calibrate(plan, prefill, bar) if bar.enabled else []
            ready = []
            for document, digest, passages in plan:
                rows = []
                yield from self._prepare(collection, document, passages, rows, vectors, report, bar, prefill)
                ready.append((document, digest, rows, vectors))
                vectors = []
                if not all_or_nothing:
                    ready = self._commit(collection, ready, report)
            self._commit(collection, ready, report)
        finally:
            bar.close()
            self._collect()  # the chunks of what was not committed
        if plan:
            self._save_index()
        report.seconds = time.perf_counter() - report.began

    def _manifest(self) -> dict:
        return manifest_fields(self.provider.model(), self.retriever.embedder(), self.options)

    def _plan(self, items: list[Document | InputError], report: IngestReport, collection: str):
        """(document, content hash, passages) of each new or changed document, one at a time, checked against the
        limits (rag/document_passages.py); the rest reported."""
        tally = CallTally(self.limits)
        for document, digest in changed_documents(items, report, lambda doc_id: self.store.document_hash(
                collection, doc_id), self.options):
            passages = passages_of(document, self.provider.model(), self.options)
            tally.add(passages)
            yield document, digest, passages

    def _calibrate(self, plan, prefill: BatchPrefill, bar: IngestProgress) -> list[np.ndarray]:
        """Times the first slice of passages embedded and the first batch prefilled (both kept) for the time of
        the estimate line, which it ends; returns the slice's vectors."""
        bar.announce()
        document, _, passages = plan[0]
        began = time.perf_counter()
        first = passages[:self.options.embed_slice]
        vectors = self.retriever.embed_passages(document.title, [text for text, _ in first])
        embed_s = time.perf_counter() - began
        tokens, prefill_s = prefill.prefill_next() if prefill.queued else (0, 0.0)
        bar.calibrated(sum(len(ids) for _, ids in first), embed_s, tokens, prefill_s)
        return vectors

    def _prepare(self, collection: str, document: Document, passages, rows: list, vectors: list[np.ndarray],
                 report: IngestReport, bar: IngestProgress, prefill: BatchPrefill):
        """Embeds the passages slice by slice (after `vectors`, embedded ahead), each slice's chunks prefilled and
        saved before the next slice, into `rows` and `vectors`; yields after each slice embedded and each chunk
        computed."""
        chunks, kv_per_token = self.provider.chunks, self.provider.model().engine.kv_bytes_per_token()
        for text, ids in passages:
            if len(rows) == len(vectors):
                part = passages[len(rows):len(rows) + self.options.embed_slice]
                vectors += self.retriever.embed_passages(document.title, [t for t, _ in part])
                bar.embedded(sum(len(i) for _, i in part))
                yield True
            key = self.provider.key(ids, collection)
            if not chunks.contains(key):
                chunks.put(key, prefill.take(key, ids))
                report.prefilled += 1
                self.crash("chunk_saved")
                yield True
            rows.append((text, ids, key, vectors[len(rows)]))
            report.tokens += len(ids)
            report.kv_bytes += len(ids) * kv_per_token
            bar.stored(len(ids))

    def _commit(self, collection: str, ready: list, report: IngestReport) -> list:
        """Commits the prepared (document, hash, rows, vectors) in one transaction; returns an empty list."""
        if not ready:
            return []
        self.crash("before_commit")
        with self.retriever.lock:
            existed = {d.id for d, *_ in ready if self.store.document_hash(collection, d.id) is not None}
            removed, added = self.store.put_documents(collection, [(d.id, d.title, d.source, digest, rows, d.metadata)
                                                                   for d, digest, rows, _ in ready])
            self.retriever.changed(removed, added, np.stack([v for *_, vectors in ready for v in vectors]),
                                   self.store.generation())
        for document, _, rows, _ in ready:
            (report.updated if document.id in existed else report.added).append(document.id)
            report.passages += len(rows)
        self.crash("committed")
        return []

    def _collect(self) -> None:
        try:
            self.provider.chunks.collect(self.store.chunk_keys())
        except Exception as exc:  # the error that stopped the ingestion matters more
            log.warning(f"could not remove the KV chunks no passage refers to (the next ingestion will): {exc}")

    def _save_index(self) -> None:
        try:
            self.retriever.save()
        except (OSError, RuntimeError) as exc:  # faiss raises RuntimeError; the store is the truth, the file a cache
            log.warning(f"could not save the vector index ({exc}); it is rebuilt from the store when next loaded")

    def delete(self, doc_ids: list[str], collection: str = DEFAULT_COLLECTION, run: Run = here) -> list[str]:
        """See RAG.delete."""
        with self.lock:
            return run(self._delete, doc_ids, collection)

    def _delete(self, doc_ids: list[str], collection: str) -> list[str]:
        with self.store.writing():
            with self.retriever.lock:
                deleted, removed = self.store.delete_documents(collection, doc_ids)
                if deleted and self.store.manifest() is not None:
                    self.retriever.changed(removed, [], None, self.store.generation())
            if deleted:
                self._save_index()
            self._collect()
            return deleted
