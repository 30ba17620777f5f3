"""KV formats in the engine: passage chunks prefilled packed (EngineOptions.kv_format), read by every mode as the
dequantised chunk would be, stored and loaded packed, every layer checked, another format refused."""
import pytest
import torch

from cascade_rag.engine import LEVEL_DOCUMENT, LEVEL_SYSTEM, KVChunk, KVChunkError, LLMEngine, Recompute, SamplingParams
from cascade_rag.engine.chunk_format import decode, encode, load_file, save_file, tensors_of
from cascade_rag.kernels.kv_quant import PackedKV, dequantize
from tests.helpers import make_tiny_checkpoint

SYSTEM, DOCS, QUESTION = [1, 5, 9, 14], [[20 + i for i in range(n)] for n in (7, 40, 12)], [300, 301, 302, 303]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_dir):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("qwen3"), "qwen3-gqa-untied", tokenizer_dir)


def dequantized(chunk: KVChunk) -> KVChunk:
    return KVChunk(chunk.level, chunk.token_ids, chunk.start, dequantize(chunk.keys), dequantize(chunk.values),
                   chunk.fingerprint)


@pytest.mark.parametrize("kv_format", ["fp8", "int4"])
def test_packed_passages_read_as_their_dequantised_chunks_in_every_mode(checkpoint, kv_format):
    engine = LLMEngine(checkpoint, device="cpu", dtype="fp32", kv_format=kv_format)
    plain = LLMEngine(checkpoint, device="cpu", dtype="fp32")
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    assert level0.kv_format == "dtype"  # level 0 is never stored: the model's dtype
    docs = engine.prefill_chunks(DOCS, [level0], LEVEL_DOCUMENT, "fp")
    assert all(d.kv_format == kv_format and isinstance(d.keys, PackedKV) for d in docs)
    assert docs[1].nbytes < plain.prefill_chunk(DOCS[1], [level0], LEVEL_DOCUMENT, "fp").nbytes / 2
    assert engine.kv_bytes_per_token() < plain.kv_bytes_per_token() / 2
    reference = [level0] + [dequantized(d) for d in docs]
    for mode in ("cached", "blend", "full"):
        logits = engine.logits([level0] + docs, QUESTION, mode)
        assert (logits - plain.logits(reference, QUESTION, mode)).abs().max() <= 1e-4, mode
    for recompute in (Recompute(None, 4), Recompute(0.15, 4)):  # EPIC's prefixes, alone and with CacheBlend
        logits = engine.logits([level0] + docs, QUESTION, "blend", recompute)
        assert (logits - plain.logits(reference, QUESTION, "blend", recompute)).abs().max() <= 1e-4, recompute.label
        assert engine.variant(blend=recompute).generate(QUESTION, SamplingParams(max_new_tokens=6), [level0] + docs,
                                                        "blend").token_ids == \
            plain.variant(blend=recompute).generate(QUESTION, SamplingParams(max_new_tokens=6), reference,
                                                    "blend").token_ids, recompute.label
    # near the chunks in the model's dtype (a random model: the real one's fidelity is in docs/EVALUATION.md)
    exact = plain.logits([level0] + plain.prefill_chunks(DOCS, [level0], LEVEL_DOCUMENT, "fp"), QUESTION)
    drift = (engine.logits([level0] + docs, QUESTION) - exact).norm() / exact.norm()
    assert 0 < drift < (0.3 if kv_format == "int4" else 0.15)
    params = SamplingParams(max_new_tokens=6)
    for mode in ("cached", "blend", "full"):
        assert engine.generate(QUESTION, params, [level0] + docs, mode).token_ids == \
            plain.generate(QUESTION, params, reference, mode).token_ids, mode


@pytest.mark.parametrize("kv_format", ["dtype", "fp8", "int4"])
def test_packed_chunks_are_stored_checked_layer_by_layer_and_of_one_format(checkpoint, kv_format, tmp_path):
    engine = LLMEngine(checkpoint, device="cpu", dtype="fp32", kv_format=kv_format)
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    chunk = engine.prefill_chunk(DOCS[1], [level0], LEVEL_DOCUMENT, "fp")
    path = tmp_path / "c.safetensors"
    save_file(chunk, path)
    loaded = load_file(path, "fp")
    assert loaded.kv_format == kv_format and loaded.token_ids == chunk.token_ids
    stored, made = tensors_of(loaded), tensors_of(chunk)
    assert stored.keys() == made.keys() and all(torch.equal(stored[n], made[n]) for n in made)
    assert torch.equal(engine.logits([level0, loaded], QUESTION), engine.logits([level0, chunk], QUESTION))
    data = encode(chunk)
    for offset in (len(data) - 3, len(data) // 2 + 101):  # in the last layer, in a middle one
        corrupt = bytearray(data)
        corrupt[offset] ^= 0x20
        with pytest.raises(KVChunkError, match="checksum mismatch"):
            decode(corrupt, "fp")
    other = "int4" if kv_format != "int4" else "fp8"
    with pytest.raises(KVChunkError, match=f"is in KV format {kv_format}, the store's is {other}"):
        decode(data, "fp", kv_format=other)


def test_unknown_formats_are_refused(checkpoint):
    with pytest.raises(ValueError, match="unknown KV format 'int2'; choose one of dtype, fp8, int4"):
        LLMEngine(checkpoint, device="cpu", dtype="fp32", kv_format="int2")
    chunk = KVChunk(LEVEL_DOCUMENT, [1, 2], 0, torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4), "fp").packed("fp8")
    with pytest.raises(ValueError, match="a chunk in fp8 cannot be converted to int4"):
        chunk.packed("int4")
