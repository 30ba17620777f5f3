"""Selective recompute (engine.selective): EPIC's recomputed prefixes over stored rows read in place, CacheBlend
with prefixes, and the engine variants that eval measures side by side."""
import itertools

import pytest
import torch

from cascade_rag.engine import LEVEL_DOCUMENT, LEVEL_SYSTEM, LLMEngine, Recompute, SamplingParams
from cascade_rag.engine.selective import SelectiveRecompute

from .test_kv_chunks import DOCS, QUESTION, SYSTEM


def stored(engine):
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    return [level0] + [engine.prefill_chunk(d, [level0], LEVEL_DOCUMENT, "fp") for d in (DOCS[2], DOCS[0], DOCS[1])]


def test_prefixes_covering_every_document_are_a_full_prefill(tiny_checkpoint):
    engine = LLMEngine(tiny_checkpoint, device="cpu", dtype="fp32")
    chunks = stored(engine)
    before = [(c.keys.clone(), c.values.clone()) for c in chunks]
    full = engine.logits(chunks, QUESTION, "full")
    every = Recompute(None, max(len(d) for d in DOCS))
    assert (engine.logits(chunks, QUESTION, "blend", every) - full).abs().max() <= 1e-4
    params = SamplingParams(max_new_tokens=16)
    assert (engine.variant(blend=every).generate(QUESTION, params, chunks, "blend").token_ids
            == engine.generate(QUESTION, params, chunks, "full").token_ids)
    assert all(torch.equal(c.keys, k) and torch.equal(c.values, v) for c, (k, v) in zip(chunks, before))


def test_prefixes_recompute_only_their_rows_and_read_the_rest_in_place(tiny_checkpoint):
    engine = LLMEngine(tiny_checkpoint, device="cpu", dtype="fp32")
    chunks = stored(engine)
    blended = SelectiveRecompute(engine.model, engine.dtype, "cpu", masked=False)(chunks, Recompute(None, 2))
    # level 0; the first document whole (placed where it was stored, right after level 0, it saw what a full prefill
    # sees: nothing of it is recomputed); then per document its two recomputed rows and its stored rows after them
    # (a 1-token document: its one row recomputed, nothing stored after it)
    assert [c.length for c in blended] == [len(SYSTEM), len(DOCS[2]), 2, len(DOCS[0]) - 2, 1]
    assert [c.start for c in blended] == [0, len(SYSTEM), len(SYSTEM) + len(DOCS[2]), len(SYSTEM) + 2,
                                          len(SYSTEM) + len(DOCS[2]) + len(DOCS[0])]
    assert blended[1].keys.data_ptr() == chunks[1].keys.data_ptr()  # not copied
    assert blended[3].keys.data_ptr() == chunks[2].keys[:, 2:].data_ptr()
    # a later document's first rows now see the documents before it
    assert (blended[2].values[1:] - chunks[2].values[1:, :2]).abs().max() > 1e-4
    # nothing recomputed: the documents laid one after the other, as they are
    assert engine.blend(chunks, ratio=None) == chunks
    laid = engine.logits(chunks, QUESTION, "blend", Recompute(None, 0))
    assert (laid - engine.logits(chunks, QUESTION, "cached")).abs().max() > 1e-4
    with pytest.raises(ValueError, match="at least 0 tokens"):
        Recompute(None, -1)


def test_the_masked_pass_over_turned_rows_equals_the_limited_one_in_place(tiny_checkpoint):
    """Off CUDA, EPIC's pass turns the stored rows after the prefixes to their places (a copy) and runs one SDPA
    under a mask: the same recomputed rows as the limited attention over the rows in place, and the same logits."""
    engine = LLMEngine(tiny_checkpoint, device="cpu", dtype="fp32")
    chunks = stored(engine)
    before = [(c.keys.clone(), c.values.clone()) for c in chunks]
    in_place = SelectiveRecompute(engine.model, engine.dtype, "cpu", masked=False)(chunks, Recompute(None, 2))
    turned = SelectiveRecompute(engine.model, engine.dtype, "cpu")(chunks, Recompute(None, 2))
    assert [c.length for c in turned] == [c.length for c in in_place]
    assert [c.start for c in turned] == [0, 4, 16, 18, 23]  # laid one after the other: no shift left
    assert turned[3].keys.data_ptr() != chunks[2].keys[:, 2:].data_ptr()  # a copy: the stored chunk is unchanged
    for a, b in zip(turned, in_place):
        assert (a.values - b.values).abs().max() <= 1e-5
    assert (turned[2].keys - in_place[2].keys).abs().max() <= 1e-5 and (turned[4].keys - in_place[4].keys).abs().max(
        ) <= 1e-5
    assert all(torch.equal(c.keys, k) and torch.equal(c.values, v) for c, (k, v) in zip(chunks, before))
    logits = []
    for result in (turned, in_place):  # the question prefilled over each, as `blend` does
        ctx, prompt, start = engine.composer.prefill_inputs(result, QUESTION, "blend", 0)
        logits.append(engine.model(torch.tensor(prompt), torch.arange(start, start + len(prompt)), ctx, all_logits=True))
    assert (logits[0] - logits[1]).abs().max() <= 1e-4


