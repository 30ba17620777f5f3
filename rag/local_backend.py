"""The chunk backend of one data directory: a file per chunk, `<key>.safetensors`, written atomically and read
through a private mapping (no copy before the tensors view it)."""
import mmap
from pathlib import Path

from cascade_rag.engine.file_io import FileSource, read_buffer, write_atomic

from .chunk_store import ChunkBackend

SUFFIX = ".safetensors"


class LocalDirectoryBackend(ChunkBackend):
    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def put(self, key: str, data: bytes) -> None:
        write_atomic(self.path(key), data)

    def get(self, key: str) -> bytearray | mmap.mmap | None:
        try:
            return read_buffer(self.path(key))
        except FileNotFoundError:
            return None

    def source(self, key: str) -> FileSource | None:
        path = self.path(key)
        return FileSource(path) if path.exists() else None

    def contains(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def sizes(self) -> dict[str, int]:
        sizes = {}
        for path in self.folder.glob(f"*{SUFFIX}"):
            try:
                sizes[path.name[:-len(SUFFIX)]] = path.stat().st_size
            except FileNotFoundError:  # deleted meanwhile
                pass
        return sizes

    def collect(self, keep: set[str]) -> int:
        """Also removes the temporary files of writes a crash interrupted."""
        for tmp in self.folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        return super().collect(keep)
