"""Key lifecycle on stored objects: rotate a role's key, revoke a role's wraps, count usage.

Rotation re-wraps data keys (a few hundred bytes each) and never re-encrypts a blob.
It works in batches. Each batch first adds and commits the new wraps, then reads them
back, unwraps each with the new private key and compares the result with the data key
from the old wrap. Only after that check are the old wraps deleted. A ``key_rotations``
row records the progress, so an interrupted rotation resumes where it stopped.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, delete, func, not_, select
from sqlalchemy.orm import Session, sessionmaker

from storage.audit import append_event
from storage.errors import SealingError, StorageError
from storage.keys import KeyStore
from storage.models import (
    IdentityRequest,
    IdentityRequestStatus,
    KeyRotation,
    KeyRotationStatus,
    KeyWrap,
    Referral,
    SealedObject,
    utcnow,
)
from storage.sealing import PrivateKey, PublicKey, unwrap_data_key, wrap_data_key
from storage.vault import context_of, key_wrap_row, wrap_of

logger = logging.getLogger(__name__)

# Called after each batch with the number of wraps moved so far and the total.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class RotationResult:
    """Outcome of :func:`rotate_role_key`."""

    role: str
    old_key_id: str
    new_key_id: str
    wraps_moved: int
    # True when an interrupted rotation was continued instead of a new one started.
    resumed: bool


@dataclass(frozen=True)
class RotationSecrets:
    """Passphrases of the key being replaced and of the new key (often the same)."""

    passphrase: bytes
    new_passphrase: bytes


def rotate_role_key(
    session_factory: sessionmaker[Session],
    keys: KeyStore,
    role: str,
    secrets: RotationSecrets,
    *,
    algorithm: str,
    chain_key: bytes,
    actor: str,
    batch_size: int = 100,
    progress: ProgressCallback | None = None,
) -> RotationResult:
    """Create a new key for ``role`` and move every wrap of the role's older keys to it.

    When an earlier rotation of the role did not finish, it is resumed and no second
    key is created. Raises WrongPassphraseError before anything changes when the
    current private key does not open, and StorageError when a new wrap fails its check,
    in which case the old wraps are kept and running the rotation again resumes it.

    NOTE: run one rotation per role at a time; two concurrent runs are not prevented.
    """
    if batch_size < 1:
        raise StorageError(f"Invalid rotation batch size {batch_size}: expected at least 1.")

    with session_factory() as session:
        rotation, resumed = _open_rotation(session, keys, role, secrets, chain_key, actor)
        new_key_id = _ensure_new_key(session, keys, rotation, secrets, algorithm)
        new_private = keys.load_private_by_id(role, new_key_id, secrets.new_passphrase)
        new_public = keys.load_public_by_id(role, new_key_id)

        moved = _rewrap_all(
            session,
            keys,
            rotation,
            _Rewrap(new_public, new_private, secrets.passphrase, batch_size, progress),
        )

        rotation.status = KeyRotationStatus.DONE.value
        rotation.finished_at = utcnow()
        append_event(
            session,
            chain_key=chain_key,
            actor=actor,
            action="key.rotation_finished",
            details={
                "role": role,
                "rotation_id": rotation.id,
                "old_key_id": rotation.old_key_id,
                "new_key_id": new_key_id,
                "wraps": rotation.wraps_done,
            },
        )
        session.commit()

    logger.info("Rotated role %s to key %s: %d wraps moved", role, new_key_id, moved)
    return RotationResult(role, rotation.old_key_id, new_key_id, moved, resumed)


def rewrap_to_current(
    session_factory: sessionmaker[Session],
    keys: KeyStore,
    role: str,
    passphrase: bytes,
    *,
    chain_key: bytes,
    actor: str,
    batch_size: int = 100,
    progress: ProgressCallback | None = None,
) -> int:
    """Move wraps of the role's retired keys to its current key, without a new key.

    This finishes the job when a machine kept sealing to an old public key file after
    a rotation. Every key of the role must open with ``passphrase``. Returns how many
    wraps moved.
    """
    current = keys.load_public(role)
    step = _Rewrap(current, keys.load_private(role, passphrase), passphrase, batch_size, progress)

    with session_factory() as session:
        rotation = KeyRotation(
            role=role,
            old_key_id=current.key_id,
            new_key_id=current.key_id,
            status=KeyRotationStatus.REWRAPPING.value,
            started_by=actor,
        )
        session.add(rotation)
        session.flush()

        moved = _rewrap_all(session, keys, rotation, step)

        rotation.status = KeyRotationStatus.DONE.value
        rotation.finished_at = utcnow()
        append_event(
            session,
            chain_key=chain_key,
            actor=actor,
            action="key.rewrapped",
            details={"role": role, "key_id": current.key_id, "wraps": moved},
        )
        session.commit()

    return moved


def revoke_wraps(
    session: Session,
    role: str,
    *,
    key_id: str | None,
    chain_key: bytes,
    actor: str,
) -> int:
    """Delete every wrap of ``role`` (or of one key of it) and return how many were deleted.

    When the whole role is revoked (``key_id`` None), its referrals are marked revoked,
    and so are its approved identity requests, whose wraps on identity records are
    among those deleted. Revoking one key, such as a retired one, leaves them. Raises
    SealingError, deleting nothing, when an object would be left without any wrap,
    because that erases it: use crypto-erasure for that. The caller commits.
    """
    scope: ColumnElement[bool] = KeyWrap.role == role
    if key_id is not None:
        scope = and_(scope, KeyWrap.key_id == key_id)

    _refuse_orphans(session, scope, role)
    count = session.scalar(select(func.count()).select_from(KeyWrap).where(scope)) or 0
    session.execute(delete(KeyWrap).where(scope))

    if key_id is None:
        _revoke_access_records(session, role)

    append_event(
        session,
        chain_key=chain_key,
        actor=actor,
        action="key.revoked",
        details={"role": role, "key_id": key_id, "wraps": count},
    )
    logger.warning("Revoked %d wraps of role %s (key %s)", count, role, key_id or "any")
    return count


def _revoke_access_records(session: Session, role: str) -> None:
    now = utcnow()
    for referral in session.scalars(
        select(Referral).where(Referral.body == role, Referral.revoked_at.is_(None))
    ):
        referral.revoked_at = now

    for request in session.scalars(
        select(IdentityRequest).where(
            IdentityRequest.body == role,
            IdentityRequest.status == IdentityRequestStatus.APPROVED.value,
        )
    ):
        request.status = IdentityRequestStatus.REVOKED.value


def objects_per_key(session: Session) -> dict[str, int]:
    """Return, per key id, how many objects that are not erased it can still open."""
    statement = (
        select(KeyWrap.key_id, func.count(func.distinct(KeyWrap.object_id)))
        .join(SealedObject, SealedObject.id == KeyWrap.object_id)
        .where(SealedObject.erased_at.is_(None))
        .group_by(KeyWrap.key_id)
    )
    return {str(key_id): int(count) for key_id, count in session.execute(statement).all()}


def unfinished_rotation(session: Session, role: str) -> KeyRotation | None:
    """Return the role's rotation that has not finished, if there is one."""
    return session.scalars(
        select(KeyRotation)
        .where(KeyRotation.role == role, KeyRotation.status != KeyRotationStatus.DONE.value)
        .order_by(KeyRotation.id.desc())
        .limit(1)
    ).first()


