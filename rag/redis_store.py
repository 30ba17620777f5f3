"""The shared store on Redis (`redis://host:port/db`): what a data directory's SQLite store holds (documents in
collections with their metadata, passages with their text, token ids, chunk key and vector, the manifest and the
generation) for any number of replicas. Keys, under one prefix (rag/redis_location.py): per collection `docs:<c>`
(hash: id -> JSON of title, source, hash, passage ids, tokens, metadata), `pids:<c>` (set of its passage ids),
`tokens:<c>`, and `match:<JSON [c, key, value]>` (set of the passage ids of its documents with that metadata);
across collections `collections` (set), `passages` (hash: pid -> JSON), `vectors` (hash: pid -> float32 bytes),
`next-pid`, `generation`, `manifest`, `writer`.

A batch of documents is committed in one watched MULTI/EXEC that also bumps the generation: a reader sees all of
it or none of it, and a snapshot (generation with vectors or texts) is read in one MULTI/EXEC too. The chunks,
in the same database (rag/redis_backend.py), are written before the rows that name them."""
import json
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import redis

from .collection import DEFAULT_COLLECTION
from .document_store import DocumentRow, DocumentStore, NoDocuments, Passage, StoreError, UnknownDocuments, titled
from .filters import MetadataFilter
from .redis_errors import store_error, translated
from .redis_location import RedisLocation
from .redis_writer_lock import WriterLock


def vector_bytes(vector) -> bytes:
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1 or not array.size:
        raise ValueError(f"a passage vector must be one-dimensional and not empty, got shape {array.shape}")
    return array.tobytes()


def pid_array(members) -> np.ndarray:
    return np.array(sorted(int(m) for m in members), dtype=np.int64)


