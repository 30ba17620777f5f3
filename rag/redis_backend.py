"""The chunk backend of a shared store: each chunk's bytes (the format of the data directory's files) in one Redis
string, `<prefix>chunk:<key>`. A SET is atomic, so a reader sees a whole blob or none; a blob that is missing or
fails its checksum is a miss for the chunk store, recomputed and written again."""
import redis

from .chunk_store import ChunkBackend
from .redis_location import RedisLocation

SCAN_COUNT = 1000


class RedisChunkBackend(ChunkBackend):
    tier = "remote"

    def __init__(self, location: RedisLocation, client: redis.Redis | None = None):
        self.location = location
        self.db = client or location.connect()
        self.prefix = location.key("chunk:")

    def put(self, key: str, data: bytes) -> None:
        self.db.set(self.prefix + key, bytes(data))

    def get(self, key: str) -> bytearray | None:
        data = self.db.get(self.prefix + key)
        return None if data is None else bytearray(data)

    def contains(self, key: str) -> bool:
        return bool(self.db.exists(self.prefix + key))

    def delete(self, key: str) -> None:
        self.db.delete(self.prefix + key)

    def sizes(self) -> dict[str, int]:
        keys = [k.decode() for k in self.db.scan_iter(match=self.prefix + "*", count=SCAN_COUNT)]
        with self.db.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.strlen(key)
            lengths = pipe.execute()
        return {key[len(self.prefix):]: n for key, n in zip(keys, lengths) if n}  # n 0: deleted meanwhile

    def collect(self, keep: set[str]) -> int:
        stale = [key for key in self.sizes() if key not in keep]
        for start in range(0, len(stale), SCAN_COUNT):
            self.db.delete(*(self.prefix + key for key in stale[start:start + SCAN_COUNT]))
        return len(stale)
