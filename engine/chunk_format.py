"""The bytes of a stored KV chunk, apart from where they are kept: safetensors (tensors `keys` and `values`, and for a
packed KV format their codes with `key_params` and `value_params`, kernels.kv_quant) whose metadata holds the
level, the canonical start, the token ids, the fingerprint, the format version, the KV format and a checksum of
data and metadata: one XXH3 of the metadata and one of each block of each tensor's bytes (BLOCK_BYTES from the
tensor's start), so that a reader can verify each block as it arrives, with one read, one hash and one copy
(engine.chunk_stream). `decode` refuses anything else with KVChunkError: truncated, corrupted, of another format
version, another KV format or another model (FingerprintMismatch)."""
import hashlib
import json
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import torch
import xxhash
from safetensors.torch import save as save_tensors

from cascade_rag.kernels.kv_quant import PackedKV

from .file_io import read_buffer, write_atomic
from .kv_chunk import KV_FORMATS, FingerprintMismatch, KVChunk, KVChunkError

FORMAT_VERSION = 1
DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "U8": torch.uint8}
LAYERS_CHECKSUM = "xxh3-layers"
BLOCKS_CHECKSUM = "xxh3-blocks"
BLOCK_BYTES = 4 << 20  # a block of a file's tensor bytes under one digest: a streamed load's task (read, hash, copy)
PACKED_TENSORS = ("keys", "values", "key_params", "value_params")


def tensors_of(chunk: KVChunk) -> dict[str, torch.Tensor]:
    """The tensors a chunk's file holds, by name (every one [layers, ...])."""
    if chunk.kv_format == "dtype":
        return {"keys": chunk.keys, "values": chunk.values}
    return {"keys": chunk.keys.codes, "values": chunk.values.codes, "key_params": chunk.keys.params,
            "value_params": chunk.values.params}


def metadata_digest(level: int, start: int, token_ids: list[int], fingerprint: str, kv_format: str) -> str:
    return xxhash.xxh3_64_hexdigest(json.dumps([level, start, token_ids, fingerprint, kv_format]).encode())


def layer_digest(tensors: list[torch.Tensor], layer: int) -> str:
    """XXH3 of one layer of each tensor (CPU tensors), in order."""
    digest = xxhash.xxh3_64()
    for t in tensors:
        digest.update(t[layer].contiguous().view(torch.uint8).reshape(-1).numpy())
    return digest.hexdigest()


def layers_checksum(chunk: KVChunk) -> str:
    """"xxh3-layers:" and the metadata's digest, then each layer's, comma-separated."""
    tensors = [t.detach().contiguous().cpu() for t in tensors_of(chunk).values()]
    digests = [metadata_digest(chunk.level, chunk.start, chunk.token_ids, chunk.fingerprint, chunk.kv_format)]
    digests += [layer_digest(tensors, layer) for layer in range(tensors[0].shape[0])]
    return f"{LAYERS_CHECKSUM}:{','.join(digests)}"


def _bytes_of(tensors) -> list:
    """Each tensor's bytes on the CPU, as a buffer (no copy where it is a contiguous CPU tensor)."""
    return [t.detach().contiguous().cpu().view(torch.uint8).reshape(-1).numpy() for t in tensors]


def checksum(chunk: KVChunk, algorithm: str) -> str:
    """The checksum of the keys, values and metadata of files saved before the block checksum (BLOCKS_CHECKSUM:
    blocks_checksum): "xxh3-layers:" (layers_checksum), "xxh3:" and one 64-bit
    XXH3 of everything, "crc32:" and their CRC-32, or the bare SHA-256 hex digest ("sha256"); all are still
    verified, no longer written."""
    if algorithm == LAYERS_CHECKSUM:
        return layers_checksum(chunk)
    parts = _bytes_of(tensors_of(chunk).values())
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


def tensor_blocks(sizes: list[int], block_bytes: int) -> list[tuple[int, int, int]]:
    """The checksum's blocks of tensors of these byte sizes (in the file's tensor order, tensors_of's): (tensor,
    first byte in it, length), each tensor cut in blocks of `block_bytes` from its start (the last one shorter)."""
    return [(t, at, min(block_bytes, size - at)) for t, size in enumerate(sizes) for at in range(0, size, block_bytes)]


