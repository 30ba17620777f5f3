"""Serving: the one path of a question or a retrieval from either front end (gRPC, HTTP) to the engine: the
bounded request queue, the model thread, the answer stream, and the metrics it reports. Refusals are raised as
the queue's QueueFull and Abandoned, the store's NoDocuments, or ValueError (a question that does not fit the
model's context); each front end turns them into its own statuses."""
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Iterator

from cascade_rag.engine import SamplingParams

from .answer import Answer, Source
from .collection import DEFAULT_COLLECTION
from .filters import MetadataFilter
from .metrics import ServingMetrics
from .model_thread import ModelThread
from .pipeline import RAG
from .request_queue import RequestQueue


@dataclass(frozen=True)
class Question:
    """A checked question, as both front ends make it."""
    text: str
    top_k: int
    mode: str | None = None  # None: the engine's DEFAULT_MODE
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=128))
    collection: str = DEFAULT_COLLECTION
    where: MetadataFilter | None = None


class ServedAnswer:
    """Iterate for the text deltas (the engine is held meanwhile; the iteration stops early once alive() turns
    false); then `answer` and `queued_s` hold the rest. `arrived`: perf_counter() at the request's arrival."""

    def __init__(self, serving: "Serving", question: Question, alive: Callable[[], bool], arrived: float):
        self.serving, self.question, self.alive, self.arrived = serving, question, alive, arrived
        self.answer: Answer | None = None
        self.queued_s = 0.0
        self.first_token_s: float | None = None   # from arrival, queue included
        self.complete = False                     # generated to its end (not left by the client)

    def __iter__(self) -> Iterator[str]:
        s, q, metrics = self.serving, self.question, self.serving.metrics
        with s.queue.slot(self.alive) as queued_s:
            self.queued_s = queued_s
            metrics.queued(queued_s)
            stream = s.models.call(s.rag.ask, q.text, q.top_k, q.mode, q.params, q.collection, q.where)
            self.answer = stream.answer
            try:
                last = None
                for delta in s.models.iterate(iter(stream)):
                    now = time.perf_counter()
                    if last is None:
                        self.first_token_s = now - self.arrived
                        metrics.first_token(self.first_token_s)
                    else:
                        metrics.between_tokens(now - last)
                    last = now
                    if not self.alive():  # cancelled or past its deadline: free the engine now
                        return
                    yield delta
                self.complete = True
            finally:
                s.models.call(stream.close)
        if self.first_token_s is None:  # an empty answer: its first token was its end
            self.first_token_s = time.perf_counter() - self.arrived
            metrics.first_token(self.first_token_s)
        metrics.answered(self.answer, time.perf_counter() - self.arrived)


class Serving:
    def __init__(self, rag: RAG, queue: RequestQueue, models: ModelThread, metrics: ServingMetrics):
        self.rag, self.queue, self.models, self.metrics = rag, queue, models, metrics

    def ask(self, question: Question, alive: Callable[[], bool], arrived: float | None = None) -> ServedAnswer:
        return ServedAnswer(self, question, alive, time.perf_counter() if arrived is None else arrived)

    def retrieve(self, question: Question, alive: Callable[[], bool]) -> tuple[list[Source], float, float]:
        """(the top_k sources, seconds queued, seconds retrieving)."""
        with self.queue.slot(alive) as queued_s:
            self.metrics.queued(queued_s)
            began = time.perf_counter()
            sources = self.models.call(self.rag.retrieve, question.text, question.top_k, question.collection,
                                       question.where)
        return sources, queued_s, time.perf_counter() - began


def served_model_name(engine) -> str:
    """The model's name to clients and in metrics: its checkpoint folder's name."""
    return Path(str(engine.model_path)).name
