"""Redis's refusals as the store's errors, naming the store: a server out of reach (StoreUnavailable), one out of
memory or unable to persist (DiskFull: nothing of the change was stored), a read-only replica, any other error
reply. Every method of the shared store and its chunk backend goes through `translated`, so a caller sees a
StoreError with a clear message, never a Redis traceback."""
import functools

import redis

from .document_store import DiskFull, StoreError, StoreUnavailable

FULL = (redis.exceptions.OutOfMemoryError,)


def store_error(exc: redis.RedisError, where: str) -> StoreError:
    """The StoreError of a Redis failure of the store `where` ("store redis://host:6379/0")."""
    reply = str(exc).split("caused error: ")[-1]
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return StoreUnavailable(f"cannot reach {where}: {reply}")
    if isinstance(exc, FULL) or reply.startswith(("OOM", "command not allowed when used memory")):
        return DiskFull(f"{where} is full (Redis: {reply}); nothing of this change was stored: raise the server's "
                        f"maxmemory or delete documents")
    if isinstance(exc, redis.exceptions.ReadOnlyError) or reply.startswith("READONLY"):
        return StoreError(f"{where} refuses writes (Redis: {reply}); nothing of this change was stored: point "
                          f"--store at the primary")
    if reply.startswith("MISCONF"):
        return DiskFull(f"{where} cannot persist its data (Redis: {reply}); nothing of this change was stored: free "
                        f"space on the server's disk")
    return StoreError(f"{where} failed (Redis: {reply})")


def translated(method):
    """The method with Redis's errors raised as StoreErrors naming `self.where`."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except redis.RedisError as exc:
            raise store_error(exc, self.where) from None
    return call
