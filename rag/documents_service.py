"""The Documents service: IngestDocuments (checked, then ingested in groups so that answers go on between them),
DeleteDocuments (all or nothing) and ListDocuments (paged by id)."""
import base64
import binascii

import grpc

from .filters import check_metadata
from .grpc_checks import invalid, ns
from .grpc_scope import collection_of
from .ingest import Document, IngestReport
from .ingest_cost import IngestTooLarge
from .model_thread import ModelThread
from .pipeline import RAG
from .proto_gen import cascade_rag_pb2 as pb
from .proto_gen import cascade_rag_pb2_grpc as pb_grpc
from .store import StoreError, UnknownDocuments
from .token_scopes import TokenScopes

MAX_DOCUMENT_ID_CHARS = 256
MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE = 1000, 100
PAGE_TOKEN_PREFIX = "after:"
MAX_INGEST_BYTES = 64 << 20       # all the documents of one IngestDocuments call
INGEST_GROUP_CHARS = 32 << 10    # text ingested in one go on the model thread: about one GPU prefill batch


def groups(documents: list[Document], max_chars: int) -> list[list[Document]]:
    """Consecutive groups of documents of at most max_chars characters of text (a longer document alone)."""
    result, size = [[]], 0
    for d in documents:
        if result[-1] and size + len(d.text) > max_chars:
            result.append([])
            size = 0
        result[-1].append(d)
        size += len(d.text)
    return result


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
    def __init__(self, rag: RAG, models: ModelThread, tokens: TokenScopes | None = None):
        self.rag, self.models, self.tokens = rag, models, tokens

    def IngestDocuments(self, request_iterator, context):
        collection, documents = documents_of(request_iterator, context, self.tokens)
        try:
            report = IngestReport()
            for group in groups(documents, INGEST_GROUP_CHARS):  # answers in flight go on between the groups
                report.add(self.models.call(self.rag.ingest_documents, group, False, None, collection))
        except IngestTooLarge as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except StoreError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
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
        try:
            return pb.DeleteDocumentsResponse(deleted_ids=self.models.call(self.rag.delete, request.ids, collection))
        except UnknownDocuments as exc:  # checked in the deletion's own transaction: nothing was deleted
            context.abort(grpc.StatusCode.NOT_FOUND, f"ids: {exc}")
        except StoreError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))

    def ListDocuments(self, request, context):
        collection = collection_of(context, self.tokens, request.collection)
        if request.page_size > MAX_PAGE_SIZE:
            invalid(context, "page_size", f"{request.page_size} is out of range 1..{MAX_PAGE_SIZE}")
        after = None
        if request.page_token:
            try:
                after = base64.b64decode(request.page_token, altchars=b"-_", validate=True).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                pass
            if after is None or not after.startswith(PAGE_TOKEN_PREFIX):
                invalid(context, "page_token", "not a token this server gave out")
            after = after.removeprefix(PAGE_TOKEN_PREFIX)
        documents = self.rag.documents(collection)  # ordered by id
        start = 0 if after is None else next((n for n, d in enumerate(documents) if d["id"] > after), len(documents))
        page = documents[start:start + (request.page_size or DEFAULT_PAGE_SIZE)]
        more = start + len(page) < len(documents)
        token = base64.urlsafe_b64encode((PAGE_TOKEN_PREFIX + page[-1]["id"]).encode()).decode() if more else ""
        return pb.ListDocumentsResponse(
            documents=[pb.DocumentInfo(id=d["id"], title=d["title"] or "", source=d["source"] or "",
                                       passages=d["passages"], tokens=d["tokens"], metadata=d["metadata"])
                       for d in page],
            next_page_token=token, total_size=len(documents))
