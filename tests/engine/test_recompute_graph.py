"""EPIC's recompute through the graph's static buffers and chunk table (engine.recompute_graph; on the CPU the steps
run uncaptured, the Triton kernels in the interpreter) against the eager pass (engine.selective): the same rows,
the same answer, the stored chunks untouched, and the eager pass where the graph's buffers are too small. In
`generate` the recompute runs in the question's prefill, before it (engine.cuda_graph.Lead), where both fit the
question's graph; else in its own graph. The
rows are compared with the eager pass over the stored rows in place (the layout the graph reads), whose masked
variant off CUDA tests/engine/test_selective.py checks."""
import pytest
import torch

from cascade_rag.engine import LEVEL_DOCUMENT, LEVEL_SYSTEM, LLMEngine, Recompute, SamplingParams
from cascade_rag.engine.recompute_graph import GraphRecompute
from cascade_rag.engine.selective import SelectiveRecompute
from tests.helpers import make_tiny_checkpoint

pytestmark = pytest.mark.interpreter
SYSTEM, QUESTION = [1, 5, 9, 14], [300, 301, 302, 303]


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tokenizer_dir):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("q"), "qwen3-gqa-untied", tokenizer_dir, head_dim=64)
    return LLMEngine(path, device="cpu", dtype="fp32", graph_own_tokens=64, graph_steps_off_cuda=True,
                     graph_recompute_tokens=64, blend=Recompute(None, 4))


def stored(engine, lengths, offset=0):
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    return [level0] + [engine.prefill_chunk([20 + offset + i + 40 * j for i in range(n)], [level0], LEVEL_DOCUMENT,
                                            "fp") for j, n in enumerate(lengths)]


def test_graphed_rows_equal_the_eager_pass(engine):
    graph = engine.recompute_graph()
    assert isinstance(graph, GraphRecompute)
    assert [graph.slots(n) for n in (1, 7, 8, 40, 62)] == [8, 8, 16, 63, 63]  # context chunks and the own one
    # a document shorter than the prefix; new inputs; 9 context chunks (16 table slots)
    for lengths, offset in (((20, 3, 25), 0), ((9, 30), 7), ((6,) * 8, 3)):
        chunks = stored(engine, lengths, offset)
        before = [(c.keys.clone(), c.values.clone()) for c in chunks]
        eager = SelectiveRecompute(engine.model, engine.dtype, "cpu", masked=False)(chunks, Recompute(None, 4))
        graphed = SelectiveRecompute(engine.model, engine.dtype, "cpu", graph)(chunks, Recompute(None, 4))
        assert [(c.start, c.length) for c in graphed] == [(c.start, c.length) for c in eager]
        recomputed = [c for c in graphed if c.keys.data_ptr() >= graph.buffer.keys.data_ptr()
                      and c.keys.untyped_storage().data_ptr() == graph.buffer.keys.untyped_storage().data_ptr()]
        assert sum(c.length for c in recomputed) == sum(min(4, n) for n in lengths[1:])  # not the first document's
        for a, b in zip(graphed, eager):
            assert (a.keys - b.keys).abs().max() <= 1e-4 and (a.values - b.values).abs().max() <= 1e-4
        assert all(torch.equal(c.keys, k) and torch.equal(c.values, v) for c, (k, v) in zip(chunks, before))


def test_graphed_recompute_answers_as_the_eager_engine(engine, tmp_path, tokenizer_dir):
    eager = LLMEngine(engine.model_path, device="cpu", dtype="fp32", use_cuda_graphs=False, blend=Recompute(None, 4))
    chunks = stored(engine, (20, 30, 25))
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    expected = eager.generate(QUESTION, params, chunks, "blend").token_ids
    assert engine.generate(QUESTION, params, chunks, "blend").token_ids == expected and len(expected) == 6
    full = eager.generate(QUESTION, params, chunks, "full").token_ids
    every = Recompute(None, 30)  # every row recomputed: a full prefill's answer
    assert engine.variant(blend=every).generate(QUESTION, params, chunks, "blend").token_ids == full


def test_a_recompute_beyond_the_graphs_buffer_runs_eagerly(engine):
    graph = engine.recompute_graph()
    assert graph.fits(4, 64) and not graph.fits(4, 65) and not graph.fits(engine.options.graph_max_chunks, 8)
    chunks = stored(engine, (20, 30, 25, 30))
    wide = Recompute(None, 25)  # 25 + 25 + 25 rows (none of the first document): padded to 128, over the buffer's 64
    eager = SelectiveRecompute(engine.model, engine.dtype, "cpu")(chunks, wide)
    fallback = SelectiveRecompute(engine.model, engine.dtype, "cpu", graph)(chunks, wide)
    assert all(c.keys.untyped_storage().data_ptr() != graph.buffer.keys.untyped_storage().data_ptr()
               for c in fallback)
    assert all(torch.equal(a.keys, b.keys) for a, b in zip(fallback, eager))
    with pytest.raises(ValueError, match="does not fit"):
        graph.run([chunks[0].keys], [chunks[0].values], [0], list(range(70)), list(range(4, 74)), [4] * 70)


