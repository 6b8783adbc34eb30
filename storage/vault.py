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
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.blobs import BlobStore
from storage.errors import SealingError, StorageError
from storage.models import KeyWrap, ObjectKind, SealedObject, utcnow
from storage.sealing import PrivateKey, PublicKey, SealContext, Wrap, seal, unseal

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
            wraps=[_key_wrap_row(wrap) for wrap in sealed.wraps],
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

    wrap = Wrap(
        role=key_wrap.role,
        key_id=key_wrap.key_id,
        algorithm=key_wrap.algorithm,
        encapsulated=key_wrap.encapsulated,
    )
    context = SealContext(case_id=obj.case_id, object_id=obj.id, kind=obj.kind)
    return unseal(blobs.get(obj.blob_key), context, wrap, private_key)


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

    obj.wraps.clear()
    obj.erased_at = utcnow()
    session.flush()

    blobs.delete(obj.blob_key)
    logger.info("Erased sealed object %s", obj.id)


def _verify_blob(blobs: BlobStore, key: str, ciphertext: bytes) -> None:
    # NOTE: the read may come from the page cache rather than the disk. The fsync before
    # the rename is what makes the bytes durable.
    expected = hashlib.sha256(ciphertext).digest()
    stored = hashlib.sha256(blobs.get(key)).digest()
    if not hmac.compare_digest(expected, stored):
        raise StorageError(f"Blob {key!r} differs from the ciphertext that was written.")


def _key_wrap_row(wrap: Wrap) -> KeyWrap:
    return KeyWrap(
        role=wrap.role,
        key_id=wrap.key_id,
        algorithm=wrap.algorithm,
        encapsulated=wrap.encapsulated,
    )
