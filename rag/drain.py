"""The drain of a stopping server: while the calls in flight finish, the listener stays open, so that health
checks keep answering (NOT_SERVING, from the health service) and new calls get UNAVAILABLE instead of a refused
connection. grpc's server.stop(grace) closes the listener at once, so it is called only once the drain is over."""
import threading
import time
from contextlib import contextmanager

import grpc

from .method_handlers import behavior_of, handler_like

REFUSAL = "the server is shutting down; retry on another instance or once it is back"
SETTLE_S = 0.1  # a call let in just before the drain began starts its handler within this


class Drain(grpc.ServerInterceptor):
    """Counts the calls in flight to the methods under the `counted` prefixes, from the start of their handler to
    its end, and, once begin() is called, refuses every new call with UNAVAILABLE, but those under `open_methods`
    (health checks: a health Watch, never ending, is not counted either; nor is a reflection stream)."""

    def __init__(self, open_methods: str, counted: tuple[str, ...]):
        self.open_methods, self.counted = open_methods, counted
        self._draining = False
        self._deadline = float("inf")
        self._in_flight = 0
        self._idle = threading.Condition()

    def begin(self, seconds: float | None = None) -> None:
        """Refuses new calls from now on, for a drain of `seconds` (None: none); returns once the calls let in just
        before have started (and count)."""
        with self._idle:
            self._draining = True
            self._deadline = time.monotonic() + (seconds or 0.0)
        time.sleep(SETTLE_S)

    def over(self) -> bool:
        """Whether the drain has begun and its time is over: the calls still in flight are to stop now."""
        with self._idle:
            return self._draining and time.monotonic() >= self._deadline

    def wait(self, seconds: float) -> bool:
        """Waits until no call is in flight or `seconds` have passed; True when none is left."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, max(0.0, seconds))

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or details.method.startswith(self.open_methods):
            return handler
        with self._idle:
            draining = self._draining
        if draining:
            return handler_like(handler, _refuse, codecs=False)
        if not details.method.startswith(self.counted):
            return handler
        behavior = behavior_of(handler)
        if handler.response_streaming:
            def counted(request, context):
                with self.call():
                    yield from behavior(request, context)
        else:
            def counted(request, context):
                with self.call():
                    return behavior(request, context)
        return handler_like(handler, counted)

    @property
    def draining(self) -> bool:
        with self._idle:
            return self._draining

    @contextmanager
    def call(self):
        """Counts a call in flight for its duration (the HTTP endpoint's calls too)."""
        with self._idle:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()


def _refuse(request, context):
    context.abort(grpc.StatusCode.UNAVAILABLE, REFUSAL)
