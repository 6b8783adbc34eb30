"""Caller identity kept apart from a case's content, by cryptography.

- The identity record (number, name, contact details, consent flags) is a sealed
  object of its own, wrapped only to the identity custodian's key. An anonymous case
  has none.
- Referring a case to a government body wraps the case's content (recordings,
  transcripts, notes) to the body's key, never the identity record.
- An officer of a body that the case is referred to may request the identity with a
  reason. The identity custodian approves or refuses. Only an approval wraps the
  identity record to the body's key. Each step is an audit event.
- Repeat callers are linked by an HMAC-SHA256 of the caller's number under a key held
  outside the database (``CALLCENTER_CALLER_HASH_KEY``). A plain or salted hash would
  not do, because every Jordanian mobile number can be hashed in minutes
  (tests/test_caller_hash.py measures it).

The functions add rows to the caller's session and never commit.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import logging
import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from callcenter.errors import CallcenterError
from callcenter.runtime import Runtime
from storage.audit import append_event
from storage.blobs import BlobStore
from storage.keys import KeyStore
from storage.models import (
    Call,
    Case,
    CaseStatus,
    Confidentiality,
    IdentityRequest,
    IdentityRequestStatus,
    ObjectKind,
    Referral,
    SealedObject,
    utcnow,
)
from storage.sealing import ROLE_CASE_OFFICE, ROLE_IDENTITY_CUSTODIAN, PrivateKey, PublicKey
from storage.vault import add_recipient, destroy_wraps, open_sealed, store_sealed

logger = logging.getLogger("callcenter.identity")

JORDAN_COUNTRY_CODE = "962"
BODY_ROLE_PREFIX = "body_"
OFFICER_ROLE_PREFIX = "officer_"

# Twilio spells a withheld caller ID's label on a phone keypad and sends it as From
# (ANONYMOUS is 266696687). Hashing one would link every withheld caller together.
WITHHELD_NUMBERS = frozenset(
    {
        "+266696687",  # ANONYMOUS
        "+7378742833",  # RESTRICTED
        "+2562533",  # BLOCKED
        "+86282452253",  # UNAVAILABLE
        "+8656696",  # UNKNOWN
        "+7748283",  # PRIVATE
    }
)

_SEPARATORS = re.compile(r"[\s\-().]")
# Arabic-Indic and Eastern Arabic-Indic digits, as an agent may type them.
_DIGITS = str.maketrans("٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹", "01234567890123456789")
_BODY_ROLE_PATTERN = re.compile(r"body_[a-z0-9_]{1,59}")


class IdentityError(CallcenterError):
    """An identity operation is not allowed in the case's or request's current state."""


class InvalidNumberError(IdentityError, ValueError):
    """A caller number cannot be normalized to E.164. The message never quotes it."""


class RequestReason(enum.StrEnum):
    """Reason an officer gives for an identity request, recorded in the audit log."""

    CALLER_FOLLOW_UP = "caller_follow_up"
    INVESTIGATION = "investigation"
    CALLER_CONSENT = "caller_consent"
    LEGAL_OBLIGATION = "legal_obligation"


class Decision(enum.StrEnum):
    """The identity custodian's grounds for approving or refusing a request."""

    CONSENT_GIVEN = "consent_given"
    NECESSARY_FOR_CASE = "necessary_for_case"
    LEGAL_OBLIGATION = "legal_obligation"
    NO_CONSENT = "no_consent"
    INSUFFICIENT_REASON = "insufficient_reason"
    RISK_OF_REPRISAL = "risk_of_reprisal"


APPROVAL_DECISIONS = (
    Decision.CONSENT_GIVEN,
    Decision.NECESSARY_FOR_CASE,
    Decision.LEGAL_OBLIGATION,
)
REFUSAL_DECISIONS = (Decision.NO_CONSENT, Decision.INSUFFICIENT_REASON, Decision.RISK_OF_REPRISAL)


