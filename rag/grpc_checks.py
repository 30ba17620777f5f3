"""The server's limits and the checks of requests against them: a user's mistake aborts the call with
INVALID_ARGUMENT naming the field; a full queue RESOURCE_EXHAUSTED; a call abandoned while queued
DEADLINE_EXCEEDED or CANCELLED."""
import math
from contextlib import contextmanager

import grpc

from cascade_rag.engine import SamplingParams

from .answer import Source
from .collection import DEFAULT_COLLECTION
from .proto_gen import cascade_rag_pb2 as pb
from .request_queue import Abandoned, QueueFull
from .wire import PROTO_TO_MODE

MAX_QUESTION_CHARS = 4000
MAX_TOP_K = 32
MAX_TOKENS = 1024
MAX_TEMPERATURE = 2.0
DEFAULT_TOP_K, DEFAULT_MAX_TOKENS = 4, 128
NO_DOCUMENTS = ("no documents have been ingested into this server's data directory: ingest some first "
                "(Documents.IngestDocuments, or `cascade-rag ingest PATH --data-dir DIR` on the server's directory)")


def no_documents(collection: str) -> str:
    """NO_DOCUMENTS, naming the collection when it is not the default one."""
    if collection == DEFAULT_COLLECTION:
        return NO_DOCUMENTS
    return (f"no documents have been ingested into collection {collection!r}: ingest some first "
            f"(Documents.IngestDocuments with collection {collection!r})")


def ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def invalid(context, field: str, message: str):
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}")


def alive(context) -> bool:
    remaining = context.time_remaining()
    return context.is_active() and (remaining is None or remaining > 0)


def check_question(context, question: str, top_k: int) -> int:
    """The top_k to use (0 means the default); aborts on an empty or oversized question or top_k out of range."""
    if not question.strip():
        invalid(context, "question", "must not be empty")
    if len(question) > MAX_QUESTION_CHARS:
        invalid(context, "question", f"{len(question)} characters, at most {MAX_QUESTION_CHARS} allowed")
    if top_k > MAX_TOP_K:
        invalid(context, "top_k", f"{top_k} is out of range 1..{MAX_TOP_K}")
    return top_k or DEFAULT_TOP_K


def sampling(context, request) -> SamplingParams:
    if request.max_tokens > MAX_TOKENS:
        invalid(context, "max_tokens", f"{request.max_tokens} is out of range 1..{MAX_TOKENS}")
    if not (math.isfinite(request.temperature) and 0 <= request.temperature <= MAX_TEMPERATURE):
        invalid(context, "temperature", f"{request.temperature} is out of range 0..{MAX_TEMPERATURE}")
    if not (math.isfinite(request.top_p) and 0 <= request.top_p <= 1):
        invalid(context, "top_p", f"{request.top_p} is out of range (0, 1]")
    if request.mode not in PROTO_TO_MODE:
        invalid(context, "mode", f"unknown mode {request.mode}")
    return SamplingParams(max_new_tokens=request.max_tokens or DEFAULT_MAX_TOKENS, temperature=request.temperature,
                          top_p=request.top_p or 1.0, seed=request.seed if request.HasField("seed") else None)


def source(s: Source) -> pb.Source:
    return pb.Source(document_id=s.doc_id, title=s.title, score=s.score, passage_id=s.passage_id, text=s.text,
                     metadata=s.metadata)


@contextmanager
def engine_slot(context):
    """The refusals of RequestQueue.slot in the body turned into gRPC statuses."""
    try:
        yield
    except QueueFull as exc:
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    except Abandoned:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed while queued")
        context.abort(grpc.StatusCode.CANCELLED, "cancelled while queued")
