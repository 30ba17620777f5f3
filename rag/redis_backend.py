"""The chunk backend of a shared store: each chunk's bytes (the format of the data directory's files) in one Redis
string, `<prefix>chunk:<key>`. A SET is atomic, so a reader sees a whole blob or none; a blob that is missing or
fails its checksum is a miss for the chunk store, recomputed and written again. Redis's refusals are StoreErrors
(rag/redis_errors.py); opened read-only (the commands that only read), it writes nothing."""
import redis

from .chunk_store import ChunkBackend
from .document_store import StoreError
from .redis_errors import translated
from .redis_location import RedisLocation

SCAN_COUNT = 1000


class RedisChunkBackend(ChunkBackend):
    tier = "remote"

    def __init__(self, location: RedisLocation, client: redis.Redis | None = None, read_only: bool = False):
        self.location, self.read_only = location, read_only
        self.db = client or location.connect()
        self.prefix = location.key("chunk:")

    @property
    def where(self) -> str:
        return f"store {self.location}"

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.where} was opened read-only; the chunk was not stored")

    @translated
    def put(self, key: str, data: bytes) -> None:
        self._check_writable()
        self.db.set(self.prefix + key, bytes(data))

    @translated
    def get(self, key: str) -> bytearray | None:
        data = self.db.get(self.prefix + key)
        return None if data is None else bytearray(data)

    @translated
    def contains(self, key: str) -> bool:
        return bool(self.db.exists(self.prefix + key))

    @translated
    def delete(self, key: str) -> None:
        if not self.read_only:  # opened read-only it stored nothing, so nothing of its own is left to remove
            self.db.delete(self.prefix + key)

    @translated
    def sizes(self) -> dict[str, int]:
        keys = [k.decode() for k in self.db.scan_iter(match=self.prefix + "*", count=SCAN_COUNT)]
        with self.db.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.strlen(key)
            lengths = pipe.execute()
        return {key[len(self.prefix):]: n for key, n in zip(keys, lengths) if n}  # n 0: deleted meanwhile

    @translated
    def collect(self, keep: set[str]) -> int:
        self._check_writable()
        stale = [key for key in self.sizes() if key not in keep]
        for start in range(0, len(stale), SCAN_COUNT):
            self.db.delete(*(self.prefix + key for key in stale[start:start + SCAN_COUNT]))
        return len(stale)
