"""The bytes of a stored KV chunk, apart from where they are kept: safetensors (tensors `keys` and `values`) whose
metadata holds the level, the canonical start, the token ids, the fingerprint, the format version and a checksum
of data and metadata. `decode` refuses anything else with KVChunkError: truncated, corrupted, of another
format version or another model (FingerprintMismatch)."""
import hashlib
import json
import struct
import zlib
from pathlib import Path

import torch
import xxhash
from safetensors.torch import save as save_tensors

from .file_io import read_buffer, write_atomic
from .kv_chunk import FingerprintMismatch, KVChunk, KVChunkError

FORMAT_VERSION = 1
DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def checksum(chunk: KVChunk, algorithm: str = "xxh3") -> str:
    """"xxh3:" and the 64-bit XXH3 hash of the keys, values and metadata. Files saved earlier carry "crc32:" and
    their CRC-32, or the bare SHA-256 hex digest ("sha256"); both are slower to compute and still verified, no
    longer written."""
    parts = [t.detach().contiguous().cpu().view(torch.uint8).reshape(-1).numpy() for t in (chunk.keys, chunk.values)]
    parts.append(json.dumps([chunk.level, chunk.start, chunk.token_ids, chunk.fingerprint]).encode())
    if algorithm == "crc32":
        crc = 0
        for part in parts:
            crc = zlib.crc32(part, crc)
        return f"crc32:{crc:08x}"
    digest = hashlib.sha256() if algorithm == "sha256" else xxhash.xxh3_64()
    for part in parts:
        digest.update(part)
    return digest.hexdigest() if algorithm == "sha256" else f"xxh3:{digest.hexdigest()}"


def encode(chunk: KVChunk) -> bytes:
    """The chunk's file contents."""
    keys, values = chunk.keys.contiguous().cpu(), chunk.values.contiguous().cpu()
    metadata = {
        "format_version": str(FORMAT_VERSION), "level": str(chunk.level), "start": str(chunk.start),
        "token_ids": json.dumps(chunk.token_ids), "fingerprint": chunk.fingerprint,
        "checksum": checksum(KVChunk(chunk.level, chunk.token_ids, chunk.start, keys, values, chunk.fingerprint)),
    }
    return save_tensors({"keys": keys, "values": values}, metadata=metadata)


def _tensors(data: memoryview) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors viewing `data`) of safetensors bytes; ValueError where they are not whole."""
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise ValueError(f"header of {size} bytes in {len(data)}")
    header = json.loads(bytes(data[8:8 + size]))
    metadata, base, tensors = header.pop("__metadata__", {}), 8 + size, {}
    for name in ("keys", "values"):
        entry = header[name]
        dtype, (begin, end) = DTYPES[entry["dtype"]], entry["data_offsets"]
        count = end - begin
        if begin < 0 or base + end > len(data) or count != torch.Size(entry["shape"]).numel() * dtype.itemsize:
            raise ValueError(f"tensor {name} out of bounds")
        flat = torch.frombuffer(data, dtype=dtype, count=count // dtype.itemsize, offset=base + begin) \
            if count else torch.empty(0, dtype=dtype)
        tensors[name] = flat.view(entry["shape"])
    return metadata, tensors


def decode(data: bytes | bytearray | memoryview, fingerprint: str, device="cpu", pin: bool = False,
           name: str = "KV chunk") -> KVChunk:
    """The chunk in `data`, checked, on `device`: on the CPU, in pinned memory if `pin` (for copies to a GPU),
    otherwise viewing `data` (a writable buffer; read-only bytes are copied first). `name` names it in errors."""
    view = memoryview(data)
    if view.readonly:
        view = memoryview(bytearray(view))
    try:
        metadata, tensors = _tensors(view)
        chunk = KVChunk(level=int(metadata["level"]), token_ids=json.loads(metadata["token_ids"]),
                        start=int(metadata["start"]), keys=tensors["keys"], values=tensors["values"],
                        fingerprint=metadata["fingerprint"])
        version, stored = int(metadata["format_version"]), metadata["checksum"]
    except Exception as exc:
        raise KVChunkError(f"{name} is truncated or corrupted: {exc!r}") from None
    if version != FORMAT_VERSION:
        raise FingerprintMismatch(f"{name} has format version {version}, expected {FORMAT_VERSION}")
    if checksum(chunk, stored.split(":")[0] if ":" in stored else "sha256") != stored:
        raise KVChunkError(f"{name} is corrupted: checksum mismatch")
    if chunk.fingerprint != fingerprint:
        raise FingerprintMismatch(f"{name} was made with fingerprint {chunk.fingerprint}, the running model, "
                                  f"system prompt and dtype have {fingerprint}")
    if chunk.keys.shape != chunk.values.shape or chunk.keys.shape[1] != chunk.length:
        raise KVChunkError(f"{name} has inconsistent shapes {tuple(chunk.keys.shape)}")
    if torch.device(device).type != "cpu":
        return chunk.to(device)
    if pin:
        return KVChunk(chunk.level, chunk.token_ids, chunk.start, chunk.keys.pin_memory(), chunk.values.pin_memory(),
                       chunk.fingerprint)
    return chunk


def save_file(chunk: KVChunk, path: Path | str) -> None:
    """The chunk in a file of its own, written atomically."""
    write_atomic(Path(path), encode(chunk))


def load_file(path: Path | str, fingerprint: str, device="cpu", pin: bool = False) -> KVChunk:
    """The chunk saved at `path` by save_file, checked (see decode)."""
    path = Path(path)
    try:
        data = read_buffer(path)
    except OSError as exc:
        raise KVChunkError(f"cannot read KV chunk {path}: {exc}") from None
    return decode(data, fingerprint, device, pin, f"KV chunk {path}")
