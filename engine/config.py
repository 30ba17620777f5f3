"""One config dataclass for the decoder family (Llama, Qwen2, Qwen3), read from a Hugging Face config.json."""
import json
from dataclasses import dataclass
from pathlib import Path

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")


class ModelLoadError(ValueError):
    pass


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position: int
    tie_word_embeddings: bool
    qk_norm: bool
    qkv_bias: bool
    eos_token_ids: tuple[int, ...] = ()

    @property
    def qkv_dim(self) -> int:
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim

    def kv_bytes_per_token(self, element_size: int) -> int:
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * element_size

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        arch = raw.get("model_type")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ModelLoadError(
                f"unsupported architecture {arch!r} (architectures {raw.get('architectures')}); "
                f"supported model_type values: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        for rope in (raw.get("rope_scaling") or {}, raw.get("rope_parameters") or {}):
            rope_type = rope.get("rope_type", rope.get("type", "default"))
            if rope_type != "default":
                raise ModelLoadError(f"unsupported rope scaling type {rope_type!r}; only 'default' RoPE is supported")
        theta = (raw.get("rope_parameters") or {}).get("rope_theta", raw.get("rope_theta", 10000.0))
        try:
            heads = raw["num_attention_heads"]
            hidden = raw["hidden_size"]
            eos = raw.get("eos_token_id")
            return cls(
                architecture=arch,
                vocab_size=raw["vocab_size"],
                hidden_size=hidden,
                intermediate_size=raw["intermediate_size"],
                num_layers=raw["num_hidden_layers"],
                num_heads=heads,
                num_kv_heads=raw.get("num_key_value_heads") or heads,
                head_dim=raw.get("head_dim") or hidden // heads,
                rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
                rope_theta=float(theta),
                max_position=raw.get("max_position_embeddings", 32768),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                qk_norm=arch == "qwen3",
                qkv_bias=arch == "qwen2" or bool(raw.get("attention_bias", False)),
                eos_token_ids=tuple(eos if isinstance(eos, list) else [] if eos is None else [eos]),
            )
        except KeyError as exc:
            raise ModelLoadError(f"config.json lacks the field {exc.args[0]!r}") from None

    @classmethod
    def from_folder(cls, folder: Path) -> "ModelConfig":
        path = Path(folder) / "config.json"
        if not Path(folder).is_dir():
            raise ModelLoadError(f"model folder {folder} does not exist")
        if not path.exists():
            raise ModelLoadError(f"model folder {folder} has no config.json")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(raw)
