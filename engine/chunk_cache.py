"""Hot tiers of KV chunks: LRU by bytes on the engine's device and, when that is a GPU, in pinned CPU memory."""
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .kv_chunk import KVChunk


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class ChunkCache:
    """One tier: chunks by key, least recently used evicted first, total bytes never above the budget."""

    def __init__(self, budget_bytes: int):
        if budget_bytes < 0:
            raise ValueError(f"cache budget must be >= 0 bytes, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self.stats = CacheStats()
        self._chunks: OrderedDict[str, KVChunk] = OrderedDict()

    def __len__(self) -> int:
        return len(self._chunks)

    def __contains__(self, key: str) -> bool:
        return key in self._chunks

    def get(self, key: str) -> KVChunk | None:
        chunk = self._chunks.get(key)
        if chunk is None:
            self.stats.misses += 1
            return None
        self._chunks.move_to_end(key)
        self.stats.hits += 1
        return chunk

    def put(self, key: str, chunk: KVChunk) -> bool:
        """Stores the chunk, evicting the least recently used; a chunk larger than the budget is not kept."""
        self.pop(key)
        if chunk.nbytes > self.budget_bytes:
            return False
        while self.used_bytes + chunk.nbytes > self.budget_bytes:
            _, evicted = self._chunks.popitem(last=False)
            self.used_bytes -= evicted.nbytes
            self.stats.evictions += 1
        self._chunks[key] = chunk
        self.used_bytes += chunk.nbytes
        return True

    def pop(self, key: str) -> KVChunk | None:
        chunk = self._chunks.pop(key, None)
        if chunk is not None:
            self.used_bytes -= chunk.nbytes
        return chunk


class TieredChunkCache:
    """The device tier and, for a GPU device, a pinned CPU tier, in front of the chunk store: `lookup` finds a
    chunk in them, `admit` keeps one that came from below."""

    def __init__(self, device: str, device_bytes: int, cpu_bytes: int = 0):
        self.device = torch.device(device)
        self.device_tier = ChunkCache(device_bytes)
        self.cpu_tier = ChunkCache(cpu_bytes) if self.device.type == "cuda" else None

    @property
    def pins(self) -> bool:
        """Whether chunks from below should arrive in pinned CPU memory (kept there, copied to the GPU)."""
        return self.cpu_tier is not None

    def lookup(self, key: str) -> tuple[KVChunk | None, str | None]:
        """The chunk on the device and the tier that held it ('gpu' or 'cpu'), or (None, None)."""
        chunk = self.device_tier.get(key)
        if chunk is not None:
            return chunk, "gpu" if self.device.type == "cuda" else "cpu"
        chunk = self.cpu_tier.get(key) if self.cpu_tier is not None else None
        if chunk is None:
            return None, None
        chunk = chunk.to(self.device, non_blocking=True)
        self.device_tier.put(key, chunk)
        return chunk, "cpu"

    def admit(self, key: str, chunk: KVChunk) -> KVChunk:
        """A chunk from below the tiers (storage, a recompute) kept in them; returns it on the device."""
        if self.cpu_tier is not None:
            pinned = _pinned(chunk)
            self.cpu_tier.put(key, pinned)
            if chunk.device.type == "cpu":  # read from storage: copied to the GPU from the pinned copy
                chunk = pinned
        chunk = chunk.to(self.device, non_blocking=True)
        self.device_tier.put(key, chunk)
        return chunk

    def put(self, key: str, chunk: KVChunk) -> None:
        self.device_tier.put(key, chunk.to(self.device))

    def discard(self, key: str) -> None:
        self.device_tier.pop(key)
        if self.cpu_tier is not None:
            self.cpu_tier.pop(key)

    def tiers(self) -> dict[str, ChunkCache]:
        if self.cpu_tier is None:
            return {"cpu": self.device_tier}
        return {"gpu": self.device_tier, "cpu": self.cpu_tier}


def _pinned(chunk: KVChunk) -> KVChunk:
    """The chunk in pinned CPU memory (as it is if it already is), so that copies to the GPU run asynchronously."""
    if chunk.keys.is_pinned() and chunk.values.is_pinned():
        return chunk
    keys, values = chunk.keys.cpu(), chunk.values.cpu()
    if torch.cuda.is_available():
        keys, values = keys.pin_memory(), values.pin_memory()
    return KVChunk(chunk.level, chunk.token_ids, chunk.start, keys, values, chunk.fingerprint)
