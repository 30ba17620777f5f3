"""The static decode step used for CUDA graphs (prebuilt chunk tables, device-side lengths) against eager decode.

On the CPU the same steps run without capture, with the Triton kernels in the interpreter; on a GPU they are
captured and replayed."""
import pytest
import torch

from dataclasses import replace

from cascade_rag.engine import LEVEL_DOCUMENT, LEVEL_SYSTEM, EngineOptions, KernelOptions, LLMEngine, SamplingParams
from cascade_rag.engine.cuda_graph import GraphDecoder, question_bucket
from tests.helpers import make_tiny_checkpoint

SYSTEM, DOCS, QUESTION = [1, 5, 9, 14], [[20 + i for i in range(n)] for n in (7, 1, 12)], [300, 301, 302, 303]


def engines(path, **options):
    """An engine decoding eagerly and one running the graph decoder's steps (captured on CUDA, uncaptured
    elsewhere) over the same checkpoint, with these options."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    common = dict(device=device, dtype="fp32", graph_own_tokens=64) | options
    eager = LLMEngine(path, use_cuda_graphs=False, **common)
    static = LLMEngine(path, graph_steps_off_cuda=True, **common)
    assert eager.graphs is None and static.graphs is not None
    return eager, static


def test_prefills_are_padded_to_a_power_of_two_then_to_a_multiple_of_128():
    sizes = (1, 16, 17, 200, 256, 257, 384, 385, 1056)
    assert [question_bucket(n) for n in sizes] == [16, 16, 32, 256, 256, 384, 384, 512, 1152]


def chunks_of(engine):
    level0 = engine.prefill_chunk(SYSTEM, [], LEVEL_SYSTEM, "fp")
    return [level0] + [engine.prefill_chunk(d, [level0], LEVEL_DOCUMENT, "fp") for d in DOCS]


@pytest.mark.parametrize("name", ["qwen3-gqa-untied"])
def test_static_decode_equals_eager(name, tmp_path, tokenizer_dir):
    eager, static = engines(make_tiny_checkpoint(tmp_path / name, name, tokenizer_dir, head_dim=64))
    chunks = chunks_of(eager)
    level0 = chunks[0]
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    expected = eager.generate(QUESTION, params, chunks).token_ids
    other = ([level0, chunks[2]], [310 + i for i in range(20)])  # fewer chunks, a question of another bucket
    expected_other = eager.generate(other[1], params, other[0]).token_ids
    sampling = SamplingParams(max_new_tokens=8, ignore_eos=True, temperature=5.0, seed=3)  # fed from the host
    expected_sampled = eager.generate(QUESTION, sampling, chunks).token_ids
    tokens = static.generate(QUESTION, params, chunks).token_ids
    assert tokens == expected and len(tokens) == 8
    # the next request rewrites every graph input (tables, shift padding, question, positions)
    assert static.generate(other[1], params, other[0]).token_ids == expected_other
    assert static.generate(QUESTION, sampling, chunks).token_ids == expected_sampled != tokens
    full = static.generate(QUESTION, params, chunks, mode="full").token_ids  # a second request reuses the buffers
    assert full == eager.generate(QUESTION, params, chunks, mode="full").token_ids


# each graph option against eager decoding: the question longer than graph_max_question (prefilled eagerly), a
# larger bucket, more chunks than graph_max_chunks (eager altogether), the full LM head, plain Triton launches
GRAPH_OPTIONS = [dict(graph_max_question=2), dict(graph_min_bucket=256), dict(graph_max_chunks=3),
                 dict(quantized_head=False), dict(kernels=KernelOptions(cached_launch=False, pdl=False))]


@pytest.mark.interpreter
@pytest.mark.parametrize("option", GRAPH_OPTIONS)
def test_each_graph_option_decodes_as_eager(option, tmp_path, tokenizer_dir):
    path = make_tiny_checkpoint(tmp_path / "tiny", "qwen3-gqa-untied", tokenizer_dir, head_dim=64)
    eager, static = engines(path, **option)
    assert (static.graphs.head is None) == (option.get("quantized_head") is False)
    chunks = chunks_of(eager)
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    assert static.generate(QUESTION, params, chunks).token_ids == eager.generate(QUESTION, params, chunks).token_ids
    if "graph_max_chunks" in option:
        assert not static.graphs.fits(len(chunks), 16)  # 4 chunks and the own one: past the limit
    else:
        assert static.graphs.fits(len(chunks), 16)


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
    eager = engine.generate(QUESTION, params, [level0] + docs, mode="cached").token_ids
    blend = engine.generate(QUESTION, params, [level0] + docs, mode="blend").token_ids
    engine.graphs = graphs
    assert engine.generate(QUESTION, params, [level0] + docs, mode="cached").token_ids == eager
    assert engine.generate(QUESTION, params, [level0] + docs, mode="blend").token_ids == blend  # unpacked again
    assert {key[3] for key in graphs.graphs} == {0, {"fp8": 1, "int4": 2}[kv_format]}
