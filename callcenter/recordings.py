"""Recordings job: download from Twilio, seal, store, verify, delete Twilio's copy.

Runs in the recordings worker, which holds Twilio credentials and public keys only:
it can seal a recording but never open one.

Safe to run twice: each step checks what is already done. A recording already
sealed is not downloaded again; a Twilio copy already deleted is not deleted again;
the transcription job is queued through the outbox with a job id derived from the
recording, so a rerun cannot queue it twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import requests
from sqlalchemy.orm import Session
from twilio.base.exceptions import TwilioRestException

from callcenter import outbox
from callcenter.errors import RecordingDownloadError
from callcenter.runtime import Runtime
from callcenter.settings import load_settings
from callcenter.twilio_rest import make_rest_client
from storage.audit import append_event
from storage.models import CaseStatus, ObjectKind, Recording, RecordingStatus
from storage.sealing import ROLE_CASE_OFFICE, ROLE_TRANSCRIPTION
from storage.vault import store_sealed

logger = logging.getLogger("callcenter.recordings")

# Twilio returns 404 while a recording is still processing, and 5xx on its own faults.
RETRYABLE_STATUSES = frozenset({404, 429, 500, 502, 503, 504})
MAX_RECORDING_BYTES = 512 * 1024 * 1024


@dataclass
class _Context:
    runtime: Runtime | None = None


_context = _Context()


def install_runtime(runtime: Runtime) -> None:
    """Give the job its process's runtime; the worker calls this before work()."""
    _context.runtime = runtime


def _runtime() -> Runtime:
    if _context.runtime is None:
        _context.runtime = Runtime(load_settings())
    return _context.runtime


def process_recording(recording_id: int) -> None:
    """rq entry point: takes a row id only, opens its own session."""
    runtime = _runtime()
    with runtime.session() as session:
        recording = session.get(Recording, recording_id)
        if recording is None:
            logger.error("recording row %d not found; nothing to do", recording_id)
            return

        if recording.case.status == CaseStatus.ERASED.value:
            # Erased while the job waited: store nothing, but still remove Twilio's copy.
            logger.info(
                "case %d was erased; recording %s is not stored",
                recording.case_id,
                recording.recording_sid,
            )
        elif recording.status != RecordingStatus.STORED.value:
            _download_and_seal(runtime, session, recording)

        if recording.twilio_deleted_at is None:
            _delete_at_twilio(runtime, recording)
            recording.twilio_deleted_at = datetime.now(UTC)

        outbox.mark_done(session, outbox.PROCESS_RECORDING, recording.id)
        session.commit()

        pending = session.scalars(
            outbox.pending_messages(outbox.TRANSCRIBE_RECORDING, recording.id)
        ).all()
        outbox.enqueue_committed(
            session,
            runtime.redis,
            pending,
            job_timeout=runtime.settings.transcription.job_timeout_seconds,
        )


def _download_and_seal(runtime: Runtime, session: Session, recording: Recording) -> None:
    settings = runtime.settings
    try:
        audio = download_recording(
            recording.source_url,
            recording_sid=recording.recording_sid,
            account_sid=settings.twilio.account_sid,
            auth_token=settings.require_twilio(),
            api_base_url=settings.twilio.api_base_url,
            attempts=settings.twilio.download_attempts,
            backoff_seconds=settings.twilio.download_backoff_seconds,
            timeout=settings.twilio.request_timeout_seconds,
            on_attempt=lambda: _count_attempt(session, recording),
        )
    except RecordingDownloadError as error:
        _fail(runtime, session, recording, str(error))
        raise

    sealed = store_sealed(
        session,
        runtime.blobs,
        data=audio,
        kind=ObjectKind.RECORDING,
        case_id=recording.case_id,
        recipients=[runtime.public_key(ROLE_TRANSCRIPTION), runtime.public_key(ROLE_CASE_OFFICE)],
    )
    del audio

    recording.sealed_object_id = sealed.id
    recording.status = RecordingStatus.STORED.value
    recording.last_error = None
    recording.case.failure_reason = None
    recording.case.set_intake_status(CaseStatus.AWAITING_TRANSCRIPTION)
    outbox.add_message(
        session,
        queue=outbox.TRANSCRIPTION_QUEUE,
        job_name=outbox.TRANSCRIBE_RECORDING,
        entity_id=recording.id,
    )
    append_event(
        session,
        chain_key=settings.require_audit_key(),
        actor="recordings-worker",
        action="recording.sealed",
        case_id=recording.case_id,
        object_id=sealed.id,
        details={"recording_id": recording.id, "bytes": sealed.plaintext_size},
    )

    # The sealed copy is committed before Twilio's copy is deleted, so a crash between
    # the two leaves two copies, never none.
    session.commit()
    logger.info("sealed recording %s as object %s", recording.recording_sid, sealed.id)


