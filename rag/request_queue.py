"""The bounded request queue in front of the engine: one request runs, at most `max_queue` wait, in arrival order."""
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterator


class QueueFull(Exception):
    pass


class Abandoned(Exception):
    """The request was cancelled or its deadline passed while it waited."""


class RequestQueue:
    def __init__(self, max_queue: int, poll_s: float = 0.05):
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.max_queue, self.poll_s = max_queue, poll_s
        self.served = self.rejected = 0
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()
        self._running = False

    def count_rejection(self) -> None:
        """A call refused before it reached the queue (the server's limit of calls in progress)."""
        with self._cond:
            self.rejected += 1

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return int(self._running)

    @contextmanager
    def slot(self, alive: Callable[[], bool] = lambda: True) -> Iterator[float]:
        """Holds the engine for the body and yields the seconds spent waiting for it. Raises QueueFull at once
        when the queue is full, Abandoned as soon as alive() turns false while waiting."""
        began, ticket = time.perf_counter(), object()
        with self._cond:
            if self._running and len(self._waiting) >= self.max_queue:
                self.rejected += 1
                raise QueueFull(f"the server is busy: {self.max_queue} requests are already waiting; retry later")
            self._waiting.append(ticket)
            try:
                while self._running or self._waiting[0] is not ticket:
                    if not alive():
                        raise Abandoned()
                    self._cond.wait(self.poll_s)
            except BaseException:
                self._waiting.remove(ticket)
                self._cond.notify_all()
                raise
            self._waiting.popleft()
            self._running = True
        try:
            yield time.perf_counter() - began
        finally:
            with self._cond:
                self._running = False
                self.served += 1
                self._cond.notify_all()
