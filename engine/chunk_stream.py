"""Stored chunks loaded block by block, in parallel, while the question's prefill runs (CacheBlend's pipelining).

`ChunkStreamer.load` reads every chunk's header (in parallel threads), checks its identity and the metadata's
digest, allocates one buffer on the device for the tensors' bytes (each tensor a view of its place in it, as in
the file) and returns the chunks at once, each with a `LayerArrival`. Threads then take the files' blocks (the
checksum's: engine.chunk_format.BLOCK_BYTES of a tensor from its start, so that a block holds a run of one
tensor's layers), those holding the first layers first: one read of a block into a pinned staging slot, its XXH3
checked, one copy to its place in the device buffer on the thread's own CUDA stream. A layer has arrived when every
block holding some of its bytes has; the decoder waits for a layer's arrival just before its attention
(AttentionContext.arrive): the first layers compute while the later ones are still being read. A block that fails
its check fails the layers it holds, raising KVChunkError from their wait (the request fails; its caller drops the
chunk and computes it again). Files written before the block checksum are read whole and decoded as before. On a
CPU device, blocks are read straight into the chunk's buffer."""
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from queue import Queue
from typing import Protocol

import torch
import xxhash

from .chunk_format import (BLOCKS_CHECKSUM, check_identity, chunk_of, decode, header_bytes, layout, metadata_digest,
                           parse_blocks, tensor_blocks)
from .kv_chunk import KVChunk, KVChunkError

HEADER_GUESS = 64 << 10  # first read of a file: its header fits in this for chunks of up to ~10,000 tokens


class ByteSource(Protocol):
    """A chunk's bytes where they are kept (a file, a buffer): its size, and reads of a range into a buffer."""
    name: str

    def size(self) -> int:
        ...

    def read_into(self, offset: int, out: memoryview) -> None:
        """Fills `out` with the bytes from `offset`; OSError when they are not all there."""

    def will_need(self) -> None:
        """Starts bringing every byte in, without waiting (a file: the kernel reads it ahead), where that helps."""


class BufferSource:
    """Bytes already in memory (a backend's get)."""

    def __init__(self, data, name: str):
        self.data, self.name = memoryview(data).cast("B"), name

    def size(self) -> int:
        return len(self.data)

    def read_into(self, offset: int, out: memoryview) -> None:
        if offset + len(out) > len(self.data):
            raise OSError(f"{self.name} ends at byte {len(self.data)}, before {offset + len(out)}")
        out[:] = self.data[offset:offset + len(out)]

    def will_need(self) -> None:
        """Nothing to bring in: the bytes are in memory."""


class LayerArrival:
    """The per-layer readiness of one streamed chunk: wait(layer) blocks until every block holding its bytes is
    verified and in place (on a GPU, its copy finished: work launched after the wait sees it on any stream)."""

    def __init__(self, layers: int, name: str):
        self.futures: list[Future] = [Future() for _ in range(layers)]
        self.name, self.waited = name, 0

    def wait(self, layer: int) -> None:
        while self.waited <= layer:
            self.futures[self.waited].result()  # raises the layer's KVChunkError
            self.waited += 1

    def wait_all(self) -> None:
        self.wait(len(self.futures) - 1)

    @property
    def pending(self) -> bool:
        return self.waited < len(self.futures)

    @property
    def failed(self) -> bool:
        """Whether a layer failed its check (or its read) by now."""
        return any(f.done() and f.exception() is not None for f in self.futures)

    def settle(self) -> bool:
        """Waits until every layer has arrived or failed, without raising: whether one failed."""
        wait(self.futures)
        return self.failed


