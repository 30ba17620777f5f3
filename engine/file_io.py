"""Whole files: written atomically, mapped as one writable buffer, or read by range (FileSource)."""
import mmap
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """path holds data or what it held before, never part of it: a temporary file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_buffer(path: Path) -> bytearray | mmap.mmap:
    """The file's bytes as one writable buffer that tensors can view: a private copy-on-write mapping (pages come
    from the page cache as they are read; writes to it never reach the file, which is only ever replaced by
    rename), or an empty bytearray for an empty file."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return bytearray()
        return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)


class FileSource:
    """A file's bytes read by range (os.preadv into the caller's buffer: no mapping), through one descriptor opened
    on first use and closed with the source; will_need reads the file ahead."""

    def __init__(self, path: Path):
        self.path, self.name = Path(path), f"KV chunk {path}"
        self.fd: int | None = None

    def size(self) -> int:
        return os.fstat(self._fd()).st_size

    def read_into(self, offset: int, out: memoryview) -> None:
        fd, done = self._fd(), 0
        while done < len(out):
            n = os.preadv(fd, [out[done:]], offset + done)
            if n <= 0:
                raise OSError(f"{self.path} ends at byte {offset + done}, before {offset + len(out)}")
            done += n

    def will_need(self) -> None:
        """Asks the kernel to read the whole file ahead into the page cache (posix_fadvise WILLNEED: it starts the
        reads and returns), so that a cold file's later range reads overlap; nothing where the call is missing."""
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd(), 0, 0, os.POSIX_FADV_WILLNEED)

    def _fd(self) -> int:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY)
        return self.fd

    def __del__(self):
        if self.fd is not None:
            os.close(self.fd)
