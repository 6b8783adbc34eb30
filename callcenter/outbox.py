"""The outbox: jobs are rows first and rq jobs second.

A webhook commits its rows together with an outbox row, then enqueues. If Redis is
down, restarted without persistence, or the enqueue is lost, the reconciler finds
the row and enqueues it again; rq job ids derive from the row, so a job is never
queued twice at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage.models import CaseStatus, OutboxMessage, Recording, RecordingStatus
from storage.outbox import add_message, mark_done, pending_messages

__all__ = [
    "add_message",
    "enqueue",
    "enqueue_committed",
    "make_queue",
    "mark_done",
    "pending_messages",
    "reconcile",
]

logger = logging.getLogger("callcenter.outbox")

RECORDINGS_QUEUE = "recordings"
TRANSCRIPTION_QUEUE = "transcription"
PROCESS_RECORDING = "callcenter.recordings.process_recording"
TRANSCRIBE_RECORDING = "transcription.jobs.transcribe_recording"

JOB_TIMEOUTS = {PROCESS_RECORDING: 900}
# A job that failed this many times without finishing its row is left for a person.
MAX_ATTEMPTS = 5


def make_queue(name: str, connection: Redis) -> Queue:
    """Return an rq queue that stores job arguments as JSON, never pickle."""
    return Queue(name, connection=connection, serializer=JSONSerializer)


def enqueue(
    session: Session, redis: Redis, message: OutboxMessage, *, job_timeout: int | None = None
) -> bool:
    """Enqueue one committed outbox row; return False when Redis is unreachable.

    Safe to call again: a job id still known to rq is not queued a second time.
    """
    queue = make_queue(message.queue, redis)
    timeout = job_timeout or JOB_TIMEOUTS.get(message.job_name, 1800)

    try:
        queue.enqueue_call(
            message.job_name,
            args=(message.entity_id,),
            job_id=message.job_id,
            timeout=timeout,
            result_ttl=3600,
            failure_ttl=7 * 24 * 3600,
            description=message.job_id,
            unique=True,
        )
    except DuplicateJobError:
        logger.info("job %s is already queued", message.job_id)
    except RedisError as error:
        logger.warning("could not enqueue %s, the reconciler will retry: %s", message.job_id, error)
        return False

    message.enqueued_at = datetime.now(UTC)
    message.attempts += 1
    session.commit()
    return True


def reconcile(
    session_factory: sessionmaker[Session], redis: Redis, *, timeouts: dict[str, int] | None = None
) -> int:
    """Enqueue every unfinished row whose job is not alive in Redis; return how many.

    A job counts as alive while rq has it queued, started, scheduled or deferred. A
    job that failed (a worker crash, a lost Redis) is retried up to MAX_ATTEMPTS.
    """
    requeued = 0
    with session_factory() as session:
        pending = session.scalars(
            select(OutboxMessage).where(OutboxMessage.done_at.is_(None)).order_by(OutboxMessage.id)
        ).all()

        for message in pending:
            if _job_alive(redis, message.job_id):
                continue
            if message.attempts >= MAX_ATTEMPTS:
                _give_up(session, message)
                continue
            _forget_job(redis, message.job_id)
            timeout = (timeouts or {}).get(message.job_name)
            if enqueue(session, redis, message, job_timeout=timeout):
                requeued += 1
                logger.info("re-enqueued job %s (attempt %d)", message.job_id, message.attempts)

    return requeued


def reconcile_forever(
    session_factory: sessionmaker[Session],
    redis: Redis,
    *,
    interval_seconds: float,
    timeouts: dict[str, int] | None = None,
) -> None:
    """Reconcile every ``interval_seconds`` until the process stops; a failed pass is logged."""
    while True:
        try:
            reconcile(session_factory, redis, timeouts=timeouts)
        except Exception:
            logger.exception("outbox reconciler pass failed; next pass in %s s", interval_seconds)
        time.sleep(interval_seconds)


def _give_up(session: Session, message: OutboxMessage) -> None:
    """Stop retrying a job that keeps failing, and say why on its case for a person."""
    recording = session.get(Recording, message.entity_id)
    if recording is not None:
        if message.job_name == TRANSCRIBE_RECORDING:
            recording.case.set_intake_status(CaseStatus.TRANSCRIPTION_FAILED)
            recording.case.failure_reason = (
                f"Transcription failed {message.attempts} times (the worker crashed or timed out); "
                "the sealed recording is kept for an agent to listen to."
            )
        elif (
            recording.status == RecordingStatus.STORED.value and recording.twilio_deleted_at is None
        ):
            # Our sealed copy is safe, but Twilio still stores the recording in clear.
            recording.case.failure_reason = (
                f"Twilio still holds a copy of recording {recording.recording_sid}: deleting it failed "
                f"{message.attempts} times. Retry with `callcenter recordings retry {recording.id}`, "
                "or delete it in the Twilio console."
            )
        elif recording.status != RecordingStatus.STORED.value:
            recording.case.set_intake_status(CaseStatus.RECORDING_FAILED)
            recording.case.failure_reason = (
                f"Recording job failed {message.attempts} times: {recording.last_error or 'see the worker log'}. "
                f"Retry with `callcenter recordings retry {recording.id}`."
            )

    mark_done(session, message.job_name, message.entity_id, note="gave up after repeated failures")
    session.commit()
    logger.error("gave up on job %s after %d attempts", message.job_id, message.attempts)


def _job_alive(redis: Redis, job_id: str) -> bool:
    try:
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:
        return False

    status = job.get_status(refresh=False)
    return status in (
        JobStatus.QUEUED,
        JobStatus.STARTED,
        JobStatus.SCHEDULED,
        JobStatus.DEFERRED,
        JobStatus.FINISHED,
    )


def _forget_job(redis: Redis, job_id: str) -> None:
    """Delete a failed job's hash so that ``unique=True`` lets the new one in."""
    try:
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:
        return
    job.delete()


def enqueue_committed(
    session: Session,
    redis: Redis,
    messages: Iterable[OutboxMessage],
    *,
    job_timeout: int | None = None,
) -> None:
    """Try to enqueue rows that the caller has committed; failures wait for the reconciler."""
    for message in messages:
        enqueue(session, redis, message, job_timeout=job_timeout)


def job_timeouts(transcription_seconds: int) -> dict[str, int]:
    """Return the rq job timeout of each job, with the transcription one from the settings."""
    return {**JOB_TIMEOUTS, TRANSCRIBE_RECORDING: transcription_seconds}
