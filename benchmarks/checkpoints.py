"""Random-weight Hugging Face checkpoints: the real shapes the GPU benchmarks time (no real Qwen weights can be
had on the benchmark machines; speed does not depend on the values), and the tiny ones of the tests. The one
helper that writes such checkpoints."""
import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
SHAPES = {
    "qwen3-0.6b": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       tie_word_embeddings=True, max_position_embeddings=40960, rope_theta=1e6),
    "smollm2-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                         tie_word_embeddings=True, max_position_embeddings=40960, rope_theta=100000.0),
}


def random_checkpoint(folder: Path | str, model_type: str, tokenizer_from: Path | str, seed: int = 0,
                      dtype: torch.dtype = torch.float32, perturb_norms: bool = False, **config) -> Path:
    """A random-weight checkpoint of `model_type` with `config`, saved with transformers in `dtype`, with the
    tokenizer files of `tokenizer_from`. `perturb_norms`: norm weights and biases away from 1 and 0, so that the
    families' switches matter."""
    from transformers import AutoConfig, AutoModelForCausalLM
    folder, tokenizer_from = Path(folder), Path(tokenizer_from)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config), dtype=dtype)
    if perturb_norms:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.copy_(1 + 0.5 * torch.randn_like(p))
                elif name.endswith("bias"):
                    p.copy_(0.5 * torch.randn_like(p))
    model.save_pretrained(folder)
    for f in TOKENIZER_FILES:
        if (tokenizer_from / f).exists():
            shutil.copy(tokenizer_from / f, folder / f)
    return folder


def shape_checkpoint(shape: str, folder: Path | str, tokenizer_from: Path | str) -> str:
    """A bf16 checkpoint of one of SHAPES in `folder` (kept: written only when the folder holds none)."""
    if not (Path(folder) / "config.json").exists():
        extra = dict(SHAPES[shape])
        random_checkpoint(folder, extra.pop("model_type"), tokenizer_from, dtype=torch.bfloat16, bos_token_id=1,
                          eos_token_id=2, **extra)
    return str(folder)