def normalize_number(number: str, default_country_code: str = JORDAN_COUNTRY_CODE) -> str:
    """Return ``number`` in E.164 form (``+`` and 8 to 15 digits).

    Accepts ``+962…``, ``00962…`` and national numbers with a trunk ``0`` (given the
    country code), with spaces, dashes, dots or brackets, and Arabic-Indic digits.
    Raises InvalidNumberError for anything else, including Twilio's withheld caller IDs.
    """
    compact = _SEPARATORS.sub("", number).translate(_DIGITS)

    if compact.startswith("+"):
        digits = compact[1:]
    elif compact.startswith("00"):
        digits = compact[2:]
    elif compact.startswith("0"):
        digits = default_country_code + compact[1:]
    else:
        raise InvalidNumberError(
            "The caller number has no country code: expected +962…, 00962… or 07…."
        )

    normalized = f"+{digits}"
    if normalized in WITHHELD_NUMBERS:
        raise InvalidNumberError("The caller withheld their number; there is nothing to hash.")

    if not (digits.isascii() and digits.isdigit() and 8 <= len(digits) <= 15) or digits[0] == "0":
        raise InvalidNumberError(
            "The caller number is not a valid E.164 number: expected + and 8 to 15 digits."
        )

    return normalized


def caller_hash(number: str, secret: bytes) -> str:
    """Return HMAC-SHA256, as 64 hex digits, of the E.164 form of ``number`` under ``secret``.

    Raises InvalidNumberError for a number that does not normalize, including a
    withheld caller ID; use :func:`caller_hash_or_none` where that must not fail.
    """
    if len(secret) < 32:
        raise IdentityError(
            f"Invalid caller hash key: {len(secret)} bytes, expected at least 32 "
            "(CALLCENTER_CALLER_HASH_KEY, 64 hex digits)."
        )

    normalized = normalize_number(number)
    return hmac.new(secret, normalized.encode("ascii"), hashlib.sha256).hexdigest()


def caller_hash_or_none(number: str | None, secret: bytes) -> str | None:
    """Return :func:`caller_hash`, or None for a missing, withheld or invalid number."""
    if not number:
        return None

    try:
        return caller_hash(number, secret)
    except InvalidNumberError:
        return None


def linked_cases(session: Session, case: Case) -> list[Case]:
    """Return the other cases whose calls came from the same caller hash, oldest first."""
    hashes = select(Call.caller_hash).where(Call.case_id == case.id, Call.caller_hash.is_not(None))
    statement = (
        select(Case)
        .join(Call, Call.case_id == Case.id)
        .where(Call.caller_hash.in_(hashes), Case.id != case.id)
        .distinct()
        .order_by(Case.id)
    )
    return list(session.scalars(statement))


def store_identity(
    session: Session, runtime: Runtime, *, case: Case, record: dict[str, object]
) -> SealedObject | None:
    """Seal the caller's identity record to the identity custodian alone and link it to the case.

    Returns None and stores nothing when the case is anonymous. A case that already
    has an identity record gets the new one, and the old one is crypto-erased. The
    intake app can call this, because sealing needs only the custodian's public key.
    """
    if case.confidentiality == Confidentiality.ANONYMOUS.value:
        return None

    previous = case.identity_object
    sealed = store_sealed(
        session,
        runtime.blobs,
        data=json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8"),
        kind=ObjectKind.IDENTITY,
        case_id=case.id,
        recipients=[runtime.public_key(ROLE_IDENTITY_CUSTODIAN)],
    )
    case.identity_object_id = sealed.id
    case.identity_object = sealed

    details: dict[str, Any] = {"confidentiality": case.confidentiality}
    if previous is not None:
        # NOTE: the old blob is deleted by the next `callcenter retention run`.
        destroy_wraps(session, previous)
        details["replaced_object_id"] = previous.id

    append_event(
        session,
        chain_key=runtime.settings.require_audit_key(),
        actor="intake",
        action="identity.sealed",
        case_id=case.id,
        object_id=sealed.id,
        details=details,
    )
    return sealed


def open_identity(
    session: Session,
    blobs: BlobStore,
    *,
    case: Case,
    private_key: PrivateKey,
    actor: str,
    chain_key: bytes,
) -> dict[str, Any]:
    """Open a case's identity record with the custodian's key or an approved body's key.

    The read is an audit event in the caller's transaction. Raises IdentityError when
    the case has no identity record, and SealingError when the key has no wrap.
    """
    obj = case.identity_object
    if obj is None:
        raise IdentityError(
            f"Case {case.reference} has no identity record (anonymous or never stored)."
        )

    record: dict[str, Any] = json.loads(open_sealed(session, blobs, obj, private_key))
    append_event(
        session,
        chain_key=chain_key,
        actor=actor,
        action="identity.read",
        case_id=case.id,
        object_id=obj.id,
        details={"role": private_key.role, "key_id": private_key.key_id},
    )
    return record


