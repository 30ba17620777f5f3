"""`cascade-rag ingest PATH --store redis://... --ray [ADDRESS]`: an ingestion spread over Ray actors, with the
steps, limits and commits of the in-process one (rag/document_passages.py holds what both share). The driver plans
(unchanged documents skipped by content hash, titles checked), has the actors (IngestWorker) make each document's
passages (checked against the limits of a document), checks the limits of the call and its cost before anything
is written, then sends groups of documents to the actors (embeddings, the chunks the store lacks prefilled and
written to the store from the actor, keyed in the collection) and commits what they hand back: a group per
transaction, or with all_or_nothing the whole ingestion in one. A worker or driver killed in the middle loses
nothing that was committed and shows nothing half-committed; the chunks of what was not committed are removed, and
the re-run ingests only what is missing. Without --ray the ingestion runs in-process (RAG.ingest)."""
import logging
import sys
import time
from collections import deque

from .chunk_store import ChunkStore, chunk_key
from .collection import DEFAULT_COLLECTION, collection_name
from .document_passages import CallTally, changed_documents
from .document_store import DocumentStore, StoreError
from .ingest import Document, IngestReport, InputError
from .ingest_cost import IngestEstimate, check_disk
from .ingest_limits import check_call
from .ingest_worker import Built, IngestWorker
from .manifest import Manifest
from .options import RAGOptions
from .stores import chunk_backend_of, open_store

log = logging.getLogger("cascade_rag")
GROUP_DOCUMENTS = 4      # documents sent to an actor in one call, and committed in one transaction
IN_FLIGHT = 2            # calls queued per actor: one running, one waiting


class IngestInterrupted(StoreError):
    """A worker died: what was committed stays, the re-run completes the rest."""


def ray_module():
    try:
        import ray
    except ImportError:
        raise StoreError("--ray needs Ray: pip install 'cascade-rag[ray]'") from None
    return ray


