"""Append-only audit log, chained with HMAC-SHA256.

Each event's ``hash`` is HMAC-SHA256 under the chain key over the previous event's hash
followed by the canonical JSON of the event's own fields. Without the chain key, which
is kept outside the database, any edited, inserted, deleted or reordered event makes
:func:`verify_chain` fail. The one exception is deleting the newest events, so pass the
last exported head as ``known_head`` to catch that too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from storage.errors import StorageError
from storage.models import AuditEvent, Case, CaseStatus, utcnow

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
MIN_CHAIN_KEY_SIZE = 32

_HASH_FORMAT_VERSION = 1
# Arbitrary constant that names the audit chain among PostgreSQL advisory locks.
_ADVISORY_LOCK_KEY = 0x63632D6175646974
_MAX_NAME_LENGTH = 64


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_chain`.

    ``count`` is the number of events that verified, in id order, before the first
    broken one. ``head_hash`` is the hash of the last verified event, for export.
    """

    ok: bool
    count: int
    first_broken_id: int | None
    head_hash: str
    reason: str | None = None


def append_event(
    session: Session,
    *,
    chain_key: bytes,
    actor: str,
    action: str,
    case_id: int | None = None,
    object_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append an event to the chain in the caller's transaction and flush it.

    ``details`` must never contain personal data: no phone number, name, transcript
    text or key material, only ids, codes and reasons chosen from a fixed list,
    because the audit log is stored in clear and read by whoever checks it. It must be
    JSON-serializable.

    Concurrent appends are serialized until the caller's transaction ends: on
    PostgreSQL by a transaction-level advisory lock, on SQLite by taking the database
    write lock before reading the chain head. On any database, the unique constraint on
    ``prev_hash`` rejects a second event appended to the same head.
    """
    _check_chain_key(chain_key)
    _check_name("actor", actor)
    _check_name("action", action)

    _lock_chain(session)
    prev_hash = _chain_head(session)

    event = AuditEvent(
        occurred_at=utcnow(),
        actor=actor,
        action=action,
        case_id=case_id,
        object_id=object_id,
        details=_normalized_details(details),
        prev_hash=prev_hash,
    )
    event.hash = compute_event_hash(chain_key, event)
    session.add(event)
    session.flush()

    return event


def change_case_status(
    session: Session,
    case: Case,
    status: CaseStatus,
    *,
    chain_key: bytes,
    actor: str,
    details: dict[str, Any] | None = None,
) -> AuditEvent | None:
    """Set a case's status and append a ``case.status_changed`` event in one transaction.

    Returns None, and appends nothing, when the case already has that status. The
    caller commits.
    """
    status = CaseStatus(status)
    previous = case.status
    if previous == status.value:
        return None

    case.status = status.value
    return append_event(
        session,
        chain_key=chain_key,
        actor=actor,
        action="case.status_changed",
        case_id=case.id,
        details={**(details or {}), "from": previous, "to": status.value},
    )


def verify_chain(session: Session, chain_key: bytes, known_head: str | None = None) -> VerifyResult:
    """Recompute every event's hash in id order and check that each links to the previous.

    An edited event fails its own hash. A deleted, inserted or reordered event breaks
    the link of the event after it. ``known_head``, a head hash exported earlier, must
    appear in the chain, which catches deleted newest events.
    """
    _check_chain_key(chain_key)
    expected_prev = GENESIS_HASH
    count = 0
    head_seen = known_head is None

    statement = select(AuditEvent).order_by(AuditEvent.id).execution_options(yield_per=500)
    for event in session.scalars(statement):
        if not hmac.compare_digest(event.prev_hash, expected_prev):
            return _broken(
                count, event.id, expected_prev, "it does not link to the event before it"
            )

        if not hmac.compare_digest(event.hash, compute_event_hash(chain_key, event)):
            return _broken(count, event.id, expected_prev, "its content does not match its hash")

        count += 1
        expected_prev = event.hash
        head_seen = head_seen or hmac.compare_digest(event.hash, known_head or "")

    if not head_seen:
        return VerifyResult(
            ok=False,
            count=count,
            first_broken_id=None,
            head_hash=expected_prev,
            reason="the exported head hash is not in the chain: newest events were deleted",
        )

    return VerifyResult(ok=True, count=count, first_broken_id=None, head_hash=expected_prev)


def compute_event_hash(chain_key: bytes, event: AuditEvent) -> str:
    """Return HMAC-SHA256 over the previous hash and the canonical JSON of the event."""
    fields = {
        "version": _HASH_FORMAT_VERSION,
        "occurred_at": _canonical_time(event.occurred_at),
        "actor": event.actor,
        "action": event.action,
        "case_id": event.case_id,
        "object_id": event.object_id,
        "details": event.details,
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # prev_hash is always 64 hex digits, so the concatenation is unambiguous.
    message = event.prev_hash.encode("ascii") + canonical.encode("utf-8")

    return hmac.new(chain_key, message, hashlib.sha256).hexdigest()


def _lock_chain(session: Session) -> None:
    dialect = session.get_bind().dialect.name

    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
    elif dialect == "sqlite":
        # A write statement takes SQLite's database write lock (waiting up to the busy
        # timeout) even when it matches no row, so the head read next cannot go stale.
        # NOTE: this holds only if the transaction has not read before. The pysqlite
        # driver's default opens a transaction at the first write, so reads do not count.
        session.execute(
            update(AuditEvent).where(AuditEvent.id == -1).values(actor=AuditEvent.actor)
        )


def _chain_head(session: Session) -> str:
    statement = select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
    head = session.scalars(statement).first()

    return head if head is not None else GENESIS_HASH


def _normalized_details(details: dict[str, Any] | None) -> dict[str, Any]:
    """Round-trip ``details`` through JSON, so the hash covers what the database returns."""
    try:
        encoded = json.dumps(details or {}, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise StorageError(f"Audit details are not JSON-serializable: {error}") from error

    normalized: dict[str, Any] = json.loads(encoded)
    return normalized


def _canonical_time(moment: datetime) -> str:
    # SQLite returns naive datetimes, and every time that this package stores is UTC.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)

    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _broken(count: int, event_id: int, head_hash: str, reason: str) -> VerifyResult:
    logger.error("Audit chain broken at event %s: %s", event_id, reason)
    return VerifyResult(
        ok=False,
        count=count,
        first_broken_id=event_id,
        head_hash=head_hash,
        reason=f"event {event_id}: {reason}",
    )


def _check_chain_key(chain_key: bytes) -> None:
    if len(chain_key) < MIN_CHAIN_KEY_SIZE:
        raise StorageError(
            f"Invalid audit chain key: {len(chain_key)} bytes, expected at least "
            f"{MIN_CHAIN_KEY_SIZE}."
        )


def _check_name(field_name: str, value: str) -> None:
    if not value or len(value) > _MAX_NAME_LENGTH:
        raise StorageError(
            f"Invalid audit {field_name} {value[:80]!r}: "
            f"expected 1 to {_MAX_NAME_LENGTH} characters."
        )
