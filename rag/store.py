"""The data directory's documents: a SQLite store (WAL) of documents and passages (text, token ids, vector, chunk
key), the manifest, and the writer lock. The chunks themselves are in the chunk store (rag/chunk_store.py)."""
import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from cascade_rag.engine.file_io import write_atomic

from .document_store import DocumentStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, source TEXT, content_hash TEXT NOT NULL, n_passages INTEGER NOT NULL,
    n_tokens INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS passages (
    pid INTEGER PRIMARY KEY AUTOINCREMENT, doc_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL, text TEXT NOT NULL, token_ids TEXT NOT NULL, chunk_key TEXT NOT NULL, vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS passages_doc ON passages(doc_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreError(RuntimeError):
    pass


class StoreLocked(StoreError):
    pass


class NoDocuments(StoreError):
    """A question asked of a data directory that is missing or holds no documents."""


class UnknownDocuments(StoreError):
    """A deletion naming ids the store does not hold (nothing is deleted)."""

    def __init__(self, missing: list[str]):
        self.missing = missing
        super().__init__(f"no such documents: {', '.join(map(repr, missing))}; nothing was deleted")


def ingest_hint(data_dir: Path) -> str:
    return f"ingest documents first: cascade-rag ingest PATH --data-dir {data_dir}"


@dataclass
class Passage:
    pid: int
    doc_id: str
    title: str
    seq: int
    text: str
    token_ids: list[int]
    chunk_key: str


def titled(title: str, text: str) -> str:
    """What retrieval matches a passage by (its embedding and BM25): the document's title, then the text."""
    return f"{title}. {text}" if title else text


class Store(DocumentStore):
    """Documents and passages (text, token ids, vector, chunk key), in one data directory.

    Every change of passages bumps `generation` in the same transaction, so a saved vector index can tell
    whether it is current. Writers hold a file lock on the directory; readers need none. With create=False
    (the read-only commands) a missing directory or store is an error (NoDocuments), never made."""

    def __init__(self, data_dir: Path | str, create: bool = True):
        self.dir = Path(data_dir)
        if not create and not (self.dir / "store.sqlite").is_file():
            what = "does not exist" if not self.dir.exists() else "holds no cascade-rag store"
            raise NoDocuments(f"data directory {self.dir} {what}: {ingest_hint(self.dir)}")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot use data directory {self.dir}: {exc}") from None
        self._lock = threading.RLock()
        self._writer_lock: FileLock | None = None
        try:
            self.db = sqlite3.connect(self.dir / "store.sqlite", check_same_thread=False, isolation_level=None,
                                      timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
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

    def document_hash(self, doc_id: str) -> str | None:
        with self._lock:
            row = self.db.execute("SELECT content_hash FROM documents WHERE id=?", (doc_id,)).fetchone()
        return row[0] if row else None

    def put_document(self, doc_id: str, title: str, source: str | None, content_hash: str,
                     passages: list[tuple[str, list[int], str, np.ndarray]]) -> tuple[list[int], list[int]]:
        """Replaces the document and its passages (text, token ids, chunk key, vector) in one transaction;
        returns (removed passage ids, new passage ids)."""
        with self._lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            removed = [r[0] for r in self.db.execute("SELECT pid FROM passages WHERE doc_id=?", (doc_id,))]
            self.db.execute("DELETE FROM documents WHERE id=?", (doc_id,))
            self.db.execute("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?)",
                            (doc_id, title, source, content_hash, len(passages), sum(len(p[1]) for p in passages)))
            added = []
            for seq, (text, ids, key, vector) in enumerate(passages):
                cur = self.db.execute(
                    "INSERT INTO passages (doc_id, seq, text, token_ids, chunk_key, vector) VALUES (?, ?, ?, ?, ?, ?)",
                    (doc_id, seq, text, json.dumps(ids), key, np.asarray(vector, dtype=np.float32).tobytes()))
                added.append(cur.lastrowid)
            self._bump_generation()
        return removed, added

    def delete_documents(self, doc_ids: list[str]) -> tuple[list[str], list[int]]:
        """Deletes the documents, all or none (UnknownDocuments when an id is unknown); returns (deleted ids,
        removed passage ids)."""
        with self._lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            known = {r[0] for r in self.db.execute(
                f"SELECT id FROM documents WHERE id IN ({','.join('?' * len(doc_ids))})", doc_ids)}
            missing = list(dict.fromkeys(i for i in doc_ids if i not in known))
            if missing:
                raise UnknownDocuments(missing)
            deleted, removed = [], []
            for doc_id in doc_ids:
                pids = [r[0] for r in self.db.execute("SELECT pid FROM passages WHERE doc_id=?", (doc_id,))]
                if self.db.execute("DELETE FROM documents WHERE id=?", (doc_id,)).rowcount:
                    deleted.append(doc_id)
                    removed += pids
            if deleted:
                self._bump_generation()
        return deleted, removed

    def _bump_generation(self) -> None:
        self.db.execute("INSERT INTO meta VALUES ('generation', '1') "
                        "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    def passages(self, pids: list[int]) -> dict[int, Passage]:
        with self._lock:
            rows = self.db.execute(
                f"SELECT p.pid, p.doc_id, d.title, p.seq, p.text, p.token_ids, p.chunk_key FROM passages p "
                f"JOIN documents d ON d.id = p.doc_id WHERE p.pid IN ({','.join('?' * len(pids))})", pids).fetchall()
        return {r[0]: Passage(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]) for r in rows}

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
        generation, rows = self._snapshot("SELECT p.pid, d.title, p.text FROM passages p "
                                          "JOIN documents d ON d.id = p.doc_id ORDER BY p.pid")
        return generation, [r[0] for r in rows], [titled(r[1], r[2]) for r in rows]

    def documents(self) -> list[dict]:
        with self._lock:
            rows = self.db.execute("SELECT id, title, source, n_passages, n_tokens FROM documents ORDER BY id")
            return [dict(id=r[0], title=r[1], source=r[2], passages=r[3], tokens=r[4]) for r in rows]

    def counts(self) -> dict:
        with self._lock:
            docs, passages, tokens = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(n_passages), 0), COALESCE(SUM(n_tokens), 0) FROM documents").fetchone()
        return {"documents": docs, "passages": passages, "tokens": tokens}

    def chunk_keys(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self.db.execute("SELECT DISTINCT chunk_key FROM passages")}
