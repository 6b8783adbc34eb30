"""Database side of the outbox: rows that say which job must run for which row id.

Enqueuing into rq is the callcenter package's business; the workers in every
package mark their rows done here, in the same transaction as their results.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from storage.models import OutboxMessage


def add_message(
    session: Session, *, queue: str, job_name: str, entity_id: int, attempt: int | None = None
) -> OutboxMessage:
    """Add an outbox row in the caller's transaction; it is enqueued after commit.

    The rq job id derives from the job and the row id, so one row can never be
    queued twice at once. A person's retry of a finished job passes ``attempt`` to get
    a fresh job id.
    """
    job_id = f"{job_name.rsplit('.', 1)[-1]}-{entity_id}"
    if attempt is not None:
        job_id += f"-retry-{attempt}"
    message = OutboxMessage(queue=queue, job_name=job_name, entity_id=entity_id, job_id=job_id)
    session.add(message)
    session.flush()
    return message


def pending_messages(job_name: str, entity_id: int) -> Select[OutboxMessage]:
    """Return a query for the unfinished outbox rows of one job."""
    return select(OutboxMessage).where(
        OutboxMessage.job_name == job_name,
        OutboxMessage.entity_id == entity_id,
        OutboxMessage.done_at.is_(None),
    )


def mark_done(session: Session, job_name: str, entity_id: int, *, note: str | None = None) -> None:
    """Mark the outbox rows of a finished job; the caller commits."""
    for row in session.scalars(pending_messages(job_name, entity_id)):
        row.done_at = datetime.now(UTC)
        if note is not None:
            row.last_error = note
