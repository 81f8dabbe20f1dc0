"""Files that are either whole or absent: every writer in vmae2 goes through these.

Data goes to `PATH.tmp` first, is flushed to disk, then renamed over PATH; a crash at any point
leaves the old file (or none) and at worst a stray `.tmp`, never a torn PATH. The rename is atomic
on POSIX file systems. Used by shard_tools, dali_pipes, vmae2 and bench alike (this is the most
upstream package, so everyone may import it).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


def tmp_path(path) -> str:
    """The temporary name a file is written under before it is renamed to `path`."""
    return f"{os.fspath(path)}.tmp"


@contextlib.contextmanager
def open_atomic(path, mode: str = "wb"):
    """A file to stream into that appears as `path` only when the block ends without an error.

    For data too large to hold in memory (a gigabyte shard); on an error the temporary file is removed.
    """
    tmp = tmp_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_bytes_atomic(path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file and a rename."""
    with open_atomic(path) as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path, text: str) -> Path:
    """`text` as UTF-8, through a temporary file and a rename."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj, *, indent: int | None = 1, sort_keys: bool = True) -> Path:
    """`obj` as JSON (UTF-8, non-ASCII kept, trailing newline), through a temporary file and a rename."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n"
    return write_text_atomic(path, text)

