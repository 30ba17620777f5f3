"""Chunks streamed layer by layer (engine.chunk_stream): the question's prefill waits for each layer, answers as
over chunks loaded whole; every layer checked; older files, other formats and unreadable ones refused or decoded."""
import pytest
import torch

from cascade_rag.engine import LEVEL_DOCUMENT, LEVEL_SYSTEM, KVChunkError, LLMEngine, SamplingParams
from cascade_rag.engine.chunk_format import encode, load_file, save_file
from cascade_rag.engine.chunk_stream import BufferSource, ChunkStreamer
from cascade_rag.engine.file_io import FileSource
from tests.helpers import make_tiny_checkpoint

SYSTEM, DOCS, QUESTION = [1, 5, 9, 14], [[20 + i for i in range(n)] for n in (7, 40, 12)], [300, 301, 302, 303]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_dir):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("qwen3"), "qwen3-gqa-untied", tokenizer_dir)


@pytest.mark.parametrize("kv_format", ["dtype", "int4"])
def test_streamed_chunks_answer_as_loaded_ones(checkpoint, kv_format, tmp_path):
    engine = LLMEngine(checkpoint, device="cpu", dtype="fp32", kv_format=kv_format)
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    paths = []
    for i, chunk in enumerate(engine.prefill_chunks(DOCS, [level0], LEVEL_DOCUMENT, "fp")):
        paths.append(tmp_path / f"{i}.safetensors")
        save_file(chunk, paths[-1])
    streamer = ChunkStreamer(workers=3)
    params = SamplingParams(max_new_tokens=4)
    whole = [level0] + [load_file(p, "fp") for p in paths]
    expected = engine.generate(QUESTION, params, whole).token_ids
    streamed = streamer.load([FileSource(p) for p in paths], "fp", "cpu", kv_format)
    assert all(c.arrival is not None and c.kv_format == kv_format for c in streamed)
    assert engine.generate(QUESTION, params, [level0] + streamed).token_ids == expected
    assert not any(c.arrival.pending for c in streamed)
    streamed = streamer.load([FileSource(p) for p in paths], "fp", "cpu")
    assert engine.generate(QUESTION, params, [level0] + streamed, "blend").token_ids == \
        engine.generate(QUESTION, params, whole, "blend").token_ids


def test_every_layer_is_checked_and_bad_sources_are_refused(checkpoint, tmp_path):
    engine = LLMEngine(checkpoint, device="cpu", dtype="fp32")
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    data = encode(engine.prefill_chunk(DOCS[1], [level0], LEVEL_DOCUMENT, "fp"))
    corrupt = bytearray(data)
    corrupt[-7] ^= 1  # in the last layer's values
    streamer = ChunkStreamer(workers=2)
    good, bad, other, short = streamer.load(
        [BufferSource(data, "good"), BufferSource(corrupt, "bad"), BufferSource(data, "other"),
         BufferSource(data[:len(data) // 2], "short")], "fp", "cpu", "dtype")[:2] + \
        streamer.load([BufferSource(data, "other")], "fp", "cpu", "int4") + \
        streamer.load([BufferSource(data[:len(data) // 2], "short")], "fp", "cpu")
    bad.arrival.wait(0)  # the first layers arrive: the request can start
    with pytest.raises(KVChunkError, match="bad is corrupted: checksum mismatch in layer 2"):
        bad.arrival.wait_all()
    good.arrival.wait_all()
    assert isinstance(other, KVChunkError) and "is in KV format dtype, the store's is int4" in str(other)
    assert isinstance(short, KVChunkError) and "short" in str(short)
    wrong = streamer.load([BufferSource(data, "x")], "another model", "cpu")[0]
    assert isinstance(wrong, KVChunkError) and "fingerprint" in str(wrong)
    with pytest.raises(KVChunkError, match="checksum mismatch in layer 2"):
        engine.generate(QUESTION, SamplingParams(max_new_tokens=2),
                        [level0] + streamer.load([BufferSource(corrupt, "bad")], "fp", "cpu"))
