"""The Answer service: Query (streamed answer, then its sources, usage and timings) and Retrieve."""
import time

import grpc

from .grpc_checks import NO_DOCUMENTS, check_question, engine_slot, invalid, ns, sampling, source
from .model_thread import ModelThread
from .pipeline import RAG
from .proto_gen import cascade_rag_pb2 as pb
from .proto_gen import cascade_rag_pb2_grpc as pb_grpc
from .request_queue import RequestQueue
from .store import NoDocuments, StoreError
from .wire import PROTO_TO_MODE

FINISH_REASONS = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH}


class AnswerService(pb_grpc.AnswerServicer):
    def __init__(self, rag: RAG, queue: RequestQueue, models: ModelThread):
        self.rag, self.queue, self.models = rag, queue, models

    def Query(self, request, context):
        arrived = time.perf_counter()
        top_k = check_question(context, request.question, request.top_k)
        params = sampling(context, request)
        with engine_slot(self.queue, context) as queued_s:
            try:
                stream = self.models.call(self.rag.ask, request.question, top_k, PROTO_TO_MODE[request.mode], params)
                try:
                    for delta in self.models.iterate(iter(stream)):
                        if not context.is_active():  # cancelled or past its deadline: free the engine now
                            return
                        yield pb.QueryResponse(text=delta)
                finally:
                    self.models.call(stream.close)
            except ValueError as exc:  # e.g. passages + question + max_tokens longer than the model's context
                invalid(context, "top_k/max_tokens", str(exc))
            except NoDocuments:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, NO_DOCUMENTS)
            except StoreError as exc:  # e.g. a data directory of another KV format
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        a = stream.answer
        timings = pb.Timings(
            queue_time_ns=ns(queued_s), retrieval_time_ns=ns(a.retrieval_s), chunks_time_ns=ns(a.chunks_s),
            prefill_time_ns=ns(a.ttft_s), time_to_first_token_ns=ns(queued_s + a.first_token_s),
            total_time_ns=ns(time.perf_counter() - arrived), decode_tokens_per_second=a.decode_tokens_per_s)
        yield pb.QueryResponse(result=pb.QueryResult(
            finish_reason=FINISH_REASONS.get(a.finish_reason, pb.FINISH_REASON_UNSPECIFIED),
            sources=[source(s) for s in a.sources], text=a.text, warnings=a.warnings, timings=timings,
            usage=pb.Usage(prompt_tokens=a.prompt_tokens, completion_tokens=len(a.token_ids)),
            chunk_tiers=pb.ChunkTiers(**a.tiers)))

    def Retrieve(self, request, context):
        top_k = check_question(context, request.question, request.top_k)
        with engine_slot(self.queue, context) as queued_s:
            began = time.perf_counter()
            try:
                sources = self.models.call(self.rag.retrieve, request.question, top_k)
            except NoDocuments:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, NO_DOCUMENTS)
        return pb.RetrieveResponse(passages=[source(s) for s in sources], queue_time_ns=ns(queued_s),
                                   retrieval_time_ns=ns(time.perf_counter() - began))