def blocks_checksum(metadata_hex: str, tensors: list, block_bytes: int) -> str:
    """"xxh3-blocks:", the block size, ":", then the metadata's digest and each block's of the tensors (buffers of
    their bytes, in tensors_of's order: tensor_blocks), comma-separated."""
    views = [memoryview(t).cast("B") for t in tensors]
    digests = [xxhash.xxh3_64_hexdigest(views[t][at:at + n])
               for t, at, n in tensor_blocks([len(v) for v in views], block_bytes)]
    return f"{BLOCKS_CHECKSUM}:{block_bytes}:{','.join([metadata_hex] + digests)}"


def parse_blocks(stored: str, sizes: list[int]) -> tuple[int, str, list[str]]:
    """(block size, the metadata's digest, each block's digest) of a blocks checksum over tensors of these byte
    sizes; ValueError where it is not one (or not of as many blocks)."""
    algorithm, block_bytes, digests = stored.split(":", 2)
    block_bytes, digests = int(block_bytes), digests.split(",")
    if algorithm != BLOCKS_CHECKSUM or block_bytes < 1 or len(digests) != 1 + len(tensor_blocks(sizes, block_bytes)):
        raise ValueError(f"a checksum of {len(digests) - 1} blocks of {block_bytes} bytes for tensors of {sizes} bytes")
    return block_bytes, digests[0], digests[1:]


def encode(chunk: KVChunk, block_bytes: int = BLOCK_BYTES) -> bytes:
    """The chunk's file contents, its tensors' bytes checked by blocks of `block_bytes`."""
    chunk = chunk.to("cpu")
    tensors = {name: t.contiguous() for name, t in tensors_of(chunk).items()}
    metadata = {
        "format_version": str(FORMAT_VERSION), "level": str(chunk.level), "start": str(chunk.start),
        "token_ids": json.dumps(chunk.token_ids), "fingerprint": chunk.fingerprint, "kv_format": chunk.kv_format,
        "checksum": blocks_checksum(
            metadata_digest(chunk.level, chunk.start, chunk.token_ids, chunk.fingerprint, chunk.kv_format),
            _bytes_of(tensors.values()), block_bytes),
    }
    return save_tensors(tensors, metadata=metadata)


def layout(data, size: int) -> tuple[dict, dict[str, tuple[torch.dtype, list[int], int, int]]]:
    """(metadata, {name: (dtype, shape, first byte, end byte)}) of a safetensors file of `size` bytes from its
    first bytes `data` (the 8-byte length and the header); ValueError where they are not whole, or where bytes follow
    the last tensor."""
    (length,) = struct.unpack("<Q", bytes(data[:8]))
    if length > size - 8:
        raise ValueError(f"header of {length} bytes in {size}")
    header = json.loads(bytes(data[8:8 + length]))
    metadata, base, entries = header.pop("__metadata__", {}), 8 + length, {}
    for name in PACKED_TENSORS if metadata.get("kv_format", "dtype") != "dtype" else ("keys", "values"):
        entry = header[name]
        dtype, (begin, end) = DTYPES[entry["dtype"]], entry["data_offsets"]
        if begin < 0 or base + end > size or end - begin != torch.Size(entry["shape"]).numel() * dtype.itemsize:
            raise ValueError(f"tensor {name} out of bounds")
        entries[name] = (dtype, entry["shape"], base + begin, base + end)
    if max(end for _, _, _, end in entries.values()) != size:
        raise ValueError(f"{size} bytes where the tensors end at byte {max(e for _, _, _, e in entries.values())}")
    return metadata, entries


def header_bytes(data) -> int:
    """How many first bytes of a chunk file `layout` needs (from its first 8)."""
    return 8 + struct.unpack("<Q", bytes(data[:8]))[0]


