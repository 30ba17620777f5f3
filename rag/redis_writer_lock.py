"""One writer at a time over a shared store, with no lease to wait out after a crash: the lock key holds the Redis
client id of a connection that its holder keeps open for as long as it holds the lock. A holder whose connection
is gone (its process was killed, its machine lost) is no holder: the next writer takes the lock at once. Every
commit checks, in its own transaction, that the lock is still its writer's (a fence)."""
import json
import os
import socket

import redis

from .document_store import StoreLocked
from .redis_location import RedisLocation


class WriterLock:
    def __init__(self, location: RedisLocation, db: redis.Redis):
        self.location, self.db, self.key = location, db, location.key("writer")
        self.token: bytes | None = None
        self._connection: redis.Redis | None = None

    @property
    def held(self) -> bool:
        return self.token is not None

    def acquire(self) -> None:
        """Takes the lock (StoreLocked naming the holder when a live one has it); nothing when held already."""
        if self.token is not None:
            return
        connection = self.location.connect(single_connection_client=True)
        token = json.dumps({"client": connection.client_id(), "pid": os.getpid(),
                            "host": socket.gethostname()}).encode()
        with self.db.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.key)
                    holder = pipe.get(self.key)
                    if holder is not None and self._alive(holder):
                        connection.close()
                        who = json.loads(holder)
                        raise StoreLocked(f"store {self.location} is being written by another process (pid "
                                          f"{who['pid']} on {who['host']}); wait for it to finish")
                    pipe.multi()
                    pipe.set(self.key, token)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self.token, self._connection = token, connection

    def _alive(self, holder: bytes) -> bool:
        try:
            client = json.loads(holder)["client"]
        except (ValueError, KeyError, TypeError):
            return False
        return bool(self.db.client_list(client_id=[client]))

    def check(self, pipe: redis.client.Pipeline) -> None:
        """Within a watched transaction (before MULTI): StoreLocked unless this process holds the lock."""
        if self.token is None or pipe.get(self.key) != self.token:
            raise StoreLocked(f"store {self.location}: this process does not hold the writer lock (taken over "
                              f"after its connection was lost?); nothing of this change was written")

    def release(self) -> None:
        if self.token is None:
            return
        try:
            with self.db.pipeline() as pipe:
                pipe.watch(self.key)
                if pipe.get(self.key) == self.token:
                    pipe.multi()
                    pipe.delete(self.key)
                    pipe.execute()
        except redis.WatchError:
            pass  # taken over meanwhile: no longer ours to delete
        finally:
            self.token = None
            if self._connection is not None:
                self._connection.close()
                self._connection = None
