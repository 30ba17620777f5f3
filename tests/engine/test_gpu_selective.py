"""Selective recompute on a GPU (skipped elsewhere), random weights of the Qwen3-0.6B shape: the limited-attention
kernel and the question prefilled by the CUDA graphs over the recomputed rows and the stored ones in place."""
import pytest

from cascade_rag.engine import LLMEngine, Recompute, SamplingParams

from .test_gpu import composed, qwen3_shape  # noqa: F401 (the fixture)

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("recompute", [Recompute(1.0, 0), Recompute(None, 300), Recompute(1.0, 16)])
def test_recomputing_everything_equals_full(qwen3_shape, recompute):  # noqa: F811
    engine = LLMEngine(qwen3_shape, device="cuda", dtype="fp32")
    chunks, question = composed(engine)
    full = engine.logits(chunks, question, "full")
    error = (engine.logits(chunks, question, "blend", recompute) - full).abs().max().item()
    print(f"{recompute.label} against full: max abs logit difference {error:.2e}")
    assert error <= 1e-4
    params = SamplingParams(max_new_tokens=32, ignore_eos=True)
    assert (engine.variant(blend=recompute).generate(question, params, chunks, "blend").token_ids
            == engine.generate(question, params, chunks, "full").token_ids)


@pytest.mark.parametrize("recompute", [Recompute(0.15, 0), Recompute(None, 16)])
def test_graphs_over_recomputed_rows_equal_eager(qwen3_shape, recompute):  # noqa: F811
    graphed = LLMEngine(qwen3_shape, device="cuda", dtype="bf16", blend=recompute)
    eager = LLMEngine(qwen3_shape, device="cuda", dtype="bf16", blend=recompute, use_cuda_graphs=False,
                      use_custom_kernels=False)
    chunks, question = composed(graphed)
    params = SamplingParams(max_new_tokens=64, ignore_eos=True)
    a = graphed.generate(question, params, chunks, "blend").token_ids
    b = eager.generate(question, params, chunks, "blend").token_ids
    if recompute.ratio is None:  # EPIC's recompute ran in the question's prefill graph (engine.cuda_graph.Lead)
        assert graphed.graphs.lead == 16 * (len(chunks) - 2)  # the first 16 tokens of each document after the first
    same = sum(x == y for x, y in zip(a, b))
    print(f"{recompute.label}: graphs and Triton against references, eager: {same} of 64 tokens the same")
    assert a[:8] == b[:8]
