"""SQLAlchemy models of the complaint store.

Nothing in these tables is personal data in clear: recordings, transcripts and caller
identities live in the blob store as sealed objects, and the rows below only point at
them. A call keeps a keyed hash of the caller's number, never the number. Times are
stored as timezone-aware UTC.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    event,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Explicit constraint names keep Alembic migrations identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Return the current time in UTC, for column defaults."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSON,
    }


class CaseStatus(enum.StrEnum):
    """Lifecycle of a case: the intake pipeline's statuses, then the console's.

    The intake pipeline sets the first five. The others follow the complaints
    platform's stages (screen, refer, process, close) and are set by people. ERASED
    marks a case whose sealed objects were crypto-erased at the caller's request.
    """

    RECEIVED = "received"
    AWAITING_TRANSCRIPTION = "awaiting_transcription"
    AWAITING_REVIEW = "awaiting_review"
    TRANSCRIPTION_FAILED = "transcription_failed"
    RECORDING_FAILED = "recording_failed"
    SCREENING = "screening"
    PENDING_INFO = "pending_info"
    REFERRED = "referred"
    IN_PROGRESS = "in_progress"
    ESCALATED = "escalated"
    RESPONSE_REVIEW = "response_review"
    RESOLVED = "resolved"
    CLOSED = "closed"
    REOPENED = "reopened"
    NOT_ADMISSIBLE = "not_admissible"
    REFERRED_EXT = "referred_ext"
    WITHDRAWN = "withdrawn"
    ERASED = "erased"


# Statuses the intake pipeline may change; anything later belongs to people (or erasure).
INTAKE_STATUSES = frozenset(
    {
        CaseStatus.RECEIVED.value,
        CaseStatus.AWAITING_TRANSCRIPTION.value,
        CaseStatus.AWAITING_REVIEW.value,
        CaseStatus.TRANSCRIPTION_FAILED.value,
        CaseStatus.RECORDING_FAILED.value,
    }
)


class Confidentiality(enum.StrEnum):
    """How much of the caller's identity a case keeps.

    NAMED and CONFIDENTIAL both keep a sealed identity record that only the identity
    custodian can open. CONFIDENTIAL records the caller's wish that it is not shared
    with the body concerned without consent. ANONYMOUS keeps no identity record and no
    caller hash.
    """

    NAMED = "named"
    CONFIDENTIAL = "confidential"
    ANONYMOUS = "anonymous"


class IdentityRequestStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REFUSED = "refused"
    # The body's wraps were revoked after an approval.
    REVOKED = "revoked"


class KeyRotationStatus(enum.StrEnum):
    # The rotation row exists but the new key may not have been created yet.
    PREPARING = "preparing"
    REWRAPPING = "rewrapping"
    DONE = "done"


class RecordingStatus(enum.StrEnum):
    PENDING = "pending"
    STORED = "stored"
    FAILED = "failed"


class ObjectKind(enum.StrEnum):
    """Kind of a sealed object; bound into every chunk's AAD and every key wrap."""

    RECORDING = "recording"
    TRANSCRIPT = "transcript"
    IDENTITY = "identity"
    # Free text written by staff, such as the justification of an identity request.
    NOTE = "note"


class Call(Base):
    """Per-call IVR state, keyed by Twilio's CallSid because Twilio sends no cookie."""

    __tablename__ = "calls"

    id: Mapped[int] = mapped_column(primary_key=True)
    call_sid: Mapped[str] = mapped_column(String(64), unique=True)
    flow_id: Mapped[str] = mapped_column(String(64))
    node: Mapped[str] = mapped_column(String(64))
    language: Mapped[str] = mapped_column(String(8))
    answers: Mapped[dict[str, Any]] = mapped_column(default=dict)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    twilio_status: Mapped[str] = mapped_column(String(32), default="in-progress")
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    # HMAC-SHA256 of the caller's E.164 number under a key kept outside the database,
    # so repeat callers can be linked without storing the number. None when anonymous.
    caller_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    ended_at: Mapped[datetime | None]

    case: Mapped[Case | None] = relationship(foreign_keys=[case_id])


class Case(Base):
    """A complaint, whatever the channel it arrived through."""

    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(primary_key=True)
    reference: Mapped[str] = mapped_column(String(16), unique=True)
    channel: Mapped[str] = mapped_column(String(16), default="ivr")
    status: Mapped[str] = mapped_column(String(32), default=CaseStatus.RECEIVED.value)
    complaint_type: Mapped[str | None] = mapped_column(String(8))
    category: Mapped[str | None] = mapped_column(String(32))
    language: Mapped[str] = mapped_column(String(8))
    # A reason a person can act on, in English for agents' logs; never transcript text.
    failure_reason: Mapped[str | None] = mapped_column(Text)
    # A Confidentiality value; None until the caller (or an agent) has chosen.
    confidentiality: Mapped[str | None] = mapped_column(String(16))
    urgent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The sealed identity record; use_alter breaks the cycle with sealed_objects.case_id.
    identity_object_id: Mapped[str | None] = mapped_column(
        ForeignKey("sealed_objects.id", use_alter=True)
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Set whenever ``status`` changes (see _track_status_change); retention counts from it.
    status_changed_at: Mapped[datetime] = mapped_column(default=utcnow)

    recordings: Mapped[list[Recording]] = relationship(back_populates="case")
    transcripts: Mapped[list[Transcript]] = relationship(back_populates="case")
    identity_object: Mapped[SealedObject | None] = relationship(foreign_keys=[identity_object_id])

    def set_intake_status(self, status: CaseStatus) -> bool:
        """Move the case along the intake pipeline unless a person or an erasure moved it on.

        Returns False and leaves the status alone when it is outside INTAKE_STATUSES,
        so a late worker cannot undo a screening decision or revive an erased case.
        """
        if self.status not in INTAKE_STATUSES:
            return False
        self.status = status.value
        return True


@event.listens_for(Case.status, "set")
def _track_status_change(target: Case, value: object, oldvalue: object, _initiator: object) -> None:
    if value != oldvalue:
        target.status_changed_at = utcnow()


class Recording(Base):
    """A Twilio recording, from the status callback until its sealed copy is stored."""

    __tablename__ = "recordings"

    id: Mapped[int] = mapped_column(primary_key=True)
    recording_sid: Mapped[str] = mapped_column(String(64), unique=True)
    call_sid: Mapped[str] = mapped_column(String(64))
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=RecordingStatus.PENDING.value)
    # Twilio's media URL without credentials; it is a pointer, not content.
    source_url: Mapped[str] = mapped_column(Text)
    duration_seconds: Mapped[int | None]
    sealed_object_id: Mapped[str | None] = mapped_column(ForeignKey("sealed_objects.id"))
    download_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    twilio_deleted_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    case: Mapped[Case] = relationship(back_populates="recordings")
    sealed_object: Mapped[SealedObject | None] = relationship()


