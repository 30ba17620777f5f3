"""KVChunk: the keys and values of one token sequence at its canonical positions (its bytes: chunk_format), in the
model's dtype or packed in a compressed KV format (kernels.kv_quant)."""
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from cascade_rag.kernels.kv_quant import PACKED_FORMATS, GROUP, PackedKV, code_bytes, params_per_group, quantize

LEVEL_SYSTEM, LEVEL_DOCUMENT, LEVEL_QUERY = 0, 1, 2
# how stored chunks hold their keys and values: "dtype" in the model's dtype (bf16 on a GPU), or packed
KV_FORMATS = ("dtype",) + PACKED_FORMATS


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
    keys: torch.Tensor | PackedKV    # [layers, n, kv_heads, head_dim], rotated at positions start..start+n-1
    values: torch.Tensor | PackedKV
    fingerprint: str
    # the layers still arriving from storage (engine.chunk_stream.LayerArrival), None when all are there
    arrival: Any = field(default=None, compare=False, repr=False)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    def wait_arrived(self) -> None:
        """Waits until every layer streaming in (arrival) is there; KVChunkError where one failed its check."""
        if self.arrival is not None:
            self.arrival.wait_all()

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    @property
    def device(self) -> torch.device:
        return self.keys.device

    @property
    def kv_format(self) -> str:
        """"dtype" (the model's) or the packed format of its keys and values."""
        return self.keys.format if isinstance(self.keys, PackedKV) else "dtype"

    def to(self, device, non_blocking: bool = False) -> "KVChunk":
        return replace(self, keys=self.keys.to(device, non_blocking=non_blocking),
                       values=self.values.to(device, non_blocking=non_blocking))

    def packed(self, kv_format: str) -> "KVChunk":
        """The chunk in `kv_format` (one of KV_FORMATS), quantised on its device; as it is when already so."""
        check_kv_format(kv_format)
        if kv_format == self.kv_format:
            return self
        if self.kv_format != "dtype":
            raise ValueError(f"a chunk in {self.kv_format} cannot be converted to {kv_format}")
        return replace(self, keys=quantize(self.keys, kv_format, keys=True),
                       values=quantize(self.values, kv_format, keys=False))


def check_kv_format(kv_format: str) -> str:
    if kv_format not in KV_FORMATS:
        raise ValueError(f"unknown KV format {kv_format!r}; choose one of {', '.join(KV_FORMATS)}")
    return kv_format


def kv_bytes_per_token(kv_format: str, layers: int, kv_heads: int, head_dim: int, element_size: int) -> float:
    """Stored bytes of a token's keys and values: in the model's dtype (element_size bytes), or packed (codes and
    float16 parameters, the keys' shared by GROUP tokens)."""
    if check_kv_format(kv_format) == "dtype":
        return layers * 2 * kv_heads * head_dim * element_size
    key_params, value_params = (params_per_group(kv_format, keys) * 2 for keys in (True, False))
    per_head = 2 * code_bytes(kv_format, head_dim) + key_params * head_dim / GROUP + value_params
    return layers * kv_heads * per_head