def _tensors(data: memoryview) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors viewing `data`) of safetensors bytes; ValueError where they are not whole."""
    metadata, entries = layout(data, len(data))
    tensors = {}
    for name, (dtype, shape, begin, end) in entries.items():
        flat = torch.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin) \
            if end > begin else torch.empty(0, dtype=dtype)
        tensors[name] = flat.view(shape)
    return metadata, tensors


def check_identity(metadata: dict, shapes: dict[str, tuple], fingerprint: str, name: str, kv_format: str | None
                   ) -> None:
    """Refuses (FingerprintMismatch, KVChunkError) a chunk of another format version, model or KV format, or fp8
    keys of the first fp8 layout (a scale per channel and group, no zero), by the shapes of its tensors."""
    version = int(metadata["format_version"])
    if version != FORMAT_VERSION:
        raise FingerprintMismatch(f"{name} has format version {version}, expected {FORMAT_VERSION}")
    if metadata["fingerprint"] != fingerprint:
        raise FingerprintMismatch(f"{name} was made with fingerprint {metadata['fingerprint']}, the running model, "
                                  f"system prompt and dtype have {fingerprint}")
    stored = metadata.get("kv_format", "dtype")
    if kv_format is not None and stored != kv_format:
        raise KVChunkError(f"{name} is in KV format {stored}, the store's is {kv_format}")
    if stored == "fp8" and tuple(shapes["key_params"])[-2] != 2:
        raise KVChunkError(f"{name} holds fp8 keys without their zeros (written before fp8 keys had one)")


def chunk_of(metadata: dict, tensors: dict[str, torch.Tensor]) -> KVChunk:
    """The KVChunk of a file's metadata and tensors (KeyError, ValueError where they do not make one)."""
    kv_format = metadata.get("kv_format", "dtype")
    if kv_format not in KV_FORMATS:
        raise ValueError(f"unknown KV format {kv_format!r}")
    keys, values = tensors["keys"], tensors["values"]
    if kv_format != "dtype":
        head_dim = tensors["key_params"].shape[-1]
        keys = PackedKV(kv_format, True, keys, tensors["key_params"], head_dim)
        values = PackedKV(kv_format, False, values, tensors["value_params"], head_dim)
    return KVChunk(level=int(metadata["level"]), token_ids=json.loads(metadata["token_ids"]),
                   start=int(metadata["start"]), keys=keys, values=values, fingerprint=metadata["fingerprint"])


def decode(data: bytes | bytearray | memoryview, fingerprint: str, device="cpu", pin: bool = False,
           name: str = "KV chunk", kv_format: str | None = None) -> KVChunk:
    """The chunk in `data`, checked, on `device`: on the CPU, in pinned memory if `pin` (for copies to a GPU),
    otherwise viewing `data` (a writable buffer; read-only bytes are copied first). `name` names it in errors;
    `kv_format`: the KV format expected (None: any)."""
    view = memoryview(data)
    if view.readonly:
        view = memoryview(bytearray(view))
    try:
        metadata, tensors = _tensors(view)
        chunk = chunk_of(metadata, tensors)
        version, stored = int(metadata["format_version"]), metadata["checksum"]
    except Exception as exc:
        raise KVChunkError(f"{name} is truncated or corrupted: {exc!r}") from None
    if version != FORMAT_VERSION:
        raise FingerprintMismatch(f"{name} has format version {version}, expected {FORMAT_VERSION}")
    if stored.startswith(f"{BLOCKS_CHECKSUM}:"):
        parts = _bytes_of(tensors_of(chunk).values())
        try:
            block_bytes, _, _ = parse_blocks(stored, [len(p) for p in parts])
        except ValueError as exc:
            raise KVChunkError(f"{name} is truncated or corrupted: {exc}") from None
        expected = metadata_digest(chunk.level, chunk.start, chunk.token_ids, chunk.fingerprint, chunk.kv_format)
        if blocks_checksum(expected, parts, block_bytes) != stored:
            raise KVChunkError(f"{name} is corrupted: checksum mismatch")
    elif checksum(chunk, stored.split(":")[0] if ":" in stored else "sha256") != stored:
        raise KVChunkError(f"{name} is corrupted: checksum mismatch")
    check_identity(metadata, {n: tuple(t.shape) for n, t in tensors.items()}, fingerprint, name, kv_format)
    if chunk.keys.shape != chunk.values.shape or chunk.keys.shape[1] != chunk.length:
        raise KVChunkError(f"{name} has inconsistent shapes {tuple(chunk.keys.shape)}")
    if torch.device(device).type != "cpu":
        return chunk.to(device)
    if pin:
        return replace(chunk, keys=chunk.keys.pin_memory(), values=chunk.values.pin_memory())
    return chunk


def save_file(chunk: KVChunk, path: Path | str, block_bytes: int = BLOCK_BYTES) -> None:
    """The chunk in a file of its own, written atomically (encode)."""
    write_atomic(Path(path), encode(chunk, block_bytes))


def load_file(path: Path | str, fingerprint: str, device="cpu", pin: bool = False) -> KVChunk:
    """The chunk saved at `path` by save_file, checked (see decode)."""
    path = Path(path)
    try:
        data = read_buffer(path)
    except OSError as exc:
        raise KVChunkError(f"cannot read KV chunk {path}: {exc}") from None
    return decode(data, fingerprint, device, pin, f"KV chunk {path}")
