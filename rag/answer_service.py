"""The Answer service: Query (streamed answer, then its sources, usage and timings) and Retrieve."""
import time

import grpc

from .document_store import NoDocuments
from .grpc_checks import alive, check_question, engine_slot, invalid, no_documents, ns, sampling, source
from .grpc_errors import statuses
from .grpc_scope import collection_of, filter_of
from .proto_gen import cascade_rag_pb2 as pb
from .proto_gen import cascade_rag_pb2_grpc as pb_grpc
from .serving import Question, Serving
from .token_scopes import TokenScopes
from .wire import MODE_TO_PROTO, PROTO_TO_MODE

FINISH_REASONS = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH}


class AnswerService(pb_grpc.AnswerServicer):
    def __init__(self, serving: Serving, tokens: TokenScopes | None = None):
        self.serving, self.tokens = serving, tokens

    def Query(self, request, context):
        arrived = time.perf_counter()
        collection = collection_of(context, self.tokens, request.collection)
        question = Question(request.question, check_question(context, request.question, request.top_k),
                            PROTO_TO_MODE[request.mode], sampling(context, request), collection,
                            filter_of(context, request))
        served = self.serving.ask(question, lambda: alive(context), arrived)
        with statuses(context), engine_slot(context):
            try:
                for delta in served:
                    yield pb.QueryResponse(text=delta)
            except ValueError as exc:  # e.g. passages + question + max_tokens longer than the model's context
                invalid(context, "top_k/max_tokens", str(exc))
            except NoDocuments:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, no_documents(collection))
        if not served.complete:  # the client left, or its deadline passed while decoding
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed while decoding")
            return
        a = served.answer
        timings = pb.Timings(
            queue_time_ns=ns(served.queued_s), retrieval_time_ns=ns(a.retrieval_s), chunks_time_ns=ns(a.chunks_s),
            prefill_time_ns=ns(a.ttft_s), time_to_first_token_ns=ns(served.queued_s + a.first_token_s),
            total_time_ns=ns(time.perf_counter() - arrived), decode_tokens_per_second=a.decode_tokens_per_s)
        yield pb.QueryResponse(result=pb.QueryResult(
            finish_reason=FINISH_REASONS.get(a.finish_reason, pb.FINISH_REASON_UNSPECIFIED),
            sources=[source(s) for s in a.sources], text=a.text, warnings=a.warnings, timings=timings,
            usage=pb.Usage(prompt_tokens=a.prompt_tokens, completion_tokens=len(a.token_ids)),
            chunk_tiers=pb.ChunkTiers(**a.tiers), mode=MODE_TO_PROTO[a.mode]))

    def Retrieve(self, request, context):
        collection = collection_of(context, self.tokens, request.collection)
        question = Question(request.question, check_question(context, request.question, request.top_k),
                            collection=collection, where=filter_of(context, request))
        with statuses(context), engine_slot(context):
            try:
                sources, queued_s, retrieval_s = self.serving.retrieve(question, lambda: alive(context))
            except NoDocuments:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, no_documents(collection))
        return pb.RetrieveResponse(passages=[source(s) for s in sources], queue_time_ns=ns(queued_s),
                                   retrieval_time_ns=ns(retrieval_s))
