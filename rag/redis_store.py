"""The shared store on Redis (`redis://host:port/db`): what a data directory's SQLite store holds (documents,
passages with their text, token ids, chunk key and vector, the manifest and the generation) for any number of
replicas. Keys, under one prefix (rag/redis_location.py): `docs` (hash: id -> JSON), `passages` (hash: pid -> JSON),
`vectors` (hash: pid -> float32 bytes), `tokens`, `next-pid`, `generation`, `manifest`, `writer`.

A batch of documents is committed in one watched MULTI/EXEC that also bumps the generation: a reader sees all of
it or none of it, and a snapshot (generation with vectors or texts) is read in one MULTI/EXEC too. The chunks,
in the same database (rag/redis_backend.py), are written before the rows that name them."""
import functools
import json
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import redis

from .document_store import DocumentStore, PassageRow
from .redis_location import RedisLocation
from .redis_writer_lock import WriterLock
from .store import NoDocuments, Passage, StoreError, UnknownDocuments, titled

DocumentBatch = list[tuple[str, str, str | None, str, list[PassageRow]]]  # id, title, source, content hash, rows


class StoreUnavailable(StoreError):
    """The shared store cannot be reached."""


def vector_bytes(vector) -> bytes:
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1 or not array.size:
        raise ValueError(f"a passage vector must be one-dimensional and not empty, got shape {array.shape}")
    return array.tobytes()


