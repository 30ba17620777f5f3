"""A stored chunk proven to be the one asked for: a file that decodes whole and checked (chunk_format) is still only
some passage's chunk; this checks that it is this passage's. Its key is derived again from its own content (the
fingerprint and token ids it carries, under its checksum) and must equal the key it was stored under; its token
ids must equal the passage's; it must be a level-1 chunk at the canonical start right after level 0."""
from cascade_rag.engine import LEVEL_DOCUMENT, KVChunk

from .chunk_store import chunk_key


def identity_problem(chunk: KVChunk, key: str, token_ids: list[int], collection: str | None = None,
                     start: int | None = None, name: str = "KV chunk") -> str | None:
    """Why `chunk`, read under `key`, is not the chunk of the passage with `token_ids` in `collection` (None when
    it is)."""
    own = chunk_key(chunk.fingerprint, chunk.token_ids, collection)
    if own != key:
        return f"{name} holds the chunk of another passage (its content's key is {own}); not used"
    if list(chunk.token_ids) != list(token_ids):
        return f"{name} holds {chunk.length} tokens that are not the passage's {len(token_ids)}; not used"
    if chunk.level != LEVEL_DOCUMENT or (start is not None and chunk.start != start):
        return f"{name} is a level-{chunk.level} chunk at position {chunk.start}, not a passage's; not used"
    return None