class RedisDocumentStore(DocumentStore):
    dir = None

    def __init__(self, location: RedisLocation, create: bool = True, read_only: bool = False):
        self.location, self.read_only = location, read_only
        self.db = location.connect()
        self.writer = WriterLock(location, self.db)
        self.k = {name: location.key(name) for name in
                  ("collections", "passages", "vectors", "next-pid", "generation", "manifest")}
        try:
            self.db.ping()
            empty = (read_only or not create) and not self.db.exists(self.k["manifest"], self.k["collections"])
        except redis.RedisError as exc:
            raise store_error(exc, self.where) from None
        if empty:
            raise NoDocuments(f"store {location} holds no cascade-rag store: {self.ingest_hint()}")

    @property
    def where(self) -> str:
        return f"store {self.location}"

    def ingest_hint(self) -> str:
        return f"ingest documents first: cascade-rag ingest PATH --store {self.location}"

    def key(self, kind: str, collection: str, *rest: str) -> str:
        """docs:<c>, pids:<c>, tokens:<c>; match:<JSON [c, key, value]>."""
        name = f"match:{json.dumps([collection, *rest])}" if kind == "match" else f"{kind}:{collection}"
        return self.location.key(name)

    # --- writing ---------------------------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.where} was opened read-only; nothing was changed")

    @translated
    def lock_for_writing(self) -> None:
        self._check_writable()
        self.writer.acquire()

    @property
    def is_writer(self) -> bool:
        return self.writer.held

    @contextmanager
    def writing(self) -> Iterator[None]:
        held = self.writer.held
        self.lock_for_writing()
        try:
            yield
        finally:
            if not held:
                self.release()

    @translated
    def release(self) -> None:
        self.writer.release()

    @translated
    def put_documents(self, collection: str, documents: list[DocumentRow]) -> tuple[list[int], list[int]]:
        self._check_writable()
        ids = [doc_id for doc_id, *_ in documents]
        if len(set(ids)) != len(ids):
            raise ValueError("a batch names a document twice")
        for *_, rows, _ in documents:
            for row in rows:
                vector_bytes(row[3])  # checked before anything is sent
        n = sum(len(rows) for *_, rows, _ in documents)
        first = self.db.incrby(self.k["next-pid"], n) - n + 1 if n else 1  # a failed batch's ids stay unused
        added, pid = [], first
        for *_, rows, _ in documents:
            added.append(list(range(pid, pid + len(rows))))
            pid += len(rows)
        docs = self.key("docs", collection)
        with self.db.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(docs, self.writer.key)
                    self.writer.check(pipe)
                    old = [json.loads(d) if d else None for d in pipe.hmget(docs, ids)] if ids else []
                    pipe.multi()
                    for row, previous, pids in zip(documents, old, added):
                        self._unlink(pipe, collection, row[0], previous)
                        self._link(pipe, collection, row, pids)
                    pipe.sadd(self.k["collections"], collection)
                    pipe.incr(self.k["generation"])
                    pipe.execute()
                    return [pid for o in old if o for pid in o["pids"]], [pid for a in added for pid in a]
                except redis.WatchError:
                    continue

    def _link(self, pipe, collection: str, document: DocumentRow, pids: list[int]) -> None:
        """Queues the writes of a document and its passages."""
        doc_id, title, source, digest, rows, metadata = document
        metadata, tokens = dict(metadata or {}), sum(len(ids) for _, ids, _, _ in rows)
        pipe.hset(self.key("docs", collection), doc_id, json.dumps(
            {"title": title, "source": source, "hash": digest, "pids": pids, "tokens": tokens, "metadata": metadata}))
        pipe.incrby(self.key("tokens", collection), tokens)
        if not rows:
            return
        pipe.hset(self.k["passages"], mapping={pid: json.dumps(
            {"c": collection, "doc": doc_id, "title": title, "seq": seq, "text": text, "ids": ids, "key": key})
            for seq, (pid, (text, ids, key, _)) in enumerate(zip(pids, rows))})
        pipe.hset(self.k["vectors"], mapping={pid: vector_bytes(row[3]) for pid, row in zip(pids, rows)})
        pipe.sadd(self.key("pids", collection), *pids)
        for name, value in metadata.items():
            pipe.sadd(self.key("match", collection, name, value), *pids)

    def _unlink(self, pipe, collection: str, doc_id: str, previous: dict | None, keep: bool = True) -> None:
        """Queues the removal of a stored document's passages (and of the document itself unless `keep`: it is
        written again)."""
        if previous is None:
            return
        if not keep:
            pipe.hdel(self.key("docs", collection), doc_id)
        pipe.incrby(self.key("tokens", collection), -previous["tokens"])
        pids = previous["pids"]
        if not pids:
            return
        pipe.hdel(self.k["passages"], *pids)
        pipe.hdel(self.k["vectors"], *pids)
        pipe.srem(self.key("pids", collection), *pids)
        for name, value in previous["metadata"].items():
            pipe.srem(self.key("match", collection, name, value), *pids)

    @translated
    def delete_documents(self, collection: str, doc_ids: list[str]) -> tuple[list[str], list[int]]:
        self._check_writable()
        docs, unique = self.key("docs", collection), list(dict.fromkeys(doc_ids))
        with self.db.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(docs, self.writer.key)
                    self.writer.check(pipe)
                    old = dict(zip(unique, pipe.hmget(docs, unique))) if unique else {}
                    missing = [i for i in unique if old[i] is None]
                    if missing:
                        raise UnknownDocuments(missing)
                    documents = {i: json.loads(d) for i, d in old.items()}
                    if not documents:
                        return [], []
                    pipe.multi()
                    for doc_id, previous in documents.items():
                        self._unlink(pipe, collection, doc_id, previous, keep=False)
                    pipe.incr(self.k["generation"])
                    pipe.execute()
                    return unique, [pid for d in documents.values() for pid in d["pids"]]
                except redis.WatchError:
                    continue

    @translated
    def write_manifest(self, manifest: dict) -> None:
        self._check_writable()
        self.db.set(self.k["manifest"], json.dumps(manifest))

    def close(self) -> None:
        try:
            self.writer.release()
        except redis.RedisError:
            pass  # the lock of a connection that is gone is no lock
        self.db.close()

    # --- reading ---------------------------------------------------------------------------------------------------
    @translated
    def manifest(self) -> dict | None:
        data = self.db.get(self.k["manifest"])
        return json.loads(data) if data else None

    @translated
    def generation(self) -> int:
        return int(self.db.get(self.k["generation"]) or 0)

    @translated
    def document_hash(self, collection: str, doc_id: str) -> str | None:
        data = self.db.hget(self.key("docs", collection), doc_id)
        return json.loads(data)["hash"] if data else None

    @translated
    def passages(self, pids: list[int]) -> dict[int, Passage]:
        rows = [json.loads(r) if r else None for r in self.db.hmget(self.k["passages"], pids)] if pids else []
        owners = list(dict.fromkeys((r["c"], r["doc"]) for r in rows if r))
        with self.db.pipeline(transaction=False) as pipe:
            for collection, doc_id in owners:
                pipe.hget(self.key("docs", collection), doc_id)
            found = pipe.execute() if owners else []
        metadata = {owner: json.loads(d)["metadata"] for owner, d in zip(owners, found) if d}
        return {pid: Passage(pid, r["doc"], r["title"], r["seq"], r["text"], r["ids"], r["key"], r["c"],
                             metadata.get((r["c"], r["doc"]), {}))
                for pid, r in zip(pids, rows) if r}

    @translated
    def passage_ids(self, collection: str, where: MetadataFilter | None = None) -> np.ndarray:
        conditions = where.conditions if where else ()
        with self.db.pipeline(transaction=True) as pipe:
            pipe.smembers(self.key("pids", collection))
            for c in conditions:
                for value in c.values:
                    pipe.smembers(self.key("match", collection, c.key, value))
            found = iter(pipe.execute())
        among = set(next(found))
        for c in conditions:
            among &= set().union(*(next(found) for _ in c.values))
        return pid_array(among)

    def _snapshot(self, key: str) -> tuple[int, dict[int, bytes]]:
        with self.db.pipeline(transaction=True) as pipe:
            generation, rows = pipe.get(self.k["generation"]).hgetall(self.k[key]).execute()
        return int(generation or 0), {int(pid): row for pid, row in rows.items()}

    @translated
    def vectors(self) -> tuple[int, np.ndarray, np.ndarray | None]:
        generation, rows = self._snapshot("vectors")
        ids = np.array(sorted(rows), dtype=np.int64)
        vectors = np.stack([np.frombuffer(rows[pid], dtype=np.float32) for pid in ids]) if rows else None
        return generation, ids, vectors

    @translated
    def texts(self) -> tuple[int, list[int], list[str]]:
        generation, rows = self._snapshot("passages")
        pids = sorted(rows)
        passages = [json.loads(rows[pid]) for pid in pids]
        return generation, pids, [titled(p["title"], p["text"]) for p in passages]

    @translated
    def documents(self, collection: str = DEFAULT_COLLECTION) -> list[dict]:
        rows = {doc_id.decode(): json.loads(d) for doc_id, d in self.db.hgetall(self.key("docs", collection)).items()}
        return [dict(id=i, title=d["title"], source=d["source"], passages=len(d["pids"]), tokens=d["tokens"],
                     metadata=d["metadata"]) for i, d in sorted(rows.items())]

    @translated
    def counts(self, collections: frozenset[str] | None = None) -> dict:
        names = sorted(c.decode() for c in self.db.smembers(self.k["collections"])) if collections is None \
            else sorted(collections)
        with self.db.pipeline(transaction=True) as pipe:
            for c in names:
                pipe.hlen(self.key("docs", c)).scard(self.key("pids", c)).get(self.key("tokens", c))
            found = pipe.execute() if names else []
        return {"documents": sum(found[0::3]), "passages": sum(found[1::3]),
                "tokens": sum(int(t or 0) for t in found[2::3])}

    @translated
    def chunk_keys(self, collections: frozenset[str] | None = None) -> set[str]:
        rows = (json.loads(row) for row in self.db.hvals(self.k["passages"]))
        return {r["key"] for r in rows if collections is None or r["c"] in collections}
