"""Stored chunks loaded layer by layer, in parallel, while the question's prefill runs (CacheBlend's pipelining).

`ChunkStreamer.load` reads every chunk's header (in parallel threads), checks its identity and the metadata's
digest, allocates its tensors on the device and returns the chunks at once, each with a `LayerArrival`. Threads
then take runs of a chunk's layers (at least `task_bytes`, where the chunk has enough), in layer order: one read
of each tensor's run straight from its source into a pinned staging slot, each layer's XXH3 checked (the file's
per-layer checksum, engine.chunk_format), one copy of each tensor's run to the GPU on the thread's own CUDA stream.
The decoder waits for a layer's arrival just before its attention (AttentionContext.arrive): the first layers
compute while the later ones are still being read. A layer that fails its check raises KVChunkError from that wait
(the request fails; its caller drops the chunk and computes it again). Files written before the per-layer
checksum are read whole and decoded as before. On a CPU device, layers are read straight into the chunk's tensors."""
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from queue import Queue
from typing import Protocol

import torch
import xxhash

from .chunk_format import (LAYERS_CHECKSUM, check_identity, chunk_of, decode, header_bytes, layout,
                           metadata_digest)
from .kv_chunk import KVChunk, KVChunkError

HEADER_GUESS = 64 << 10  # first read of a file: its header fits in this for chunks of up to ~10,000 tokens
TASK_BYTES = 4 << 20  # a thread's run of layers reads at least this much (several layers of a small chunk)


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
    """The per-layer readiness of one streamed chunk: wait(layer) blocks until its bytes are verified and copied,
    and orders the current CUDA stream after the copy."""

    def __init__(self, layers: int, name: str):
        self.futures: list[Future] = [Future() for _ in range(layers)]
        self.name, self.waited = name, 0

    def wait(self, layer: int) -> None:
        while self.waited <= layer:
            event = self.futures[self.waited].result()  # raises the layer's KVChunkError
            if event is not None:
                torch.cuda.current_stream().wait_event(event)
            self.waited += 1

    def wait_all(self) -> None:
        self.wait(len(self.futures) - 1)

    @property
    def pending(self) -> bool:
        return self.waited < len(self.futures)

    @property
    def failed(self) -> bool:
        """Whether a layer failed its check (or its read)."""
        return any(f.done() and f.exception() is not None for f in self.futures)


@dataclass
class _Plan:
    """One chunk being streamed: its source, tensors on the device, byte ranges of each and their layer digests."""
    source: ByteSource
    ranges: dict  # name -> (first byte, bytes a layer)
    tensors: dict  # name -> device tensor [layers, ...]
    digests: list[str]
    arrival: LayerArrival


