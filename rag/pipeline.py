"""RAG: ingest, delete, retrieve and ask over one data directory, a facade over its parts: the document store, the
chunk store (a backend behind the chunk format), the chunk provider (model, level 0, memory tiers), the retriever,
the ingestor and the answerer. Safe to call from threads: one lock serialises the engine, one the store's rows
with the vector index, one the writers; a document becomes visible to queries only once its passages, vectors
and chunks are all stored."""
import logging
import os
from pathlib import Path
from typing import Iterable

from cascade_rag.engine import KVChunk, SamplingParams

from .answer import Answer, AnswerStream, Source
from .answerer import Answerer
from .chunk_provider import ChunkProvider, Model
from .chunk_store import ChunkBackend, ChunkStore
from .crash_points import CrashHook, crash_hook_from_env
from .collection import DEFAULT_COLLECTION, collection_name
from .embedder import Embedder
from .filters import MetadataFilter
from .ingest import Document, Fields, IngestReport, InputError, read_paths, records, skipped_message
from .ingestor import Ingestor, Run, Stop, here
from .manifest import Manifest
from .options import RAGOptions
from .redis_location import is_store_url
from .retriever import Retriever
from .stores import Location, chunk_backend_of, open_store

__all__ = ["RAG", "RAGOptions", "Answer", "AnswerStream", "Source", "default_data_dir"]
log = logging.getLogger("cascade_rag")
DEFAULT_DATA_DIR = "./cascade-data"


def default_data_dir() -> Location:
    """$CASCADE_RAG_DATA (a data directory or a store URL), else ./cascade-data."""
    location = os.environ.get("CASCADE_RAG_DATA") or DEFAULT_DATA_DIR
    return location if is_store_url(location) else Path(location)