class _Plan:
    """One chunk being streamed: its source, where its tensors' bytes start in it, the device buffer they go to,
    its blocks (first byte in the buffer, length, the layers they hold) and their digests, and the layers' arrival
    as blocks settle."""

    def __init__(self, source: ByteSource, base: int, buffer: torch.Tensor, block_bytes: int, digests: list[str],
                 spans: list[tuple[int, int, int]], layers: int):
        """spans: each tensor's first byte in the buffer, its bytes and its bytes a layer, in tensors_of's order."""
        self.source, self.base, self.buffer, self.digests = source, base, buffer, digests
        self.block_bytes = block_bytes
        self.arrival = LayerArrival(layers, source.name)
        self.lock = threading.Lock()
        self.failure: KVChunkError | None = None  # the first block's that failed: the chunk is not used
        self.blocks = [(spans[t][0] + at, n, list(range(at // spans[t][2], (at + n - 1) // spans[t][2] + 1)))
                       for t, at, n in tensor_blocks([size for _, size, _ in spans], block_bytes)]
        self.missing = [0] * layers  # blocks of each layer not yet settled
        for _, _, held in self.blocks:
            for layer in held:
                self.missing[layer] += 1
        for layer in range(layers):
            if not self.missing[layer]:  # no bytes at all (a chunk of no tokens)
                self.arrival.futures[layer].set_result(None)

    def settle(self, b: int) -> None:
        """Block b is verified and in place."""
        with self.lock:
            for layer in self.blocks[b][2]:
                self.missing[layer] -= 1
                if self.missing[layer] == 0 and not self.arrival.futures[layer].done():
                    self.arrival.futures[layer].set_result(None)

    def fail(self, b: int, error: KVChunkError) -> None:
        """Block b is unusable: every layer it holds fails with `error`."""
        with self.lock:
            self.failure = self.failure or error
            for layer in self.blocks[b][2]:
                if not self.arrival.futures[layer].done():
                    self.arrival.futures[layer].set_exception(error)


class ChunkStreamer:
    """Loads chunks through `workers` threads, each with its own CUDA stream, and 2 * workers pinned staging slots
    (grown to the largest block on first use)."""

    def __init__(self, workers: int = 8):
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="cascade-rag-chunks")
        self.local = threading.local()
        self.slots: Queue = Queue()
        for _ in range(2 * workers):
            self.slots.put(None)

    def load(self, sources: list[ByteSource], fingerprint: str, device, kv_format: str | None = None
             ) -> list[KVChunk | KVChunkError]:
        """Each source's chunk on `device`, its layers still arriving (KVChunk.arrival), or the error that makes it
        unusable (unreadable, truncated, of another format, model or KV format, a corrupt metadata)."""
        device = torch.device(device)
        heads = list(self.pool.map(lambda s: self._head(s, fingerprint, kv_format), sources))
        ready = torch.cuda.Event() if device.type == "cuda" else None
        results, tasks = [], []  # tasks: (the first layer a block holds, plan, block)
        for source, head in zip(sources, heads):
            if isinstance(head, (KVChunk, KVChunkError)):  # an error, or an older file decoded whole
                results.append(head.to(device) if isinstance(head, KVChunk) else head)
                continue
            metadata, entries, base, size, block_bytes, digests = head
            buffer = torch.empty(size - base, dtype=torch.uint8, device=device)
            tensors = {name: buffer[begin - base:end - base].view(dtype).view(shape)
                       for name, (dtype, shape, begin, end) in entries.items()}
            layers = tensors["keys"].shape[0]
            spans = [(begin - base, end - begin, (end - begin) // layers) for _, _, begin, end in entries.values()]
            plan = _Plan(source, base, buffer, block_bytes, digests, spans, layers)
            chunk = chunk_of(metadata, tensors)
            chunk.arrival = plan.arrival
            results.append(chunk)
            tasks += [(held[0], plan, b) for b, (_, _, held) in enumerate(plan.blocks)]
        if ready is not None:
            ready.record()  # the buffers' memory is free for the copies' streams from here
        for _, plan, b in sorted(tasks, key=lambda t: t[0]):  # the first layers' blocks first
            self.pool.submit(self._block, plan, b, ready)
        return results

    def _head(self, source: ByteSource, fingerprint: str, kv_format: str | None):
        """(metadata, tensor entries, first byte of the tensors, size, block size, block digests) of a streamable
        file; a KVChunk for an older file (decoded whole); or the KVChunkError that refuses it."""
        name = source.name
        try:
            size = source.size()
            first = bytearray(min(size, HEADER_GUESS))
            source.read_into(0, memoryview(first))
            need = header_bytes(first)
            if need > len(first):
                first = bytearray(need)
                source.read_into(0, memoryview(first))
            metadata, entries = layout(first, size)
            stored = metadata["checksum"]
            aligned = all((begin - need) % dtype.itemsize == 0 for dtype, _, begin, _ in entries.values())
            if not stored.startswith(f"{BLOCKS_CHECKSUM}:") or not aligned:
                data = bytearray(size)
                source.read_into(0, memoryview(data))
                return decode(data, fingerprint, name=name, kv_format=kv_format)
            check_identity(metadata, {n: e[1] for n, e in entries.items()}, fingerprint, name, kv_format)
            source.will_need()  # the blocks' reads that follow find them on their way, or in memory already
            block_bytes, metadata_hex, digests = parse_blocks(stored, [end - begin for _, _, begin, end in
                                                                       entries.values()])
            chunk = chunk_of(metadata, {n: torch.empty(0) for n in entries})  # the metadata parse
            expected = metadata_digest(chunk.level, chunk.start, chunk.token_ids, chunk.fingerprint, chunk.kv_format)
            layers = {shape[0] for _, shape, _, _ in entries.values()}
            if metadata_hex != expected or len(layers) != 1 or 0 in layers or entries["keys"][1][1] != chunk.length:
                raise KVChunkError(f"{name} is corrupted: checksum mismatch")
            return metadata, entries, need, size, block_bytes, digests
        except KVChunkError as exc:
            return exc
        except OSError as exc:
            return KVChunkError(f"cannot read {name}: {exc}")
        except Exception as exc:
            return KVChunkError(f"{name} is truncated or corrupted: {exc!r}")

    def _block(self, plan: _Plan, b: int, ready) -> None:
        """Reads, verifies and copies block b of a chunk (_copy), then settles the layers it completes, or fails
        those it holds (a block of a chunk already failed is not read: the chunk is not used)."""
        if plan.failure is not None:
            plan.fail(b, plan.failure)
            return
        try:
            self._copy(plan, b, ready)
        except KVChunkError as exc:
            plan.fail(b, exc)
        except OSError as exc:
            plan.fail(b, KVChunkError(f"cannot read {plan.source.name}: {exc}"))
        except Exception as exc:
            plan.fail(b, KVChunkError(f"{plan.source.name} could not be loaded: {exc!r}"))
        else:
            plan.settle(b)

    def _copy(self, plan: _Plan, b: int, ready) -> None:
        """One read of block b, its XXH3 checked, then (on a GPU) one copy to its place in the chunk's buffer on this
        thread's stream, waited for (the slot is free again, and the block in place for any stream); on the CPU,
        read straight into the buffer."""
        at, length, _ = plan.blocks[b]
        if ready is None:
            self._read_and_check(plan, b, memoryview(plan.buffer.numpy())[at:at + length])
            return
        stream = getattr(self.local, "stream", None)
        if stream is None:
            stream = self.local.stream = torch.cuda.Stream(plan.buffer.device)
        slot = self.slots.get()
        try:
            if slot is None or slot[0].numel() < length:
                pinned = torch.empty(max(length, plan.block_bytes), dtype=torch.uint8, pin_memory=True)
                slot = (pinned, memoryview(pinned.numpy()))
            self._read_and_check(plan, b, slot[1][:length])
            with torch.cuda.stream(stream):
                stream.wait_event(ready)  # the buffer's memory is the chunk's from here
                plan.buffer[at:at + length].copy_(slot[0][:length], non_blocking=True)
            stream.synchronize()
        finally:
            self.slots.put(slot)

    @staticmethod
    def _read_and_check(plan: _Plan, b: int, view: memoryview) -> None:
        """Reads block b into `view` and checks its XXH3 (KVChunkError naming the block and its layers)."""
        at, _, held = plan.blocks[b]
        plan.source.read_into(plan.base + at, view)
        if xxhash.xxh3_64_hexdigest(view) != plan.digests[b]:
            raise KVChunkError(f"{plan.source.name} is corrupted: checksum mismatch in block {b}{_named(held)}")


def _named(layers: list[int]) -> str:
    """" (layer 3)" or " (layers 2-5)" for the run of layers a block holds."""
    return f" (layer {layers[0]})" if len(layers) == 1 else f" (layers {layers[0]}-{layers[-1]})"
