"""Answerer: a question's retrieved passages composed after level 0 (their stored chunks, or their tokens for
`full`) with the question, and the answer generated and streamed with its timings."""
import time

from cascade_rag.engine import MODES, KVChunk, SamplingParams

from .answer import Answer, AnswerStream
from .chunk_provider import ChunkProvider
from .collection import DEFAULT_COLLECTION
from .document_store import Passage
from .filters import MetadataFilter
from .retriever import Retriever, check_query


class Answerer:
    def __init__(self, provider: ChunkProvider, retriever: Retriever):
        self.provider, self.retriever = provider, retriever

    def ask(self, question: str, top_k: int, mode: str, params: SamplingParams,
            collection: str = DEFAULT_COLLECTION, where: MetadataFilter | None = None) -> AnswerStream:
        """See RAG.ask."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        check_query(question, top_k)
        self.retriever.require_documents(collection)
        began = time.perf_counter()
        self.provider.model()  # loaded here: a mismatch with the store raises from ask(), not from the stream
        hits = self.retriever.search(question, top_k, collection, where)
        answer = Answer(question, mode, [s for s, _ in hits], retrieval_s=time.perf_counter() - began)
        return AnswerStream(answer, self._stream(answer, [p for _, p in hits], params, began))

    def composition(self, question: str, top_k: int) -> tuple[list[KVChunk], list[int]]:
        """See RAG.composition."""
        check_query(question, top_k)
        model = self.provider.model()
        hits = self.retriever.search(question, top_k)
        answer = Answer(question, "cached", [s for s, _ in hits])
        with self.provider.lock:
            chunks = [model.level0] + [self._chunk(p, answer) for _, p in hits]
        return chunks, model.template.query_ids(model.engine.tokenizer, question)

    def _chunk(self, passage: Passage, answer: Answer) -> KVChunk:
        served = self.provider.serve(passage.chunk_key, passage.token_ids, f"{passage.pid} ({passage.doc_id})",
                                     passage.collection)
        answer.tiers[served.tier] = answer.tiers.get(served.tier, 0) + 1
        if served.warning:
            answer.warnings.append(served.warning)
        return served.chunk

    def _stream(self, answer: Answer, passages: list[Passage], params: SamplingParams, began: float):
        model = self.provider.model()
        with self.provider.lock:
            loaded = time.perf_counter()
            chunks = [model.level0] + [self._chunk(p, answer) if answer.mode != "full" else
                                       self.provider.tokens_only(p.token_ids) for p in passages]
            answer.chunks_s = time.perf_counter() - loaded
            ids = model.template.query_ids(model.engine.tokenizer, answer.question)
            generation = model.engine.stream(ids, params, chunks, answer.mode)
            answer.prompt_tokens = generation.prompt_tokens
            for delta in generation:
                if not answer.text:
                    answer.first_token_s = time.perf_counter() - began
                answer.text += delta
                yield delta
        answer.text = generation.text
        answer.token_ids, answer.finish_reason = generation.token_ids, generation.finish_reason
        answer.ttft_s, answer.decode_tokens_per_s = generation.ttft_s, generation.decode_tokens_per_s
        answer.total_s = time.perf_counter() - began
