"""KV chunks: exact composition, exact position shifts, persistence, and the LRU tiers."""
import json
import random
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as save_tensors

from cascade_rag.engine import (LEVEL_DOCUMENT, LEVEL_SYSTEM, ChunkCache, FingerprintMismatch, KVChunk, KVChunkError, LLMEngine,
                    SamplingParams, TieredChunkCache)
from cascade_rag.engine.chunk_format import checksum, load_file, save_file
from cascade_rag.kernels.chunk_attention import chunk_attention
from cascade_rag.kernels.rope import rotate

SYSTEM, DOCS, QUESTION = [1, 5, 9, 14], [[20 + i for i in range(n)] for n in (7, 1, 12)], [300, 301, 302, 303, 304]


def sequential_chunks(engine, system, docs, fp="fp"):
    chunks = [engine.prefill_chunk(system, [], LEVEL_SYSTEM, fp)]
    for doc in docs:
        chunks.append(engine.prefill_chunk(doc, list(chunks), LEVEL_DOCUMENT, fp))
    return chunks


def assert_composition_exact(engine, system, docs, question):
    chunks = sequential_chunks(engine, system, docs)
    cached = engine.logits(chunks, question, mode="cached")
    full = engine.logits(chunks, question, mode="full")
    assert (cached - full).abs().max().item() <= 1e-4
    params = SamplingParams(max_new_tokens=32)
    a = engine.generate(question, params, chunks, mode="cached").token_ids
    b = engine.generate(question, params, chunks, mode="full").token_ids
    assert a == b and len(a) >= 1


def test_sequential_composition_is_exact_on_tiny_models(tiny_checkpoint):
    assert_composition_exact(LLMEngine(tiny_checkpoint, device="cpu", dtype="fp32"), SYSTEM, DOCS, QUESTION)


def test_cached_sets_documents_side_by_side_at_a_temperature(tiny_checkpoint):
    """Documents prefilled after the same level 0 keep their canonical positions, so their order does not matter,
    and the new tokens' scores over them are divided by the temperature: the same as keys divided by it."""
    engine = LLMEngine(tiny_checkpoint, device="cpu", dtype="fp32", document_temperature=0.8)
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    docs = [engine.prefill_chunk(doc, [level0], LEVEL_DOCUMENT, "fp") for doc in DOCS]
    logits = engine.logits([level0] + docs, QUESTION, mode="cached")
    assert (engine.logits([level0] + docs[::-1], QUESTION, mode="cached") - logits).abs().max() <= 1e-4
    neutral = LLMEngine(tiny_checkpoint, device="cpu", dtype="fp32", document_temperature=1.0)
    assert (neutral.logits([level0] + docs, QUESTION, mode="cached") - logits).abs().max() > 1e-2
    cooled = [replace(doc, keys=doc.keys / 0.8) for doc in docs]
    assert (neutral.logits([level0] + cooled, QUESTION, mode="cached") - logits).abs().max() <= 1e-4
    generation = engine.generate(QUESTION, SamplingParams(max_new_tokens=1), [level0] + docs)
    assert generation.prompt_tokens == len(SYSTEM) + sum(map(len, DOCS)) + len(QUESTION)
    with pytest.raises(ValueError, match="temperature"):
        LLMEngine(tiny_checkpoint, device="cpu", dtype="fp32", document_temperature=0)


@pytest.mark.slow
def test_sequential_composition_is_exact_on_embedded_model(embedded_path):
    engine = LLMEngine(embedded_path, device="cpu", dtype="fp32")
    tok = engine.tokenizer
    text = tok.chat([{"role": "system", "content": "SPLIT"}, {"role": "user", "content": "Q"}])
    system = tok.encode(text.split("SPLIT")[0] + "Answer from the documents.\n")
    docs = [tok.encode(d) for d in ("The lighthouse of Varn was built in 1841 by Ada Ilse.\n",
                                    "Varn is a small island town famous for its herring.\n")]
    question = tok.encode("<|im_end|>\n<|im_start|>user\nWho built the lighthouse of Varn?<|im_end|>\n"
                          "<|im_start|>assistant\n")
    chunks = sequential_chunks(engine, system, docs)
    assert (engine.logits(chunks, question, "cached") - engine.logits(chunks, question, "full")).abs().max() <= 1e-4
    params = SamplingParams(max_new_tokens=32)
    cached = engine.generate(question, params, chunks, mode="cached")
    assert cached.token_ids == engine.generate(question, params, chunks, mode="full").token_ids


