"""Caller identity in the voice webhooks: the keyed caller hash and the identity record.

The caller's number reaches us in every webhook's ``From``. It is kept in two forms
only: inside the identity record, sealed to the identity custodian alone, and as an
HMAC under a key held outside the database, for linking repeat callers and for rate
limits. An anonymous caller keeps neither.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from callcenter.identity import caller_hash_or_none, store_identity
from callcenter.runtime import Runtime
from storage.models import Call, Case

logger = logging.getLogger("callcenter.voice")

CONFIDENTIALITY_LEVELS = ("named", "confidential", "anonymous")
# A caller who made no choice is treated as confidential: kept, never shared without consent.
DEFAULT_CONFIDENTIALITY = "confidential"


def caller_key(session: Session, runtime: Runtime, *, call: Call, caller: str) -> None:
    """Store the keyed hash of the caller's number on a new call; none for a withheld number."""
    call.caller_hash = caller_hash_or_none(caller, runtime.settings.require_caller_hash_key())


def on_case_opened(
    session: Session, runtime: Runtime, *, call: Call, case: Case, caller: str
) -> None:
    """Copy the caller's choices onto the case and seal their identity record."""
    answers = call.answers
    level = answers.get("confidentiality")
    case.confidentiality = level if level in CONFIDENTIALITY_LEVELS else DEFAULT_CONFIDENTIALITY
    case.urgent = answers.get("urgent") == "yes"

    if case.confidentiality == "anonymous":
        # No number, not even its keyed hash: the caller asked not to be traceable.
        call.caller_hash = None
        session.flush()
        return

    seal_identity_if_missing(session, runtime, call=call, case=case, caller=caller)


def seal_identity_if_missing(
    session: Session, runtime: Runtime, *, call: Call, case: Case, caller: str
) -> None:
    """Seal the identity record once a webhook that carries the caller's number arrives.

    Twilio's recording status callback has no ``From``, and it may open the case before
    the <Record> action does; the next webhook with ``From`` then seals the record.
    """
    if (
        not caller
        or case.identity_object_id is not None
        or case.confidentiality in (None, "anonymous")
    ):
        return

    answers = call.answers
    record: dict[str, object] = {
        "phone_number": caller or None,
        "consent_callback": answers.get("consent_callback") == "yes",
        "consent_sms": answers.get("consent_sms") == "yes",
        "confidentiality": case.confidentiality,
        "channel": "ivr",
    }
    store_identity(session, runtime, case=case, record=record)
    session.flush()
    logger.info("sealed the identity record of case %d", case.id)
