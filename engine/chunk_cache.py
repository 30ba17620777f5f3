"""Hot tiers of KV chunks: LRU by bytes on the engine's device and, when that is a GPU, in pinned CPU memory."""
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

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
    """Device tier, then (for a GPU device) a pinned CPU tier, then `load` (the disk)."""

    def __init__(self, device: str, device_bytes: int, cpu_bytes: int = 0):
        self.device = torch.device(device)
        self.device_tier = ChunkCache(device_bytes)
        self.cpu_tier = ChunkCache(cpu_bytes) if self.device.type == "cuda" else None

    def get(self, key: str, load: Callable[[], KVChunk]) -> tuple[KVChunk, str]:
        """The chunk on the device and the tier it came from: 'gpu', 'cpu' (memory) or 'disk'."""
        chunk = self.device_tier.get(key)
        if chunk is not None:
            return chunk, "gpu" if self.device.type == "cuda" else "cpu"
        tier = "disk"
        if self.cpu_tier is not None:
            chunk = self.cpu_tier.get(key)
            tier = "cpu" if chunk is not None else "disk"
        if chunk is None:
            chunk = load()
            if self.cpu_tier is not None:
                pinned = _pinned(chunk)
                self.cpu_tier.put(key, pinned)
                if chunk.device.type == "cpu":  # read from disk: copied to the GPU from the pinned copy
                    chunk = pinned
        chunk = chunk.to(self.device, non_blocking=True)
        self.device_tier.put(key, chunk)
        return chunk, tier

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
