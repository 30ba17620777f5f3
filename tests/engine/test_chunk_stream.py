"""Chunks streamed block by block (engine.chunk_stream): the question's prefill waits for each layer, answers as
over chunks loaded whole; every block checked; older files, other formats and unreadable ones refused or
decoded."""
import json

import pytest
import torch
from safetensors.torch import save as save_tensors

from cascade_rag.engine import LEVEL_DOCUMENT, LEVEL_SYSTEM, KVChunkError, LLMEngine, SamplingParams
from cascade_rag.engine.chunk_format import checksum, encode, load_file, save_file
from cascade_rag.engine.chunk_stream import BufferSource, ChunkStreamer
from cascade_rag.benchmarks.bench_formats import drop_cache
from cascade_rag.engine.file_io import FileSource
from tests.helpers import make_tiny_checkpoint

SYSTEM, DOCS, QUESTION = [1, 5, 9, 14], [[20 + i for i in range(n)] for n in (7, 40, 12)], [300, 301, 302, 303]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_dir):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("qwen3"), "qwen3-gqa-untied", tokenizer_dir)


@pytest.mark.parametrize("kv_format,block_bytes", [("dtype", 256), ("dtype", 4 << 20), ("int4", 100)])
def test_streamed_chunks_answer_as_loaded_ones(checkpoint, kv_format, block_bytes, tmp_path):
    engine = LLMEngine(checkpoint, device="cpu", dtype="fp32", kv_format=kv_format)
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    paths = []
    for i, chunk in enumerate(engine.prefill_chunks(DOCS, [level0], LEVEL_DOCUMENT, "fp")):
        paths.append(tmp_path / f"{i}.safetensors")
        save_file(chunk, paths[-1], block_bytes)
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
    after_load = engine.variant(stream_prefill=False)  # every layer first, then the prefill as over loaded chunks
    streamed = streamer.load([FileSource(p) for p in paths], "fp", "cpu", kv_format)
    generation = after_load.stream(QUESTION, params, [level0] + streamed, "cached")
    assert not any(c.arrival.pending for c in streamed)  # waited for before the prefill began
    assert generation.result().token_ids == expected


@pytest.mark.parametrize("block_bytes", [512, 4 << 20])  # blocks of a layer or less, one block a tensor
def test_every_block_is_checked_and_bad_sources_are_refused(checkpoint, tmp_path, block_bytes):
    engine = LLMEngine(checkpoint, device="cpu", dtype="fp32")
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    data = encode(engine.prefill_chunk(DOCS[1], [level0], LEVEL_DOCUMENT, "fp"), block_bytes)
    corrupt = bytearray(data)
    corrupt[-7] ^= 1  # in the last layer's values
    last = engine.config.num_layers - 1
    streamer = ChunkStreamer(workers=2)
    good, bad, other, short = streamer.load(
        [BufferSource(data, "good"), BufferSource(corrupt, "bad"), BufferSource(data, "other"),
         BufferSource(data[:len(data) // 2], "short")], "fp", "cpu", "dtype")[:2] + \
        streamer.load([BufferSource(data, "other")], "fp", "cpu", "int4") + \
        streamer.load([BufferSource(data[:len(data) // 2], "short")], "fp", "cpu")
    if block_bytes < len(data):  # the first layers arrive: the request can start
        bad.arrival.wait(0)
        failure = f"checksum mismatch in block \\d+ \\(layer {last}\\)"
    else:
        failure = f"bad is corrupted: checksum mismatch in block 1 \\(layers 0-{last}\\)"  # the values' one
    with pytest.raises(KVChunkError, match=failure):
        bad.arrival.wait_all()
    good.arrival.wait_all()
    assert isinstance(other, KVChunkError) and "is in KV format dtype, the store's is int4" in str(other)
    assert isinstance(short, KVChunkError) and "short" in str(short)
    wrong = streamer.load([BufferSource(data, "x")], "another model", "cpu")[0]
    assert isinstance(wrong, KVChunkError) and "fingerprint" in str(wrong)
    with pytest.raises(KVChunkError, match=failure):
        engine.generate(QUESTION, SamplingParams(max_new_tokens=2),
                        [level0] + streamer.load([BufferSource(corrupt, "bad")], "fp", "cpu"))


def test_files_of_the_layer_checksum_are_decoded_whole(checkpoint):
    """A file written with one digest a layer (before the block checksum) is read whole, checked and served."""
    engine = LLMEngine(checkpoint, device="cpu", dtype="fp32")
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    chunk = engine.prefill_chunk(DOCS[0], [level0], LEVEL_DOCUMENT, "fp")
    metadata = {"format_version": "1", "level": str(chunk.level), "start": str(chunk.start),
                "token_ids": json.dumps(chunk.token_ids), "fingerprint": chunk.fingerprint, "kv_format": "dtype",
                "checksum": checksum(chunk, "xxh3-layers")}
    data = save_tensors({"keys": chunk.keys, "values": chunk.values}, metadata=metadata)
    [loaded] = ChunkStreamer(workers=1).load([BufferSource(data, "old")], "fp", "cpu")
    assert loaded.arrival is None and torch.equal(loaded.keys, chunk.keys) and torch.equal(loaded.values, chunk.values)


@pytest.mark.gpu
@pytest.mark.parametrize("kv_format,block_bytes", [("dtype", 512), ("dtype", 4 << 20), ("int4", 4096)])
def test_streamed_to_the_gpu_as_loaded_whole(checkpoint, tmp_path, kv_format, block_bytes):
    """Through pinned slots and the threads' streams (fewer slots than blocks, so slots are reused): every tensor
    equal to the file loaded whole; a corrupt block refused, the layers before it arrived."""
    engine = LLMEngine(checkpoint, device="cuda", dtype="bf16", kv_format=kv_format)
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    paths = []
    for i, chunk in enumerate(engine.prefill_chunks(DOCS * 3, [level0], LEVEL_DOCUMENT, "fp")):
        paths.append(tmp_path / f"{i}.safetensors")
        save_file(chunk, paths[-1], block_bytes)
    streamer = ChunkStreamer(workers=2)
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
    if block_bytes < len(data) // engine.config.num_layers:
        bad.arrival.wait(0)
    with pytest.raises(KVChunkError, match="checksum mismatch in block"):
        bad.arrival.wait_all()
