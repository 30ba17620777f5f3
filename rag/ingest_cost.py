"""What an ingestion will cost, known before it starts: documents, passages, tokens, the bytes of its KV chunks and
rows, and (once its first slice is timed) the time; sizes such as 500M or 1.5GiB; the refusal beyond the free disk
space or a limit, before anything is written."""
import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .document_store import StoreError

# a chunk file beyond its keys and values and the JSON of its token ids (counted exactly): the safetensors header's
# length, the tensors' dtype, shape and offsets, the format version, level, start, fingerprint, KV format and
# checksum (17 bytes a 4 MiB block of the tensors)
CHUNK_HEADER_BYTES = 400
# a passage's row beyond its text, token ids and vector: SQLite's own overhead; rows are counted twice (the WAL holds
# each once more until a checkpoint), plus one vector more for the saved vector index
ROW_OVERHEAD_BYTES = 64
ROW_COPIES = 2

_UNITS = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgtp", 1):
    _UNITS.update({_letter: 1024 ** _power, f"{_letter}ib": 1024 ** _power, f"{_letter}b": 1000 ** _power})
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)", re.IGNORECASE)


class IngestTooLarge(StoreError):
    """An ingestion refused before it wrote anything: its estimated bytes exceed the free space of the data
    directory's filesystem or the caller's limit (max_disk_bytes, `--max-disk`)."""


def parse_size(text: str) -> int:
    """Bytes of a size such as 2048, 500M, 2G, 1.5GiB or 300MB: K, M, G, T, P and KiB... are powers of 1024, KB, MB...
    powers of 1000."""
    match = _SIZE.fullmatch(str(text).strip())
    unit = match and _UNITS.get(match.group(2).lower())
    if not unit:
        raise ValueError(f"{text!r} is not a size; use bytes or a number with a unit, e.g. 500M, 2G or 1.5GiB")
    return int(float(match.group(1)) * unit)


def format_size(n: float) -> str:
    """134.2 MiB, 55.1 GiB, 812 B."""
    if n < 1024:
        return f"{n:,.0f} B"
    exponent = min(int(math.log(n, 1024)), 5)
    return f"{n / 1024 ** exponent:,.1f} {'KMGTP'[exponent - 1]}iB"


def format_duration(seconds: float) -> str:
    """~40 s, ~6 min, ~4.1 h: an estimate, rounded."""
    if seconds < 90:
        return f"~{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


def chunk_file_bytes(token_ids: list[int], kv_bytes_per_token: int) -> int:
    """The size of the chunk file of a passage: its keys and values, its token ids' JSON and the header."""
    return len(token_ids) * kv_bytes_per_token + len(json.dumps(token_ids)) + CHUNK_HEADER_BYTES


@dataclass
class IngestEstimate:
    documents: int          # new or changed documents (unchanged ones cost nothing)
    passages: int
    tokens: int             # all their passages' tokens: each passage is embedded
    new_chunks: int         # KV chunks to prefill and write: the others are on disk already or repeat a passage
    new_tokens: int
    chunk_bytes: int        # of the new chunk files
    row_bytes: int          # of the passages' rows and vectors in the store and index
    seconds: float | None = None   # set once the first slice is timed (only with progress shown)

    @property
    def disk_bytes(self) -> int:
        return self.chunk_bytes + self.row_bytes

    @classmethod
    def of(cls, documents: list[list[tuple[str, list[int]]]], new: list[list[int]], kv_bytes_per_token: int,
           vector_dim: int) -> "IngestEstimate":
        """From each document's passages (text, token ids) and the token ids of the chunks to write."""
        passages = [p for document in documents for p in document]
        rows = sum(ROW_COPIES * (len(text.encode()) + len(json.dumps(ids)) + 4 * vector_dim + ROW_OVERHEAD_BYTES)
                   + 4 * vector_dim for text, ids in passages)
        return cls(documents=len(documents), passages=len(passages), tokens=sum(len(ids) for _, ids in passages),
                   new_chunks=len(new), new_tokens=sum(map(len, new)),
                   chunk_bytes=sum(chunk_file_bytes(ids, kv_bytes_per_token) for ids in new), row_bytes=rows)

    def time(self, embed_s_per_token: float, prefill_s_per_token: float) -> float:
        """Seconds at these rates: every token embedded, the new chunks' tokens prefilled."""
        self.seconds = embed_s_per_token * self.tokens + prefill_s_per_token * self.new_tokens
        return self.seconds

    def line(self) -> str:
        """ingesting 3 documents: 12 passages, 3,071 tokens, ~134.9 MiB of KV chunks, ~40 s (estimated from the
        first batch)"""
        chunks = f"~{format_size(self.chunk_bytes)} of KV chunks"
        if self.new_chunks < self.passages:  # the others repeat a passage before them or are on disk already
            chunks = (f"{chunks} ({self.new_chunks:,} to compute, {self.passages - self.new_chunks:,} stored or "
                      f"repeated)" if self.new_chunks else "no new KV chunks (all stored or repeated)")
        line = f"ingesting {_documents(self.documents)}: {self.passages:,} passages, {self.tokens:,} tokens, {chunks}"
        if self.seconds is not None:
            line += f", {format_duration(self.seconds)} (estimated from the first batch)"
        return line


def _documents(n: int) -> str:
    return "1 document" if n == 1 else f"{n:,} documents"


def free_bytes(directory: Path | str) -> int:
    return shutil.disk_usage(directory).free


def check_disk(estimate: IngestEstimate, directory: Path | str | None, max_disk_bytes: int | None = None,
               reserve_bytes: int = 0) -> None:
    """Raises IngestTooLarge when the estimate's bytes exceed max_disk_bytes or the free space where `directory`
    lies, less `reserve_bytes` to keep free (directory None: a shared store, whose server refuses writes beyond its
    own maxmemory: max_disk_bytes only)."""
    need = (f"this ingestion needs about {format_size(estimate.disk_bytes)} of disk ({_documents(estimate.documents)}, "
            f"{estimate.passages:,} passages, {estimate.tokens:,} tokens; {format_size(estimate.chunk_bytes)} of KV "
            f"chunks)")
    if max_disk_bytes is not None and estimate.disk_bytes > max_disk_bytes:
        raise IngestTooLarge(f"{need}, more than the limit of {format_size(max_disk_bytes)} (--max-disk); "
                             f"nothing was ingested")
    if directory is None:
        return
    free = free_bytes(directory)
    if estimate.disk_bytes + reserve_bytes > free:
        kept = f" and {format_size(reserve_bytes)} are to stay free (--disk-reserve)" if reserve_bytes else ""
        raise IngestTooLarge(f"{need}, but only {format_size(free)} are free on the filesystem of {directory}{kept}; "
                             f"free some space, ingest fewer documents or use another --data-dir; nothing was "
                             f"ingested")
