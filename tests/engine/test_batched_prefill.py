"""Batched prefill: several passages in one forward pass give the chunks of one prefill_chunk each."""
import pytest
import torch

from cascade_rag.engine import LEVEL_DOCUMENT, LEVEL_SYSTEM, KVChunk, LLMEngine, SamplingParams
from cascade_rag.engine.chunk_format import load_file, save_file

SYSTEM, QUESTION = [1, 5, 9, 14, 33], [300, 301, 302, 303, 304]
PASSAGES = [[20 + i for i in range(7)], [77], [100 + 3 * i for i in range(12)], [40, 41, 42]]  # uneven, one of 1


def assert_same_chunks(batched: list[KVChunk], sequential: list[KVChunk]) -> None:
    assert len(batched) == len(sequential)
    for b, s in zip(batched, sequential):
        assert (b.level, b.token_ids, b.start, b.fingerprint) == (s.level, s.token_ids, s.start, s.fingerprint)
        assert b.keys.shape == s.keys.shape and b.values.shape == s.values.shape and b.keys.dtype == s.keys.dtype
        assert (b.keys - s.keys).abs().max().item() <= 1e-4
        assert (b.values - s.values).abs().max().item() <= 1e-4
        # each chunk owns its KV: contiguous, and no storage shared with the batch buffer or another chunk
        for t in (b.keys, b.values):
            assert t.is_contiguous() and t.untyped_storage().nbytes() == t.nbytes


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return LLMEngine(tiny_checkpoint, device="cpu", dtype="fp32")


def test_batched_chunks_equal_sequential_ones(engine, tmp_path):
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    batched = engine.prefill_chunks(PASSAGES, [level0], LEVEL_DOCUMENT, "fp")
    sequential = [engine.prefill_chunk(p, [level0], LEVEL_DOCUMENT, "fp") for p in PASSAGES]
    assert_same_chunks(batched, sequential)
    assert all(c.start == len(SYSTEM) for c in batched)
    assert batched[0].nbytes == len(PASSAGES[0]) * engine.kv_bytes_per_token()
    save_file(batched[1], tmp_path / "one.safetensors")  # the 1-token passage survives a round trip
    loaded = load_file(tmp_path / "one.safetensors", "fp")
    assert loaded.token_ids == PASSAGES[1] and torch.equal(loaded.keys, batched[1].keys)


def test_batched_chunks_with_no_context_and_with_a_two_chunk_context(engine):
    assert_same_chunks(engine.prefill_chunks(PASSAGES[:3], [], LEVEL_SYSTEM, "fp"),
                       [engine.prefill_chunk(p, [], LEVEL_SYSTEM, "fp") for p in PASSAGES[:3]])
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    context = [level0, engine.prefill_chunk(PASSAGES[0], [level0], LEVEL_DOCUMENT, "fp")]  # canonical: shifts 0
    assert_same_chunks(engine.prefill_chunks(PASSAGES[1:], context, LEVEL_DOCUMENT, "fp"),
                       [engine.prefill_chunk(p, context, LEVEL_DOCUMENT, "fp") for p in PASSAGES[1:]])
    shifted = [level0, engine.prefill_chunk(PASSAGES[0], [level0], LEVEL_DOCUMENT, "fp", start=50)]  # shift -45
    assert_same_chunks(engine.prefill_chunks(PASSAGES[1:], shifted, LEVEL_DOCUMENT, "fp"),
                       [engine.prefill_chunk(p, shifted, LEVEL_DOCUMENT, "fp") for p in PASSAGES[1:]])


def test_answer_over_batched_chunks_equals_answer_over_sequential_ones(engine):
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    batched = engine.prefill_chunks(PASSAGES, [level0], LEVEL_DOCUMENT, "fp")
    sequential = [engine.prefill_chunk(p, [level0], LEVEL_DOCUMENT, "fp") for p in PASSAGES]
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    a = engine.generate(QUESTION, params, [level0] + batched, mode="cached").token_ids
    b = engine.generate(QUESTION, params, [level0] + sequential, mode="cached").token_ids
    assert a == b and len(a) == 16


def test_bad_input_is_refused(engine):
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    with pytest.raises(ValueError, match="no token sequences"):
        engine.prefill_chunks([], [level0], LEVEL_DOCUMENT, "fp")
    with pytest.raises(ValueError, match="empty token sequence \\(sequence 1 of 3\\)"):
        engine.prefill_chunks([[5, 6], [], [7]], [level0], LEVEL_DOCUMENT, "fp")
    with pytest.raises(ValueError, match="exceeds the model's"):
        engine.prefill_chunks([[5] * (engine.config.max_position - 2), [6]], [level0], LEVEL_DOCUMENT, "fp")


def test_batched_ingestion_stores_the_chunks_of_one_by_one_ingestion(tmp_path, tiny_model, monkeypatch):
    from cascade_rag.rag.pipeline import RAG
    text = ("Night trains carry sleeping cars so travellers can cover long distances while they sleep. Many routes "
            "were revived after 2020, and new operators joined. ")
    docs = [{"id": f"d{i}", "title": "Trains", "text": text * (i + 1)} for i in range(3)]
    docs.append({"id": "copy", "title": "Trains", "text": text})  # the passages of d0 again: prefilled once
    batches = []
    original = LLMEngine.prefill_chunks
    monkeypatch.setattr(LLMEngine, "prefill_chunks",
                        lambda self, lists, *a: batches.append(len(lists)) or original(self, lists, *a))
    stored = {}
    for budget in (1, 100):
        batches.clear()
        with RAG(tmp_path / str(budget), model=tiny_model, passage_tokens=24, overlap=4,
                 prefill_batch_tokens=budget) as rag:
            report = rag.ingest(documents=docs)
            assert rag.check() == [] and len(rag.documents()) == 4 and report.prefilled < report.passages
            stored[budget] = (report.prefilled, {key: load_file(rag.chunks.backend.path(key), rag.model().fingerprint)
                                                 for key in rag.chunks.sizes()})
        assert max(batches) == 1 if budget == 1 else max(batches) > 1
    assert stored[1][0] == stored[100][0] and stored[1][1].keys() == stored[100][1].keys()
    for key, one in stored[1][1].items():
        assert_same_chunks([stored[100][1][key]], [one])