def check_body_role(role: str) -> None:
    """Raise IdentityError unless ``role`` names a government body's key (``body_<code>``)."""
    if not _BODY_ROLE_PATTERN.fullmatch(role):
        raise IdentityError(
            f"Invalid body {role!r}: a body's key role is body_ followed by its code in "
            "lower-case letters, digits and underscores, such as body_psd."
        )


def content_recipients(session: Session, keys: KeyStore, case_id: int) -> list[PublicKey]:
    """Return the keys that new content of a case is sealed to: the case office and referred bodies."""
    bodies = session.scalars(
        select(Referral.body)
        .where(Referral.case_id == case_id, Referral.revoked_at.is_(None))
        .order_by(Referral.body)
    )
    return [keys.load_public(ROLE_CASE_OFFICE), *(keys.load_public(body) for body in bodies)]


def refer_case(
    session: Session,
    runtime: Runtime,
    *,
    case: Case,
    body: str,
    actor: str,
    case_office_key: PrivateKey,
) -> Referral:
    """Refer a case to a body: wrap every content object of the case to the body's key.

    The identity record is left out. Referring again to the same body wraps objects
    added since and re-activates a revoked referral. Raises IdentityError for an
    erased case and KeyNotFoundError when the body has no public key.
    """
    check_body_role(body)
    if case.status == CaseStatus.ERASED.value:
        raise IdentityError(f"Case {case.reference} was erased; there is nothing to refer.")

    body_key = runtime.public_key(body)
    objects = session.scalars(
        select(SealedObject).where(
            SealedObject.case_id == case.id,
            SealedObject.kind != ObjectKind.IDENTITY.value,
            SealedObject.erased_at.is_(None),
        )
    ).all()
    for obj in objects:
        add_recipient(session, obj, case_office_key, body_key)

    referral = session.scalars(
        select(Referral).where(Referral.case_id == case.id, Referral.body == body)
    ).one_or_none()
    if referral is None:
        referral = Referral(case_id=case.id, body=body, referred_by=actor)
        session.add(referral)
    referral.revoked_at = None
    session.flush()

    append_event(
        session,
        chain_key=runtime.settings.require_audit_key(),
        actor=actor,
        action="case.referred",
        case_id=case.id,
        details={"body": body, "key_id": body_key.key_id, "objects": len(objects)},
    )
    logger.info("referred case %d to %s (%d objects wrapped)", case.id, body, len(objects))
    return referral


def request_identity(
    session: Session,
    runtime: Runtime,
    *,
    case: Case,
    body: str,
    officer: str,
    reason: RequestReason,
    justification: str | None = None,
) -> IdentityRequest:
    """File an officer's request for a caller's identity, with a reason code and a justification.

    The case must be referred to the officer's body and have an identity record. The
    free-text justification is sealed to the identity custodian, because it may name
    people. Raises IdentityError otherwise.
    """
    reason = RequestReason(reason)
    check_body_role(body)
    _require_active_referral(session, case, body)
    if case.identity_object is None or case.identity_object.erased_at is not None:
        raise IdentityError(
            f"Case {case.reference} has no identity record: the caller is anonymous or it was erased."
        )

    justification_id = None
    if justification:
        note = store_sealed(
            session,
            runtime.blobs,
            data=justification.encode("utf-8"),
            kind=ObjectKind.NOTE,
            case_id=case.id,
            recipients=[runtime.public_key(ROLE_IDENTITY_CUSTODIAN)],
        )
        justification_id = note.id

    request = IdentityRequest(
        case_id=case.id,
        body=body,
        requested_by=officer,
        reason_code=reason.value,
        justification_object_id=justification_id,
    )
    session.add(request)
    session.flush()

    append_event(
        session,
        chain_key=runtime.settings.require_audit_key(),
        actor=officer,
        action="identity.requested",
        case_id=case.id,
        object_id=justification_id,
        details={"request_id": request.id, "body": body, "reason": reason.value},
    )
    return request


