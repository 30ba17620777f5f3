"""Stored KV chunks: the format (cascade_rag.engine.chunk_format) over a backend that keeps bytes by key.

A backend has four verbs and a listing; the local directory (rag/local_backend.py) is one, and another (Redis,
object storage) is one class of the same shape. Whatever the backend does when it fails, the store serves a
chunk only when its bytes decode whole and checked: a failed or partial write is a miss."""
import hashlib
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass

from cascade_rag.engine import KVChunk, KVChunkError
from cascade_rag.engine.chunk_format import decode, encode
from cascade_rag.engine.chunk_stream import BufferSource, ByteSource, ChunkStreamer

from .collection import DEFAULT_COLLECTION

log = logging.getLogger("cascade_rag")


def chunk_key(fingerprint: str, token_ids: list[int], collection: str | None = None, kv_format: str = "dtype") -> str:
    """The one name of a chunk's bytes: the fingerprint (model weights and tokenizer, dtype and so the layout, the
    system prompt of level 0, the format version), the passage's token ids, its collection (None or the default
    one: no collection, the keys of stores made before collections): collections share no chunk, so whether a chunk
    is hot tells nothing of another collection; and its KV format (`dtype`: none, the keys of stores made before
    formats), so that stores of several formats never share a name."""
    scoped = [collection] if collection and collection != DEFAULT_COLLECTION else []
    packed = [["kv_format", kv_format]] if kv_format != "dtype" else []
    return hashlib.sha256(json.dumps([fingerprint, token_ids, *scoped, *packed]).encode()).hexdigest()


class ChunkBackend(ABC):
    """Where chunk bytes live. Errors are raised as OSError (or any exception); none needs to be atomic for the
    store to be safe, though a backend that is (the local one) keeps a failed write from costing a recompute."""
    tier = "disk"  # what an answer's tiers call a chunk read from it ("remote": a store shared by replicas)

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Stores data under key, replacing what was there."""

    @abstractmethod
    def get(self, key: str) -> bytearray | None:
        """The bytes under key (a writable buffer), or None when there are none."""

    @abstractmethod
    def contains(self, key: str) -> bool:
        ...

    def source(self, key: str) -> ByteSource | None:
        """The bytes under key read by range (for loads streamed block by block), or None when there are none. By
        default the whole of get(); a backend that can read ranges (a file) does better."""
        data = self.get(key)
        return None if data is None else BufferSource(data, f"KV chunk {key}")

    @abstractmethod
    def delete(self, key: str) -> None:
        """Removes key; no error when it is absent."""

    @abstractmethod
    def sizes(self) -> dict[str, int]:
        """Every stored key and its size in bytes."""

    def collect(self, keep: set[str]) -> int:
        """Deletes every key not in keep (and whatever a backend leaves of interrupted writes); returns how many."""
        stale = set(self.sizes()) - keep
        for key in stale:
            self.delete(key)
        return len(stale)


class ChunkWriteError(OSError):
    """A chunk the backend could not store; nothing of it is served."""


@dataclass(frozen=True)
class Lookup:
    """A stored chunk, or a miss: `problem` says why an entry that was there could not be used."""
    chunk: KVChunk | None
    problem: str | None = None


class ChunkStore:
    """Chunks in one KV format (`kv_format`, engine KV_FORMATS) over a backend: an entry in another is a miss."""

    def __init__(self, backend: ChunkBackend, kv_format: str = "dtype"):
        self.backend, self.kv_format = backend, kv_format

    @property
    def tier(self) -> str:
        return self.backend.tier

    def contains(self, key: str) -> bool:
        return self.backend.contains(key)

    def get(self, key: str, fingerprint: str, device="cpu", pin: bool = False) -> Lookup:
        """The chunk under key, checked against `fingerprint`, on `device` (pinned CPU memory if `pin`); or a miss
        (absent, unreadable, truncated, corrupted, of another model)."""
        try:
            data = self.backend.get(key)
        except Exception as exc:
            return Lookup(None, f"cannot read KV chunk {key}: {exc}")
        if data is None:
            return Lookup(None)
        try:
            return Lookup(decode(data, fingerprint, device, pin, f"KV chunk {key}", self.kv_format))
        except KVChunkError as exc:
            return Lookup(None, str(exc))

    def stream(self, keys: list[str], fingerprint: str, device, streamer: ChunkStreamer) -> list[Lookup]:
        """The chunks under keys on `device`, their layers arriving while they are used (engine.chunk_stream: each
        layer is checked as it arrives, and a bad one fails the request that waits for it), or misses."""
        sources, lookups = [], []
        for key in keys:
            try:
                sources.append(self.backend.source(key))
            except Exception as exc:
                sources.append(KVChunkError(f"cannot read KV chunk {key}: {exc}"))
        readable = [s for s in sources if s is not None and not isinstance(s, KVChunkError)]
        loaded = iter(streamer.load(readable, fingerprint, device, self.kv_format) if readable else [])
        for source in sources:
            result = source if source is None or isinstance(source, KVChunkError) else next(loaded)
            lookups.append(Lookup(None, None if result is None else str(result)) if not isinstance(result, KVChunk)
                           else Lookup(result))
        return lookups

    def put(self, key: str, chunk: KVChunk) -> None:
        """Stores the chunk (in the store's KV format); on failure removes what may have been written and raises
        ChunkWriteError."""
        if chunk.kv_format != self.kv_format:
            raise ValueError(f"a chunk in KV format {chunk.kv_format} given to a store of {self.kv_format}")
        data = encode(chunk)
        try:
            self.backend.put(key, data)
        except Exception as exc:
            try:
                self.backend.delete(key)
            except Exception as cleanup:
                log.warning(f"could not remove what was written of KV chunk {key}: {cleanup}")
            raise ChunkWriteError(f"could not store KV chunk {key}: {exc}") from exc

    def delete(self, key: str) -> None:
        self.backend.delete(key)

    def sizes(self) -> dict[str, int]:
        return self.backend.sizes()

    def collect(self, keep: set[str]) -> int:
        """Removes the chunks no passage refers to (left by replaced documents or an interrupted ingestion)."""
        return self.backend.collect(keep)