def test_shifted_chunk_equals_chunk_prefilled_at_the_new_position(tiny_checkpoint):
    engine = LLMEngine(tiny_checkpoint, device="cpu", dtype="fp32")
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    a = engine.prefill_chunk(DOCS[2], [level0], LEVEL_DOCUMENT, "fp")
    b_start = a.start + 37
    b = engine.prefill_chunk(DOCS[2], [level0], LEVEL_DOCUMENT, "fp", start=b_start)
    assert (a.start, b.start) == (len(SYSTEM), b_start)
    assert (a.values - b.values).abs().max() <= 1e-4  # values do not depend on absolute position
    c = engine.config
    torch.manual_seed(0)
    q = torch.randn(3, c.num_heads, c.head_dim)
    positions = torch.arange(b_start + a.length, b_start + a.length + 3)
    rotary = engine.model.rotary
    for layer in range(c.num_layers):
        shifted = chunk_attention(rotate(q, *rotary.at(positions - (b_start - a.start)))[None], [a.keys[layer]],
                                  [a.values[layer]], c.head_dim ** -0.5)
        native = chunk_attention(rotate(q, *rotary.at(positions))[None], [b.keys[layer]], [b.values[layer]], c.head_dim ** -0.5)
        assert (shifted - native).abs().max().item() <= 1e-4


def test_composition_in_any_order_counts_every_prompt_token(tiny_checkpoint):
    engine = LLMEngine(tiny_checkpoint, device="cpu", dtype="fp32")
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    docs = [engine.prefill_chunk(d, [level0], LEVEL_DOCUMENT, "fp") for d in DOCS]
    assert {d.start for d in docs} == {len(SYSTEM)}
    generation = engine.generate(QUESTION, SamplingParams(max_new_tokens=4), [level0, docs[2], docs[0]])
    assert generation.prompt_tokens == len(SYSTEM) + len(DOCS[2]) + len(DOCS[0]) + len(QUESTION)
    # single-document composition is exact: the document saw exactly level 0, as in the full prefill
    cached = engine.logits([level0, docs[1]], QUESTION, "cached")
    assert (cached - engine.logits([level0, docs[1]], QUESTION, "full")).abs().max() <= 1e-4



def test_blend_at_ratio_one_is_a_full_prefill_and_keeps_the_stored_chunks(tiny_checkpoint):
    engine = LLMEngine(tiny_checkpoint, device="cpu", dtype="fp32")
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    docs = [engine.prefill_chunk(d, [level0], LEVEL_DOCUMENT, "fp") for d in DOCS]
    chunks = [level0, docs[2], docs[0], docs[1]]
    before = [(c.keys.clone(), c.values.clone()) for c in chunks]
    blended = engine.blend(chunks, ratio=1.0)
    assert [c.start for c in blended] == [0, len(SYSTEM)] and blended[1].token_ids == DOCS[2] + DOCS[0] + DOCS[1]
    full = engine.logits(chunks, QUESTION, "full")
    assert (engine.logits(blended, QUESTION, "cached") - full).abs().max() <= 1e-4
    assert (engine.logits(chunks, QUESTION, "blend") - engine.logits(chunks, QUESTION, "cached")).abs().max() > 1e-3
    params = SamplingParams(max_new_tokens=32)
    assert (engine.generate(QUESTION, params, blended).token_ids
            == engine.generate(QUESTION, params, chunks, mode="full").token_ids)
    assert all(torch.equal(c.keys, k) and torch.equal(c.values, v) for c, (k, v) in zip(chunks, before))


