"""KVChunk: the keys and values of one token sequence at its canonical positions (its bytes: chunk_format)."""
from dataclasses import dataclass, replace

import torch

LEVEL_SYSTEM, LEVEL_DOCUMENT, LEVEL_QUERY = 0, 1, 2


class KVChunkError(ValueError):
    """A stored chunk that must not be used: unreadable, truncated, corrupted or from another model."""


class FingerprintMismatch(KVChunkError):
    pass


@dataclass
class KVChunk:
    """The keys and values [layers, n, kv_heads, head_dim] of one token sequence at its canonical positions (from
    `start`), with its level, its tokens and the fingerprint of the model, dtype and system prompt that made it.
    Owns its tensors (on any device); its bytes are engine/chunk_format.py's (encode, decode)."""
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