def test_the_recompute_in_the_questions_prefill_answers_as_apart(engine):
    apart = LLMEngine(engine.model_path, device="cpu", dtype="fp32", graph_own_tokens=64, graph_steps_off_cuda=True,
                      graph_recompute_tokens=64, graph_max_question=16, blend=Recompute(None, 4))
    eager = LLMEngine(engine.model_path, device="cpu", dtype="fp32", use_cuda_graphs=False, blend=Recompute(None, 4))
    params = SamplingParams(max_new_tokens=4, ignore_eos=True)
    question = QUESTION * 2  # with the 4 + 3 + 4 tokens of the documents after the first: 19, padded to 32 (over 16)
    chunks = stored(engine, (20, 4, 3, 25))  # documents as long as the prefix and shorter
    before = [(c.keys.clone(), c.values.clone()) for c in chunks]
    expected = eager.generate(question, params, chunks, "blend")
    assert len(expected.token_ids) == 4
    for graphed in (engine, apart):
        result = graphed.generate(question, params, chunks, "blend")
        assert result.token_ids == expected.token_ids and result.prompt_tokens == expected.prompt_tokens
    assert all(torch.equal(c.keys, k) and torch.equal(c.values, v) for c, (k, v) in zip(chunks, before))
    # the first token's logits and the recomputed rows, from the lead's prefill and from the eager pass
    graphs, recompute = engine.graphs, Recompute(None, 4)
    ctx, lead, start = engine.composer.lead_inputs(chunks, 4, graphs.own)
    graphs.prepare(ctx, len(lead.token_ids) + len(question) + 1, question, start, lead)
    logits = graphs.prefill(len(question))
    assert (logits[-1] - eager.logits(chunks, question, "blend", recompute)[-1]).abs().max() <= 1e-4
    rows = [c for c in SelectiveRecompute(engine.model, engine.dtype, "cpu", masked=False)(chunks, recompute)[1:]
            if c.length <= 4 and c.start in lead.positions]
    recomputed = torch.cat([c.keys for c in rows], dim=1)
    assert (graphs.own.keys[:, :len(lead.token_ids)] - recomputed).abs().max() <= 1e-4
    leads = [key for key in engine.graphs.graphs if key[0] == "prefill" and key[5]]  # (..., lead, windowed)
    assert leads and not any(key[0] == "prefill" and key[5] for key in apart.graphs.graphs)


def test_a_blend_without_level_0_first_is_refused_before_its_lead(engine):
    documents = stored(engine, (20, 30))[1:]
    with pytest.raises(ValueError, match="level-0 chunk first"):
        engine.generate(QUESTION, SamplingParams(max_new_tokens=2), documents, "blend")
    params = SamplingParams(max_new_tokens=2, ignore_eos=True)  # after no chunks at all, nothing to recompute
    plain = engine.generate(QUESTION, params, [], "cached").token_ids
    assert engine.generate(QUESTION, params, [], "blend").token_ids == plain


def test_a_windowed_recompute_in_graphs_equals_the_masked_pass(engine):
    """Under a window (each recomputed token seeing level 0 and the 6 positions before it), EPIC's own graph and the
    lead of the question's prefill give the masked eager pass's rows and first logits, which differ from the
    recompute without a window."""
    chunks = stored(engine, (20, 10, 8, 12))
    windowed, unwindowed = Recompute(None, 4, 6), Recompute(None, 4)
    masked = SelectiveRecompute(engine.model, engine.dtype, "cpu", masked=True)(chunks, windowed)
    graphed = SelectiveRecompute(engine.model, engine.dtype, "cpu", engine.recompute_graph())(chunks, windowed)
    plain = SelectiveRecompute(engine.model, engine.dtype, "cpu", masked=True)(chunks, unwindowed)
    # the same rows: the stored ones after each prefix are read in place by the graph, turned to their places
    # (copied, rotated) by the masked pass; the recomputed ones sit at their places in both
    assert [c.length for c in graphed] == [c.length for c in masked]
    for a, b in zip(graphed, masked):
        assert (a.values - b.values).abs().max() <= 1e-4
        assert a.start != b.start or (a.keys - b.keys).abs().max() <= 1e-4
    assert sum(a.start == b.start for a, b in zip(graphed, masked)) == 5  # level 0, the first document, 3 prefixes
    assert max((a.values - b.values).abs().max() for a, b in zip(masked, plain)) > 1e-3
    eager = LLMEngine(engine.model_path, device="cpu", dtype="fp32", use_cuda_graphs=False, blend=windowed)
    graphs = engine.graphs
    ctx, lead, start = engine.composer.lead_inputs(chunks, 4, graphs.own, window=6)
    assert lead.floors.shape == (len(lead.token_ids), 3) == (12, 3) and (lead.floors[:, 0] == len(SYSTEM)).all()
    graphs.prepare(ctx, len(lead.token_ids) + len(QUESTION) + 1, QUESTION, start, lead)
    logits = graphs.prefill(len(QUESTION))
    expected = eager.logits(chunks, QUESTION, "blend", windowed)[-1]
    assert (logits[-1] - expected).abs().max() <= 1e-4
    assert (expected - eager.logits(chunks, QUESTION, "blend", unwindowed)[-1]).abs().max() > 1e-3
    params = SamplingParams(max_new_tokens=4, ignore_eos=True)
    assert (engine.variant(blend=windowed).generate(QUESTION, params, chunks, "blend").token_ids
            == eager.generate(QUESTION, params, chunks, "blend").token_ids)
