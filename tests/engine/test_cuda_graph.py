"""The static decode step used for CUDA graphs (prebuilt chunk tables, device-side lengths) against eager decode.

On the CPU the same steps run without capture, with the Triton kernels in the interpreter; on a GPU they are
captured and replayed."""
import pytest
import torch

from dataclasses import replace

from cascade_rag.engine import LEVEL_DOCUMENT, LEVEL_SYSTEM, EngineOptions, LLMEngine, SamplingParams
from cascade_rag.engine.cuda_graph import GraphDecoder
from tests.helpers import make_tiny_checkpoint

SYSTEM, DOCS, QUESTION = [1, 5, 9, 14], [[20 + i for i in range(n)] for n in (7, 1, 12)], [300, 301, 302, 303]


@pytest.mark.parametrize("name", ["qwen3-gqa-untied"])
def test_static_decode_equals_eager(name, tmp_path, tokenizer_dir):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    engine = LLMEngine(make_tiny_checkpoint(tmp_path / name, name, tokenizer_dir, head_dim=64), device=device,
                       dtype="fp32", graph_own_tokens=64)
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    chunks = [level0] + [engine.prefill_chunk(d, [level0], LEVEL_DOCUMENT, "fp") for d in DOCS]
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    engine.graphs = None
    eager = engine.generate(QUESTION, params, chunks).token_ids
    other = ([level0, chunks[2]], [310 + i for i in range(20)])  # fewer chunks, a question of another bucket
    eager_other = engine.generate(other[1], params, other[0]).token_ids
    sampling = SamplingParams(max_new_tokens=8, ignore_eos=True, temperature=5.0, seed=3)  # fed from the host
    eager_sampled = engine.generate(QUESTION, sampling, chunks).token_ids
    engine.graphs = GraphDecoder(engine.model, engine.options, engine.dtype, device)
    static = engine.generate(QUESTION, params, chunks).token_ids
    assert static == eager and len(static) == 8
    # the next request rewrites every graph input (tables, shift padding, question, positions)
    assert engine.generate(other[1], params, other[0]).token_ids == eager_other
    assert engine.generate(QUESTION, sampling, chunks).token_ids == eager_sampled != static
    full = engine.generate(QUESTION, params, chunks, mode="full").token_ids  # a second request reuses the buffers
    engine.graphs = None
    assert full == engine.generate(QUESTION, params, chunks, mode="full").token_ids


def test_graphs_refuse_the_reference_kernels(tmp_path, tokenizer_dir):
    """CUDA graphs run the Triton kernels over their own tables: options without custom kernels are refused when
    made, and a graph decoder is not built over a model that runs the references."""
    with pytest.raises(ValueError, match="use_cuda_graphs=False"):
        EngineOptions(use_custom_kernels=False)
    path = make_tiny_checkpoint(tmp_path / "tiny", "llama-gqa-untied", tokenizer_dir)
    engine = LLMEngine(path, device="cpu", dtype="fp32", use_custom_kernels=False, use_cuda_graphs=False)
    assert not engine.model.ops.custom and engine.graphs is None
    with pytest.raises(ValueError, match="need use_custom_kernels=True"):
        GraphDecoder(engine.model, replace(engine.options, use_cuda_graphs=False, use_custom_kernels=True),
                     engine.dtype, "cpu")


@pytest.mark.parametrize("kv_format", ["fp8", "int4"])
def test_static_steps_read_packed_chunks_as_eager(kv_format, tmp_path, tokenizer_dir):
    """Passage chunks packed (EngineOptions.kv_format): the graphs' question prefill and decode steps read them
    through the packed kernels, as eager steps read them dequantised; level 0 and the own chunk stay unpacked."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    engine = LLMEngine(make_tiny_checkpoint(tmp_path / "q", "qwen3-gqa-untied", tokenizer_dir, head_dim=64),
                       device=device, dtype="fp32", graph_own_tokens=64, kv_format=kv_format)
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    docs = engine.prefill_chunks([[40 + i for i in range(n)] for n in (45, 9, 70)], [level0], LEVEL_DOCUMENT, "fp")
    assert all(d.kv_format == kv_format for d in docs)
    params = SamplingParams(max_new_tokens=4, ignore_eos=True)
    graphs, engine.graphs = engine.graphs or GraphDecoder(engine.model, engine.options, engine.dtype, device), None
    eager = engine.generate(QUESTION, params, [level0] + docs).token_ids
    blend = engine.generate(QUESTION, params, [level0] + docs, mode="blend").token_ids
    engine.graphs = graphs
    assert engine.generate(QUESTION, params, [level0] + docs).token_ids == eager
    assert engine.generate(QUESTION, params, [level0] + docs, mode="blend").token_ids == blend  # unpacked again
    assert {key[3] for key in graphs.graphs} == {0, {"fp8": 1, "int4": 2}[kv_format]}