@dataclass(frozen=True)
class _Rewrap:
    new_public: PublicKey
    new_private: PrivateKey
    old_passphrase: bytes
    batch_size: int
    progress: ProgressCallback | None


def _open_rotation(
    session: Session,
    keys: KeyStore,
    role: str,
    secrets: RotationSecrets,
    chain_key: bytes,
    actor: str,
) -> tuple[KeyRotation, bool]:
    rotation = unfinished_rotation(session, role)
    if rotation is not None:
        logger.info("Resuming rotation %d of role %s", rotation.id, role)
        return rotation, True

    # Opening the current private key first means a wrong passphrase stops the
    # rotation before a new key replaces the current one.
    current = keys.load_private(role, secrets.passphrase)
    rotation = KeyRotation(role=role, old_key_id=current.key_id, started_by=actor)
    session.add(rotation)
    session.flush()
    append_event(
        session,
        chain_key=chain_key,
        actor=actor,
        action="key.rotation_started",
        details={"role": role, "rotation_id": rotation.id, "old_key_id": current.key_id},
    )
    session.commit()
    return rotation, False


def _ensure_new_key(
    session: Session,
    keys: KeyStore,
    rotation: KeyRotation,
    secrets: RotationSecrets,
    algorithm: str,
) -> str:
    """Create the rotation's new key once; a resumed rotation adopts the key it made."""
    if rotation.new_key_id is not None:
        return rotation.new_key_id

    current_id = keys.current_key_id(rotation.role)
    if current_id is None or current_id == rotation.old_key_id:
        created = keys.init_role(rotation.role, secrets.new_passphrase, algorithm, replace=True)
        current_id = created.key_id

    # A current key that differs from the old one was created by this rotation
    # before it was interrupted.
    rotation.new_key_id = current_id
    rotation.status = KeyRotationStatus.REWRAPPING.value
    session.commit()
    return current_id


