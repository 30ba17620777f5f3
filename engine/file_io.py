"""Whole files: written atomically, read into one writable buffer."""
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


def read_buffer(path: Path) -> bytearray:
    """The file's bytes in one writable buffer (tensors can view it), read with one copy."""
    with open(path, "rb") as f:
        data = bytearray(os.fstat(f.fileno()).st_size)
        if f.readinto(data) != len(data):
            raise OSError(f"{path} changed while it was read")
    return data
