"""CallObserver: the ASGI middleware of the HTTP endpoint that does for each call what the gRPC interceptors do:
a request id (the `x-request-id` header, or one made) returned as a header and kept in the request's state; the
drain (new calls get 503 while the server stops, those in flight are counted until their last byte); and at
the end the call's log line and its count in `cascade_rag:requests_total`."""
import json
import time

import grpc

from .drain import REFUSAL, Drain
from .http_status import CODE_OF_HTTP, StatusError
from .metrics import ServingMetrics
from .request_log import REQUEST_ID, log_call, request_id

OPEN_PATHS = ("/health",)  # answered while draining (with 503), like gRPC health


class CallObserver:
    def __init__(self, app, drain: Drain, metrics: ServingMetrics, method_names: dict[str, str]):
        self.app, self.drain, self.metrics, self.method_names = app, drain, metrics, method_names

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid, began, path = request_id(headers.get(REQUEST_ID)), time.perf_counter(), scope["path"]
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        status = {"http": 500}

        async def observed_send(message):
            if message["type"] == "http.response.start":
                status["http"] = message["status"]
                message = dict(message, headers=[*message.get("headers", []),
                                                 (REQUEST_ID.encode(), rid.encode())])
            await send(message)
        try:
            if self.drain.draining and path not in OPEN_PATHS:
                await refuse(observed_send, StatusError(grpc.StatusCode.UNAVAILABLE, REFUSAL))
                return
            with self.drain.call():
                await self.app(scope, receive, observed_send)
        finally:
            code = state.get("status") or CODE_OF_HTTP.get(status["http"], "UNKNOWN")
            method = self.method_names.get(path, "other")
            if path not in OPEN_PATHS:  # like gRPC health checks, neither counted nor logged
                self.metrics.request(method, code)
                log_call("http", method, rid, code, time.perf_counter() - began, http_status=status["http"])


async def refuse(send, error: StatusError) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.http_status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
