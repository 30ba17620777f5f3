"""Ingestor: documents in, documents out. Plans an ingestion (unchanged documents skipped, the cost estimated and
checked before anything is written), embeds and prefills its passages, stores their chunks and commits each
document in one transaction; deletes all or nothing. One ingestion or deletion at a time."""
import threading
import time

import numpy as np

from .batch_prefill import BatchPrefill
from .chunk_provider import ChunkProvider
from .crash_points import CrashHook, no_crash
from .document_passages import content_hash, manifest_fields, passages_of
from .document_store import DocumentStore
from .ingest import Document, IngestReport, InputError
from .ingest_cost import IngestEstimate, check_disk
from .ingest_progress import IngestProgress
from .manifest import Manifest
from .options import RAGOptions
from .retriever import Retriever


class Ingestor:
    def __init__(self, store: DocumentStore, provider: ChunkProvider, retriever: Retriever, manifest: Manifest,
                 options: RAGOptions, crash_hook: CrashHook = no_crash):
        self.store, self.provider, self.retriever, self.manifest = store, provider, retriever, manifest
        self.options, self.crash = options, crash_hook
        self.lock = threading.Lock()

    def ingest(self, items: list[Document | InputError], progress: bool = False,
               max_disk_bytes: int | None = None) -> IngestReport:
        """See RAG.ingest_documents."""
        with self.lock, self.store.writing():
            if any(isinstance(item, Document) for item in items):
                self.provider.model(), self.retriever.embedder()  # loaded and checked against the manifest
            report = IngestReport()
            plan = self._plan(items, report)
            prefill = BatchPrefill(self.provider, [ids for _, _, passages in plan for _, ids in passages],
                                   self.options.prefill_batch_tokens)
            if plan:
                report.estimate = IngestEstimate.of([passages for _, _, passages in plan], prefill.planned(),
                                                    self.provider.model().engine.kv_bytes_per_token(),
                                                    self.retriever.embedder().dim)
                if self.store.dir:  # a shared store's own limits (Redis maxmemory) refuse writes themselves
                    check_disk(report.estimate, self.store.dir, max_disk_bytes)  # nothing written before
            if any(isinstance(item, Document) for item in items):
                self.manifest.update(self._manifest())
            bar = IngestProgress(report.estimate, progress and bool(plan))
            try:
                first = self._calibrate(plan, prefill, bar) if bar.enabled else []
                for document, digest, passages in plan:
                    self._ingest_one(document, digest, passages, report, bar, prefill, first)
                    first = []
            finally:
                bar.close()
            self.provider.chunks.collect(self.store.chunk_keys())
            self.retriever.save()
            report.seconds = time.perf_counter() - report.began
            return report

    def _manifest(self) -> dict:
        return manifest_fields(self.provider.model(), self.retriever.embedder(), self.options)

    def _plan(self, items: list[Document | InputError], report: IngestReport) -> list:
        """(document, content hash, passages) of the new and changed documents; the rest reported."""
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
        return plan

    def _content_hash(self, document: Document) -> str:
        return content_hash(document, self.options)

    def _passages(self, document: Document) -> list[tuple[str, list[int]]]:
        return passages_of(document, self.provider.model(), self.options)

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

    def _ingest_one(self, document: Document, digest: str, passages, report: IngestReport, bar: IngestProgress,
                    prefill: BatchPrefill, vectors: list[np.ndarray]) -> None:
        """Embeds the passages slice by slice (after `vectors`, embedded ahead), each slice's chunks prefilled and
        saved before the next slice, then commits the document."""
        vectors, rows, chunks = list(vectors), [], self.provider.chunks
        kv_per_token = self.provider.model().engine.kv_bytes_per_token()
        for text, ids in passages:
            if len(rows) == len(vectors):
                part = passages[len(rows):len(rows) + self.options.embed_slice]
                vectors += self.retriever.embed_passages(document.title, [t for t, _ in part])
                bar.embedded(sum(len(i) for _, i in part))
            key = self.provider.key(ids)
            if not chunks.contains(key):
                chunks.put(key, prefill.take(key, ids))
                report.prefilled += 1
                self.crash("chunk_saved")
            rows.append((text, ids, key, vectors[len(rows)]))
            report.tokens += len(ids)
            report.kv_bytes += len(ids) * kv_per_token
            bar.stored(len(ids))
        self.crash("before_commit")
        with self.retriever.lock:
            existed = self.store.document_hash(document.id) is not None
            removed, added = self.store.put_document(document.id, document.title, document.source, digest, rows)
            self.retriever.changed(removed, added, np.stack(vectors), self.store.generation())
        (report.updated if existed else report.added).append(document.id)
        report.passages += len(rows)
        self.crash("committed")

    def delete(self, doc_ids: list[str]) -> list[str]:
        """See RAG.delete."""
        with self.lock, self.store.writing():
            with self.retriever.lock:
                deleted, removed = self.store.delete_documents(doc_ids)
                if deleted and self.store.manifest() is not None:
                    self.retriever.changed(removed, [], None, self.store.generation())
                    self.retriever.save()
            self.provider.chunks.collect(self.store.chunk_keys())
            return deleted
