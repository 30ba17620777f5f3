"""IngestWorker: the part of an ingestion that needs the models, apart from the commit. It makes documents' passages
(checked against the limits of a document, as in-process), embeds them, prefills the chunks the shared store lacks
(in batches by tokens, as in-process) and writes them to the store, then hands the rows back for the driver to
commit. One per Ray actor (rag/ray_ingest.py), on a GPU when the actor has one."""
from dataclasses import dataclass

from .batch_prefill import BatchPrefill
from .chunk_provider import ChunkProvider
from .chunk_store import ChunkStore
from .document_passages import Passages, manifest_fields, passages_of
from .document_store import PassageRow
from .ingest import Document
from .ingest_limits import InvalidDocument, LimitExceeded
from .manifest import Manifest
from .options import RAGOptions
from .retriever import Retriever
from .stores import chunk_backend_of, open_store


@dataclass
class Built:
    """A document ready to commit: its rows (text, token ids, chunk key, vector), its chunks all in the store."""
    document: Document
    content_hash: str
    rows: list[PassageRow]
    prefilled: int      # chunks this worker computed (the others were in the store)
    kv_bytes: int       # of all the document's chunks


class IngestWorker:
    def __init__(self, location: str, options: RAGOptions):
        self.store = open_store(location)
        manifest = Manifest(self.store)
        stored = manifest.read() or {}
        self.options = options.resolved(stored.get("index"), stored.get("kv_format"))  # this machine's device
        self.chunks = ChunkStore(chunk_backend_of(self.store), self.options.kv_format)
        self.provider = ChunkProvider(self.options, self.chunks, manifest)
        self.retriever = Retriever(self.store, manifest, self.options.index, self.options.embedder)

    def manifest(self) -> dict:
        """What this worker's chunks and vectors are made with (loads the models, checked against the store)."""
        return manifest_fields(self.provider.model(), self.retriever.embedder(), self.options)

    def passages(self, documents: list[Document]) -> list[Passages | LimitExceeded | InvalidDocument]:
        """Each document's passages, or the refusal of a document past a limit (returned, not raised: the driver
        raises the first one in the order of the call)."""
        model, found = self.provider.model(), []
        for document in documents:
            try:
                found.append(passages_of(document, model, self.options))
            except (LimitExceeded, InvalidDocument) as exc:
                found.append(exc)
        return found

    def build(self, planned: list[tuple[Document, str, Passages]], collection: str) -> list[Built]:
        """The rows of (document, content hash, passages), every chunk they name (keyed in `collection`) written to
        the store first."""
        slice_ = self.options.embed_slice
        kv_per_token = self.provider.model().engine.kv_bytes_per_token()
        prefill = BatchPrefill(self.provider, [ids for *_, passages in planned for _, ids in passages],
                               self.options.prefill_batch_tokens, collection)
        built = []
        for document, digest, passages in planned:
            vectors, rows, prefilled = [], [], 0
            for start in range(0, len(passages), slice_):
                vectors += self.retriever.embed_passages(document.title, [t for t, _ in passages[start:start + slice_]])
            for (text, ids), vector in zip(passages, vectors):
                key = self.provider.key(ids, collection)
                if not self.chunks.contains(key):
                    self.chunks.put(key, prefill.take(key, ids))
                    prefilled += 1
                rows.append((text, ids, key, vector))
            built.append(Built(document, digest, rows, prefilled, kv_per_token * sum(len(ids) for _, ids in passages)))
        return built

    def close(self) -> None:
        self.store.close()
