"""What each failure of a call returns: a status code and a clean message, never a traceback, for a user's mistake
or a fault of the machine (a full or read-only disk); only a bug of ours is INTERNAL, logged with its traceback."""
import errno
import logging
from contextlib import contextmanager

import grpc

from .document_store import DiskFull, NoDocuments, StoreError, StoreUnavailable, UnknownDocuments
from .grpc_checks import NO_DOCUMENTS
from .ingest_cost import IngestTooLarge
from .ingest_limits import InvalidDocument
from .ingestor import IngestStopped
from .model_thread import ModelThreadStopped

log = logging.getLogger("cascade_rag")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
SHUTTING_DOWN = "the server is shutting down"


def os_error(exc: BaseException) -> OSError | None:
    """The OSError that caused `exc` (itself, or one in its chain of causes)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def status_of(exc: Exception, documents: dict[str, int] | None = None) -> tuple[grpc.StatusCode, str] | None:
    """The status of an expected failure (None for a bug). `documents`: the index of each document id in the call,
    to name `documents[i]`."""
    documents = documents or {}
    if isinstance(exc.__cause__, StoreError) and isinstance(exc, OSError):
        exc = exc.__cause__  # a chunk the shared store refused (full, read-only, out of reach): the store's error
    where = lambda doc_id: f"documents[{documents[doc_id]}]" if doc_id in documents else "documents"  # noqa: E731
    if isinstance(exc, InvalidDocument):
        return grpc.StatusCode.INVALID_ARGUMENT, f"{where(exc.doc_id)}.{exc.field}: {exc}"
    if isinstance(exc, IngestTooLarge):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"{where(getattr(exc, 'doc_id', None))}: {exc}"
    if isinstance(exc, IngestStopped):
        return grpc.StatusCode.UNAVAILABLE if SHUTTING_DOWN in str(exc) else grpc.StatusCode.CANCELLED, str(exc)
    if isinstance(exc, ModelThreadStopped):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, UnknownDocuments):
        return grpc.StatusCode.NOT_FOUND, f"ids: {exc}"
    if isinstance(exc, NoDocuments):
        return grpc.StatusCode.FAILED_PRECONDITION, NO_DOCUMENTS
    if isinstance(exc, DiskFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, StoreUnavailable):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, StoreError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    cause = os_error(exc)
    if cause is not None and cause.errno in DISK_FULL:
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"the disk of the data directory is full: {exc}; nothing of this " \
                                                   f"call was stored: free some space"
    if cause is not None and cause.errno in READ_ONLY:
        return grpc.StatusCode.FAILED_PRECONDITION, f"the data directory cannot be written: {exc}; nothing of this " \
                                                    f"call was stored"
    if cause is not None:
        return grpc.StatusCode.UNAVAILABLE, f"the data directory failed: {exc}; nothing of this call was stored"
    return None


@contextmanager
def statuses(context, documents: dict[str, int] | None = None):
    """Aborts the call with the status of an expected failure raised in the body (a fault of the machine logged in
    one line); anything else is a bug: INTERNAL, its traceback logged."""
    try:
        yield
    except Exception as exc:
        if context.code() is not None:
            raise  # the call was aborted already (context.abort raises a bare Exception)
        status = status_of(exc, documents)
        if status is None:
            log.exception("internal error")
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}; see the server's log")
        code, message = status
        if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE) and os_error(exc) is not None:
            log.warning(message)
        context.abort(code, message)