def _rewrap_all(session: Session, keys: KeyStore, rotation: KeyRotation, step: _Rewrap) -> int:
    new_key_id = step.new_public.key_id
    pending = [KeyWrap.role == rotation.role, KeyWrap.key_id != new_key_id]
    remaining = session.scalar(select(func.count()).select_from(KeyWrap).where(*pending)) or 0
    rotation.wraps_total = rotation.wraps_done + remaining
    session.commit()

    old_keys: dict[str, PrivateKey] = {}
    moved = 0
    while True:
        batch = session.scalars(
            select(KeyWrap).where(*pending).order_by(KeyWrap.id).limit(step.batch_size)
        ).all()
        if not batch:
            return moved

        data_keys = _add_new_wraps(session, keys, batch, step, old_keys)
        session.commit()

        _verify_and_delete_old(session, data_keys, step.new_private)
        rotation.wraps_done += len(data_keys)
        moved += len(data_keys)
        session.commit()

        if step.progress is not None:
            step.progress(rotation.wraps_done, rotation.wraps_total)


def _add_new_wraps(
    session: Session,
    keys: KeyStore,
    batch: Sequence[KeyWrap],
    step: _Rewrap,
    old_keys: dict[str, PrivateKey],
) -> dict[int, tuple[str, bytes]]:
    """Add a wrap for the new key beside each old one; return old wrap id → (object, data key)."""
    data_keys: dict[int, tuple[str, bytes]] = {}
    for old_wrap in batch:
        obj = old_wrap.sealed_object
        old_key = old_keys.get(old_wrap.key_id)
        if old_key is None:
            old_key = keys.load_private_by_id(old_wrap.role, old_wrap.key_id, step.old_passphrase)
            old_keys[old_wrap.key_id] = old_key

        data_key = unwrap_data_key(wrap_of(old_wrap), context_of(obj), old_key)
        if _wrap_for(session, obj.id, step.new_public.key_id) is None:
            new_wrap = key_wrap_row(wrap_data_key(data_key, context_of(obj), step.new_public))
            new_wrap.object_id = obj.id
            session.add(new_wrap)
        data_keys[old_wrap.id] = (obj.id, data_key)

    session.flush()
    return data_keys


def _verify_and_delete_old(
    session: Session, data_keys: dict[int, tuple[str, bytes]], new_private: PrivateKey
) -> None:
    """Re-read each new wrap, check it yields the same data key, then delete the old wraps."""
    session.expire_all()
    for object_id, data_key in data_keys.values():
        obj = session.get_one(SealedObject, object_id)
        new_wrap = _wrap_for(session, object_id, new_private.key_id)
        if new_wrap is None:
            raise StorageError(f"The new wrap of object {object_id!r} is missing after commit.")

        checked = unwrap_data_key(wrap_of(new_wrap), context_of(obj), new_private)
        if not hmac.compare_digest(checked, data_key):
            raise StorageError(
                f"The new wrap of object {object_id!r} does not yield the object's data key; "
                "the old wrap is kept."
            )

    session.execute(delete(KeyWrap).where(KeyWrap.id.in_(list(data_keys))))


def _wrap_for(session: Session, object_id: str, key_id: str) -> KeyWrap | None:
    return session.scalars(
        select(KeyWrap).where(KeyWrap.object_id == object_id, KeyWrap.key_id == key_id)
    ).one_or_none()


def _refuse_orphans(session: Session, scope: ColumnElement[bool], role: str) -> None:
    """Raise when deleting the scoped wraps would leave an object with no wrap at all."""
    revoked = select(KeyWrap.object_id).where(scope)
    kept = select(KeyWrap.object_id).where(not_(scope))
    orphans = session.scalar(
        select(func.count())
        .select_from(SealedObject)
        .where(SealedObject.id.in_(revoked), SealedObject.id.not_in(kept))
    )
    if orphans:
        raise SealingError(
            f"Revoking role {role!r} would leave {orphans} objects with no key wrap, which "
            "erases them. Erase those cases with `callcenter case erase` instead, or add "
            "another recipient first."
        )
