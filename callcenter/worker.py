"""Worker processes for the two queues, on rq's forking Worker.

The transcription worker loads the Vosk model and unlocks its private key before
``work()``. Every job then runs in a forked work-horse that shares them, so the model
loads once per worker. A native crash or hang in Vosk fails one job while the worker
carries on: rq kills a stuck work-horse 60 s after the job timeout.
"""

from __future__ import annotations

import logging

from rq import Worker
from rq.serializers import JSONSerializer

from callcenter import outbox, recordings
from callcenter.errors import ConfigurationError
from callcenter.identity import content_recipients
from callcenter.runtime import Runtime
from storage.sealing import ROLE_CASE_OFFICE, ROLE_TRANSCRIPTION
from transcription import jobs
from transcription.catalog import resolve_model_path
from transcription.engine import VoskEngine

logger = logging.getLogger("callcenter.worker")

QUEUES = (outbox.RECORDINGS_QUEUE, outbox.TRANSCRIPTION_QUEUE)


def prepare_transcription(runtime: Runtime, engine: VoskEngine | None = None) -> None:
    """Load the model and the transcription key, and hand them to the job module.

    Tests pass an ``engine`` they loaded once, so that each does not reload the model.
    """
    settings = runtime.settings
    # Secrets and keys first: a typo should not cost a model load to discover.
    audit_key = settings.require_audit_key()
    private_key = runtime.keys.load_private(
        ROLE_TRANSCRIPTION, settings.secrets.passphrase(ROLE_TRANSCRIPTION)
    )
    case_office_key = runtime.public_key(ROLE_CASE_OFFICE)

    if engine is None:
        model_path = resolve_model_path(
            settings.transcription.model, settings.transcription.models_dir
        )
        logger.info("loading Vosk model from %s", model_path)
        engine = VoskEngine(model_path)

    jobs.install_context(
        jobs.TranscriptionContext(
            session_factory=runtime.session_factory,
            blobs=runtime.blobs,
            engine=engine,
            private_key=private_key,
            case_office_key=case_office_key,
            audit_key=audit_key,
            content_recipients=lambda session, case_id: content_recipients(
                session, runtime.keys, case_id
            ),
            max_audio_seconds=settings.transcription.max_audio_seconds,
        )
    )


def prepare_recordings(runtime: Runtime) -> None:
    """Check the recordings worker's secrets and keys before taking jobs."""
    runtime.settings.require_twilio()
    runtime.settings.require_audit_key()
    runtime.public_key(ROLE_TRANSCRIPTION)
    runtime.public_key(ROLE_CASE_OFFICE)
    recordings.install_runtime(runtime)


def run_worker(runtime: Runtime, queue_name: str, *, burst: bool = False) -> bool:
    """Prepare one queue's worker and process jobs until stopped (or, in burst mode, until idle)."""
    if queue_name == outbox.TRANSCRIPTION_QUEUE:
        prepare_transcription(runtime)
    elif queue_name == outbox.RECORDINGS_QUEUE:
        prepare_recordings(runtime)
    else:
        raise ConfigurationError(f"unknown queue {queue_name!r}: use one of {', '.join(QUEUES)}")

    worker = make_worker(runtime, queue_name)
    logger.info("worker for queue %s started", queue_name)
    result: bool = worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
    logger.info("worker for queue %s stopped", queue_name)
    return result


def make_worker(runtime: Runtime, queue_name: str) -> Worker:
    """Return rq's forking Worker for one queue, with JSON jobs and no job descriptions in logs."""
    queue = outbox.make_queue(queue_name, runtime.redis)
    return Worker(
        [queue],
        connection=runtime.redis,
        serializer=JSONSerializer,
        # Job descriptions are ids here, but the switch keeps any future argument out of logs.
        log_job_description=False,
        # Find a job orphaned by a killed worker within minutes, not the default ten.
        maintenance_interval=60,
    )
