"""Request ids and the log line of each call: an id taken from the client's `x-request-id` (gRPC metadata or
HTTP header) when it sends a usable one, else made; returned to the client, written in the one log line of the
call (logger `cascade_rag.requests`) and counted in `cascade_rag:requests_total{method,status}`."""
import logging
import re
import time
import uuid

import grpc

from .method_handlers import behavior_of, handler_like
from .metrics import ServingMetrics

REQUEST_ID = "x-request-id"
USABLE_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")  # kept out of the log otherwise (no spaces, quotes, newlines)
log = logging.getLogger("cascade_rag.requests")


def request_id(given: str | None) -> str:
    """The client's id when it is usable, else a new one."""
    return given if given and USABLE_ID.fullmatch(given) else uuid.uuid4().hex


def log_call(protocol: str, method: str, rid: str, status: str, seconds: float, **fields) -> None:
    """The one log line of a call: `method status duration request_id=...` (and the fields, as JSON keys)."""
    extra = dict(fields, protocol=protocol, method=method, request_id=rid, status=status,
                 duration_s=round(seconds, 6))
    log.info(f"{method} {status} {seconds * 1e3:.0f} ms request_id={rid}", extra={"fields": extra})


class RequestLog(grpc.ServerInterceptor):
    """Gives each call under the `logged` method prefixes a request id (sent back in the initial metadata), and at
    its end logs it and counts its status. Wraps whatever the inner interceptors return, so calls they refuse
    (a draining server, a missing token) are logged and counted too."""

    def __init__(self, metrics: ServingMetrics, logged: tuple[str, ...]):
        self.metrics, self.logged = metrics, logged

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not details.method.startswith(self.logged):
            return handler
        method, given = details.method.rsplit("/", 1)[-1], dict(details.invocation_metadata or ()).get(REQUEST_ID)
        run = behavior_of(handler)
        if handler.response_streaming:
            def logged(request, context):
                rid, began, status = self._begin(context, given), time.perf_counter(), None
                try:
                    yield from run(request, context)
                except GeneratorExit:
                    status = "CANCELLED"
                    raise
                except BaseException:
                    status = _code(context, "UNKNOWN")
                    raise
                finally:
                    self._end(method, rid, status or _ended(context), began)
        else:
            def logged(request, context):
                rid, began, status = self._begin(context, given), time.perf_counter(), None
                try:
                    return run(request, context)
                except BaseException:
                    status = _code(context, "UNKNOWN")
                    raise
                finally:
                    self._end(method, rid, status or _ended(context), began)
        return handler_like(handler, logged, codecs=True)

    @staticmethod
    def _begin(context, given: str | None) -> str:
        rid = request_id(given)
        context.send_initial_metadata(((REQUEST_ID, rid),))
        return rid

    def _end(self, method: str, rid: str, status: str, began: float) -> None:
        self.metrics.request(method, status)
        log_call("grpc", method, rid, status, time.perf_counter() - began)


def _code(context, default: str) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else default


def _ended(context) -> str:
    """The status of a call whose handler returned: the code it set, or how the client left, or OK."""
    if not context.is_active():
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return _code(context, "OK")
