"""Statuses of the HTTP endpoint: the gRPC status codes (one vocabulary for both front ends, in metrics and
logs too) mapped to HTTP as google.rpc.Code documents it, with OpenAI's error body. CallContext lets the gRPC
request checks (grpc_checks, grpc_scope) run on HTTP requests: its abort raises StatusError."""
import grpc

from .collection import DEFAULT_COLLECTION
from .document_store import NoDocuments, StoreError
from .grpc_checks import no_documents
from .grpc_errors import status_of
from .request_queue import Abandoned, QueueFull

HTTP_STATUS = {grpc.StatusCode.OK: 200, grpc.StatusCode.INVALID_ARGUMENT: 400,
               grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
               grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
               grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.CANCELLED: 499,
               grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503,
               grpc.StatusCode.DEADLINE_EXCEEDED: 504}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 429: "rate_limit_error"}
# the status of an HTTP response that no handler named, for metrics and logs
CODE_OF_HTTP = {200: "OK", 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                404: "NOT_FOUND", 405: "UNIMPLEMENTED", 413: "RESOURCE_EXHAUSTED", 422: "INVALID_ARGUMENT",
                429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


class StatusError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def body(self) -> dict:
        """OpenAI's error object; `param` is the field the message starts with, if any."""
        head = self.details.split(":", 1)[0]
        return {"error": {"message": self.details, "type": ERROR_TYPES.get(self.http_status, "server_error"),
                          "param": head if ":" in self.details and " " not in head else None,
                          "code": self.code.name}}


class CallContext:
    """What the gRPC request checks need of a call's context, for an HTTP request: its bearer token, and an abort
    that raises StatusError."""

    def __init__(self, authorization: str | None):
        self.authorization = authorization or ""

    def invocation_metadata(self):
        return (("authorization", self.authorization),)

    def abort(self, code: grpc.StatusCode, details: str):
        raise StatusError(code, details)


def refusal(exc: BaseException, collection: str = DEFAULT_COLLECTION) -> StatusError | None:
    """The status of a refusal raised by Serving (None for anything else: a failure of ours)."""
    if isinstance(exc, StatusError):
        return exc
    if isinstance(exc, QueueFull):
        return StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    if isinstance(exc, Abandoned):
        return StatusError(grpc.StatusCode.CANCELLED, "the client left while queued")
    if isinstance(exc, NoDocuments):
        return StatusError(grpc.StatusCode.FAILED_PRECONDITION, no_documents(collection))
    if isinstance(exc, ValueError):  # e.g. passages + question + max_tokens longer than the model's context
        return StatusError(grpc.StatusCode.INVALID_ARGUMENT, f"top_k/max_tokens: {exc}")
    if isinstance(exc, StoreError):  # the store out of reach or refusing: the status gRPC answers with
        return StatusError(*status_of(exc))
    return None
