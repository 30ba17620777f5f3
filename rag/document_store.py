"""DocumentStore: what the rest of rag/ needs of the store of documents (each in a collection, with its metadata),
passages (text, token ids, chunk key, vector), manifest and generation. Two stores have this shape: SQLite in a data
directory (rag/store.py, the embedded default) and Redis shared by replicas (rag/redis_store.py). The chunks live
apart, behind a ChunkBackend (rag/chunk_store.py).

Every change of passages bumps the generation in the same transaction as the change, so an index can tell whether
it is current. Passage ids are unique across collections and never reused. The errors of both stores and the
Passage they return live here too."""
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .collection import DEFAULT_COLLECTION
from .filters import MetadataFilter


class StoreError(RuntimeError):
    pass


class StoreLocked(StoreError):
    pass


class NoDocuments(StoreError):
    """A question asked of a data directory or shared store that is missing or holds no documents."""


class DiskFull(StoreError):
    """A write the filesystem (or a shared store's memory) had no room for (rolled back: nothing of it is stored)."""


class StoreUnavailable(StoreError):
    """A shared store that cannot be reached (its server down or out of reach)."""


class UnknownDocuments(StoreError):
    """A deletion naming ids the store does not hold (nothing is deleted)."""

    def __init__(self, missing: list[str]):
        self.missing = missing
        super().__init__(f"no such documents: {', '.join(map(repr, missing))}; nothing was deleted")


@dataclass
class Passage:
    pid: int
    doc_id: str
    title: str
    seq: int
    text: str
    token_ids: list[int]
    chunk_key: str
    collection: str = DEFAULT_COLLECTION
    metadata: dict[str, str] = field(default_factory=dict)


def titled(title: str, text: str) -> str:
    """What retrieval matches a passage by (its embedding and BM25): the document's title, then the text."""
    return f"{title}. {text}" if title else text


PassageRow = tuple[str, list[int], str, np.ndarray]   # text, token ids, chunk key, vector
# id, title, source, content hash, passage rows, metadata (string keys to string values)
DocumentRow = tuple[str, str, str | None, str, list[PassageRow], dict[str, str]]


class DocumentStore(ABC):
    dir: Path | None  # the local data directory (the saved vector index, the disk check); None: a remote store
    read_only: bool   # opened by a command that only reads: every write is refused (StoreError)

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
        """Makes this process the store's one writer (StoreLocked when another one is; StoreError when read-only)."""

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
    def put_documents(self, collection: str, documents: list[DocumentRow]) -> tuple[list[int], list[int]]:
        """Replaces documents of the collection with their metadata and passages, all in one transaction (a reader
        sees all of them or none; a failure stores none: DiskFull when the store has no room); returns (removed
        passage ids, new passage ids)."""

    @abstractmethod
    def delete_documents(self, collection: str, doc_ids: list[str]) -> tuple[list[str], list[int]]:
        """Deletes documents of the collection, all or none (UnknownDocuments when an id is unknown in it); returns
        (deleted ids, removed passage ids)."""

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
    def document_hash(self, collection: str, doc_id: str) -> str | None:
        ...

    @abstractmethod
    def passages(self, pids: list[int]) -> dict:
        """pid -> Passage (with its collection and its document's title and metadata) of those that
        exist."""

    @abstractmethod
    def passage_ids(self, collection: str, where: MetadataFilter | None = None) -> np.ndarray:
        """The ids (int64, ascending) of the passages of the collection whose documents match the filter (all
        without one)."""

    @abstractmethod
    def vectors(self) -> tuple[int, np.ndarray, np.ndarray | None]:
        """(generation, passage ids [n] int64, vectors [n, dim] float32 or None when empty) of every collection,
        one snapshot."""

    @abstractmethod
    def texts(self) -> tuple[int, list[int], list[str]]:
        """(generation, passage ids, "title. text" of each) of every collection, one snapshot."""

    @abstractmethod
    def documents(self, collection: str = DEFAULT_COLLECTION) -> list[dict]:
        """The collection's documents ordered by id: id, title, source, passages, tokens, metadata."""

    @abstractmethod
    def counts(self, collections: frozenset[str] | None = None) -> dict:
        """{"documents", "passages", "tokens"} of these collections (None: of all)."""

    @abstractmethod
    def chunk_keys(self, collections: frozenset[str] | None = None) -> set[str]:
        """The chunk key of every passage of these collections (None: of all)."""