def _count_attempt(session: Session, recording: Recording) -> None:
    recording.download_attempts += 1
    session.commit()


def _fail(runtime: Runtime, session: Session, recording: Recording, reason: str) -> None:
    recording.status = RecordingStatus.FAILED.value
    recording.last_error = reason
    recording.case.set_intake_status(CaseStatus.RECORDING_FAILED)
    recording.case.failure_reason = (
        f"Recording {recording.recording_sid} could not be downloaded from Twilio ({reason}). "
        "Twilio keeps it until it is deleted: retry with `callcenter recordings retry "
        f"{recording.id}`."
    )
    session.commit()


def download_recording(
    url: str,
    *,
    recording_sid: str,
    account_sid: str,
    auth_token: str,
    api_base_url: str,
    attempts: int,
    backoff_seconds: float,
    timeout: float,
    on_attempt: Callable[[], None] | None = None,
) -> bytes:
    """Download a recording as WAV with HTTP basic auth, retrying 404 and 5xx with backoff."""
    _check_host(url, api_base_url, recording_sid)
    media_url = url if url.endswith(".wav") else url + ".wav"
    delay = backoff_seconds
    last_problem = "no attempt made"

    for attempt in range(1, attempts + 1):
        if on_attempt is not None:
            on_attempt()
        try:
            response = requests.get(
                media_url, auth=(account_sid, auth_token), timeout=timeout, allow_redirects=False
            )
        except requests.RequestException as error:
            last_problem = f"{type(error).__name__}"
        else:
            if response.status_code == 200:
                return _checked_body(response, recording_sid)
            last_problem = f"HTTP {response.status_code}"
            if response.status_code not in RETRYABLE_STATUSES:
                raise RecordingDownloadError(
                    f"download of {recording_sid} failed with {last_problem}",
                    recording_sid=recording_sid,
                    retryable=False,
                )

        if attempt < attempts:
            logger.info(
                "recording %s not downloaded (%s), retry %d of %d in %.1f s",
                recording_sid,
                last_problem,
                attempt,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
            delay *= 2

    raise RecordingDownloadError(
        f"download of {recording_sid} failed {attempts} times, last with {last_problem}",
        recording_sid=recording_sid,
        retryable=True,
    )


def _check_host(url: str, api_base_url: str, recording_sid: str) -> None:
    """Refuse to send Twilio credentials anywhere but Twilio's API host."""
    given, allowed = urlsplit(url), urlsplit(api_base_url)
    if (given.scheme, given.netloc) != (allowed.scheme, allowed.netloc):
        raise RecordingDownloadError(
            f"media URL of {recording_sid} is not on {allowed.netloc}; refusing to send credentials",
            recording_sid=recording_sid,
            retryable=False,
        )


def _checked_body(response: requests.Response, recording_sid: str) -> bytes:
    body = response.content
    if not body or len(body) > MAX_RECORDING_BYTES:
        raise RecordingDownloadError(
            f"download of {recording_sid} returned {len(body)} bytes",
            recording_sid=recording_sid,
            retryable=False,
        )
    return body


def _delete_at_twilio(runtime: Runtime, recording: Recording) -> None:
    """Delete Twilio's copy; a copy that is already gone counts as deleted."""
    settings = runtime.settings
    client = make_rest_client(
        settings.twilio.account_sid,
        settings.require_twilio(),
        settings.twilio.api_base_url,
        timeout=settings.twilio.request_timeout_seconds,
    )
    try:
        client.recordings(recording.recording_sid).delete()
    except TwilioRestException as error:
        if error.status != 404:
            raise
        logger.info("recording %s was already deleted at Twilio", recording.recording_sid)
    else:
        logger.info("deleted Twilio's copy of recording %s", recording.recording_sid)
