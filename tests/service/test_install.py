"""Our code imports as cascade_rag.* from any working directory, beside dependencies with the same bare names
(Hugging Face's `kernels`, which transformers imports), and the install is reproducible from the lock."""
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import ROOT

FOLDERS = ("engine", "kernels", "rag")


def python(code: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **env})


@pytest.fixture(params=["root", "elsewhere"])
def cwd(request, tmp_path) -> Path:
    return ROOT if request.param == "root" else tmp_path


@pytest.mark.slow
def test_embedded_model_prepares_and_engine_imports_from_any_directory(cwd, tmp_path):
    """The failure of 2026-12-05: from the root our kernels/ hid transformers' `kernels` and the GGUF could not
    be dequantised; from elsewhere site-packages' `kernels` hid ours and the engine did not import."""
    result = python("from cascade_rag.engine import embedded_model_path, LLMEngine\n"
                    "import kernels, transformers\n"
                    "path = embedded_model_path()\n"
                    "print(path, kernels.__file__)\n", cwd, CASCADE_RAG_CACHE=str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    model, hf_kernels = result.stdout.split()
    assert (Path(model) / "config.json").is_file() and "site-packages" in hf_kernels


def test_transformers_kernels_and_ours_in_one_process(tmp_path):
    """transformers' hub-kernels integration imports Hugging Face's `kernels`; ours still run (a Triton kernel
    in the interpreter, checked against its reference), whichever is imported first."""
    code = ("import kernels, transformers.integrations.hub_kernels as hub\n"
            "import torch\n"
            "from cascade_rag.kernels.rmsnorm import rmsnorm, rmsnorm_ref\n"
            "x, w = torch.randn(3, 64), torch.randn(64)\n"
            "assert torch.allclose(rmsnorm(x, w, 1e-6, impl='triton'), rmsnorm_ref(x, w, 1e-6), atol=1e-5)\n"
            "assert hasattr(kernels, 'get_kernel') and 'site-packages' in kernels.__file__, kernels.__file__\n"
            "print('ok')\n")
    for cwd in (ROOT, tmp_path):
        result = python(code, cwd)
        assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_cli_entry_point_works_from_any_directory(where, tmp_path):
    cwd = ROOT if where == "root" else tmp_path
    exe = Path(sys.executable).parent / "cascade-rag"
    result = subprocess.run([str(exe), "list", "--data-dir", str(tmp_path / "none")], cwd=cwd, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1 and "does not exist" in result.stderr, result.stderr


def test_no_folder_of_ours_shadows_a_dependency():
    """A folder with an __init__.py is importable under its bare name from the repository root, ahead of any
    installed package of that name: none of ours may share a name with a dependency's top-level module."""
    installed = importlib.metadata.packages_distributions()
    for folder in FOLDERS:
        if (ROOT / folder / "__init__.py").exists():
            assert folder not in installed, f"{folder}/ shadows the {installed[folder]} package: remove its __init__.py"
    assert not (ROOT / "kernels" / "__init__.py").exists()


def test_lock_pins_every_dependency_of_pyproject():
    """requirements.lock holds an exact, hashed version of every requirement of pyproject.toml (torch apart,
    installed by TORCH_SPEC), and the Makefile, the Dockerfile and CI install from it."""
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    names = {re.split(r"[ <>=!~;\[]", req, maxsplit=1)[0].lower().replace("_", "-") for req in wanted}
    lock = (ROOT / "requirements.lock").read_text()
    pinned = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+) \\$", lock, flags=re.M))
    pinned = {name.lower().replace("_", "-"): version for name, version in pinned.items()}
    assert names - {"torch"} <= set(pinned), names - {"torch"} - set(pinned)
    assert "torch" not in pinned
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.split("\n", 3)[-1])
    assert all("--hash=sha256:" in block for block in blocks if "==" in block)
    if (Path(sys.prefix) / ".installed").exists():  # an environment that `make setup` installed from the lock
        for name, version in pinned.items():
            assert importlib.metadata.version(name) == version, f"{name}: installed differs from the lock"
    assert "-r $(LOCK)" in (ROOT / "Makefile").read_text()
    assert "requirements.lock" in (ROOT / "Dockerfile").read_text()