class RAG:
    """`RAG(data_dir, model=..., device=...)`: the keyword arguments are RAGOptions' fields (or pass `options`).
    `data_dir` is a data directory or the URL of a shared store (`redis://host:port/db`, see rag/stores.py).
    `create=False` refuses a missing data directory instead of making one; `read_only` also writes nothing to it
    (ingest and delete are refused). `chunk_backend`: where chunks live (default: the data directory's `chunks/`
    folder, or the shared store)."""

    def __init__(self, data_dir: Location | None = None, options: RAGOptions | None = None, *, create: bool = True,
                 read_only: bool = False, chunk_backend: ChunkBackend | None = None,
                 crash_hook: CrashHook | None = None, **fields):
        self.store = open_store(data_dir or default_data_dir(), create=create, read_only=read_only)
        manifest = Manifest(self.store)
        stored = manifest.read() or {}
        self.options = (options or RAGOptions(**fields)).resolved(stored.get("index"), stored.get("kv_format"))
        self.chunks = ChunkStore(chunk_backend or chunk_backend_of(self.store), self.options.kv_format)
        self.provider = ChunkProvider(self.options, self.chunks, manifest)
        self.retriever = Retriever(self.store, manifest, self.options.index, self.options.embedder)
        self.ingestor = Ingestor(self.store, self.provider, self.retriever, manifest, self.options,
                                 crash_hook or crash_hook_from_env())
        self.answerer = Answerer(self.provider, self.retriever)

    # --- the models, loaded on first use -----------------------------------------------------------------------
    def model(self) -> Model:
        """The engine, prompt template, fingerprint, level-0 chunk and memory tiers (loaded on the first call)."""
        return self.provider.model()

    def embedder(self) -> Embedder:
        return self.retriever.embedder()

    # --- ingestion ---------------------------------------------------------------------------------------------
    def ingest(self, paths: Iterable[Path | str] = (), documents: Iterable[dict | Document] = (),
               fields: Fields = Fields(), progress: bool = False, max_disk_bytes: int | None = None,
               collection: str = DEFAULT_COLLECTION, all_or_nothing: bool = False) -> IngestReport:
        """Ingests files and folders (.txt, .md, .jsonl, .pdf, .html) and records ({id, title, text, metadata} or
        Document) into the collection. Unchanged documents are skipped, changed ones replaced; bad inputs are
        reported in the result, not raised, and files of other types in folders are named in a warning and the
        result's `skipped`. See ingest_documents for `progress`, `max_disk_bytes` and `all_or_nothing`."""
        documents, skipped = list(documents), []
        items = list(read_paths(paths, fields, skipped)) + [d for d in documents if isinstance(d, Document)]
        items += records([d for d in documents if not isinstance(d, Document)], fields)
        if skipped:
            log.warning(skipped_message(skipped))
        report = self.ingest_documents(items, progress, max_disk_bytes, collection, all_or_nothing=all_or_nothing)
        report.skipped = skipped
        return report

    def ingest_documents(self, items: list[Document | InputError], progress: bool = False,
                         max_disk_bytes: int | None = None, collection: str = DEFAULT_COLLECTION, *,
                         all_or_nothing: bool = False, run: Run = here, stop: Stop | None = None) -> IngestReport:
        """Ingests documents into the collection (InputErrors are reported in the result). Before anything is
        embedded, prefilled or written, each document and the whole are checked against options.ingest_limits
        (LimitExceeded, InvalidDocument) and the cost is estimated (report.estimate: passages, tokens, bytes of the
        new KV chunks and rows) and the ingestion refused with IngestTooLarge when its bytes exceed the free space
        of the data directory's filesystem (less the limits' reserve; a shared store refuses past its own memory
        limit, DiskFull) or `max_disk_bytes`. `progress`: on stderr,
        the estimate in one line (its time measured on the first slice embedded and the first batch prefilled),
        then a bar over the passages' tokens. Each document is committed on its own, or with `all_or_nothing` all
        in one transaction, which a failure anywhere leaves unmade. The work runs in small steps through
        `run(fn, *args)` (e.g. a server's model thread); `stop()`, asked after each, ends an ingestion not yet
        committed with IngestStopped when it returns a reason."""
        return self.ingestor.ingest(items, progress, max_disk_bytes, collection_name(collection),
                                    all_or_nothing=all_or_nothing, run=run, stop=stop)

    def delete(self, doc_ids: Iterable[str], collection: str = DEFAULT_COLLECTION, run: Run = here) -> list[str]:
        """Deletes documents of the collection with their passages, vectors and chunks, all or none: an unknown id
        raises UnknownDocuments and deletes nothing. Returns the deleted ids. `run`: as for ingest_documents."""
        return self.ingestor.delete(list(doc_ids), collection_name(collection), run)

    # --- answering ---------------------------------------------------------------------------------------------
    def retrieve(self, question: str, top_k: int = 4, collection: str = DEFAULT_COLLECTION,
                 where: MetadataFilter | None = None) -> list[Source]:
        """The top_k passages of the collection (of its documents that match `where`) for the question."""
        return [source for source, _ in self.retriever.search(question, top_k, collection_name(collection), where)]

    def ask(self, question: str, top_k: int = 4, mode: str | None = None,
            params: SamplingParams = SamplingParams(max_new_tokens=128), collection: str = DEFAULT_COLLECTION,
            where: MetadataFilter | None = None) -> AnswerStream:
        """Retrieves the top_k passages of the collection (of its documents that match `where`) now and returns a
        stream that composes level 0, their chunks and the question in `mode` (None: the engine's DEFAULT_MODE;
        `cached`: stored KV; `full`: one prefill of
        the same tokens; `blend`: stored KV partly recomputed, see LLMEngine.blend) and generates the answer. The
        answer attends to those passages only, so to the collection's only."""
        return self.answerer.ask(question, top_k, mode, params, collection_name(collection), where)

    def composition(self, question: str, top_k: int = 4) -> tuple[list[KVChunk], list[int]]:
        """What `ask` composes for a question: level 0 and the stored chunks of the top_k passages, and the
        question's level-2 token ids (for measurements: `cascade-rag eval --fidelity-tokens`)."""
        return self.answerer.composition(question, top_k)

    # --- state -------------------------------------------------------------------------------------------------
    def documents(self, collection: str = DEFAULT_COLLECTION) -> list[dict]:
        """The collection's documents ordered by id: id, title, source, passages, tokens, metadata."""
        return self.store.documents(collection_name(collection))

    def stats(self, collections: frozenset[str] | None = None) -> dict:
        """Counts of documents, passages and tokens, the stored chunks and their bytes, and (once the model is
        loaded) the memory tiers' statistics under "cache". `collections`: of these only (the tiers, shared by
        all, left out)."""
        sizes = self.chunks.sizes()
        if collections is not None:
            keys = self.store.chunk_keys(collections)
            sizes = {key: size for key, size in sizes.items() if key in keys}
        stats = dict(self.store.counts(collections), chunk_files=len(sizes), chunk_bytes=sum(sizes.values()))
        if self.provider.loaded and collections is None:
            stats["cache"] = self.provider.tier_stats()
        return stats

    def check(self) -> list[str]:
        """Inconsistencies between rows, stored chunks and the vector index (empty when consistent)."""
        keys, stored = self.store.chunk_keys(), set(self.chunks.sizes())
        problems = [f"passage chunk {k} has no file" for k in sorted(keys - stored)]
        problems += [f"chunk file {k} belongs to no passage" for k in sorted(stored - keys)]
        return problems + self.retriever.problems()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "RAG":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