class Transcript(Base):
    """One version of a recording's transcript; the text itself is a sealed object."""

    __tablename__ = "transcripts"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id"))
    sealed_object_id: Mapped[str] = mapped_column(ForeignKey("sealed_objects.id"))
    version: Mapped[int] = mapped_column(Integer, default=1)
    engine: Mapped[str] = mapped_column(String(32))
    model_name: Mapped[str] = mapped_column(String(128))
    word_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    case: Mapped[Case] = relationship(back_populates="transcripts")

    __table_args__ = (UniqueConstraint("recording_id", "version"),)


class SealedObject(Base):
    """Ciphertext in the blob store, with one data key wrapped once per recipient role."""

    __tablename__ = "sealed_objects"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    blob_key: Mapped[str] = mapped_column(String(128), unique=True)
    format_version: Mapped[int] = mapped_column(Integer)
    chunk_size: Mapped[int] = mapped_column(Integer)
    chunk_count: Mapped[int] = mapped_column(Integer)
    plaintext_size: Mapped[int] = mapped_column(Integer)
    ciphertext_size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    erased_at: Mapped[datetime | None]

    wraps: Mapped[list[KeyWrap]] = relationship(
        back_populates="sealed_object", cascade="all, delete-orphan"
    )


class Referral(Base):
    """A case referred to a government body, whose key then opens the case's content.

    Content means recordings, transcripts and notes, never the identity record.
    ``revoked_at`` is set when the body's wraps are removed again.
    """

    __tablename__ = "referrals"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    # Key role of the body's liaison unit, such as "body_psd".
    body: Mapped[str] = mapped_column(String(64))
    referred_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]

    __table_args__ = (UniqueConstraint("case_id", "body"),)


class IdentityRequest(Base):
    """An officer's request to see a caller's identity, decided by the identity custodian.

    The free-text justification is a sealed note that only the custodian can open. The
    reason and decision codes come from fixed lists, so they may appear in the audit log.
    """

    __tablename__ = "identity_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    body: Mapped[str] = mapped_column(String(64))
    requested_by: Mapped[str] = mapped_column(String(64))
    reason_code: Mapped[str] = mapped_column(String(32))
    justification_object_id: Mapped[str | None] = mapped_column(ForeignKey("sealed_objects.id"))
    status: Mapped[str] = mapped_column(String(16), default=IdentityRequestStatus.PENDING.value)
    decided_by: Mapped[str | None] = mapped_column(String(64))
    decision_code: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]


class KeyRotation(Base):
    """Progress of one role's key rotation, so that an interrupted rotation resumes.

    Every wrap of ``role`` whose key id is not ``new_key_id`` is moved to the new key.
    """

    __tablename__ = "key_rotations"

    id: Mapped[int] = mapped_column(primary_key=True)
    role: Mapped[str] = mapped_column(String(64), index=True)
    old_key_id: Mapped[str] = mapped_column(String(64))
    new_key_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=KeyRotationStatus.PREPARING.value)
    started_by: Mapped[str] = mapped_column(String(64))
    wraps_total: Mapped[int] = mapped_column(Integer, default=0)
    wraps_done: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None]


class KeyWrap(Base):
    """A data key sealed with HPKE to one role's public key."""

    __tablename__ = "key_wraps"

    id: Mapped[int] = mapped_column(primary_key=True)
    object_id: Mapped[str] = mapped_column(ForeignKey("sealed_objects.id"))
    role: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64))
    algorithm: Mapped[str] = mapped_column(String(64))
    encapsulated: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    sealed_object: Mapped[SealedObject] = relationship(back_populates="wraps")

    __table_args__ = (UniqueConstraint("object_id", "key_id"),)


class AuditEvent(Base):
    """Append-only event; each row's hash covers its content and the previous row's hash."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    object_id: Mapped[str | None] = mapped_column(String(32), index=True)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Unique, so two events appended concurrently to the same head cannot both commit.
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class OutboxMessage(Base):
    """A job that must reach rq; committed with the rows it refers to.

    The reconciler enqueues every row whose ``enqueued_at`` is empty or whose job
    vanished from Redis, so a lost enqueue is retried, never lost.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    queue: Mapped[str] = mapped_column(String(32))
    job_name: Mapped[str] = mapped_column(String(128))
    # Opaque row id for the job's single argument; never content or a phone number.
    entity_id: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str] = mapped_column(String(128), unique=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None]
    done_at: Mapped[datetime | None]
