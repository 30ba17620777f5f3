"""Retriever: the passages for a question. The embedder (loaded on first use), the FAISS index and BM25, both
kept at the store's generation, and reciprocal rank fusion of the two rankings. `lock` guards the store's rows
and the index, which change together."""
import threading

import numpy as np

from .answer import Source
from .collection import DEFAULT_COLLECTION
from .document_store import DocumentStore, NoDocuments, Passage, titled
from .embedder import Embedder
from .filters import MetadataFilter
from .lexical_index import LexicalIndex, fuse
from .manifest import Manifest
from .vector_index import VectorIndex

# retrieval fuses the best RETRIEVAL_DEPTH passages by vector similarity and by BM25 (reciprocal rank fusion):
# recall@4 on squad-dev 0.885 by vectors alone, 0.96 fused (docs/EVALUATION.md)
RETRIEVAL_DEPTH = 50


def check_query(question: str, top_k: int) -> None:
    if not question.strip():
        raise ValueError("the question is empty")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")


class Retriever:
    def __init__(self, store: DocumentStore, manifest: Manifest, index_kind: str, embedder_path: str | None = None):
        self.store, self.manifest, self.index_kind, self.embedder_path = store, manifest, index_kind, embedder_path
        self.lock = threading.RLock()
        self._embedder: Embedder | None = None
        self._index: VectorIndex | None = None
        self._lexical: LexicalIndex | None = None
        self._following = False

    def embedder(self) -> Embedder:
        """The embedder, loaded on the first call (and checked against the manifest)."""
        with self.lock:
            if self._embedder is None:
                embedder = Embedder(self.embedder_path)
                self.manifest.check("embedder", embedder.name, "the embedder")
                self.manifest.check("dim", embedder.dim, "the embedder")
                self._embedder = embedder
            return self._embedder

    def embed_passages(self, title: str, texts: list[str]) -> list[np.ndarray]:
        return list(self.embedder().encode([titled(title, text) for text in texts]))

    def index(self) -> VectorIndex | None:
        """The index of the store's current generation: in memory, from its file, or rebuilt from the vectors."""
        with self.lock:
            generation = self.store.generation()
            if self._index is not None and (self._index.generation == generation or self._following):
                return self._index
            manifest = self.store.manifest()
            if manifest is None:
                return None
            dim = manifest["dim"]
            folder = self.store.dir  # None: a shared store, whose index each replica builds
            index = VectorIndex.load(folder, dim, self.index_kind, generation) if folder else None
            if index is None:
                generation, ids, vectors = self.store.vectors()
                index = VectorIndex.build(dim, self.index_kind, generation, ids, vectors)
                if self.store.is_writer and folder:
                    index.save(folder)
            self._index = index
            return index

    def _lexical_index(self) -> LexicalIndex:
        """BM25 over the passages of the store's current generation, rebuilt after every change (when following,
        after this process's own changes, which move the vector index at once; refresh() brings the others)."""
        with self.lock:
            held = self._lexical
            if self._following and self._index is not None:
                stale = held is None or held.generation < self._index.generation
            else:
                stale = held is None or held.generation != self.store.generation()
            if stale:
                self._lexical = LexicalIndex(*self.store.texts())
            return self._lexical

    def follow(self) -> None:
        """From now on answers use the indexes held while refresh() (an IndexRefresher's thread) brings them to a
        new generation of the store: a change made by another replica or process never makes an answer wait."""
        self._following = True

    def refresh(self) -> bool:
        """Builds the indexes of the store's generation outside the lock and swaps them in under it; returns
        whether it did (False: current already, or the store changed while being read: the next call builds)."""
        generation = self.store.generation()
        index, lexical = self._index, self._lexical
        if index is not None and lexical is not None and index.generation == lexical.generation == generation:
            return False
        manifest = self.store.manifest()
        if manifest is None:
            return False
        if index is not None and index.generation == generation:  # this process's own change: BM25 only
            read, fresh = generation, index
        else:
            read, ids, vectors = self.store.vectors()
            fresh = VectorIndex.build(manifest["dim"], self.index_kind, read, ids, vectors)
        texts = self.store.texts()
        if texts[0] != read:
            return False
        words = LexicalIndex(*texts)
        with self.lock:
            current = self.store.generation()
            if read == current or self._index is None or self._index.generation < read:
                self._index = fresh
            if read == current or self._lexical is None or self._lexical.generation < read:
                self._lexical = words
        return True

    def changed(self, removed: list[int], added: list[int], vectors: np.ndarray | None, generation: int) -> None:
        """Brings the index to `generation` after the store removed and added passages (call under `lock`)."""
        index = self._index
        if index is None or index.generation != generation - 1 or (removed and not index.supports_remove):
            self._index = None
            self.index()
            return
        if removed:
            index.remove(removed)
        if added:
            index.add(added, vectors)
        index.generation = generation

    def save(self) -> None:
        index = self.index()
        if index is not None and self.store.dir:
            index.save(self.store.dir)

    def require_documents(self, collection: str = DEFAULT_COLLECTION) -> None:
        if not self.store.counts(frozenset([collection]))["documents"] or self.index() is None:
            where = "" if collection == DEFAULT_COLLECTION else f" (collection {collection!r})"
            raise NoDocuments(f"{self.store.where}{where} has no documents: {self.store.ingest_hint()}")

    def search(self, question: str, top_k: int, collection: str = DEFAULT_COLLECTION,
               where: MetadataFilter | None = None) -> list[tuple[Source, Passage]]:
        """The top_k passages of the collection whose documents match `where`, by fused rank, with their cosine
        similarity to the question. Both rankings are restricted to those passages before they are cut."""
        check_query(question, top_k)
        self.require_documents(collection)
        vector = self.embedder().encode([question])[0]
        depth = max(RETRIEVAL_DEPTH, top_k)
        with self.lock:
            index = self.index()
            among = self.store.passage_ids(collection, where)
            if len(among) == len(index) and np.array_equal(np.sort(index.ids()), among):
                among = None  # every passage of the index is the collection's and matches: no selection needed
            pids = fuse([index.search(vector, depth, among),
                         self._lexical_index().search(question, depth, among)])[:top_k]
            scores = index.similarity(vector, pids)  # None: newer than the index held while following
            passages = self.store.passages(pids)
        return [(Source(p.doc_id, p.title, score, pid, p.text, p.metadata), p)
                for pid, score in zip(pids, scores)
                if (p := passages.get(pid)) is not None and score is not None and p.collection == collection]

    def problems(self) -> list[str]:
        """Where the index disagrees with the store's vectors (empty when it agrees)."""
        _, ids, _ = self.store.vectors()
        index = self.index()
        if index is not None and sorted(index.ids().tolist()) != ids.tolist():
            return [f"vector index holds {len(index)} vectors, the store {len(ids)}"]
        return []
