"""`python -m cascade_rag.benchmarks.load_stages`: where the streamed disk tier's time goes. Chunk files of a model
shape in a KV format are written to a folder (the page cache holds them) in blocks of --block-bytes (their
checksum's, which the streamer takes as its tasks), then cut into runs of as many bytes, and each stage of the
streamed load (engine.chunk_stream) runs over every run by 1, 2, ... threads: `read` (preadv from the file into the
thread's pinned buffer), `hash` (XXH3 of a pinned buffer already read), `copy` (the pinned buffer to the device on
the thread's own stream, then waiting for it), and all three in turn as the streamer does them (`read+hash+copy`);
beside them `streamer`, ChunkStreamer's own load of the same files to the device, every layer settled. Each figure
is the chunks' bytes over the median wall time, in GB/s: the stage that stops growing with the threads is the one
that bounds the tier.

    python -m cascade_rag.benchmarks.load_stages --shape qwen3-0.6b --tokens 1010 --chunks 4 --format int4 \\
        --threads 1,2,4,8 --json stages.json"""
import argparse
import json
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import xxhash

from cascade_rag.engine import LEVEL_DOCUMENT, KV_FORMATS, KVChunk
from cascade_rag.engine.chunk_format import BLOCK_BYTES, save_file
from cascade_rag.engine.chunk_stream import ChunkStreamer
from cascade_rag.engine.file_io import FileSource

from .bench import timed
from .checkpoints import SHAPES

STAGES = ("read", "hash", "copy", "read+hash+copy", "streamer")


def write_chunks(folder: Path, shape: str, tokens: int, count: int, kv_format: str, block_bytes: int) -> list[Path]:
    """`count` chunk files of `tokens` random tokens each, in `kv_format`, of a SHAPES model shape (bf16 K/V), checked
    by blocks of `block_bytes`."""
    c = SHAPES[shape]
    size = (c["num_hidden_layers"], tokens, c["num_key_value_heads"], c["head_dim"])
    paths = []
    for i in range(count):
        keys, values = (torch.randn(size, dtype=torch.bfloat16) for _ in range(2))
        chunk = KVChunk(LEVEL_DOCUMENT, list(range(i, i + tokens)), 24, keys, values, "bench").packed(kv_format)
        paths.append(folder / f"{kv_format}-{i}.kv")
        save_file(chunk, paths[-1], block_bytes)
    return paths


class Worker:
    """A thread's pinned buffer, device buffer and stream (made on its first task)."""

    def __init__(self, task_bytes: int, device: torch.device):
        cuda = device.type == "cuda"
        self.buffer = torch.empty(task_bytes, dtype=torch.uint8, pin_memory=cuda)
        self.view = memoryview(self.buffer.numpy())
        self.target = torch.empty(task_bytes, dtype=torch.uint8, device=device)
        self.stream = torch.cuda.Stream(device) if cuda else None

    def read(self, source: FileSource, offset: int, length: int) -> None:
        source.read_into(offset, self.view[:length])

    def hash(self, length: int) -> str:
        return xxhash.xxh3_64(self.view[:length]).hexdigest()

    def copy(self, length: int) -> None:
        if self.stream is None:
            self.target[:length].copy_(self.buffer[:length])
            return
        with torch.cuda.stream(self.stream):
            self.target[:length].copy_(self.buffer[:length], non_blocking=True)
        self.stream.synchronize()


def stage_runner(stage: str, tasks: list[tuple[int, int, int]], pool: ThreadPoolExecutor, task_bytes: int,
                 device: torch.device):
    """A function that runs `stage` over every task (source, offset, length) on the pool's threads, each with a
    Worker of its own."""
    local = threading.local()

    def one(task):
        worker = getattr(local, "worker", None)
        if worker is None:
            worker = local.worker = Worker(task_bytes, device)
        source, offset, length = task
        if "read" in stage:
            worker.read(source, offset, length)
        if "hash" in stage:
            worker.hash(length)
        if "copy" in stage:
            worker.copy(length)

    return lambda: list(pool.map(one, tasks))


def measure(paths: list[Path], kv_format: str, threads: list[int], task_bytes: int, device: torch.device,
            repeat: int) -> list[dict]:
    """A row per thread count: each stage's GB/s (the files' bytes over the median wall time of a pass)."""
    sources = [FileSource(p) for p in paths]  # each opened here (size()), once for every pass and thread
    sizes = [source.size() for source in sources]
    total = sum(sizes)
    tasks = [(source, offset, min(task_bytes, size - offset))
             for source, size in zip(sources, sizes) for offset in range(0, size, task_bytes)]
    rows = []
    for n in threads:
        row = {"threads": n, "bytes": total, "gb_per_s": {}}
        with ThreadPoolExecutor(n) as pool:
            for stage in STAGES[:-1]:
                run = stage_runner(stage, tasks, pool, task_bytes, device)
                row["gb_per_s"][stage] = total / timed(run, str(device), repeat) / 1e9
        streamer = ChunkStreamer(n)

        def load():
            for chunk in streamer.load([FileSource(p) for p in paths], "bench", device, kv_format):
                chunk.arrival.wait_all()
        row["gb_per_s"]["streamer"] = total / timed(load, str(device), repeat) / 1e9
        streamer.pool.shutdown()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cascade_rag.benchmarks.load_stages",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    p.add_argument("--tokens", type=int, default=1010, help="tokens a chunk (default %(default)s)")
    p.add_argument("--chunks", type=int, default=4, help="chunk files (default %(default)s)")
    p.add_argument("--format", choices=KV_FORMATS, default="int4")
    p.add_argument("--threads", default="1,2,4,8", help="thread counts, comma-separated (default %(default)s)")
    p.add_argument("--block-bytes", type=int, default=BLOCK_BYTES,
                   help="the files' checksum blocks: a task of the streamer and of the stages (default %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    if args.tokens < 1 or args.chunks < 1 or min(threads) < 1 or args.block_bytes < 1:
        p.error("--tokens, --chunks, --threads and --block-bytes must be at least 1")
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_chunks(Path(tmp), args.shape, args.tokens, args.chunks, args.format, args.block_bytes)
        rows = measure(paths, args.format, threads, args.block_bytes, device, args.repeat)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{args.shape}, {args.chunks} chunks of {args.tokens} tokens in {args.format} "
          f"({rows[0]['bytes'] / 1e6:.0f} MB), {name}, GB/s:\n")
    print("| threads | " + " | ".join(STAGES) + " |")
    print("|---|" + "---|" * len(STAGES))
    for r in rows:
        print(f"| {r['threads']} | " + " | ".join(f"{r['gb_per_s'][s]:.2f}" for s in STAGES) + " |")
    if args.json:
        args.json.write_text(json.dumps({"shape": args.shape, "format": args.format, "tokens": args.tokens,
                                         "chunks": args.chunks, "block_bytes": args.block_bytes, "device": name,
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
