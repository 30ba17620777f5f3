"""BM25 over the passages' titles and texts, in memory, built from the store for one store generation."""
import re

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

WORD = re.compile(r"\w+")
STOPWORDS = frozenset(STOPWORDS_EN)


def words(text: str) -> list[str]:
    return [w for w in WORD.findall(text.lower()) if w not in STOPWORDS]


class LexicalIndex:
    def __init__(self, generation: int, ids: list[int], texts: list[str]):
        self.generation = generation
        self.ids = np.asarray(ids, dtype=np.int64)
        tokenized = [words(t) for t in texts]
        self.bm25 = None
        if any(tokenized):
            self.bm25 = bm25s.BM25()
            self.bm25.index(tokenized, show_progress=False)

    def search(self, question: str, k: int, among: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The k passages with the highest BM25 score above zero: (passage id, score), best first; only of the ids
        `among` when given (the others scored zero before the k are cut)."""
        terms = [w for w in words(question) if self.bm25 is not None and w in self.bm25.vocab_dict]
        if not terms or k < 1:
            return []
        scores = self.bm25.get_scores(terms)
        if among is not None:
            scores = np.where(np.isin(self.ids, among), scores, 0.0)
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(self.ids[i]), float(scores[i])) for i in top if scores[i] > 0]


def fuse(rankings: list[list[tuple[int, float]]], k: int = 60) -> list[int]:
    """Reciprocal rank fusion: ids ordered by the sum over rankings of 1 / (k + rank), rank from 1."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (pid, _) in enumerate(ranking, start=1):
            fused[pid] = fused.get(pid, 0.0) + 1.0 / (k + rank)
    return sorted(fused, key=lambda pid: -fused[pid])
