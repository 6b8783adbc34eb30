"""Read a case for a person: its fields and its transcript, opened with the case office key."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from callcenter.errors import CallcenterError
from callcenter.references import is_valid_reference
from callcenter.runtime import Runtime
from storage.audit import append_event
from storage.models import Case, SealedObject, Transcript
from storage.sealing import ROLE_CASE_OFFICE, PrivateKey
from storage.vault import open_sealed


def read_case(runtime: Runtime, reference: str, *, actor: str) -> dict[str, Any]:
    """Return the case as a dict with its latest transcript text; audit the unseal."""
    if not is_valid_reference(reference):
        raise CallcenterError(
            f"{reference!r} is not a valid reference: it has 10 digits and the last is a check digit."
        )

    settings = runtime.settings
    private_key = runtime.keys.load_private(
        ROLE_CASE_OFFICE, settings.secrets.passphrase(ROLE_CASE_OFFICE)
    )

    with runtime.session() as session:
        case = session.scalar(select(Case).where(Case.reference == reference))
        if case is None:
            raise CallcenterError(f"no case with reference {reference}.")

        # The newest recording is the take the caller kept ("record again" adds one).
        transcript = session.scalar(
            select(Transcript)
            .where(Transcript.case_id == case.id)
            .order_by(Transcript.recording_id.desc(), Transcript.version.desc())
        )
        text = None
        if transcript is not None:
            text = _open_transcript(runtime, session, transcript, private_key, actor=actor)

        recording_seconds = sum(r.duration_seconds or 0 for r in case.recordings)
        return {
            "reference": case.reference,
            "status": case.status,
            "complaint_type": case.complaint_type,
            "category": case.category,
            "language": case.language,
            "recording_seconds": recording_seconds,
            "transcript": text,
            "failure_reason": case.failure_reason,
        }


def _open_transcript(
    runtime: Runtime,
    session: Session,
    transcript: Transcript,
    private_key: PrivateKey,
    *,
    actor: str,
) -> str | None:
    """Open a transcript and audit the read; an erased one gives None, not an error."""
    sealed_object = session.get(SealedObject, transcript.sealed_object_id)
    if sealed_object is None:
        raise CallcenterError(
            f"transcript {transcript.id} points at missing object {transcript.sealed_object_id}."
        )
    if sealed_object.erased_at is not None:
        return None

    payload = open_sealed(session, runtime.blobs, sealed_object, private_key)
    append_event(
        session,
        chain_key=runtime.settings.require_audit_key(),
        actor=actor,
        action="transcript.read",
        case_id=transcript.case_id,
        object_id=sealed_object.id,
    )
    session.commit()
    text: str = json.loads(payload)["text"]
    return text
