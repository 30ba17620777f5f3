"""What a question gets back: the sources retrieved and the answer with its timings, streamed."""
from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class Source:
    doc_id: str
    title: str
    score: float
    passage_id: int
    text: str
    metadata: dict[str, str] = field(default_factory=dict)   # its document's


@dataclass
class Answer:
    question: str
    mode: str
    sources: list[Source]
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    retrieval_s: float = 0.0
    chunks_s: float = 0.0              # fetching (or recomputing) the level-1 chunks
    ttft_s: float = 0.0                # prefill of the rest and the first token, as the engine measures it
    first_token_s: float = 0.0         # from the call to the first text, retrieval and chunks included
    total_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    tiers: dict[str, int] = field(default_factory=dict)   # chunks served from gpu / cpu / disk / recomputed
    warnings: list[str] = field(default_factory=list)


class AnswerStream:
    """Iterate for text deltas; `answer` holds text, sources and timings (complete once iteration ends).
    Consume it or call close(): the engine is held while it runs."""

    def __init__(self, answer: Answer, deltas: Iterator[str]):
        self.answer, self._deltas = answer, deltas

    def __iter__(self) -> Iterator[str]:
        return self._deltas

    def result(self) -> Answer:
        for _ in self._deltas:
            pass
        return self.answer

    def close(self) -> None:
        self._deltas.close()