def approve_identity_request(
    session: Session,
    runtime: Runtime,
    *,
    request: IdentityRequest,
    custodian: str,
    custodian_key: PrivateKey,
    decision: Decision,
) -> None:
    """Approve a pending request: wrap the case's identity record to the requesting body's key.

    Unwrapping the data key with the custodian's key is part of the approval's audit
    event. Raises IdentityError when the request is not pending, the decision is not an
    approval ground, or the referral was revoked meanwhile.
    """
    decision = Decision(decision)
    if decision not in APPROVAL_DECISIONS:
        raise IdentityError(
            f"{decision.value!r} is not a ground for approval: use one of "
            f"{', '.join(d.value for d in APPROVAL_DECISIONS)}."
        )

    case = _pending_case(session, request)
    _require_active_referral(session, case, request.body)
    identity = case.identity_object
    if identity is None or identity.erased_at is not None:
        raise IdentityError(f"Case {case.reference} no longer has an identity record.")

    body_key = runtime.public_key(request.body)
    add_recipient(session, identity, custodian_key, body_key)
    _decide(request, custodian, IdentityRequestStatus.APPROVED, decision)

    append_event(
        session,
        chain_key=runtime.settings.require_audit_key(),
        actor=custodian,
        action="identity.approved",
        case_id=case.id,
        object_id=identity.id,
        details={
            "request_id": request.id,
            "body": request.body,
            "key_id": body_key.key_id,
            "decision": decision.value,
        },
    )
    logger.info("identity request %d approved for %s", request.id, request.body)


def refuse_identity_request(
    session: Session,
    runtime: Runtime,
    *,
    request: IdentityRequest,
    custodian: str,
    decision: Decision,
) -> None:
    """Refuse a pending request; no key is touched. Raises IdentityError unless pending."""
    decision = Decision(decision)
    if decision not in REFUSAL_DECISIONS:
        raise IdentityError(
            f"{decision.value!r} is not a ground for refusal: use one of "
            f"{', '.join(d.value for d in REFUSAL_DECISIONS)}."
        )

    case = _pending_case(session, request)
    _decide(request, custodian, IdentityRequestStatus.REFUSED, decision)

    append_event(
        session,
        chain_key=runtime.settings.require_audit_key(),
        actor=custodian,
        action="identity.refused",
        case_id=case.id,
        details={"request_id": request.id, "body": request.body, "decision": decision.value},
    )
    logger.info("identity request %d refused", request.id)


def read_justification(
    session: Session,
    blobs: BlobStore,
    *,
    request: IdentityRequest,
    custodian_key: PrivateKey,
    actor: str,
    chain_key: bytes,
) -> str | None:
    """Open a request's justification with the custodian's key, as an audit event."""
    if request.justification_object_id is None:
        return None

    note = session.get_one(SealedObject, request.justification_object_id)
    text = open_sealed(session, blobs, note, custodian_key).decode("utf-8")
    append_event(
        session,
        chain_key=chain_key,
        actor=actor,
        action="identity.justification_read",
        case_id=request.case_id,
        object_id=note.id,
        details={"request_id": request.id},
    )
    return text


def _require_active_referral(session: Session, case: Case, body: str) -> None:
    referral = session.scalars(
        select(Referral).where(
            Referral.case_id == case.id, Referral.body == body, Referral.revoked_at.is_(None)
        )
    ).one_or_none()
    if referral is None:
        raise IdentityError(
            f"Case {case.reference} is not referred to {body}; only a body that a case "
            "is referred to may request or receive its caller's identity."
        )


def _pending_case(session: Session, request: IdentityRequest) -> Case:
    if request.status != IdentityRequestStatus.PENDING.value:
        raise IdentityError(
            f"Identity request {request.id} was already {request.status}; file a new request."
        )

    return session.get_one(Case, request.case_id)


def _decide(
    request: IdentityRequest,
    custodian: str,
    status: IdentityRequestStatus,
    decision: Decision,
) -> None:
    request.status = status.value
    request.decided_by = custodian
    request.decision_code = decision.value
    request.decided_at = utcnow()
