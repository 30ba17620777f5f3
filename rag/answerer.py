"""Answerer: a question's retrieved passages composed after level 0 (their stored chunks, or their tokens for
`full`) with the question, and the answer generated and streamed with its timings."""
import itertools
import logging
import time

from cascade_rag.engine import DEFAULT_MODE, MODES, KVChunk, KVChunkError, SamplingParams

from .answer import Answer, AnswerStream
from .chunk_provider import ChunkProvider
from .collection import DEFAULT_COLLECTION
from .document_store import Passage
from .filters import MetadataFilter
from .retriever import Retriever, check_query

log = logging.getLogger("cascade_rag")


class Answerer:
    def __init__(self, provider: ChunkProvider, retriever: Retriever):
        self.provider, self.retriever = provider, retriever

    def ask(self, question: str, top_k: int, mode: str | None, params: SamplingParams,
            collection: str = DEFAULT_COLLECTION, where: MetadataFilter | None = None) -> AnswerStream:
        """See RAG.ask."""
        mode = DEFAULT_MODE if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        check_query(question, top_k)
        self.retriever.require_documents(collection)
        began = time.perf_counter()
        self.provider.model()  # loaded here: a mismatch with the store raises from ask(), not from the stream
        self.provider.check_kv_format()
        hits = self.retriever.search(question, top_k, collection, where)
        answer = Answer(question, mode, [s for s, _ in hits], retrieval_s=time.perf_counter() - began)
        return AnswerStream(answer, self._stream(answer, [p for _, p in hits], params, began))

    def composition(self, question: str, top_k: int) -> tuple[list[KVChunk], list[int]]:
        """See RAG.composition."""
        check_query(question, top_k)
        model = self.provider.model()
        self.provider.check_kv_format()
        hits = self.retriever.search(question, top_k)
        answer = Answer(question, "cached", [s for s, _ in hits])
        with self.provider.lock:
            chunks = [model.level0] + self._chunks([p for _, p in hits], answer)
        for chunk in chunks:
            chunk.wait_arrived()
        return chunks, model.template.query_ids(model.engine.tokenizer, question)

    def _chunks(self, passages: list[Passage], answer: Answer, recomputed: set[str] | None = None) -> list[KVChunk]:
        """The passages' chunks (those from the store still arriving, layer by layer), their tiers counted. The keys
        of the chunks recomputed for this answer gather in `recomputed`, and count as recomputed in a later attempt
        (where a tier holds them now)."""
        recomputed = set() if recomputed is None else recomputed
        chunks = []
        for passage, served in zip(passages, self.provider.serve_streamed(
                [(p.chunk_key, p.token_ids, f"{p.pid} ({p.doc_id})", p.collection) for p in passages])):
            tier = "recomputed" if passage.chunk_key in recomputed else served.tier
            if tier == "recomputed":
                recomputed.add(passage.chunk_key)
            answer.tiers[tier] = answer.tiers.get(tier, 0) + 1
            if served.warning:
                answer.warnings.append(served.warning)
            chunks.append(served.chunk)
        return chunks

    def _generation(self, answer: Answer, passages: list[Passage], params: SamplingParams, model):
        """The generation over level 0, the passages' chunks and the question, and its first text delta (None:
        none). A chunk whose layer fails its check as it arrives is forgotten and the request runs again over it
        recomputed (a warning)."""
        ids = model.template.query_ids(model.engine.tokenizer, answer.question)
        recomputed = set()
        for attempt in range(2):
            loaded = time.perf_counter()
            chunks = [model.level0] + (self._chunks(passages, answer, recomputed) if answer.mode != "full" else
                                       [self.provider.tokens_only(p.token_ids) for p in passages])
            answer.chunks_s = time.perf_counter() - loaded
            try:  # `blend` waits for the chunks before its recompute, in stream(); `cached` at the first token
                generation = model.engine.stream(ids, params, chunks, answer.mode)
                deltas = iter(generation)
                return generation, deltas, next(deltas, None)
            except KVChunkError as exc:
                if attempt:
                    raise
                for passage, chunk in zip(passages, chunks[1:]):  # every streamed chunk settled first: another
                    if chunk.arrival is not None and chunk.arrival.settle():  # may fail after the one that raised
                        self.provider.forget(passage.chunk_key)
                answer.tiers.clear()
                answer.warnings.append(f"{exc}; recomputing it")
                log.warning(answer.warnings[-1])

    def _stream(self, answer: Answer, passages: list[Passage], params: SamplingParams, began: float):
        model = self.provider.model()
        with self.provider.lock:
            generation, deltas, first = self._generation(answer, passages, params, model)
            answer.prompt_tokens = generation.prompt_tokens
            for delta in itertools.chain([first] if first is not None else [], deltas):
                if not answer.text:
                    answer.first_token_s = time.perf_counter() - began
                answer.text += delta
                yield delta
        answer.text = generation.text
        answer.token_ids, answer.finish_reason = generation.token_ids, generation.finish_reason
        answer.ttft_s, answer.decode_tokens_per_s = generation.ttft_s, generation.decode_tokens_per_s
        answer.total_s = time.perf_counter() - began
