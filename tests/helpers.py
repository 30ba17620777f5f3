"""Shared by the tests: the repository root and the tiny random-weight checkpoints (written by the one helper,
cascade_rag.benchmarks.checkpoints.random_checkpoint)."""
from pathlib import Path

from cascade_rag.benchmarks.checkpoints import random_checkpoint

ROOT = Path(__file__).resolve().parent.parent

# name -> (model_type, extra config): GQA and MHA, tied and untied, each family's switches
TINY_CONFIGS = {
    "llama-gqa-untied": ("llama", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
    "llama-mha-tied": ("llama", dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)),
    "qwen2-gqa-bias": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
    "qwen3-gqa-tied": ("qwen3", dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True)),
    "qwen3-gqa-untied": ("qwen3", dict(num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)),
}
# the embedded model's vocabulary and tokenizer on a random two-layer Llama: fast, reads real text
EMBEDDED_VOCAB = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                      tie_word_embeddings=True, eos_token_id=2)


def make_tiny_checkpoint(folder: Path, name: str, tokenizer_from: Path, seed: int = 0, head_dim: int = 16) -> Path:
    """One of TINY_CONFIGS: three layers, a 512-token vocabulary."""
    model_type, extra = TINY_CONFIGS[name]
    return random_checkpoint(
        folder, model_type, tokenizer_from, seed, perturb_norms=model_type in ("qwen2", "qwen3"), vocab_size=512,
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, head_dim=head_dim, max_position_embeddings=1024,
        rms_norm_eps=1e-6, rope_theta=10000.0, initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        **extra)
