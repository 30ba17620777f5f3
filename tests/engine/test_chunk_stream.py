"""Chunks streamed layer by layer (engine.chunk_stream): the question's prefill waits for each layer, answers as
over chunks loaded whole; every layer checked; older files, other formats and unreadable ones refused or decoded."""
import pytest
import torch

from cascade_rag.engine import LEVEL_DOCUMENT, LEVEL_SYSTEM, KVChunkError, LLMEngine, SamplingParams
from cascade_rag.engine.chunk_format import encode, load_file, save_file
from cascade_rag.engine.chunk_stream import BufferSource, ChunkStreamer
from cascade_rag.benchmarks.bench_formats import drop_cache
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
    drop_cache(paths)  # cold files: each source asks for its file ahead (FileSource.will_need), then reads it
    streamed = streamer.load([FileSource(p) for p in paths], "fp", "cpu", kv_format)
    assert all(c.arrival is not None and c.kv_format == kv_format for c in streamed)
    assert engine.generate(QUESTION, params, [level0] + streamed).token_ids == expected
    assert not any(c.arrival.pending for c in streamed)
    streamed = streamer.load([FileSource(p) for p in paths], "fp", "cpu")
    assert engine.generate(QUESTION, params, [level0] + streamed, "blend").token_ids == \
        engine.generate(QUESTION, params, whole, "blend").token_ids


@pytest.mark.parametrize("task_bytes", [1, 4 << 20])  # a run of one layer, of all of them
def test_every_layer_is_checked_and_bad_sources_are_refused(checkpoint, tmp_path, task_bytes):
    engine = LLMEngine(checkpoint, device="cpu", dtype="fp32")
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    data = encode(engine.prefill_chunk(DOCS[1], [level0], LEVEL_DOCUMENT, "fp"))
    corrupt = bytearray(data)
    corrupt[-7] ^= 1  # in the last layer's values
    streamer = ChunkStreamer(workers=2, task_bytes=task_bytes)
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


@pytest.mark.gpu
@pytest.mark.parametrize("kv_format,task_bytes", [("dtype", 1), ("dtype", 4 << 20), ("int4", 4 << 20)])
def test_streamed_to_the_gpu_as_loaded_whole(checkpoint, tmp_path, kv_format, task_bytes):
    """Through pinned slots and the threads' streams (fewer slots than runs, so slots are reused): every tensor
    equal to the file loaded whole; a corrupt layer refused, the layers before it arrived."""
    engine = LLMEngine(checkpoint, device="cuda", dtype="bf16", kv_format=kv_format)
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    paths = []
    for i, chunk in enumerate(engine.prefill_chunks(DOCS * 3, [level0], LEVEL_DOCUMENT, "fp")):
        paths.append(tmp_path / f"{i}.safetensors")
        save_file(chunk, paths[-1])
    streamer = ChunkStreamer(workers=2, task_bytes=task_bytes)
    for _ in range(2):
        streamed = streamer.load([FileSource(p) for p in paths], "fp", "cuda", kv_format)
        for chunk, path in zip(streamed, paths):
            chunk.arrival.wait_all()
            whole = load_file(path, "fp", "cuda")
            for a, b in ((chunk.keys, whole.keys), (chunk.values, whole.values)):
                for x, y in ((a, b),) if kv_format == "dtype" else ((a.codes, b.codes), (a.params, b.params)):
                    assert x.device.type == "cuda" and torch.equal(x, y)
    data = bytearray(paths[1].read_bytes())
    data[-7] ^= 1
    bad = streamer.load([BufferSource(data, "bad")], "fp", "cuda", kv_format)[0]
    bad.arrival.wait(0)
    with pytest.raises(KVChunkError, match="checksum mismatch in layer"):
        bad.arrival.wait_all()
