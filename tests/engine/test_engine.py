"""The engine against transformers on the same weights, and its errors for bad checkpoints."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from cascade_rag.engine import LLMEngine, ModelLoadError, SamplingParams
from cascade_rag.engine.tokenizer import TextStream
from tests.helpers import make_tiny_checkpoint

PROMPT_IDS = [1, 17, 250, 33, 101, 7, 499, 64, 12, 300, 45, 9]


def hf_greedy(model, ids, n, eos):
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=sorted(eos),
                         pad_token_id=sorted(eos)[0])
    return out[0, len(ids):].tolist()


def test_tiny_logits_and_greedy_match_transformers(tiny_checkpoint):
    engine = LLMEngine(tiny_checkpoint, device="cpu", dtype="fp32")
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint), dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf(torch.tensor([PROMPT_IDS])).logits[0]
    ours = engine.logits([], PROMPT_IDS, mode="full")
    assert (ours - expected).abs().max().item() <= 1e-4

    eos = engine.tokenizer.eos_token_ids
    ours = engine.generate(PROMPT_IDS, SamplingParams(max_new_tokens=32)).token_ids
    assert ours == hf_greedy(hf, PROMPT_IDS, 32, eos)
    assert len(ours) == 32 or ours[-1] in eos


@pytest.mark.slow
def test_embedded_model_greedy_matches_transformers(embedded_path):
    engine = LLMEngine(embedded_path, device="cpu", dtype="fp32")
    ids = engine.chat_ids([{"role": "user", "content": "Name three colours of the rainbow and describe each."}])
    hf = AutoModelForCausalLM.from_pretrained(str(embedded_path), dtype=torch.float32).eval()
    ours = engine.generate(ids, SamplingParams(max_new_tokens=32)).token_ids
    assert len(ours) == 32
    assert ours == hf_greedy(hf, ids, 32, engine.tokenizer.eos_token_ids)


def test_stream_deltas_add_up_and_sampling_is_seeded(embedded_path):
    engine = LLMEngine(embedded_path, device="cpu")
    ids = engine.chat_ids([{"role": "user", "content": "Say hello in French."}])
    params = SamplingParams(max_new_tokens=12, temperature=0.8, top_k=50, top_p=0.9, seed=7)
    generation = engine.stream(ids, params)
    deltas = list(generation)
    assert "".join(deltas) == generation.text == engine.tokenizer.decode(
        [t for t in generation.token_ids if t not in engine.tokenizer.eos_token_ids])
    assert generation.finish_reason in ("stop", "length")
    assert engine.generate(ids, params).token_ids == generation.token_ids
    greedy = engine.generate(ids, SamplingParams(max_new_tokens=12)).token_ids
    assert engine.generate(ids, SamplingParams(max_new_tokens=12, temperature=1.0, top_k=1, seed=3)).token_ids == greedy
    limited = engine.generate(ids, SamplingParams(max_new_tokens=3))
    assert limited.finish_reason == "length" and len(limited.token_ids) == 3


def test_text_stream_never_splits_characters_and_honours_stop_strings(embedded_path):
    from cascade_rag.engine.tokenizer import Tokenizer
    tokenizer = Tokenizer(embedded_path)
    text = "Grüße aus 東京 🙂 and more: STOP here"
    ids = tokenizer.encode(text)
    stream = TextStream(tokenizer)
    deltas = [stream.push(t)[0] for t in ids] + [stream.finish()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text
    stream = TextStream(tokenizer, stop=("STOP",))
    out, stopped = "", False
    for t in ids:
        delta, stopped = stream.push(t)
        out += delta
        if stopped:
            break
    assert stopped and out == "Grüße aus 東京 🙂 and more: "
    # each push decodes only the newest tokens; over a long answer the deltas still add up to one decode
    ids = tokenizer.encode(" ".join(f"Line {i}: naïve café, 東京 {i * 7} 🙂 -- 'quoted' (x) ..." for i in range(60)))
    stream = TextStream(tokenizer)
    assert "".join(stream.push(t)[0] for t in ids) + stream.finish() == tokenizer.decode(ids)


def _copy_checkpoint(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_bad_checkpoints_are_named(tmp_path, embedded_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        LLMEngine(tmp_path / "nope", device="cpu")
    good = make_tiny_checkpoint(tmp_path / "good", "qwen3-gqa-untied", embedded_path)

    arch = _copy_checkpoint(good, tmp_path / "arch")
    config = json.loads((arch / "config.json").read_text())
    (arch / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ModelLoadError, match="unsupported architecture 'gpt2'"):
        LLMEngine(arch, device="cpu")

    rope = _copy_checkpoint(good, tmp_path / "rope")
    (rope / "config.json").write_text(json.dumps({**config, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}))
    with pytest.raises(ModelLoadError, match="yarn"):
        LLMEngine(rope, device="cpu")

    missing = _copy_checkpoint(good, tmp_path / "missing")
    tensors = load_file(missing / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, missing / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"missing tensors: layers\.1\.self_attn\.k_proj\.weight"):
        LLMEngine(missing, device="cpu")

    shape = _copy_checkpoint(good, tmp_path / "shape")
    tensors = load_file(shape / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"][:, :10].contiguous()
    save_file(tensors, shape / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"'model\.layers\.0\.mlp\.up_proj\.weight'.*shape \(128, 10\)"):
        LLMEngine(shape, device="cpu")

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="no \\*.safetensors"):
        LLMEngine(no_weights, device="cpu")


def test_sharded_checkpoint_loads(tmp_path, embedded_path):
    single = make_tiny_checkpoint(tmp_path / "single", "llama-gqa-untied", embedded_path)
    hf = AutoModelForCausalLM.from_pretrained(str(single), dtype=torch.float32)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="100KB")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (sharded / f).write_bytes((single / f).read_bytes())
    assert (sharded / "model.safetensors.index.json").exists()
    a = LLMEngine(single, device="cpu", dtype="fp32").logits([], PROMPT_IDS, mode="full")
    b = LLMEngine(sharded, device="cpu", dtype="fp32").logits([], PROMPT_IDS, mode="full")
    assert torch.equal(a, b)


def test_bad_sampling_params_are_named():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
