"""`cascade-rag ingest PATH --store redis://... --ray [ADDRESS]`: an ingestion spread over Ray actors. The driver
plans (unchanged documents skipped, by content hash), sends groups of documents to the actors (IngestWorker:
passages, embeddings, the chunks the store lacks prefilled and written to the store from the actor) and commits
what they hand back in batches, one transaction each. A worker or driver killed in the middle loses nothing that
was committed, shows nothing half-committed, and its chunks already written are found by the re-run, which
ingests only what is missing. Without --ray the ingestion runs in-process (RAG.ingest), the same steps."""
import sys
import time
from collections import deque

from .chunk_store import ChunkStore
from .document_passages import content_hash
from .ingest import Document, IngestReport, InputError
from .ingest_worker import Built, IngestWorker
from .manifest import Manifest
from .options import RAGOptions
from .store import StoreError
from .stores import chunk_backend_of, open_store

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


def plan(items: list[Document | InputError], options: RAGOptions, known, report: IngestReport) -> list:
    """(document, content hash) of the new and changed documents; errors, repeats and unchanged ones reported."""
    todo, seen = [], set()
    for item in items:
        if isinstance(item, InputError):
            report.errors.append(item)
        elif item.id in seen:
            report.errors.append(InputError(item.source or "input", f"document {item.id} given twice; the first "
                                                                     f"one was kept"))
        else:
            seen.add(item.id)
            digest = content_hash(item, options)
            (report.unchanged.append(item.id) if known(item.id) == digest else todo.append((item, digest)))
    return todo


def ingest_with_ray(location: str, items: list[Document | InputError], options: RAGOptions, address: str | None,
                    actors: int = 2, progress: bool = False) -> IngestReport:
    """Ingests into the shared store at `location` with `actors` Ray actors on the cluster at `address` (None: a
    local one started here)."""
    ray = ray_module()
    if actors < 1:
        raise ValueError(f"--ray-actors must be at least 1, got {actors}")
    store = open_store(location)
    if store.dir is not None:
        raise StoreError("--ray writes chunks from Ray workers into a shared store: give --store redis://HOST:PORT/DB")
    report = IngestReport()
    ray.init(address=address, num_cpus=None if address else max(actors, 2), include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    try:
        with store.writing():
            todo = plan(items, options, store.document_hash, report)
            if todo:
                gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
                Worker = ray.remote(num_gpus=gpus, num_cpus=0 if gpus else 1)(IngestWorker)
                workers = [Worker.remote(location, options) for _ in range(actors)]
                manifest = Manifest(store)
                fields = ray.get(workers[0].manifest.remote())
                for key, what in (("fingerprint", "the model, its dtype or the system prompt"),
                                  ("embedder", "the embedder"), ("dim", "the embedder")):
                    manifest.check(key, fields[key], what)
                manifest.update(fields)
                run(ray, workers, todo, store, report, progress)
                ChunkStore(chunk_backend_of(store)).collect(store.chunk_keys())
    finally:
        ray.shutdown()
        store.close()
    report.seconds = time.perf_counter() - report.began
    return report


def run(ray, workers, todo: list, store, report: IngestReport, progress: bool) -> None:
    groups = deque(todo[i:i + GROUP_DOCUMENTS] for i in range(0, len(todo), GROUP_DOCUMENTS))
    pending, turn = set(), 0
    while groups or pending:
        while groups and len(pending) < IN_FLIGHT * len(workers):
            pending.add(workers[turn % len(workers)].build.remote(groups.popleft()))
            turn += 1
        [done], _ = ray.wait(list(pending), num_returns=1)
        pending.discard(done)
        try:
            built = ray.get(done)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
            committed = len(report.added) + len(report.updated)
            raise IngestInterrupted(f"an ingestion worker died ({type(exc).__name__}); {committed} documents were "
                                    f"committed, none in part; run the same command again to ingest the "
                                    f"{len(todo) - committed} others") from None
        commit(store, built, report, progress, len(todo))


def commit(store, ready: list[Built], report: IngestReport, progress: bool, total: int) -> None:
    """Commits the built documents in one transaction."""
    existed = [store.document_hash(b.document.id) is not None for b in ready]
    store.put_documents([(b.document.id, b.document.title, b.document.source, b.content_hash, b.rows) for b in ready])
    for built, old in zip(ready, existed):
        (report.updated if old else report.added).append(built.document.id)
        report.passages += len(built.rows)
        report.prefilled += built.prefilled
        report.tokens += sum(len(ids) for _, ids, _, _ in built.rows)
        report.kv_bytes += built.kv_bytes
    if progress:
        print(f"cascade-rag: committed {len(report.added) + len(report.updated)} of {total} documents",
              file=sys.stderr, flush=True)
