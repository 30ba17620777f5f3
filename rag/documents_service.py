"""The Documents service: IngestDocuments (checked, then ingested all or nothing in small steps on the model thread,
so that answers go on between them), DeleteDocuments (all or nothing) and ListDocuments (paged by id)."""
import unicodedata
from typing import Callable

import grpc

from .filters import check_metadata
from .grpc_checks import alive, invalid, ns
from .grpc_errors import SHUTTING_DOWN, statuses
from .grpc_scope import collection_of
from .ingest import Document
from .model_thread import ModelThread
from .page_token import PageTokens
from .pipeline import RAG
from .proto_gen import cascade_rag_pb2 as pb
from .proto_gen import cascade_rag_pb2_grpc as pb_grpc
from .token_scopes import TokenScopes

MAX_DOCUMENT_ID_CHARS = 256
HIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}
MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE = 1000, 100
PAGE_SEPARATOR = "\0"            # a page token signs "collection NUL last id" (neither holds a NUL)
MAX_INGEST_BYTES = 64 << 20       # all the documents of one IngestDocuments call


def hidden_character(text: str) -> str | None:
    """The first character of `text` that is a control (NUL, escapes), a format character (bidirectional overrides,
    zero-width ones) or a line or paragraph separator: none of them belongs in an id shown to people."""
    return next((c for c in text if unicodedata.category(c) in HIDDEN_CATEGORIES), None)


def documents_of(request_iterator, context, tokens: TokenScopes | None = None) -> tuple[str, list[Document]]:
    """The collection and the documents of an IngestDocuments call, each checked; aborts naming the first bad
    field (PERMISSION_DENIED on a collection the token does not cover)."""
    documents, seen, size, collection = [], set(), 0, None
    for request in request_iterator:
        if collection is None:
            collection = collection_of(context, tokens, request.collection)
        elif request.collection and request.collection != collection:
            invalid(context, "collection", f"{request.collection!r} differs from the call's first message "
                                           f"({collection!r}): one collection a call")
        for d in request.documents:
            field = f"documents[{len(documents)}]"
            size += d.ByteSize()
            if size > MAX_INGEST_BYTES:
                invalid(context, "documents", f"more than {MAX_INGEST_BYTES >> 20} MiB in one call; "
                                              f"split them over several calls")
            if not d.id.strip():
                invalid(context, f"{field}.id", "must not be empty")
            if len(d.id) > MAX_DOCUMENT_ID_CHARS:
                invalid(context, f"{field}.id", f"{len(d.id)} characters, at most {MAX_DOCUMENT_ID_CHARS}")
            if (bad := hidden_character(d.id)) is not None:
                invalid(context, f"{field}.id", f"holds the control or formatting character U+{ord(bad):04X} "
                                                f"({unicodedata.name(bad, 'unnamed')}); ids must be visible text")
            if d.id in seen:
                invalid(context, f"{field}.id", f"{d.id!r} is given twice")
            if not d.text.strip():
                invalid(context, f"{field}.text", f"document {d.id!r} has no text")
            try:
                metadata = check_metadata(dict(d.metadata), f"{field}.metadata")
            except ValueError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            seen.add(d.id)
            documents.append(Document(d.id, d.title.strip(), d.text.strip(), d.source or None, metadata))
    if not documents:
        invalid(context, "documents", "none given")
    return collection, documents


class DocumentsService(pb_grpc.DocumentsServicer):
    def __init__(self, rag: RAG, models: ModelThread, tokens: TokenScopes | None = None,
                 drain_over: Callable[[], bool] = lambda: False):
        self.rag, self.models, self.tokens, self.drain_over = rag, models, tokens, drain_over
        self.page_tokens = PageTokens()

    def IngestDocuments(self, request_iterator, context):
        collection, documents = documents_of(request_iterator, context, self.tokens)
        with statuses(context, {d.id: i for i, d in enumerate(documents)}):
            # all or nothing, in small steps on the model thread: answers go on between them
            report = self.rag.ingest_documents(documents, collection=collection, all_or_nothing=True,
                                               run=self.models.call, stop=lambda: self._stop(context))
        if report.errors:
            invalid(context, "documents", "; ".join(map(str, report.errors)))
        status = {**{i: pb.INGEST_STATUS_ADDED for i in report.added},
                  **{i: pb.INGEST_STATUS_UPDATED for i in report.updated},
                  **{i: pb.INGEST_STATUS_UNCHANGED for i in report.unchanged}}
        return pb.IngestDocumentsResponse(
            results=[pb.DocumentResult(id=d.id, status=status[d.id]) for d in documents],
            passages=report.passages, prefilled=report.prefilled, tokens=report.tokens, kv_bytes=report.kv_bytes,
            time_ns=ns(report.seconds))

    def DeleteDocuments(self, request, context):
        collection = collection_of(context, self.tokens, request.collection)
        if not request.ids:
            invalid(context, "ids", "none given")
        with statuses(context):  # unknown ids are checked in the deletion's own transaction: nothing was deleted
            return pb.DeleteDocumentsResponse(deleted_ids=self.rag.delete(request.ids, collection,
                                                                          run=self.models.call))

    def _stop(self, context) -> str | None:
        """Why an ingestion should stop now: the server's drain is over, or the call was cancelled or expired."""
        if self.drain_over():
            return f"{SHUTTING_DOWN} and its drain time is over"
        if not alive(context):
            return "the call was cancelled or its deadline passed"
        return None

    def ListDocuments(self, request, context):
        collection = collection_of(context, self.tokens, request.collection)
        if request.page_size > MAX_PAGE_SIZE:
            invalid(context, "page_size", f"{request.page_size} is out of range 1..{MAX_PAGE_SIZE}")
        after = self.page_tokens.read(request.page_token) if request.page_token else None
        if request.page_token and (after is None or not after.startswith(collection + PAGE_SEPARATOR)):
            invalid(context, "page_token", "not a token this server gave out for this collection (tokens do not "
                                           "outlive the server process: start again from the first page)")
        after = None if after is None else after.removeprefix(collection + PAGE_SEPARATOR)
        documents = self.rag.documents(collection)  # ordered by id
        start = 0 if after is None else next((n for n, d in enumerate(documents) if d["id"] > after), len(documents))
        page = documents[start:start + (request.page_size or DEFAULT_PAGE_SIZE)]
        more = start + len(page) < len(documents)
        token = self.page_tokens.make(collection + PAGE_SEPARATOR + page[-1]["id"]) if more else ""
        return pb.ListDocumentsResponse(
            documents=[pb.DocumentInfo(id=d["id"], title=d["title"] or "", source=d["source"] or "",
                                       passages=d["passages"], tokens=d["tokens"], metadata=d["metadata"])
                       for d in page],
            next_page_token=token, total_size=len(documents))
