"""Retention and crypto-erasure: expired objects and a caller's deletion request.

Erasing an object destroys every wrap of its data key first, in the transaction that
also writes its audit event. Only after that commit is its ciphertext deleted from the
blob store. Without a wrap no private key recovers the data key, so the ciphertext is
unreadable even where a copy survives. On SQLite the write-ahead log is then
checkpointed and truncated, and secure_delete (storage.db) has zeroed the deleted
rows, so the wraps do not linger in the database files either.

Retention periods come from the ``[retention]`` settings: per object kind, the days
after a case entered a status when that kind of object expires.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from callcenter.settings import RetentionSettings
from storage.audit import append_event, change_case_status
from storage.blobs import BlobStore
from storage.models import Call, Case, CaseStatus, ObjectKind, SealedObject, utcnow
from storage.vault import destroy_wraps, purge_erased_blobs

logger = logging.getLogger("callcenter.retention")

RETENTION_ACTOR = "retention"


class ErasureReason(enum.StrEnum):
    """Reason a whole case is erased before its retention period ends, recorded in the audit log."""

    CALLER_REQUEST = "caller_request"
    LEGAL_ORDER = "legal_order"
    RECORDED_IN_ERROR = "recorded_in_error"


@dataclass
class RetentionReport:
    """Summary of one retention pass: what it erased, or in a dry run what it would erase."""

    erased: dict[str, int] = field(default_factory=dict)
    blobs_deleted: int = 0
    dry_run: bool = False

    @property
    def total(self) -> int:
        return sum(self.erased.values())


def run_retention(
    session_factory: sessionmaker[Session],
    blobs: BlobStore,
    retention: RetentionSettings,
    *,
    chain_key: bytes,
    now: datetime | None = None,
    dry_run: bool = False,
) -> RetentionReport:
    """Crypto-erase every object whose retention period has ended, then delete its ciphertext.

    Each object is erased and audited in its own transaction, so an interrupted pass
    keeps what it finished and the next pass continues. The blob deletion at the end
    also covers erasures whose blob deletion was interrupted earlier.
    """
    now = now or utcnow()
    report = RetentionReport(dry_run=dry_run)

    with session_factory() as session:
        for obj, case, days in _expired_objects(session, retention, now):
            report.erased[obj.kind] = report.erased.get(obj.kind, 0) + 1
            if dry_run:
                continue

            _erase_expired(session, obj, case, days, chain_key)
            session.commit()

        if not dry_run:
            report.blobs_deleted = purge_erased_blobs(session, blobs)
            session.commit()
            compact_database(session.get_bind())

    logger.info(
        "retention pass%s: %d objects erased, %d blobs deleted",
        " (dry run)" if dry_run else "",
        report.total,
        report.blobs_deleted,
    )
    return report


def erase_case(
    session: Session,
    case: Case,
    *,
    chain_key: bytes,
    actor: str,
    reason: ErasureReason,
) -> list[str]:
    """Crypto-erase every sealed object of a case, forget its caller hash, mark it erased.

    Returns the ids of the objects erased now. The caller commits, then passes them to
    :func:`finish_erasure` to delete their ciphertext. The case row, its reference and
    its audit events remain, so the erasure itself stays on record. Erasing an erased
    case again returns an empty list and writes no event.
    """
    reason = ErasureReason(reason)
    objects = session.scalars(
        select(SealedObject).where(
            SealedObject.case_id == case.id, SealedObject.erased_at.is_(None)
        )
    ).all()
    if case.status == CaseStatus.ERASED.value and not objects:
        return []

    for obj in objects:
        wraps = destroy_wraps(session, obj)
        _audit_erasure(session, obj, chain_key, actor, {"reason": reason.value, "wraps": wraps})

    _forget_caller(session, case)
    change_case_status(session, case, CaseStatus.ERASED, chain_key=chain_key, actor=actor)
    append_event(
        session,
        chain_key=chain_key,
        actor=actor,
        action="case.erased",
        case_id=case.id,
        details={"reason": reason.value, "objects": len(objects)},
    )

    logger.info("erased case %d: %d objects", case.id, len(objects))
    return [obj.id for obj in objects]


def finish_erasure(session: Session, blobs: BlobStore, object_ids: list[str]) -> int:
    """Delete the ciphertext of committed erasures and compact SQLite; return blobs deleted."""
    deleted = purge_erased_blobs(session, blobs, object_ids)
    compact_database(session.get_bind())
    return deleted


def compact_database(bind: object) -> None:
    """On SQLite, checkpoint and truncate the write-ahead log so no deleted row stays in it.

    With secure_delete on, the checkpoint writes zeroed pages over the deleted wraps in
    the database file. Other databases are left alone.

    NOTE: PostgreSQL keeps deleted rows in its data files until VACUUM reuses the space,
    and its write-ahead log and base backups keep them longer. Only the retention of
    those files bounds how long an erased object's wraps survive there.
    """
    if not isinstance(bind, Engine) or bind.dialect.name != "sqlite":
        return

    with bind.connect() as connection:
        busy, _log_frames, _checkpointed = connection.exec_driver_sql(
            "PRAGMA wal_checkpoint(TRUNCATE)"
        ).one()

    if busy:
        logger.warning(
            "SQLite write-ahead log not truncated: another connection is reading; "
            "the next retention pass retries"
        )


def _expired_objects(
    session: Session, retention: RetentionSettings, now: datetime
) -> Iterator[tuple[SealedObject, Case, int]]:
    """Yield each object whose case entered a status with a period for its kind long enough ago."""
    for kind, periods in retention.periods.items():
        for status, days in periods.items():
            cutoff = now - timedelta(days=days)
            statement = (
                select(SealedObject, Case)
                .join(Case, Case.id == SealedObject.case_id)
                .where(
                    SealedObject.kind == kind,
                    SealedObject.erased_at.is_(None),
                    Case.status == status,
                    Case.status_changed_at <= cutoff,
                )
                .order_by(SealedObject.created_at)
            )
            for obj, case in session.execute(statement).all():
                yield obj, case, days


def _erase_expired(
    session: Session, obj: SealedObject, case: Case, days: int, chain_key: bytes
) -> None:
    wraps = destroy_wraps(session, obj)
    if obj.kind == ObjectKind.IDENTITY.value:
        # The caller hash links calls to a person; it expires with the identity record.
        _forget_caller(session, case)

    _audit_erasure(
        session,
        obj,
        chain_key,
        RETENTION_ACTOR,
        {"reason": "retention", "status": case.status, "days": days, "wraps": wraps},
    )


def _audit_erasure(
    session: Session, obj: SealedObject, chain_key: bytes, actor: str, details: dict[str, object]
) -> None:
    append_event(
        session,
        chain_key=chain_key,
        actor=actor,
        action="object.erased",
        case_id=obj.case_id,
        object_id=obj.id,
        details={"kind": obj.kind, **details},
    )


def _forget_caller(session: Session, case: Case) -> None:
    session.execute(update(Call).where(Call.case_id == case.id).values(caller_hash=None))
