"""Sealed objects end to end: seal, write the blob, record the object and its key wraps.

The caller owns the transaction: these functions add and flush rows but never commit.
Opening an object is an access to personal data, so the caller writes the audit event
(:func:`storage.audit.append_event`) in the same transaction as the access.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.blobs import BlobStore
from storage.errors import SealingError, StorageError
from storage.models import KeyWrap, ObjectKind, SealedObject, utcnow
from storage.sealing import (
    PrivateKey,
    PublicKey,
    SealContext,
    Wrap,
    decrypt_chunks,
    seal,
    unwrap_data_key,
    wrap_data_key,
)

logger = logging.getLogger(__name__)


def store_sealed(
    session: Session,
    blobs: BlobStore,
    *,
    data: bytes,
    kind: ObjectKind,
    case_id: int | None,
    recipients: Sequence[PublicKey],
) -> SealedObject:
    """Seal ``data`` to ``recipients``, store the ciphertext, and add its rows to the session.

    The blob is read back and compared with the ciphertext by SHA-256 before the rows
    are added. The writer may have no private key, so it cannot check by decrypting.
    If anything fails after the blob was written, the blob is deleted again.
    Raises SealingError for invalid recipients and StorageError when verification fails.
    """
    object_id = uuid.uuid4().hex
    kind = ObjectKind(kind)
    context = SealContext(case_id=case_id, object_id=object_id, kind=kind.value)
    sealed = seal(data, context, recipients)

    blobs.put(object_id, sealed.ciphertext)
    try:
        _verify_blob(blobs, object_id, sealed.ciphertext)

        sealed_object = SealedObject(
            id=object_id,
            case_id=case_id,
            kind=kind.value,
            blob_key=object_id,
            format_version=sealed.format_version,
            chunk_size=sealed.chunk_size,
            chunk_count=sealed.chunk_count,
            plaintext_size=sealed.plaintext_size,
            ciphertext_size=len(sealed.ciphertext),
            wraps=[key_wrap_row(wrap) for wrap in sealed.wraps],
        )
        session.add(sealed_object)
        session.flush()
    except BaseException:
        # NOTE: when the caller later rolls back these rows, the blob stays behind as an
        # orphan. It is unreadable without its wraps, but no code removes it yet.
        blobs.delete(object_id)
        raise

    logger.info(
        "Stored sealed %s object %s with %d wraps", kind.value, object_id, len(sealed.wraps)
    )
    return sealed_object


def open_sealed(
    session: Session, blobs: BlobStore, obj: SealedObject, private_key: PrivateKey
) -> bytes:
    """Decrypt a sealed object with the private key of one of its recipient roles.

    Raises SealingError when the object was erased or has no wrap for the key,
    TamperedError when authentication fails, and BlobNotFoundError when the blob is
    missing.
    """
    data_key = unwrap_object_key(session, obj, private_key)
    return decrypt_chunks(blobs.get(obj.blob_key), context_of(obj), data_key)


def unwrap_object_key(session: Session, obj: SealedObject, private_key: PrivateKey) -> bytes:
    """Return an object's data key, unwrapped from the wrap made for ``private_key``.

    Raises SealingError when the object was erased or has no wrap for the key, and
    TamperedError when the wrap fails authentication.
    """
    if obj.erased_at is not None:
        raise SealingError(f"Sealed object {obj.id!r} was erased and cannot be opened.")

    key_wrap = session.scalars(
        select(KeyWrap).where(KeyWrap.object_id == obj.id, KeyWrap.key_id == private_key.key_id)
    ).one_or_none()
    if key_wrap is None:
        raise SealingError(
            f"Sealed object {obj.id!r} has no key wrap for role {private_key.role!r} "
            f"(key {private_key.key_id}); it was not sealed to this key."
        )

    return unwrap_data_key(wrap_of(key_wrap), context_of(obj), private_key)


def add_recipient(
    session: Session, obj: SealedObject, opener: PrivateKey, recipient: PublicKey
) -> KeyWrap:
    """Wrap an object's data key to one more recipient and add the wrap to the session.

    ``opener`` is the private key of a role that already has a wrap. The ciphertext is
    not touched. Returns the existing wrap when the recipient's key already has one.
    """
    existing = session.scalars(
        select(KeyWrap).where(KeyWrap.object_id == obj.id, KeyWrap.key_id == recipient.key_id)
    ).one_or_none()
    if existing is not None:
        return existing

    data_key = unwrap_object_key(session, obj, opener)
    key_wrap = key_wrap_row(wrap_data_key(data_key, context_of(obj), recipient))
    obj.wraps.append(key_wrap)
    session.flush()

    logger.info("Wrapped object %s to key %s of role %s", obj.id, recipient.key_id, recipient.role)
    return key_wrap


def erase_sealed(session: Session, blobs: BlobStore, obj: SealedObject) -> None:
    """Crypto-erase an object: delete every key wrap, mark it erased, then delete the blob.

    Once every wrap is gone, the data key cannot be recovered, so the object is
    unreadable even where copies of the ciphertext survive (backups, SSD blocks). The
    wraps are deleted in the caller's transaction, which the caller must commit, and the
    blob is deleted at once. Erasing an erased object again does nothing.

    NOTE: database backups keep the deleted wraps until those backups expire.
    """
    if obj.erased_at is not None:
        return

    destroy_wraps(session, obj)
    blobs.delete(obj.blob_key)


def destroy_wraps(session: Session, obj: SealedObject) -> int:
    """Delete every key wrap of an object and mark it erased; return how many were deleted.

    This is the crypto-erasure itself: without a wrap, no private key recovers the data
    key. The ciphertext stays in the blob store until :func:`purge_erased_blobs` runs
    after the caller commits, so a rolled-back erasure leaves the object whole. Does
    nothing to an object that is already erased.
    """
    if obj.erased_at is not None:
        return 0

    count = len(obj.wraps)
    obj.wraps.clear()
    obj.erased_at = utcnow()
    session.flush()

    logger.info("Destroyed %d key wraps of sealed object %s", count, obj.id)
    return count


def purge_erased_blobs(
    session: Session, blobs: BlobStore, object_ids: Iterable[str] | None = None
) -> int:
    """Delete the blobs of committed erased objects; return how many blobs were deleted.

    With ``object_ids``, only those objects are checked. Without it, every erased object
    is, which also finishes erasures interrupted between the commit and the deletion.
    """
    statement = select(SealedObject.blob_key).where(SealedObject.erased_at.is_not(None))
    if object_ids is not None:
        statement = statement.where(SealedObject.id.in_(list(object_ids)))

    deleted = 0
    for blob_key in session.scalars(statement):
        if blobs.exists(blob_key):
            blobs.delete(blob_key)
            deleted += 1

    return deleted


def context_of(obj: SealedObject) -> SealContext:
    """Return the context that an object's chunks and wraps are bound to."""
    return SealContext(case_id=obj.case_id, object_id=obj.id, kind=obj.kind)


def wrap_of(key_wrap: KeyWrap) -> Wrap:
    """Return the sealing library's view of a stored key wrap."""
    return Wrap(
        role=key_wrap.role,
        key_id=key_wrap.key_id,
        algorithm=key_wrap.algorithm,
        encapsulated=key_wrap.encapsulated,
    )


def _verify_blob(blobs: BlobStore, key: str, ciphertext: bytes) -> None:
    # NOTE: the read may come from the page cache rather than the disk. The fsync before
    # the rename is what makes the bytes durable.
    expected = hashlib.sha256(ciphertext).digest()
    stored = hashlib.sha256(blobs.get(key)).digest()
    if not hmac.compare_digest(expected, stored):
        raise StorageError(f"Blob {key!r} differs from the ciphertext that was written.")


def key_wrap_row(wrap: Wrap) -> KeyWrap:
    """Return a new KeyWrap row for ``wrap``, with its key id and algorithm."""
    return KeyWrap(
        role=wrap.role,
        key_id=wrap.key_id,
        algorithm=wrap.algorithm,
        encapsulated=wrap.encapsulated,
    )
