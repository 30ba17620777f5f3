"""Engine-level checks on a GPU (skipped elsewhere): custom kernels against the references, CUDA graphs against
eager decode, on random weights of the Qwen3-0.6B shape."""
import pytest
import torch

from cascade_rag.engine import LEVEL_DOCUMENT, LEVEL_SYSTEM, EngineOptions, KernelOptions, LLMEngine, SamplingParams

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def qwen3_shape(tmp_path_factory, tokenizer_dir):
    from cascade_rag.benchmarks.checkpoints import shape_checkpoint
    return shape_checkpoint("qwen3-0.6b", tmp_path_factory.mktemp("qwen3"), tokenizer_dir)


def composed(engine):
    fp = engine.fingerprint("gpu test")
    level0 = engine.prefill_chunk(list(range(10, 40)), [], LEVEL_SYSTEM, fp)
    docs = [engine.prefill_chunk(list(range(1000 * i, 1000 * i + 300)), [level0], LEVEL_DOCUMENT, fp)
            for i in range(1, 5)]
    return [level0] + docs, list(range(500, 532))


def test_custom_kernels_equal_references_for_64_greedy_tokens(qwen3_shape):
    engine = LLMEngine(qwen3_shape, device="cuda", dtype="fp32", use_cuda_graphs=False)
    chunks, question = composed(engine)
    params = SamplingParams(max_new_tokens=64, ignore_eos=True)
    on = engine.generate(question, params, chunks).token_ids
    reference = LLMEngine(qwen3_shape, device="cuda", dtype="fp32", use_cuda_graphs=False, use_custom_kernels=False)
    assert not reference.model.ops.custom
    off = reference.generate(question, params, chunks).token_ids
    assert on == off and len(on) == 64


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_cuda_graph_decode_equals_eager_for_128_tokens(qwen3_shape, dtype):
    engine = LLMEngine(qwen3_shape, device="cuda", dtype=dtype)
    assert engine.graphs is not None
    chunks, question = composed(engine)
    params = SamplingParams(max_new_tokens=128, ignore_eos=True)
    graphed = engine.generate(question, params, chunks)
    eager_engine = LLMEngine(qwen3_shape, device="cuda", dtype=dtype, use_cuda_graphs=False)
    assert eager_engine.graphs is None
    eager = eager_engine.generate(question, params, chunks)
    print(f"{dtype}: graph {graphed.decode_tokens_per_s:.0f} tok/s, eager {eager.decode_tokens_per_s:.0f} tok/s")
    assert graphed.token_ids == eager.token_ids and len(eager.token_ids) == 128


def greedy_tokens(path, options: EngineOptions) -> list[int]:
    engine = LLMEngine(path, options, device="cuda", dtype="bf16")
    assert (engine.graphs.head is None) == (not options.quantized_head)
    chunks, question = composed(engine)
    return engine.generate(question, SamplingParams(max_new_tokens=128, ignore_eos=True), chunks).token_ids


@pytest.fixture(scope="module")
def default_tokens(qwen3_shape) -> list[int]:
    return greedy_tokens(qwen3_shape, EngineOptions())


OPTIONS = [dict(kernels=KernelOptions(pdl=False)), dict(kernels=KernelOptions(cached_launch=False)),
           dict(quantized_head=False), dict(graph_max_question=8), dict(graph_min_bucket=8192),
           dict(graph_max_chunks=3)]


@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_changes_no_token(qwen3_shape, default_tokens, option):
    """Graphs captured without programmatic dependent launch (on: each kernel may start before the one it
    depends on ends, and waits for it), with plain Triton launches, with the full LM head, with the question
    prefilled eagerly (longer than graph_max_question), in a larger bucket, or eagerly altogether (more chunks
    than graph_max_chunks) decode what the defaults decode."""
    tokens = greedy_tokens(qwen3_shape, EngineOptions(**option))
    assert tokens == default_tokens and len(tokens) == 128


def test_blend_at_ratio_one_equals_full(qwen3_shape):
    """blend recomputes the documents with an explicit mask (SDPA); the question then runs over the blended chunk
    through the chunk attention kernel and the CUDA graphs. At ratio 1 that is a full prefill."""
    engine = LLMEngine(qwen3_shape, device="cuda", dtype="fp32")
    chunks, question = composed(engine)
    blended = engine.blend(chunks, ratio=1.0)
    full = engine.logits(chunks, question, "full")
    error = (engine.logits(blended, question, "cached") - full).abs().max().item()
    print(f"blend at ratio 1 against full: max abs logit difference {error:.2e}")
    assert error <= 1e-4
    params = SamplingParams(max_new_tokens=32, ignore_eos=True)
    assert (engine.generate(question, params, blended).token_ids
            == engine.generate(question, params, chunks, mode="full").token_ids)


def test_chunks_in_cpu_memory_answer_as_on_the_gpu(qwen3_shape):
    """The CUDA-graph chunk table holds addresses: it must be built from the device copies of CPU chunks."""
    engine = LLMEngine(qwen3_shape, device="cuda", dtype="bf16")
    chunks, question = composed(engine)
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    on_gpu = engine.generate(question, params, chunks).token_ids
    assert engine.generate(question, params, [c.to("cpu") for c in chunks]).token_ids == on_gpu


def test_a_stored_chunk_is_pinned_once_and_copied_from_there(tmp_path):
    from cascade_rag.engine import KVChunk, TieredChunkCache
    from cascade_rag.engine.chunk_format import load_file, save_file
    torch.manual_seed(0)
    keys, values = torch.randn(2, 7, 2, 64, dtype=torch.bfloat16), torch.randn(2, 7, 2, 64, dtype=torch.bfloat16)
    save_file(KVChunk(LEVEL_DOCUMENT, list(range(7)), 3, keys, values, "fp"), tmp_path / "c.safetensors")
    loaded = load_file(tmp_path / "c.safetensors", "fp", "cpu", pin=True)
    assert loaded.keys.is_pinned() and loaded.values.is_pinned()
    tiers = TieredChunkCache("cuda", device_bytes=1 << 20, cpu_bytes=1 << 20)
    assert tiers.pins and tiers.lookup("c") == (None, None)
    chunk = tiers.admit("c", loaded)
    assert chunk.keys.is_cuda and tiers.lookup("c")[1] == "gpu"
    assert tiers.cpu_tier.get("c") is loaded  # kept as loaded: no second copy into pinned memory
    assert torch.equal(chunk.keys.cpu(), keys) and torch.equal(chunk.values.cpu(), values)
    recomputed = loaded.to("cuda")  # a chunk prefilled again on the GPU is kept there, not copied back from pinned
    chunk = tiers.admit("r", recomputed)
    assert chunk.keys.data_ptr() == recomputed.keys.data_ptr() and tiers.cpu_tier.get("r").keys.is_pinned()
