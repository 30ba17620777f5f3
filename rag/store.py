"""The data directory's documents: a SQLite store (WAL) of documents and passages (text, token ids, vector, chunk
key), the manifest, and the writer lock. The chunks themselves are in the chunk store (rag/chunk_store.py)."""
import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from cascade_rag.engine.file_io import write_atomic

from .collection import DEFAULT_COLLECTION
from .document_store import (DiskFull, DocumentRow, DocumentStore, NoDocuments, Passage, StoreError, StoreLocked,
                             UnknownDocuments, titled)
from .filters import MetadataFilter
from .store_schema import create_or_migrate, is_current


@contextmanager
def sqlite_refusals(data_dir: Path, db: sqlite3.Connection):
    """SQLite's refusals of a write as StoreErrors that say what happened; the transaction is rolled back (SQLite may
    have done so itself on a full disk: then ROLLBACK has nothing to do)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        if "disk is full" in str(exc):
            raise DiskFull(f"the disk of data directory {data_dir} is full ({exc}); nothing of this change was "
                           f"stored: free some space") from None
        if "readonly" in str(exc) or "read-only" in str(exc):
            raise StoreError(f"data directory {data_dir} is read-only ({exc}); nothing was changed") from None
        raise StoreError(f"data directory {data_dir}: {exc}; nothing of this change was stored") from None


def connect_read_only(path: Path) -> sqlite3.Connection:
    """The store opened for reading only: `mode=ro`, which needs the WAL's shared-memory file or a directory where
    it can be made; else, on a read-only directory, `immutable=1` (nothing can change it there)."""
    problem = None
    for query in ("mode=ro", "immutable=1"):
        db = sqlite3.connect(f"{path.resolve().as_uri()}?{query}", uri=True, check_same_thread=False,
                             isolation_level=None, timeout=30)
        try:
            db.execute("SELECT COUNT(*) FROM documents").fetchone()
            return db
        except sqlite3.DatabaseError as exc:
            db.close()
            problem = exc
    raise StoreError(f"{path} is not a usable document store: {problem}")


def ingest_hint(data_dir: Path) -> str:
    return f"ingest documents first: cascade-rag ingest PATH --data-dir {data_dir}"


class Store(DocumentStore):
    """Documents and passages (text, token ids, vector, chunk key), in one data directory.

    Every change of passages bumps `generation` in the same transaction, so a saved vector index can tell
    whether it is current. Writers hold a file lock on the directory; readers need none. With create=False a
    missing directory or store is an error (NoDocuments), never made; read_only (the commands that only read) also
    writes nothing, so that they work on a read-only data directory."""

    def __init__(self, data_dir: Path | str, create: bool = True, read_only: bool = False):
        self.dir, self.read_only = Path(data_dir), read_only
        if (read_only or not create) and not (self.dir / "store.sqlite").is_file():
            what = "does not exist" if not self.dir.exists() else "holds no cascade-rag store"
            raise NoDocuments(f"data directory {self.dir} {what}: {ingest_hint(self.dir)}")
        self._lock = threading.RLock()
        self._writer_lock: FileLock | None = None
        if read_only:
            self.db = connect_read_only(self.dir / "store.sqlite")
            if not is_current(self.db):
                raise StoreError(f"data directory {self.dir} holds a store made before collections, which cannot be "
                                 f"read without writing: open it once for writing (`cascade-rag ingest` or `serve`) "
                                 f"to migrate it in place")
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot use data directory {self.dir}: {exc}") from None
        try:
            self.db = sqlite3.connect(self.dir / "store.sqlite", check_same_thread=False, isolation_level=None,
                                      timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            create_or_migrate(self.db)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.dir / 'store.sqlite'} is not a usable document store: {exc}") from None

    @property
    def where(self) -> str:
        return f"data directory {self.dir}"

    def ingest_hint(self) -> str:
        return ingest_hint(self.dir)

    # --- writer lock -------------------------------------------------------------------------------------------
    def lock_for_writing(self) -> None:
        if self._writer_lock is not None:
            return
        if self.read_only:
            raise StoreError(f"data directory {self.dir} was opened read-only")
        lock = FileLock(str(self.dir / "writer.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            owner = (self.dir / "writer.pid").read_text().strip() if (self.dir / "writer.pid").exists() else "?"
            raise StoreLocked(f"data directory {self.dir} is being written by another process (pid {owner}); "
                              f"wait for it to finish or use another --data-dir") from None
        (self.dir / "writer.pid").write_text(str(os.getpid()))
        self._writer_lock = lock

    @property
    def is_writer(self) -> bool:
        return self._writer_lock is not None

    def close(self) -> None:
        with self._lock:
            self.db.close()
            if self._writer_lock is not None:
                self._writer_lock.release()
                self._writer_lock = None

    # --- manifest ----------------------------------------------------------------------------------------------
    def manifest(self) -> dict | None:
        path = self.dir / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else None

    def write_manifest(self, manifest: dict) -> None:
        write_atomic(self.dir / "manifest.json", json.dumps(manifest, indent=2).encode())

    # --- documents and passages --------------------------------------------------------------------------------
    def generation(self) -> int:
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    def document_hash(self, collection: str, doc_id: str) -> str | None:
        with self._lock:
            row = self.db.execute("SELECT content_hash FROM documents WHERE collection=? AND id=?",
                                  (collection, doc_id)).fetchone()
        return row[0] if row else None

    def put_documents(self, collection: str, documents: list[DocumentRow]) -> tuple[list[int], list[int]]:
        """Replaces documents of the collection (id, title, source, content hash, passages: text, token ids, chunk
        key, vector; metadata), their metadata and their passages, all in one transaction (a failure stores none of
        them: DiskFull when the filesystem is full); returns (removed passage ids, new passage ids)."""
        with self._lock, sqlite_refusals(self.dir, self.db), self.db:
            self.db.execute("BEGIN IMMEDIATE")
            removed, added = [], []
            for doc_id, title, source, content_hash, passages, metadata in documents:
                removed += [r[0] for r in self.db.execute("SELECT pid FROM passages WHERE collection=? AND doc_id=?",
                                                          (collection, doc_id))]
                self.db.execute("DELETE FROM documents WHERE collection=? AND id=?", (collection, doc_id))
                self.db.execute("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (collection, doc_id, title, source, content_hash, len(passages),
                                 sum(len(p[1]) for p in passages)))
                self.db.executemany("INSERT INTO metadata VALUES (?, ?, ?, ?)",
                                    [(collection, doc_id, k, v) for k, v in (metadata or {}).items()])
                for seq, (text, ids, key, vector) in enumerate(passages):
                    cur = self.db.execute(
                        "INSERT INTO passages (collection, doc_id, seq, text, token_ids, chunk_key, vector) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", (collection, doc_id, seq, text, json.dumps(ids), key,
                                                         np.asarray(vector, dtype=np.float32).tobytes()))
                    added.append(cur.lastrowid)
            self._bump_generation()
        return removed, added

    def delete_documents(self, collection: str, doc_ids: list[str]) -> tuple[list[str], list[int]]:
        """Deletes the documents of the collection, all or none (UnknownDocuments when an id is unknown in it);
        returns (deleted ids, removed passage ids)."""
        with self._lock, sqlite_refusals(self.dir, self.db), self.db:
            self.db.execute("BEGIN IMMEDIATE")
            known = {r[0] for r in self.db.execute(
                f"SELECT id FROM documents WHERE collection=? AND id IN ({','.join('?' * len(doc_ids))})",
                [collection, *doc_ids])}
            missing = list(dict.fromkeys(i for i in doc_ids if i not in known))
            if missing:
                raise UnknownDocuments(missing)
            deleted, removed = [], []
            for doc_id in doc_ids:
                pids = [r[0] for r in self.db.execute("SELECT pid FROM passages WHERE collection=? AND doc_id=?",
                                                      (collection, doc_id))]
                if self.db.execute("DELETE FROM documents WHERE collection=? AND id=?", (collection, doc_id)).rowcount:
                    deleted.append(doc_id)
                    removed += pids
            if deleted:
                self._bump_generation()
        return deleted, removed

    def _bump_generation(self) -> None:
        self.db.execute("INSERT INTO meta VALUES ('generation', '1') "
                        "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    def passages(self, pids: list[int]) -> dict[int, Passage]:
        """The passages of these ids, with their document's title and metadata."""
        with self._lock:
            rows = self.db.execute(
                f"SELECT p.pid, p.doc_id, d.title, p.seq, p.text, p.token_ids, p.chunk_key, p.collection "
                f"FROM passages p JOIN documents d ON d.collection = p.collection AND d.id = p.doc_id "
                f"WHERE p.pid IN ({','.join('?' * len(pids))})", pids).fetchall()
            metadata = self._metadata({(r[7], r[1]) for r in rows})
        return {r[0]: Passage(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7],
                              metadata.get((r[7], r[1]), {})) for r in rows}

    def _metadata(self, documents: set[tuple[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
        """{(collection, document id): metadata} of these documents (call under the lock)."""
        found: dict[tuple[str, str], dict[str, str]] = {}
        for collection, doc_id in documents:
            for key, value in self.db.execute("SELECT key, value FROM metadata WHERE collection=? AND doc_id=? "
                                              "ORDER BY key", (collection, doc_id)):
                found.setdefault((collection, doc_id), {})[key] = value
        return found

    def passage_ids(self, collection: str, where: MetadataFilter | None = None) -> np.ndarray:
        """The ids of the passages of the collection whose documents match the filter (all without one)."""
        sql, args = "SELECT pid FROM passages p WHERE p.collection=?", [collection]
        for c in (where.conditions if where else ()):
            sql += (f" AND EXISTS (SELECT 1 FROM metadata m WHERE m.collection=p.collection AND m.doc_id=p.doc_id "
                    f"AND m.key=? AND m.value IN ({','.join('?' * len(c.values))}))")
            args += [c.key, *c.values]
        with self._lock:
            return np.array([r[0] for r in self.db.execute(sql + " ORDER BY pid", args)], dtype=np.int64)

    def _snapshot(self, query: str) -> tuple[int, list]:
        """The generation and the rows of a query, read in one transaction."""
        with self._lock, self.db:
            self.db.execute("BEGIN")
            return self.generation(), self.db.execute(query).fetchall()

    def vectors(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(generation, passage ids [n] int64, vectors [n, dim] float32), read in one snapshot."""
        generation, rows = self._snapshot("SELECT pid, vector FROM passages ORDER BY pid")
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vectors = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]) if rows else None
        return generation, ids, vectors

    def texts(self) -> tuple[int, list[int], list[str]]:
        """(generation, passage ids, "title. text" of each passage), read in one snapshot."""
        generation, rows = self._snapshot("SELECT p.pid, d.title, p.text FROM passages p JOIN documents d "
                                          "ON d.collection = p.collection AND d.id = p.doc_id ORDER BY p.pid")
        return generation, [r[0] for r in rows], [titled(r[1], r[2]) for r in rows]

    def documents(self, collection: str = DEFAULT_COLLECTION) -> list[dict]:
        """The documents of the collection, ordered by id, with their metadata."""
        with self._lock:
            rows = self.db.execute("SELECT id, title, source, n_passages, n_tokens FROM documents WHERE collection=? "
                                   "ORDER BY id", (collection,)).fetchall()
            metadata = self._metadata({(collection, r[0]) for r in rows})
        return [dict(id=r[0], title=r[1], source=r[2], passages=r[3], tokens=r[4],
                     metadata=metadata.get((collection, r[0]), {})) for r in rows]

    def counts(self, collections: frozenset[str] | None = None) -> dict:
        """Documents, passages and tokens of these collections (None: of all)."""
        where, args = _among(collections)
        with self._lock:
            docs, passages, tokens = self.db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(n_passages), 0), COALESCE(SUM(n_tokens), 0) FROM documents{where}",
                args).fetchone()
        return {"documents": docs, "passages": passages, "tokens": tokens}

    def chunk_keys(self, collections: frozenset[str] | None = None) -> set[str]:
        where, args = _among(collections)
        with self._lock:
            return {r[0] for r in self.db.execute(f"SELECT DISTINCT chunk_key FROM passages{where}", args)}


def _among(collections: frozenset[str] | None) -> tuple[str, list[str]]:
    """A WHERE clause restricting rows to these collections (none: no clause)."""
    if collections is None:
        return "", []
    return f" WHERE collection IN ({','.join('?' * len(collections))})", sorted(collections)
