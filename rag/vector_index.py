"""FAISS inner-product index over passage vectors, keyed by int64 passage ids, saved by write-then-rename."""
from pathlib import Path

import faiss
import numpy as np

from cascade_rag.engine.file_io import write_atomic

INDEX_TYPES = ("flat", "hnsw")
HNSW_EF_SEARCH = 64  # candidates an HNSW search keeps; raised to k, and kept high under a selection of ids


class VectorIndex:
    def __init__(self, dim: int, kind: str = "flat", generation: int = 0):
        if kind not in INDEX_TYPES:
            raise ValueError(f"unknown index type {kind!r}; choose one of {', '.join(INDEX_TYPES)}")
        self.dim, self.kind, self.generation = dim, kind, generation
        inner = faiss.IndexFlatIP(dim) if kind == "flat" else faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        self.index = faiss.IndexIDMap2(inner)

    @classmethod
    def build(cls, dim: int, kind: str, generation: int, ids: np.ndarray, vectors: np.ndarray | None) -> "VectorIndex":
        index = cls(dim, kind, generation)
        if vectors is not None and len(ids):
            index.add(ids, vectors)
        return index

    def __len__(self) -> int:
        return self.index.ntotal

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map)

    def add(self, ids, vectors: np.ndarray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    @property
    def supports_remove(self) -> bool:
        return self.kind == "flat"  # HNSW graphs cannot drop nodes: the caller rebuilds from the stored vectors

    def remove(self, ids) -> None:
        self.index.remove_ids(np.asarray(ids, dtype=np.int64))

    def search(self, vector: np.ndarray, k: int, among: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The k nearest passages, only of the ids `among` when given (selected inside FAISS's search, so the k are
        the k nearest of those)."""
        n = len(self) if among is None else min(len(self), len(among))
        if n == 0 or k < 1:
            return []
        params = None
        if among is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(among, dtype=np.int64))
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(HNSW_EF_SEARCH, k)) \
                if self.kind == "hnsw" else faiss.SearchParameters(sel=selector)
        scores, ids = self.index.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), min(k, n), params=params)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def similarity(self, vector: np.ndarray, ids: list[int]) -> list[float | None]:
        """Inner product of the vector with the stored vectors of these ids; None for an id the index does not hold
        (a passage newer than the index a replica answers from while it builds the next one)."""
        query, scores = np.asarray(vector, dtype=np.float32), []
        for i in ids:
            try:
                scores.append(float(self.index.reconstruct(int(i)) @ query))
            except RuntimeError:  # faiss: key not found
                scores.append(None)
        return scores

    # The file name carries the store generation it reflects; a file of another generation is stale.
    @staticmethod
    def path_for(folder: Path, kind: str, generation: int) -> Path:
        return Path(folder) / f"index-{kind}.{generation}.faiss"

    def save(self, folder: Path) -> Path:
        """Writes the index atomically (a failed write, e.g. on a full disk, leaves no temporary file)."""
        path = self.path_for(folder, self.kind, self.generation)
        write_atomic(path, faiss.serialize_index(self.index).tobytes())
        for old in Path(folder).glob("index-*.faiss"):
            if old != path:
                old.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, folder: Path, dim: int, kind: str, generation: int) -> "VectorIndex | None":
        """The saved index of exactly this generation, or None when it is missing, stale or unreadable."""
        path = cls.path_for(folder, kind, generation)
        if not path.exists():
            return None
        try:
            loaded = faiss.read_index(str(path))
        except RuntimeError:
            return None
        if not isinstance(loaded, faiss.IndexIDMap2) or loaded.d != dim:
            return None
        index = cls(dim, kind, generation)
        index.index = loaded
        return index
