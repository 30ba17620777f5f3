"""Opening a store by its location: a data directory (SQLite and a folder of chunk files, the embedded default) or
the URL of a shared store (`redis://host:port/db`: documents, passages and chunk blobs in one Redis database)."""
from pathlib import Path

from .chunk_store import ChunkBackend
from .document_store import DocumentStore
from .local_backend import LocalDirectoryBackend
from .redis_backend import RedisChunkBackend
from .redis_location import RedisLocation, is_store_url
from .redis_store import RedisDocumentStore
from .store import Store

Location = Path | str


def open_store(location: Location, create: bool = True, read_only: bool = False) -> DocumentStore:
    """The store at `location`; with create=False a missing or empty one is NoDocuments; read_only (the commands that
    only read) also refuses every write."""
    if is_store_url(location):
        return RedisDocumentStore(RedisLocation.parse(location), create, read_only)
    return Store(location, create=create, read_only=read_only)


def chunk_backend_of(store: DocumentStore) -> ChunkBackend:
    """Where the store's chunks live: the shared store's database, or the data directory's `chunks/` folder."""
    if isinstance(store, RedisDocumentStore):
        return RedisChunkBackend(store.location, store.db, store.read_only)
    return LocalDirectoryBackend(store.dir / "chunks")
