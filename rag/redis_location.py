"""Where a shared store lives: `redis://host:port/db` (or `rediss://` for TLS), parsed and checked once, and the
names of its keys. Every key of one store starts with the same prefix, so a Redis database can be shared with
other programs; the chunk blobs are `<prefix>chunk:<chunk key>`."""
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis

from .document_store import StoreError

SCHEMES = ("redis", "rediss")
PREFIX = "cascade-rag:"
CONNECT_TIMEOUT_S = 5.0


def is_store_url(location) -> bool:
    """Whether a location names a shared store (a URL) rather than a local data directory."""
    return isinstance(location, str) and "://" in location


@dataclass(frozen=True)
class RedisLocation:
    url: str

    @classmethod
    def parse(cls, url: str) -> "RedisLocation":
        """The location of `url`; StoreError naming what is wrong with it."""
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise StoreError(f"store {url!r}: unknown scheme {parts.scheme!r}; use redis://HOST:PORT/DB")
        try:
            port = parts.port
        except ValueError:
            raise StoreError(f"store {url!r}: the port is not a number from 0 to 65535") from None
        if not parts.hostname or port is None:
            raise StoreError(f"store {url!r}: give the host and the port, e.g. redis://127.0.0.1:6379/0")
        db = parts.path.strip("/") or "0"
        if not db.isdigit():
            raise StoreError(f"store {url!r}: the database must be a number, e.g. redis://{parts.netloc}/0")
        return cls(url)

    def connect(self, **options) -> redis.Redis:
        """A client of the store's database (connected on its first command)."""
        return redis.Redis.from_url(self.url, socket_connect_timeout=CONNECT_TIMEOUT_S, **options)

    def key(self, name: str) -> str:
        return PREFIX + name

    def __str__(self) -> str:
        return self.url
