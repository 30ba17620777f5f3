import os
from pathlib import Path

import pytest
import torch

from cascade_rag.kernels.dispatch import interpreted  # the one place that chooses Triton's interpreter

from .helpers import EMBEDDED_VOCAB, TINY_CONFIGS, make_tiny_checkpoint, random_checkpoint
from .redis_server import redis_server, redis_url  # noqa: F401  (fixtures)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

INTERPRETED = interpreted()
MARKERS = {
    "slow": ("end-to-end tests on the real embedded model", None),
    "gpu": ("needs CUDA, Triton compiled", None if torch.cuda.is_available() and not INTERPRETED else "needs CUDA"),
    "interpreter": ("Triton kernels in the interpreter on the CPU",
                    None if INTERPRETED else "needs Triton's interpreter (TRITON_INTERPRET=1, no GPU)"),
}


def pytest_configure(config):
    for name, (doc, _) in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")


def pytest_collection_modifyitems(config, items):
    for item in items:
        for name, (_, skip) in MARKERS.items():
            if skip and item.get_closest_marker(name):
                item.add_marker(pytest.mark.skip(reason=skip))


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


@pytest.fixture(scope="session", params=list(TINY_CONFIGS))
def tiny_checkpoint(request, tmp_path_factory, tokenizer_dir) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param, tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, embedded_path) -> Path:
    """A random two-layer Llama with the embedded model's tokenizer and vocabulary: fast, reads real text, rarely
    stops early."""
    return random_checkpoint(tmp_path_factory.mktemp("tiny"), "llama", embedded_path, **EMBEDDED_VOCAB)