class ChunkStreamer:
    """Loads chunks through `workers` threads, each with its own CUDA stream, and 2 * workers pinned staging slots;
    a thread's run of layers reads at least `task_bytes` where the chunk has them."""

    def __init__(self, workers: int = 8, task_bytes: int = TASK_BYTES):
        self.task_bytes = task_bytes
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="cascade-rag-chunks")
        self.local = threading.local()
        self.slots: Queue = Queue()
        for _ in range(2 * workers):
            self.slots.put(None)  # pinned bytes, grown to the largest run on first use

    def load(self, sources: list[ByteSource], fingerprint: str, device, kv_format: str | None = None
             ) -> list[KVChunk | KVChunkError]:
        """Each source's chunk on `device`, its layers still arriving (KVChunk.arrival), or the error that makes it
        unusable (unreadable, truncated, of another format, model or KV format, a corrupt metadata)."""
        device = torch.device(device)
        heads = list(self.pool.map(lambda s: self._head(s, fingerprint, kv_format), sources))
        ready = torch.cuda.Event() if device.type == "cuda" else None
        results, plans = [], []
        for source, head in zip(sources, heads):
            if isinstance(head, (KVChunk, KVChunkError)):  # an error, or an older file decoded whole
                results.append(head.to(device) if isinstance(head, KVChunk) else head)
                continue
            metadata, entries, digests = head
            tensors = {name: torch.empty(shape, dtype=dtype, device=device)
                       for name, (dtype, shape, _, _) in entries.items()}
            layers = len(digests)
            ranges = {name: (begin, (end - begin) // layers) for name, (_, _, begin, end) in entries.items()}
            plan = _Plan(source, ranges, tensors, digests, LayerArrival(layers, source.name))
            chunk = chunk_of(metadata, tensors)
            chunk.arrival = plan.arrival
            results.append(chunk)
            plans.append(plan)
        if ready is not None:
            ready.record()  # the tensors' memory is free for the copies' streams from here
        tasks = []  # (first layer, plan, layers): in layer order, so that the first layers arrive first
        for plan in plans:
            layer_bytes = sum(step for _, step in plan.ranges.values())
            group = max(1, min(len(plan.digests), self.task_bytes // max(1, layer_bytes)))
            tasks += [(first, plan, range(first, min(first + group, len(plan.digests))))
                      for first in range(0, len(plan.digests), group)]
        for _, plan, layers in sorted(tasks, key=lambda t: t[0]):
            self.pool.submit(self._layers, plan, layers, ready)
        return results

    def _head(self, source: ByteSource, fingerprint: str, kv_format: str | None):
        """(metadata, tensor entries, layer digests) of a streamable file; a KVChunk for an older file (decoded
        whole); or the KVChunkError that refuses it."""
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
            algorithm, _, digests = metadata["checksum"].partition(":")
            if algorithm != LAYERS_CHECKSUM:
                data = bytearray(size)
                source.read_into(0, memoryview(data))
                return decode(data, fingerprint, name=name, kv_format=kv_format)
            check_identity(metadata, {n: e[1] for n, e in entries.items()}, fingerprint, name, kv_format)
            source.will_need()  # the layers' reads that follow find them on their way, or in memory already
            digests = digests.split(",")
            chunk = chunk_of(metadata, {n: torch.empty(0) for n in entries})  # the metadata parse
            expected = metadata_digest(chunk.level, chunk.start, chunk.token_ids, chunk.fingerprint, chunk.kv_format)
            layers = {shape[0] for _, shape, _, _ in entries.values()}
            if digests[0] != expected or layers != {len(digests) - 1} or entries["keys"][1][1] != chunk.length:
                raise KVChunkError(f"{name} is corrupted: checksum mismatch")
            return metadata, entries, digests[1:]
        except KVChunkError as exc:
            return exc
        except OSError as exc:
            return KVChunkError(f"cannot read {name}: {exc}")
        except Exception as exc:
            return KVChunkError(f"{name} is truncated or corrupted: {exc!r}")

    def _layers(self, plan: _Plan, layers: range, ready) -> None:
        """Reads, verifies and copies a run of one chunk's layers: one read of each tensor for all of them (a
        tensor's layers are contiguous in the file and in memory), one XXH3 check a layer, then, on a GPU, one copy
        of each tensor for the layers that passed and one CUDA event for them all. Each layer's future is settled
        with that event (None on the CPU); a layer that fails its check fails itself and the run's later ones, a
        read that fails fails the run."""
        futures = plan.arrival.futures
        try:
            passed, event, failure = self._run(plan, layers, ready)
        except Exception as exc:
            passed, event, failure = layers[:0], None, exc
        if failure is not None and not isinstance(failure, KVChunkError):
            failure = KVChunkError(f"cannot read {plan.source.name}: {failure}" if isinstance(failure, OSError) else
                                   f"{plan.source.name} could not be loaded: {failure!r}")
        for layer in passed:
            futures[layer].set_result(event)
        for layer in layers[len(passed):]:
            futures[layer].set_exception(failure)

    def _run(self, plan: _Plan, layers: range, ready):
        """(the layers that passed, the CUDA event after their copy or None, the first failure or None)."""
        first, count = layers.start, len(layers)
        if ready is None:  # CPU: straight into the chunk's tensors
            staged = {name: plan.tensors[name][first:first + count].view(torch.uint8).reshape(-1)
                      for name in plan.ranges}
            passed, failure = self._read_and_check(plan, layers, staged)
            return passed, None, failure
        stream = getattr(self.local, "stream", None)
        if stream is None:
            stream = self.local.stream = torch.cuda.Stream(plan.tensors["keys"].device)
        need = count * sum(step for _, step in plan.ranges.values())
        slot = self.slots.get()
        event = None
        try:
            if slot is None or slot.numel() < need:
                slot = torch.empty(need, dtype=torch.uint8, pin_memory=True)
            staged, offset = {}, 0
            for name, (_, step) in plan.ranges.items():
                staged[name] = slot[offset:offset + count * step]
                offset += count * step
            passed, failure = self._read_and_check(plan, layers, staged)
            if passed:
                event = torch.cuda.Event()
                with torch.cuda.stream(stream):
                    stream.wait_event(ready)
                    for name, (_, step) in plan.ranges.items():
                        target = plan.tensors[name][first:first + len(passed)].view(torch.uint8).reshape(-1)
                        target.copy_(staged[name][:len(passed) * step], non_blocking=True)
                    event.record(stream)
                event.synchronize()  # the slot is free again once its copy is done
            return passed, event, failure
        finally:
            self.slots.put(slot)

    @staticmethod
    def _read_and_check(plan: _Plan, layers: range, staged: dict) -> tuple[range, Exception | None]:
        """Reads each tensor's bytes of `layers` into staged[name] (uint8, those layers' bytes), then checks each
        layer's XXH3: (the layers before the first that fails, its KVChunkError or None)."""
        views = {name: memoryview(staged[name].numpy()) for name in plan.ranges}
        for name, (begin, step) in plan.ranges.items():
            plan.source.read_into(begin + layers.start * step, views[name])
        for n, layer in enumerate(layers):
            digest = xxhash.xxh3_64()
            for name, (_, step) in plan.ranges.items():
                digest.update(views[name][n * step:(n + 1) * step])
            if digest.hexdigest() != plan.digests[layer]:
                return layers[:n], KVChunkError(f"{plan.source.name} is corrupted: checksum mismatch in layer {layer}")
        return layers, None
