"""BatchPrefill: the KV chunks of an ingestion's passages that the store lacks, prefilled ahead in plan order
(across documents) in batches of up to a token budget and handed out one by one: each document still saves its
own chunks, then commits, as with one prefill per passage. At most one batch is held in memory."""
import time
from collections import deque

from cascade_rag.engine import KVChunk

from .chunk_provider import ChunkProvider
from .collection import DEFAULT_COLLECTION


class BatchPrefill:
    def __init__(self, provider: ChunkProvider, passages: list[list[int]], budget_tokens: int,
                 collection: str = DEFAULT_COLLECTION):
        self.provider, self.budget_tokens, self.ready, todo = provider, budget_tokens, {}, {}
        for ids in passages:
            key = provider.key(ids, collection)
            if key not in todo and not provider.chunks.contains(key):
                todo[key] = ids
        self.queue, self.queued = deque(todo.items()), set(todo)

    def planned(self) -> list[list[int]]:
        """The token ids of the passages still to prefill, in order."""
        return [ids for _, ids in self.queue]

    def take(self, key: str, ids: list[int]) -> KVChunk:
        while key not in self.ready and key in self.queued:  # documents ask in plan order: `key` heads the queue
            self.prefill_next()
        chunk = self.ready.pop(key, None)
        if chunk is None:  # not planned (it was stored when planning): on its own
            [chunk] = self.provider.prefill([ids])
        return chunk

    def prefill_next(self) -> tuple[int, float]:
        """Prefills the next batch of the queue; returns its tokens and seconds."""
        began = time.perf_counter()
        batch = [self.queue.popleft()]
        tokens = len(batch[0][1])
        while self.queue and tokens + len(self.queue[0][1]) <= self.budget_tokens:
            batch.append(self.queue.popleft())
            tokens += len(batch[-1][1])
        self.queued.difference_update(k for k, _ in batch)
        self.ready.update(zip((k for k, _ in batch), self.provider.prefill([ids for _, ids in batch])))
        return tokens, time.perf_counter() - began
