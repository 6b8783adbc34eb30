"""Blob store: atomic writes, no overwrite, and no path outside the root."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from storage.blobs import BlobStore
from storage.errors import BlobNotFoundError, StorageError

KEY = "0123456789abcdef0123456789abcdef"
OTHER_KEY = "fedcba9876543210fedcba9876543210"


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def all_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


def test_round_trip(blobs: BlobStore) -> None:
    blobs.put(KEY, b"ciphertext")

    assert blobs.get(KEY) == b"ciphertext"


def test_empty_blob(blobs: BlobStore) -> None:
    blobs.put(KEY, b"")

    assert blobs.get(KEY) == b""


def test_exists_after_put(blobs: BlobStore) -> None:
    blobs.put(KEY, b"ciphertext")

    assert blobs.exists(KEY)


def test_exists_before_put(blobs: BlobStore) -> None:
    assert not blobs.exists(KEY)


def test_missing_blob_raises(blobs: BlobStore) -> None:
    with pytest.raises(BlobNotFoundError, match=KEY):
        blobs.get(KEY)


def test_delete(blobs: BlobStore) -> None:
    blobs.put(KEY, b"ciphertext")
    blobs.delete(KEY)

    assert not blobs.exists(KEY)


def test_delete_missing_is_quiet(blobs: BlobStore) -> None:
    blobs.delete(KEY)

    assert not blobs.exists(KEY)


def test_overwrite_rejected(blobs: BlobStore) -> None:
    blobs.put(KEY, b"first")

    with pytest.raises(StorageError, match="already exists"):
        blobs.put(KEY, b"second")


def test_overwrite_keeps_original(blobs: BlobStore) -> None:
    blobs.put(KEY, b"first")
    with pytest.raises(StorageError):
        blobs.put(KEY, b"second")

    assert blobs.get(KEY) == b"first"


def test_sharded_layout(blobs: BlobStore) -> None:
    blobs.put(KEY, b"ciphertext")

    assert all_files(blobs.root) == [blobs.root / KEY[:2] / KEY]


def test_file_mode(blobs: BlobStore) -> None:
    blobs.put(KEY, b"ciphertext")

    assert stat.S_IMODE((blobs.root / KEY[:2] / KEY).stat().st_mode) == 0o600


def test_large_blob(blobs: BlobStore) -> None:
    data = os.urandom(5 * 1024 * 1024)
    blobs.put(KEY, data)

    assert blobs.get(KEY) == data


@pytest.mark.parametrize(
    "key",
    [
        "../" + KEY,
        "/etc/passwd",
        "..",
        "",
        KEY.upper(),
        KEY[:31],
        "0" * 65,
        KEY + "/x",
        KEY[:30] + "\x00a",
        KEY[:31] + "\n",
        "ab/" + KEY[:29],
    ],
    ids=[
        "parent",
        "absolute",
        "dotdot",
        "empty",
        "upper-case",
        "short",
        "long",
        "slash-suffix",
        "nul",
        "newline",
        "slash-inside",
    ],
)
def test_unsafe_key_rejected(blobs: BlobStore, key: str) -> None:
    with pytest.raises(StorageError, match="Invalid blob key"):
        blobs.put(key, b"x")


def test_unsafe_key_writes_nothing(blobs: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        blobs.put("../" + KEY, b"x")

    assert all_files(tmp_path) == []


@pytest.mark.parametrize("operation", ["get", "exists", "delete"])
def test_unsafe_key_rejected_on_read(blobs: BlobStore, operation: str) -> None:
    with pytest.raises(StorageError, match="Invalid blob key"):
        getattr(blobs, operation)("../" + KEY)


def test_sha256_length_key_accepted(blobs: BlobStore) -> None:
    key = "a" * 64
    blobs.put(key, b"x")

    assert blobs.get(key) == b"x"


def test_failed_write_leaves_nothing(blobs: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fsync(_descriptor: int) -> None:
        raise OSError("disk failure")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk failure"):
        blobs.put(KEY, b"ciphertext")
    monkeypatch.undo()

    assert all_files(blobs.root) == []


def run_concurrent_puts(blobs: BlobStore, writers: int) -> list[str]:
    """Start ``writers`` threads that put different data under one key at the same moment."""
    outcomes: list[str] = []
    barrier = threading.Barrier(writers)

    def writer(index: int) -> None:
        barrier.wait()
        try:
            blobs.put(KEY, bytes([index]) * 100_000)
        except StorageError:
            outcomes.append("rejected")
        else:
            outcomes.append("stored")

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    return outcomes


def test_concurrent_puts_one_wins(blobs: BlobStore) -> None:
    outcomes = run_concurrent_puts(blobs, 8)

    assert outcomes.count("stored") == 1


def test_concurrent_puts_leave_whole_blob(blobs: BlobStore) -> None:
    run_concurrent_puts(blobs, 8)
    stored = blobs.get(KEY)

    assert stored == stored[:1] * 100_000


def test_concurrent_puts_leave_no_temporary(blobs: BlobStore) -> None:
    run_concurrent_puts(blobs, 8)

    assert all_files(blobs.root) == [blobs.root / KEY[:2] / KEY]


def test_keys_are_independent(blobs: BlobStore) -> None:
    blobs.put(KEY, b"one")
    blobs.put(OTHER_KEY, b"two")

    assert blobs.get(OTHER_KEY) == b"two"
