"""File-system blob store for sealed ciphertext.

Only ciphertext produced by :func:`storage.sealing.seal` belongs here, because nothing
in this module encrypts. Blobs are spread over 256 subdirectories named after the first two
hex digits of the key, so no directory grows past what file systems list quickly.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from storage._files import fsync_directory, write_atomic
from storage.errors import BlobNotFoundError, StorageError

logger = logging.getLogger(__name__)

# Lower-case hex only, so a key can never contain a path separator or "..".
_KEY_PATTERN = re.compile(r"[0-9a-f]{32,64}")
_BLOB_MODE = 0o600


class BlobStore:
    """Immutable blobs under ``root``, each written once and read whole."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically, or raise StorageError if the key exists.

        The blob is written to a temporary file in the same directory, fsynced and then
        linked into place, so a crash leaves either no blob or the whole blob.
        """
        path = self._path(key)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

        try:
            write_atomic(path, data, _BLOB_MODE, overwrite=False)
        except FileExistsError as error:
            raise StorageError(
                f"Blob {key!r} already exists, and blobs are never overwritten."
            ) from error

    def get(self, key: str) -> bytes:
        """Return the blob stored under ``key``, or raise BlobNotFoundError."""
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as error:
            raise BlobNotFoundError(key) from error

    def delete(self, key: str) -> None:
        """Delete the blob under ``key``, and do nothing if there is none.

        Unlinking does not erase the bytes on a journaling file system or an SSD. Erasure
        relies on destroying every wrap of the data key first, as
        :func:`storage.vault.erase_sealed` does.
        """
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return

        fsync_directory(path.parent)
        logger.info("Deleted blob %s", key)

    def exists(self, key: str) -> bool:
        """Return whether a blob is stored under ``key``."""
        return self._path(key).is_file()

    def _path(self, key: str) -> Path:
        if not _KEY_PATTERN.fullmatch(key):
            raise StorageError(
                f"Invalid blob key {key[:80]!r}: expected 32 to 64 lower-case hex digits."
            )

        return self.root / key[:2] / key
