"""DocumentStore: what the rest of rag/ needs of the store of documents, passages (text, token ids, chunk key,
vector), manifest and generation. Two stores have this shape: SQLite in a data directory (rag/store.py, the
embedded default) and Redis shared by replicas (rag/redis_store.py). The chunks live apart, behind a
ChunkBackend (rag/chunk_store.py).

Every change of passages bumps the generation in the same transaction as the change, so an index can tell
whether it is current. Passages are rag.store.Passage."""
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

PassageRow = tuple[str, list[int], str, np.ndarray]   # text, token ids, chunk key, vector


class DocumentStore(ABC):
    dir: Path | None  # the local data directory (the saved vector index, the disk check); None: a remote store

    @property
    @abstractmethod
    def where(self) -> str:
        """The store in messages: "data directory ./cascade-data", "store redis://host:6379/0"."""

    @abstractmethod
    def ingest_hint(self) -> str:
        """The command that fills this store, for the error of an empty one."""

    # --- writing ---------------------------------------------------------------------------------------------------
    @abstractmethod
    def lock_for_writing(self) -> None:
        """Makes this process the store's one writer (StoreLocked when another one is)."""

    @property
    @abstractmethod
    def is_writer(self) -> bool:
        ...

    @contextmanager
    def writing(self) -> Iterator[None]:
        """The writer lock held around one ingestion or deletion. A data directory keeps it until close; a shared
        store gives it back at the end, so that any replica or ingestion job may write next."""
        self.lock_for_writing()
        yield

    @abstractmethod
    def put_document(self, doc_id: str, title: str, source: str | None, content_hash: str,
                     passages: list[PassageRow]) -> tuple[list[int], list[int]]:
        """Replaces the document and its passages in one transaction; returns (removed passage ids, new ids)."""

    @abstractmethod
    def delete_documents(self, doc_ids: list[str]) -> tuple[list[str], list[int]]:
        """Deletes the documents, all or none (UnknownDocuments); returns (deleted ids, removed passage ids)."""

    @abstractmethod
    def write_manifest(self, manifest: dict) -> None:
        ...

    @abstractmethod
    def close(self) -> None:
        ...

    # --- reading ---------------------------------------------------------------------------------------------------
    @abstractmethod
    def manifest(self) -> dict | None:
        ...

    @abstractmethod
    def generation(self) -> int:
        ...

    @abstractmethod
    def document_hash(self, doc_id: str) -> str | None:
        ...

    @abstractmethod
    def passages(self, pids: list[int]) -> dict:
        """pid -> rag.store.Passage of those that exist."""

    @abstractmethod
    def vectors(self) -> tuple[int, np.ndarray, np.ndarray | None]:
        """(generation, passage ids [n] int64, vectors [n, dim] float32 or None when empty), one snapshot."""

    @abstractmethod
    def texts(self) -> tuple[int, list[int], list[str]]:
        """(generation, passage ids, "title. text" of each), one snapshot."""

    @abstractmethod
    def documents(self) -> list[dict]:
        """Each document's id, title, source, passages and tokens, ordered by id."""

    @abstractmethod
    def counts(self) -> dict:
        """{"documents", "passages", "tokens"}."""

    @abstractmethod
    def chunk_keys(self) -> set[str]:
        """The chunk key of every passage."""