def reaching(method):
    """Raises StoreUnavailable, naming the store, for a connection that fails."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"cannot reach store {self.location}: {exc}") from None
    return call


class RedisDocumentStore(DocumentStore):
    dir = None

    def __init__(self, location: RedisLocation, create: bool = True):
        self.location = location
        self.db = location.connect()
        self.writer = WriterLock(location, self.db)
        self.k = {name: location.key(name) for name in
                  ("docs", "passages", "vectors", "tokens", "next-pid", "generation", "manifest")}
        try:
            self.db.ping()
            empty = not create and not self.db.exists(self.k["manifest"], self.k["docs"])
        except redis.RedisError as exc:
            raise StoreUnavailable(f"cannot reach store {location}: {exc}") from None
        if empty:
            raise NoDocuments(f"store {location} holds no cascade-rag store: {self.ingest_hint()}")

    @property
    def where(self) -> str:
        return f"store {self.location}"

    def ingest_hint(self) -> str:
        return f"ingest documents first: cascade-rag ingest PATH --store {self.location}"

    # --- writing ---------------------------------------------------------------------------------------------------
    @reaching
    def lock_for_writing(self) -> None:
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
                self.writer.release()

    def put_document(self, doc_id: str, title: str, source: str | None, content_hash: str,
                     passages: list[PassageRow]) -> tuple[list[int], list[int]]:
        return self.put_documents([(doc_id, title, source, content_hash, passages)])[0]

    @reaching
    def put_documents(self, batch: DocumentBatch) -> list[tuple[list[int], list[int]]]:
        """Replaces the documents of the batch and their passages in one transaction; returns each one's
        (removed passage ids, new passage ids)."""
        ids = [doc_id for doc_id, *_ in batch]
        if len(set(ids)) != len(ids):
            raise ValueError("a batch names a document twice")
        n = sum(len(rows) for *_, rows in batch)
        first = self.db.incrby(self.k["next-pid"], n) - n + 1  # reserved: ids of a batch that fails stay unused
        added, pid = [], first
        for *_, rows in batch:
            added.append(list(range(pid, pid + len(rows))))
            pid += len(rows)
        with self.db.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.k["docs"], self.writer.key)
                    self.writer.check(pipe)
                    old = [json.loads(d) if d else None for d in pipe.hmget(self.k["docs"], ids)] if ids else []
                    pipe.multi()
                    self._write(pipe, batch, old, added)
                    pipe.execute()
                    return [(o["pids"] if o else [], a) for o, a in zip(old, added)]
                except redis.WatchError:
                    continue

    def _write(self, pipe, batch: DocumentBatch, old: list[dict | None], added: list[list[int]]) -> None:
        tokens = 0
        for (doc_id, title, source, digest, rows), previous, pids in zip(batch, old, added):
            if previous and previous["pids"]:
                pipe.hdel(self.k["passages"], *previous["pids"])
                pipe.hdel(self.k["vectors"], *previous["pids"])
            n_tokens = sum(len(ids) for _, ids, _, _ in rows)
            tokens += n_tokens - (previous["tokens"] if previous else 0)
            pipe.hset(self.k["docs"], doc_id, json.dumps({"title": title, "source": source, "hash": digest,
                                                          "pids": pids, "tokens": n_tokens}))
            if rows:
                pipe.hset(self.k["passages"], mapping={pid: json.dumps({
                    "doc": doc_id, "title": title, "seq": seq, "text": text, "ids": ids, "key": key})
                    for seq, (pid, (text, ids, key, _)) in enumerate(zip(pids, rows))})
                pipe.hset(self.k["vectors"], mapping={pid: vector_bytes(vector)
                                                      for pid, (_, _, _, vector) in zip(pids, rows)})
        pipe.incrby(self.k["tokens"], tokens)
        pipe.incr(self.k["generation"])

    @reaching
    def delete_documents(self, doc_ids: list[str]) -> tuple[list[str], list[int]]:
        with self.db.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.k["docs"], self.writer.key)
                    self.writer.check(pipe)
                    unique = list(dict.fromkeys(doc_ids))
                    old = dict(zip(unique, pipe.hmget(self.k["docs"], unique)))
                    missing = [i for i in unique if old[i] is None]
                    if missing:
                        raise UnknownDocuments(missing)
                    documents = {i: json.loads(d) for i, d in old.items()}
                    removed = [pid for d in documents.values() for pid in d["pids"]]
                    pipe.multi()
                    pipe.hdel(self.k["docs"], *unique)
                    if removed:
                        pipe.hdel(self.k["passages"], *removed)
                        pipe.hdel(self.k["vectors"], *removed)
                    pipe.incrby(self.k["tokens"], -sum(d["tokens"] for d in documents.values()))
                    pipe.incr(self.k["generation"])
                    pipe.execute()
                    return unique, removed
                except redis.WatchError:
                    continue

    @reaching
    def write_manifest(self, manifest: dict) -> None:
        self.db.set(self.k["manifest"], json.dumps(manifest))

    def close(self) -> None:
        try:
            self.writer.release()
        except redis.RedisError:
            pass  # the lock of a connection that is gone is no lock
        self.db.close()

    # --- reading ---------------------------------------------------------------------------------------------------
    @reaching
    def manifest(self) -> dict | None:
        data = self.db.get(self.k["manifest"])
        return json.loads(data) if data else None

    @reaching
    def generation(self) -> int:
        return int(self.db.get(self.k["generation"]) or 0)

    @reaching
    def document_hash(self, doc_id: str) -> str | None:
        data = self.db.hget(self.k["docs"], doc_id)
        return json.loads(data)["hash"] if data else None

    @reaching
    def passages(self, pids: list[int]) -> dict[int, Passage]:
        rows = self.db.hmget(self.k["passages"], pids) if pids else []
        found = {}
        for pid, row in zip(pids, rows):
            if row is not None:
                p = json.loads(row)
                found[pid] = Passage(pid, p["doc"], p["title"], p["seq"], p["text"], p["ids"], p["key"])
        return found

    def _snapshot(self, key: str) -> tuple[int, dict[int, bytes]]:
        with self.db.pipeline(transaction=True) as pipe:
            generation, rows = pipe.get(self.k["generation"]).hgetall(self.k[key]).execute()
        return int(generation or 0), {int(pid): row for pid, row in rows.items()}

    @reaching
    def vectors(self) -> tuple[int, np.ndarray, np.ndarray | None]:
        generation, rows = self._snapshot("vectors")
        ids = np.array(sorted(rows), dtype=np.int64)
        vectors = np.stack([np.frombuffer(rows[pid], dtype=np.float32) for pid in ids]) if rows else None
        return generation, ids, vectors

    @reaching
    def texts(self) -> tuple[int, list[int], list[str]]:
        generation, rows = self._snapshot("passages")
        pids = sorted(rows)
        passages = [json.loads(rows[pid]) for pid in pids]
        return generation, pids, [titled(p["title"], p["text"]) for p in passages]

    @reaching
    def documents(self) -> list[dict]:
        rows = {doc_id.decode(): json.loads(d) for doc_id, d in self.db.hgetall(self.k["docs"]).items()}
        return [dict(id=i, title=d["title"], source=d["source"], passages=len(d["pids"]), tokens=d["tokens"])
                for i, d in sorted(rows.items())]

    @reaching
    def counts(self) -> dict:
        with self.db.pipeline(transaction=True) as pipe:
            docs, passages, tokens = pipe.hlen(self.k["docs"]).hlen(self.k["passages"]).get(self.k["tokens"]).execute()
        return {"documents": docs, "passages": passages, "tokens": int(tokens or 0)}

    @reaching
    def chunk_keys(self) -> set[str]:
        return {json.loads(row)["key"] for row in self.db.hvals(self.k["passages"])}
