"""KVChunk: the keys and values of one token sequence at its canonical positions, and its safetensors file."""
import hashlib
import json
import os
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import xxhash
from safetensors import safe_open
from safetensors.torch import save as save_tensors

FORMAT_VERSION = 1
LEVEL_SYSTEM, LEVEL_DOCUMENT, LEVEL_QUERY = 0, 1, 2


def write_atomic(path: Path, data: bytes) -> None:
    """path holds data or what it held before, never part of it: a temporary file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class KVChunkError(ValueError):
    """A stored chunk that must not be used: unreadable, truncated, corrupted or from another model."""


class FingerprintMismatch(KVChunkError):
    pass


@dataclass
class KVChunk:
    """The keys and values [layers, n, kv_heads, head_dim] of one token sequence at its canonical positions (from
    `start`), with its level, its tokens and the fingerprint of the model, dtype and system prompt that made it.
    Owns its tensors (on any device) and its safetensors file format (save, load)."""
    level: int
    token_ids: list[int]
    start: int             # canonical position of the first token
    keys: torch.Tensor     # [layers, n, kv_heads, head_dim], rotated at positions start..start+n-1
    values: torch.Tensor
    fingerprint: str

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def to(self, device, non_blocking: bool = False) -> "KVChunk":
        return replace(self, keys=self.keys.to(device, non_blocking=non_blocking),
                       values=self.values.to(device, non_blocking=non_blocking))

    def checksum(self, algorithm: str = "xxh3") -> str:
        """"xxh3:" and the 64-bit XXH3 hash of the keys, values and metadata. Files saved earlier carry
        "crc32:" and their CRC-32 or (before 2026-11-26) the bare SHA-256 hex digest ("sha256"); both are
        slower to compute and still verified, no longer written."""
        parts = [t.detach().contiguous().cpu().view(torch.uint8).reshape(-1).numpy() for t in (self.keys, self.values)]
        parts.append(json.dumps([self.level, self.start, self.token_ids, self.fingerprint]).encode())
        if algorithm == "crc32":
            crc = 0
            for part in parts:
                crc = zlib.crc32(part, crc)
            return f"crc32:{crc:08x}"
        digest = hashlib.sha256() if algorithm == "sha256" else xxhash.xxh3_64()
        for part in parts:
            digest.update(part)
        return digest.hexdigest() if algorithm == "sha256" else f"xxh3:{digest.hexdigest()}"

    def save(self, path: Path) -> None:
        """Written atomically (write_atomic); the file carries a checksum of data and metadata."""
        path = Path(path)
        cpu = replace(self, keys=self.keys.contiguous().cpu(), values=self.values.contiguous().cpu())
        metadata = {
            "format_version": str(FORMAT_VERSION), "level": str(self.level), "start": str(self.start),
            "token_ids": json.dumps(self.token_ids), "fingerprint": self.fingerprint, "checksum": cpu.checksum(),
        }
        write_atomic(path, save_tensors({"keys": cpu.keys, "values": cpu.values}, metadata=metadata))

    @classmethod
    def load(cls, path: Path, fingerprint: str, device="cpu", pin: bool = False) -> "KVChunk":
        """The chunk stored at path, checked, on `device`; on the CPU, in pinned memory if `pin` (for copies to
        a GPU)."""
        path = Path(path)
        try:  # the tensors map the file: read once by the checksum, copied once to where they go below
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata()
                keys, values = f.get_tensor("keys"), f.get_tensor("values")
            chunk = cls(level=int(metadata["level"]), token_ids=json.loads(metadata["token_ids"]),
                        start=int(metadata["start"]), keys=keys, values=values, fingerprint=metadata["fingerprint"])
            version, checksum = int(metadata["format_version"]), metadata["checksum"]
        except OSError as exc:
            raise KVChunkError(f"cannot read KV chunk {path}: {exc}") from None
        except Exception as exc:
            raise KVChunkError(f"KV chunk {path} is truncated or corrupted: {exc}") from None
        if version != FORMAT_VERSION:
            raise FingerprintMismatch(f"KV chunk {path} has format version {version}, expected {FORMAT_VERSION}")
        if chunk.checksum(checksum.split(":")[0] if ":" in checksum else "sha256") != checksum:
            raise KVChunkError(f"KV chunk {path} is corrupted: checksum mismatch")
        if chunk.fingerprint != fingerprint:
            raise FingerprintMismatch(
                f"KV chunk {path} was made with fingerprint {chunk.fingerprint}, the running model, system prompt "
                f"and dtype have {fingerprint}"
            )
        if chunk.keys.shape != chunk.values.shape or chunk.keys.shape[1] != chunk.length:
            raise KVChunkError(f"KV chunk {path} has inconsistent shapes {tuple(chunk.keys.shape)}")
        if torch.device(device).type == "cpu":  # own memory, not the file's mapping
            if pin:
                return replace(chunk, keys=keys.pin_memory(), values=values.pin_memory())
            return replace(chunk, keys=keys.clone(), values=values.clone())
        return chunk.to(device)
