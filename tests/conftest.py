import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

# name -> (model_type, extra config): GQA and MHA, tied and untied, each family's switches
TINY_CONFIGS = {
    "llama-gqa-untied": ("llama", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
    "llama-mha-tied": ("llama", dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)),
    "qwen2-gqa-bias": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
    "qwen3-gqa-tied": ("qwen3", dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True)),
    "qwen3-gqa-untied": ("qwen3", dict(num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)),
}


@pytest.fixture(scope="session")
def embedded_path() -> Path:
    from cascade_rag.engine import embedded_model_path
    return embedded_model_path()


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    """Tokenizer files for tiny checkpoints: CASCADE_RAG_TOKENIZER (e.g. on a machine without the package
    index) or the embedded model's."""
    folder = os.environ.get("CASCADE_RAG_TOKENIZER")
    if folder:
        return Path(folder)
    from cascade_rag.engine import embedded_model_path
    return embedded_model_path()


def make_tiny_checkpoint(folder: Path, name: str, tokenizer_from: Path, seed: int = 0, head_dim: int = 16) -> Path:
    """A random-weight Hugging Face checkpoint of a tiny config, saved with transformers."""
    from transformers import AutoConfig, AutoModelForCausalLM
    model_type, extra = TINY_CONFIGS[name]
    config = AutoConfig.for_model(
        model_type, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, head_dim=head_dim,
        max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=10000.0, initializer_range=0.2,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, **extra,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if model_type == "qwen2" or model_type == "qwen3":
        with torch.no_grad():  # non-trivial norm weights and biases so the switches matter
            for pname, p in model.named_parameters():
                if "norm" in pname or pname.endswith("bias"):
                    p.copy_(1 + 0.5 * torch.randn_like(p) if "norm" in pname else 0.5 * torch.randn_like(p))
    model.save_pretrained(folder)
    for f in TOKENIZER_FILES:
        if (tokenizer_from / f).exists():
            shutil.copy(tokenizer_from / f, folder / f)
    return folder


@pytest.fixture(scope="session", params=list(TINY_CONFIGS))
def tiny_checkpoint(request, tmp_path_factory, tokenizer_dir) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param, tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, embedded_path) -> Path:
    """A random two-layer Llama with the embedded model's tokenizer and vocabulary: fast, reads real text, rarely
    stops early."""
    from transformers import AutoConfig, AutoModelForCausalLM
    folder = tmp_path_factory.mktemp("tiny")
    config = AutoConfig.for_model("llama", vocab_size=49152, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  max_position_embeddings=2048, tie_word_embeddings=True, eos_token_id=2)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (embedded_path / name).exists():
            shutil.copy(embedded_path / name, folder / name)
    return folder
