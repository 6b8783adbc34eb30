"""Transcription job: unseal a recording in memory, decode, run Vosk, seal the transcript.

The worker process loads the Vosk model and unlocks the transcription role's private
key once, then calls ``install_context`` before rq's forking Worker starts. Each job
runs in a forked work-horse that shares both, so a native crash in Vosk fails one job
and not the worker.

Safe to run twice: a recording that already has a transcript is skipped, and the
transcript row, the case status and the outbox row change in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage.audit import append_event
from storage.blobs import BlobStore
from storage.models import CaseStatus, ObjectKind, Recording, RecordingStatus, Transcript
from storage.outbox import mark_done
from storage.sealing import PrivateKey, PublicKey
from storage.vault import open_sealed, store_sealed
from transcription.audio import decode_audio
from transcription.engine import VoskEngine
from transcription.errors import AudioError, TranscriptionError

logger = logging.getLogger("transcription.jobs")

JOB_NAME = "transcription.jobs.transcribe_recording"


@dataclass(frozen=True)
class TranscriptionContext:
    """Resources of a transcription job, prepared once in the worker's parent process."""

    session_factory: sessionmaker[Session]
    blobs: BlobStore
    engine: VoskEngine
    # Opens recordings only; transcripts are sealed to the case office, not to this role.
    private_key: PrivateKey
    case_office_key: PublicKey
    audit_key: bytes
    max_audio_seconds: float
    # Keys that new content of a case is sealed to, given the case id: the case office
    # plus any body the case is referred to. None means the case office alone.
    content_recipients: Callable[[Session, int], list[PublicKey]] | None = None


_context: TranscriptionContext | None = None


def install_context(context: TranscriptionContext) -> None:
    """Set the context that jobs in this process (and its forked children) use."""
    global _context
    _context = context


def transcribe_recording(recording_id: int) -> None:
    """rq entry point: takes a recording row id only."""
    if _context is None:
        raise TranscriptionError(
            "transcription context not installed: run jobs with `callcenter worker transcription`"
        )

    with _context.session_factory() as session:
        recording = session.get(Recording, recording_id)
        if recording is None:
            logger.error("recording row %d not found; nothing to transcribe", recording_id)
            return
        run_transcription(_context, session, recording)


def run_transcription(
    context: TranscriptionContext, session: Session, recording: Recording
) -> None:
    """Transcribe one stored recording and move its case to review."""
    if recording.case.status == CaseStatus.ERASED.value:
        logger.info(
            "case %d was erased; recording %d is not transcribed", recording.case_id, recording.id
        )
        mark_done(session, JOB_NAME, recording.id, note="case erased")
        session.commit()
        return

    existing = session.scalar(select(Transcript.id).where(Transcript.recording_id == recording.id))
    if existing is not None:
        logger.info("recording %d already has transcript %d", recording.id, existing)
        mark_done(session, JOB_NAME, recording.id)
        session.commit()
        return

    if recording.status != RecordingStatus.STORED.value or recording.sealed_object is None:
        raise TranscriptionError(
            f"recording {recording.id} is not stored yet; the recordings job runs first"
        )

    audio_bytes = open_sealed(session, context.blobs, recording.sealed_object, context.private_key)
    try:
        audio = decode_audio(
            audio_bytes,
            target_rate=context.engine.sample_rate,
            max_seconds=context.max_audio_seconds,
        )
    except AudioError as error:
        _record_failure(context, session, recording, str(error))
        return
    finally:
        del audio_bytes

    logger.info("transcribing recording %d (%.1f s of audio)", recording.id, audio.duration_seconds)
    result = context.engine.transcribe(audio)

    sealed = store_sealed(
        session,
        context.blobs,
        data=result.to_json(),
        kind=ObjectKind.TRANSCRIPT,
        case_id=recording.case_id,
        recipients=(
            context.content_recipients(session, recording.case_id)
            if context.content_recipients is not None
            else [context.case_office_key]
        ),
    )
    session.add(
        Transcript(
            case_id=recording.case_id,
            recording_id=recording.id,
            sealed_object_id=sealed.id,
            version=1,
            engine="vosk",
            model_name=result.model_name,
            word_count=len(result.words),
        )
    )
    case = recording.case
    case.set_intake_status(CaseStatus.AWAITING_REVIEW)
    if not result.text:
        case.failure_reason = "Vosk heard no words in the recording; an agent should listen to it."
    append_event(
        session,
        chain_key=context.audit_key,
        actor="transcription-worker",
        action="transcript.created",
        case_id=case.id,
        object_id=sealed.id,
        details={"recording_id": recording.id, "words": len(result.words)},
    )
    mark_done(session, JOB_NAME, recording.id)
    session.commit()
    logger.info("transcribed recording %d: %d words", recording.id, len(result.words))


def _record_failure(
    context: TranscriptionContext, session: Session, recording: Recording, reason: str
) -> None:
    """Keep the sealed audio and tell a person why it could not be transcribed."""
    case = recording.case
    case.set_intake_status(CaseStatus.TRANSCRIPTION_FAILED)
    case.failure_reason = (
        f"The recording could not be transcribed: {reason.rstrip('.')}. The sealed audio is kept."
    )
    append_event(
        session,
        chain_key=context.audit_key,
        actor="transcription-worker",
        action="transcript.failed",
        case_id=case.id,
        details={"recording_id": recording.id},
    )
    mark_done(session, JOB_NAME, recording.id, note="audio rejected")
    session.commit()
    logger.warning("recording %d not transcribed: %s", recording.id, reason)