def ingest_with_ray(location: str, items: list[Document | InputError], options: RAGOptions, address: str | None,
                    actors: int = 2, progress: bool = False, collection: str = DEFAULT_COLLECTION, *,
                    all_or_nothing: bool = False, max_disk_bytes: int | None = None) -> IngestReport:
    """Ingests into `collection` of the shared store at `location` with `actors` Ray actors on the cluster at
    `address` (None: a local one started here). `options.ingest_limits`, `max_disk_bytes` and `all_or_nothing` as
    for RAG.ingest_documents."""
    ray = ray_module()
    if actors < 1:
        raise ValueError(f"--ray-actors must be at least 1, got {actors}")
    collection = collection_name(collection)
    store = open_store(location)
    try:
        if store.dir is not None:
            raise StoreError("--ray writes chunks from Ray workers into a shared store: give --store "
                             "redis://HOST:PORT/DB")
        ingestion = RayIngestion(ray, store, location, options, collection, progress)
        ray.init(address=address, num_cpus=None if address else max(actors, 2), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
        try:
            with store.writing():
                try:
                    ingestion.run(items, actors, all_or_nothing, max_disk_bytes)
                finally:
                    ray.shutdown()  # no worker writes a chunk after this
                    ingestion.collect()
        finally:
            ray.shutdown()
    finally:
        store.close()
    ingestion.report.seconds = time.perf_counter() - ingestion.report.began
    return ingestion.report


class RayIngestion:
    def __init__(self, ray, store: DocumentStore, location: str, options: RAGOptions, collection: str,
                 progress: bool):
        self.ray, self.store, self.location, self.options = ray, store, location, options
        self.collection, self.progress, self.report = collection, progress, IngestReport()
        self.chunks = ChunkStore(chunk_backend_of(store))

    def run(self, items: list[Document | InputError], actors: int, all_or_nothing: bool,
            max_disk_bytes: int | None) -> None:
        todo = list(changed_documents(items, self.report, lambda doc_id: self.store.document_hash(
            self.collection, doc_id), self.options))
        if not todo:
            return
        ray = self.ray
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        Worker = ray.remote(num_gpus=gpus, num_cpus=0 if gpus else 1)(IngestWorker)
        workers = [Worker.remote(self.location, self.options) for _ in range(actors)]
        manifest, fields = Manifest(self.store), self.wait(workers[0].manifest.remote(), 0)
        for key, what in (("fingerprint", "the model, its dtype or the system prompt"),
                          ("embedder", "the embedder"), ("dim", "the embedder")):
            manifest.check(key, fields[key], what)
        manifest.check_kv_format(fields["kv_format"])
        planned = self.passages(workers, todo)
        self.check_cost(planned, fields, max_disk_bytes)  # nothing written before
        manifest.update(fields)
        self.build(workers, planned, all_or_nothing)

    def wait(self, call, committed: int):
        """The result of a call to a worker; IngestInterrupted when the worker died."""
        try:
            return self.ray.get(call)
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError) as exc:
            raise IngestInterrupted(f"an ingestion worker died ({type(exc).__name__}); {committed} documents were "
                                    f"committed, none in part; run the same command again to ingest the "
                                    f"others") from None

    def passages(self, workers, todo: list[tuple[Document, str]]) -> list[tuple[Document, str, list]]:
        """(document, content hash, passages) of each document, made by the workers and checked against the limits
        in the order of the call, as in-process."""
        groups = [todo[i:i + GROUP_DOCUMENTS] for i in range(0, len(todo), GROUP_DOCUMENTS)]
        calls = [workers[n % len(workers)].passages.remote([d for d, _ in group]) for n, group in enumerate(groups)]
        tally, planned = CallTally(self.options.ingest_limits), []
        for group, call in zip(groups, calls):
            for (document, digest), passages in zip(group, self.wait(call, 0)):
                if isinstance(passages, Exception):
                    raise passages
                tally.add(passages)
                planned.append((document, digest, passages))
        return planned

    def check_cost(self, planned: list, fields: dict, max_disk_bytes: int | None) -> None:
        """The estimate (the chunks the store lacks, once each) checked against the limits of the call and
        `max_disk_bytes`."""
        new = {}
        for _, _, passages in planned:
            for _, ids in passages:
                key = chunk_key(fields["fingerprint"], ids, self.collection)
                if key not in new and not self.chunks.contains(key):
                    new[key] = ids
        self.report.estimate = e = IngestEstimate.of([p for *_, p in planned], list(new.values()),
                                                     fields["kv_bytes_per_token"], fields["dim"])
        limits = self.options.ingest_limits
        check_call(limits, e.passages, e.tokens, e.chunk_bytes)
        check_disk(e, self.store.dir, max_disk_bytes, limits.disk_reserve_bytes)
        if self.progress:
            print(f"cascade-rag: {e.line()}", file=sys.stderr, flush=True)

    def build(self, workers, planned: list, all_or_nothing: bool) -> None:
        """Sends groups of documents to the workers and commits what they build: each group, or all at the end."""
        groups = deque(planned[i:i + GROUP_DOCUMENTS] for i in range(0, len(planned), GROUP_DOCUMENTS))
        pending, turn, ready = set(), 0, []
        while groups or pending:
            while groups and len(pending) < IN_FLIGHT * len(workers):
                pending.add(workers[turn % len(workers)].build.remote(groups.popleft(), self.collection))
                turn += 1
            [done], _ = self.ray.wait(list(pending), num_returns=1)
            pending.discard(done)
            built = self.wait(done, self.report.documents)
            ready = ready + built if all_or_nothing else self.commit(built, len(planned))
        self.commit(ready, len(planned))

    def commit(self, ready: list[Built], total: int) -> list:
        """Commits the built documents in one transaction; returns an empty list."""
        if not ready:
            return []
        existed = [self.store.document_hash(self.collection, b.document.id) is not None for b in ready]
        self.store.put_documents(self.collection, [(b.document.id, b.document.title, b.document.source,
                                                    b.content_hash, b.rows, b.document.metadata) for b in ready])
        for built, old in zip(ready, existed):
            (self.report.updated if old else self.report.added).append(built.document.id)
            self.report.passages += len(built.rows)
            self.report.prefilled += built.prefilled
            self.report.tokens += sum(len(ids) for _, ids, _, _ in built.rows)
            self.report.kv_bytes += built.kv_bytes
        if self.progress:
            print(f"cascade-rag: committed {self.report.documents} of {total} documents", file=sys.stderr, flush=True)
        return []

    def collect(self) -> None:
        """Removes the chunks no committed passage names (of documents not committed)."""
        try:
            self.chunks.collect(self.store.chunk_keys())
        except Exception as exc:  # the error that stopped the ingestion matters more
            log.warning(f"could not remove the KV chunks no passage refers to (the next ingestion will): {exc}")
