"""Admission: the server's limit of calls in progress, kept by an interceptor instead of gRPC's own
maximum_concurrent_rpcs, whose refusals ("Concurrent RPC limit exceeded!") no application code sees: each refusal
here is counted in the request queue's `rejected`, which GetInfo reports."""
import threading
from contextlib import contextmanager

import grpc

from .method_handlers import behavior_of, handler_like
from .request_queue import RequestQueue


class Admission(grpc.ServerInterceptor):
    """Lets at most `limit` calls run at once; the next one gets RESOURCE_EXHAUSTED at once and is counted in
    `queue`'s rejections. (The thread pool holds a few threads more, so the refusals never wait for a thread.)"""

    def __init__(self, limit: int, queue: RequestQueue):
        self.limit, self.queue = limit, queue
        self._running = 0
        self._lock = threading.Lock()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None:
            return handler
        with self._lock:
            admitted = self._running < self.limit
            if admitted:
                self._running += 1
        if not admitted:
            self.queue.count_rejection()
            return handler_like(handler, self._refuse, codecs=False)
        behavior = behavior_of(handler)
        if handler.response_streaming:
            def admitted_call(request, context):
                with self._release():
                    yield from behavior(request, context)
        else:
            def admitted_call(request, context):
                with self._release():
                    return behavior(request, context)
        return handler_like(handler, admitted_call)

    def _refuse(self, request, context):
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the server is busy: {self.limit} calls are in progress; "
                                                          f"retry later")

    @contextmanager
    def _release(self):
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