def test_blend_recomputes_only_the_chosen_share(tiny_checkpoint):
    engine = LLMEngine(tiny_checkpoint, device="cpu", dtype="fp32")
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    docs = [engine.prefill_chunk(d, [level0], LEVEL_DOCUMENT, "fp") for d in DOCS]
    n = sum(len(d) for d in DOCS)
    stored_values = torch.cat([d.values for d in docs], dim=1)  # values carry no position: comparable as stored
    for ratio in (0.0, 0.3):
        blended = engine.blend([level0, *docs], ratio)[1]
        changed = ((blended.values[2:] - stored_values[2:]).abs().amax(dim=(0, 2, 3)) > 1e-5).sum().item()
        assert changed <= -(-ratio * n // 1)  # at most ceil(ratio * n) tokens change after the second layer
        # the first document saw exactly level 0 when it was stored: blending leaves it as it was, keys included
        first = len(DOCS[0])
        assert (blended.values[:, :first] - docs[0].values).abs().max() <= 1e-5
        assert (blended.keys[:, :first] - docs[0].keys).abs().max() <= 1e-5
    # a document placed later, nothing recomputed after the second layer: its stored keys turned to the new
    # positions; the first layer's KV does not depend on the context, the second's does
    later = engine.blend([level0, docs[1], docs[2]], 0.0)[1]
    shifted = engine.prefill_chunk(DOCS[2], [level0], LEVEL_DOCUMENT, "fp", start=len(SYSTEM) + len(DOCS[1]))
    assert (later.keys[[0, *range(2, engine.config.num_layers)], len(DOCS[1]):]
            - shifted.keys[[0, *range(2, engine.config.num_layers)]]).abs().max() <= 1e-5
    assert (later.values[1, len(DOCS[1]):] - shifted.values[1]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="level-0 chunk first"):
        engine.blend(docs)
    with pytest.raises(ValueError, match="within \\[0, 1\\]"):
        engine.blend([level0, *docs], 1.5)


@pytest.fixture
def chunk(tiny_checkpoint):
    engine = LLMEngine(tiny_checkpoint, device="cpu", dtype="bf16")
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp-a")
    return engine.prefill_chunk(DOCS[0], [level0], LEVEL_DOCUMENT, "fp-a")


def test_persistence_round_trip_is_bit_identical(chunk, tmp_path):
    path = tmp_path / "c.safetensors"
    save_file(chunk, path)
    loaded = load_file(path, "fp-a")
    assert torch.equal(loaded.keys.view(torch.int16), chunk.keys.view(torch.int16))
    assert torch.equal(loaded.values.view(torch.int16), chunk.values.view(torch.int16))
    assert (loaded.level, loaded.start, loaded.token_ids, loaded.fingerprint) == (
        chunk.level, chunk.start, chunk.token_ids, chunk.fingerprint)
    assert loaded.keys.dtype == torch.bfloat16
    loaded.keys.add_(1)  # its own memory: the file, mapped while loading, stays as saved
    assert torch.equal(load_file(path, "fp-a").keys.view(torch.int16), chunk.keys.view(torch.int16))


def test_bad_chunk_files_are_refused(chunk, tmp_path):
    path = tmp_path / "c.safetensors"
    save_file(chunk, path)
    with pytest.raises(FingerprintMismatch, match="fingerprint"):
        load_file(path, "fp-b")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(KVChunkError, match="truncated or corrupted"):
        load_file(path, "fp-a")
    for offset in (len(data) - 5, len(data) // 2, 20):
        flipped = bytearray(data)
        flipped[offset] ^= 0x10
        path.write_bytes(bytes(flipped))
        with pytest.raises(KVChunkError):
            load_file(path, "fp-a")
    with pytest.raises(KVChunkError, match="cannot read"):
        load_file(tmp_path / "absent.safetensors", "fp-a")


@pytest.mark.parametrize("algorithm", ["sha256", "crc32", "xxh3", "xxh3-layers"])
def test_files_with_earlier_checksums_still_load(chunk, tmp_path, algorithm):
    path = tmp_path / "c.safetensors"
    metadata = {"format_version": "1", "level": str(chunk.level), "start": str(chunk.start),
                "token_ids": json.dumps(chunk.token_ids), "fingerprint": chunk.fingerprint,
                "checksum": checksum(chunk, algorithm)}
    data = save_tensors({"keys": chunk.keys, "values": chunk.values}, metadata=metadata)
    path.write_bytes(data)
    assert torch.equal(load_file(path, "fp-a").values.view(torch.int16), chunk.values.view(torch.int16))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(flipped))
    with pytest.raises(KVChunkError, match="checksum"):
        load_file(path, "fp-a")
    save_file(chunk, path)
    with safe_open(path, framework="pt") as f:  # one digest for the metadata, one a block of 4 MiB of each tensor
        assert f.metadata()["checksum"].startswith("xxh3-blocks:4194304:")
        assert len(f.metadata()["checksum"].split(",")) == 3  # (here the keys and the values in one block each)


def test_every_block_of_a_file_is_checked(chunk, tmp_path):
    """A file saved in blocks of 64 bytes of each tensor: a flipped bit in any block, and a file cut short or grown
    are refused."""
    path = tmp_path / "c.safetensors"
    save_file(chunk, path, block_bytes=64)
    data = path.read_bytes()
    with safe_open(path, framework="pt") as f:
        stored = f.metadata()["checksum"]
    base = 8 + int.from_bytes(data[:8], "little")
    assert len(stored.split(",")) == 1 + 2 * -(-chunk.keys.nbytes // 64)  # keys and values
    assert torch.equal(load_file(path, "fp-a").keys.view(torch.int16), chunk.keys.view(torch.int16))
    for offset in range(base, len(data), 64):
        flipped = bytearray(data)
        flipped[offset] ^= 0x01
        path.write_bytes(bytes(flipped))
        with pytest.raises(KVChunkError, match="checksum mismatch"):
            load_file(path, "fp-a")
    for broken in (data[:-1], data + b"\0"):
        path.write_bytes(broken)
        with pytest.raises(KVChunkError, match="truncated or corrupted"):
            load_file(path, "fp-a")


def fake_chunk(n_tokens: int) -> KVChunk:
    t = torch.zeros(2, n_tokens, 1, 4)
    return KVChunk(LEVEL_DOCUMENT, list(range(n_tokens)), 0, t, t.clone(), "fp")


def test_lru_never_exceeds_budget_and_evicts_least_recent():
    rng = random.Random(0)
    cache = ChunkCache(budget_bytes=4000)
    for step in range(500):
        key = f"k{rng.randrange(30)}"
        if rng.random() < 0.5:
            cache.get(key)
        else:
            cache.put(key, fake_chunk(rng.randrange(1, 40)))
        assert cache.used_bytes <= cache.budget_bytes
        assert cache.used_bytes == sum(c.nbytes for c in cache._chunks.values())
    assert cache.stats.evictions > 0 and cache.stats.hits > 0 and cache.stats.misses > 0
    small = ChunkCache(budget_bytes=3 * fake_chunk(10).nbytes)
    for key in "abc":
        small.put(key, fake_chunk(10))
    small.get("a")
    small.put("d", fake_chunk(10))
    assert "b" not in small and all(k in small for k in "acd")
    assert not small.put("huge", fake_chunk(1000)) and "huge" not in small


def test_tiered_cache_reports_tiers():
    tiers = TieredChunkCache("cpu", device_bytes=10 * fake_chunk(10).nbytes)
    assert tiers.lookup("x") == (None, None) and not tiers.pins
    stored = fake_chunk(10)
    admitted = tiers.admit("x", stored)  # on the CPU device: kept as it came, no copy
    assert admitted.keys.data_ptr() == stored.keys.data_ptr()
    chunk, tier = tiers.lookup("x")
    assert tier == "cpu" and chunk is admitted
    assert set(tiers.tiers()) == {"cpu"} and tiers.device_tier.stats.misses == 1