def test_blend_with_prefixes_recomputes_both(tiny_checkpoint):
    engine = LLMEngine(tiny_checkpoint, device="cpu", dtype="fp32")
    chunks = stored(engine)
    n = sum(len(d) for d in DOCS)
    stored_values = torch.cat([c.values for c in chunks[1:]], dim=1)
    blended = engine.blend(chunks, ratio=0.0, prefix=3)[1]
    changed = (blended.values[2:] - stored_values[2:]).abs().amax(dim=(0, 2, 3)) > 1e-5
    second = len(DOCS[2])  # the second document's first three rows are recomputed at every layer
    assert changed[second:second + 3].all() and changed.sum() <= 3 + 1  # and the third's only row
    assert blended.length == n


def test_variants_share_the_model_and_change_only_the_composition(tiny_checkpoint):
    engine = LLMEngine(tiny_checkpoint, device="cpu", dtype="fp32")
    chunks = stored(engine)
    warmer = engine.variant(document_temperature=1.0)
    assert warmer.model is engine.model and engine.options.document_temperature == 0.9
    assert (warmer.logits(chunks, QUESTION, "cached") - engine.logits(chunks, QUESTION, "cached")).abs().max() > 1e-5
    with pytest.raises(ValueError, match="composition only, not dtype"):
        engine.variant(dtype="bf16")


@pytest.mark.interpreter
def test_graph_steps_over_recomputed_prefixes_equal_eager(tmp_path, tokenizer_dir):
    """The recomputed rows and the stored ones after them through the graph decoder's tables and its Triton
    kernels (in the interpreter on the CPU) against eager decode; the recompute itself runs through the graph's
    recompute (tests/engine/test_recompute_graph.py), the eager one through the references (the CPU's dispatch),
    whose kernels are checked in tests/kernels (test_limited_attention, test_rope_rmsnorm: a query rotated for a
    chunk placed after it)."""
    from cascade_rag.engine.cuda_graph import GraphDecoder
    from tests.helpers import make_tiny_checkpoint
    path = make_tiny_checkpoint(tmp_path / "q", "qwen3-gqa-untied", tokenizer_dir, head_dim=64)
    engine = LLMEngine(path, device="cpu", dtype="fp32", graph_own_tokens=64, blend=Recompute(None, 4))
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    chunks = [level0] + [engine.prefill_chunk([20 + i + 40 * j for i in range(n)], [level0], LEVEL_DOCUMENT, "fp")
                         for j, n in enumerate((20, 30, 25))]
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    engine.graphs = None
    eager = engine.generate(QUESTION, params, chunks, "blend").token_ids
    engine.graphs = GraphDecoder(engine.model, engine.options, engine.dtype, "cpu")
    assert engine.generate(QUESTION, params, chunks, "blend").token_ids == eager and len(eager) == 6


def test_window_floors_count_the_rows_before_each_tokens_window(tiny_checkpoint):
    """PrefixPlan's floors under a window, against a count over every context row's position: level 0 and the stored
    rows at positions before the token's minus the window; own floors: the recomputed rows before that."""
    engine = LLMEngine(tiny_checkpoint, device="cpu", dtype="fp32")
    chunks = stored(engine)
    selective = SelectiveRecompute(engine.model, engine.dtype, "cpu")
    for prefix, window in itertools.product((2, 5), (1, 3, 7, 12, 1000)):  # windows ending inside a prefix, too
        plan = selective.plan(chunks, prefix, window=window)
        places = [c.start for c in plan.context]  # the context as read in place: each rest at its stored start
        rows = [p + s + i for c, p, s in zip(plan.context, places, plan.shifts) for i in range(c.length)]
        sink = len(SYSTEM)
        assert plan.floors.shape == (len(plan.positions), 3)
        for i, position in enumerate(plan.positions):
            low = position - window
            assert plan.floors[i, 0] == sink
            assert plan.floors[i, 1] == sink + sum(r < low for r in rows[sink:])
            assert plan.floors[i, 2] == sum(p < low for p in plan.positions)
    assert selective.plan(chunks, 2).floors is None


def test_a_window_over_everything_recomputes_as_none_and_a_short_one_differs(tiny_checkpoint):
    engine = LLMEngine(tiny_checkpoint, device="cpu", dtype="fp32")
    chunks = stored(engine)
    plain = engine.logits(chunks, QUESTION, "blend", Recompute(None, 2))
    assert torch.equal(engine.logits(chunks, QUESTION, "blend", Recompute(None, 2, 10_000)), plain)
    assert (engine.logits(chunks, QUESTION, "blend", Recompute(None, 2, 3)) - plain).abs().max() > 1e-4
    assert Recompute(None, 2, 3).label == "first 2 (window 3)"
    with pytest.raises(ValueError, match="at least 0 positions"):
        Recompute(None, 2, -1)
    with pytest.raises(ValueError, match="EPIC's prefixes alone"):
        Recompute(0.15, 2, 3)
