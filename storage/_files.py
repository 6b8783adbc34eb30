"""Atomic file writes shared by the key store and the blob store."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or the whole file.

    The data goes to a temporary file in the same directory and is flushed to disk with
    fsync. With ``overwrite`` the file is then moved into place with ``os.replace``.
    Without it, ``os.link`` puts it in place and raises FileExistsError when another
    process created the file in the meantime. The directory is fsynced last so that the
    new name survives a power cut. ``mode`` is set with fchmod, so the umask does not
    weaken it.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(descriptor, mode)
        _write_all(descriptor, data)
        os.fsync(descriptor)
    except BaseException:
        os.close(descriptor)
        temporary.unlink(missing_ok=True)
        raise
    os.close(descriptor)

    try:
        if overwrite:
            os.replace(temporary, path)
        else:
            # NOTE: os.link needs a file system with hard links (every usual Linux one).
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)

    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Flush a directory entry change (create, rename, unlink) to disk."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]
