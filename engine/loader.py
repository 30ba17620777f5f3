"""Loads Hugging Face safetensors checkpoints (single file or sharded) into the Decoder."""
import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open

from .config import ModelConfig, ModelLoadError
from .model import Decoder
from .ops import Ops


def checkpoint_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).exists()]
        if missing:
            raise ModelLoadError(f"{index} names shards that are missing: {', '.join(missing)}")
        return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"model folder {folder} has no *.safetensors file")
    return files


def model_identity(folder: Path) -> str:
    """Cheap identity of the weights and tokenizer: file sizes, safetensors headers and sampled blocks."""
    digest = hashlib.sha256()
    for file in checkpoint_files(folder):
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as f:
            for offset in range(0, size, max(1, size // 16)):
                f.seek(offset)
                digest.update(f.read(1 << 16))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"):
        path = folder / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def load_model(folder: Path, dtype: torch.dtype, device: str, ops: Ops = Ops()) -> Decoder:
    """The checkpoint in `folder` as a Decoder in dtype on device, running the kernels `ops` chooses."""
    folder = Path(folder)
    config = ModelConfig.from_folder(folder)
    with torch.device("meta"):
        model = Decoder(config, ops)
    model = model.to_empty(device=device).to(dtype)
    model.rotary = type(model.rotary)(config.head_dim, config.rope_theta, config.max_position).to(device)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for file in checkpoint_files(folder):
        try:
            handle = safe_open(str(file), framework="pt", device="cpu")
        except Exception as exc:
            raise ModelLoadError(f"cannot read {file}: {exc}") from None
        with handle:
            for name in handle.keys():
                _load_tensor(model, params, loaded, name, handle.get_tensor(name), file)
    missing = sorted(expected_tensor_names(model) - loaded)
    if missing:
        raise ModelLoadError(f"checkpoint in {folder} is missing tensors: {', '.join(missing[:10])}")
    return model.eval()


def expected_tensor_names(model: Decoder) -> set[str]:
    """Checkpoint tensor names (without the leading 'model.') that the model needs."""
    names = set()
    for name in dict(model.named_parameters()):
        packed = [(part, ours) for part, (ours, _) in Decoder.packed_modules_mapping.items() if f".{ours}." in name]
        if packed:
            names.update(name.replace(ours, part) for part, ours in packed)
        else:
            names.add(name)
    return names


def _load_tensor(model, params, loaded, name, tensor, file):
    ours = name.removeprefix("model.")
    if ours == "lm_head.weight" and model.config.tie_word_embeddings:
        return
    for part, (packed, shard) in Decoder.packed_modules_mapping.items():
        if f".{part}." in ours:
            target_name = ours.replace(part, packed)
            sizes = model.shard_sizes(packed)
            offset = sum(sizes[:shard])
            param = params.get(target_name)
            if param is None:
                break
            expected = (sizes[shard], *param.shape[1:])
            _check_shape(name, tensor, expected, file)
            param.data[offset:offset + sizes[shard]].copy_(tensor)
            loaded.add(ours)
            return
    param = params.get(ours)
    if param is None:
        raise ModelLoadError(f"unexpected tensor {name!r} in {file} for a {model.config.architecture} model")
    _check_shape(name, tensor, tuple(param.shape), file)
    param.data.copy_(tensor)
    loaded.add(ours)


def _check_shape(name, tensor, expected, file):
    if tuple(tensor.shape) != tuple(expected):
        raise ModelLoadError(
            f"tensor {name!r} in {file} has shape {tuple(tensor.shape)}, expected {tuple(expected)}"
        )
