"""Audit chain: verification catches edits, deletions and reordering; appends serialize."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.audit import GENESIS_HASH, append_event, compute_event_hash, verify_chain
from storage.db import make_engine, make_session_factory
from storage.errors import StorageError
from storage.models import AuditEvent, Base

CHAIN_KEY = b"k" * 32
OTHER_KEY = b"o" * 32


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "fresh_postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with make_session_factory(engine)() as session:
        yield session


def append(session: Session, count: int, **fields: Any) -> list[int]:
    ids = []
    for index in range(count):
        event = append_event(
            session,
            chain_key=CHAIN_KEY,
            actor="agent:17",
            action="recording.listened",
            object_id=f"{index:032x}",
            details={"reason_code": "review", "index": index, **fields},
        )
        ids.append(event.id)
    session.commit()
    return ids


def test_empty_chain_verifies(session: Session) -> None:
    result = verify_chain(session, CHAIN_KEY)

    assert result.ok


def test_empty_chain_head_is_genesis(session: Session) -> None:
    assert verify_chain(session, CHAIN_KEY).head_hash == GENESIS_HASH


def test_chain_verifies(session: Session) -> None:
    append(session, 5)

    assert verify_chain(session, CHAIN_KEY).ok


def test_chain_count(session: Session) -> None:
    append(session, 5)

    assert verify_chain(session, CHAIN_KEY).count == 5


def test_first_event_links_to_genesis(session: Session) -> None:
    first = append(session, 1)[0]

    assert session.get_one(AuditEvent, first).prev_hash == GENESIS_HASH


def test_events_link(session: Session) -> None:
    first, second = append(session, 2)

    assert session.get_one(AuditEvent, second).prev_hash == session.get_one(AuditEvent, first).hash


def test_head_is_last_hash(session: Session) -> None:
    last = append(session, 3)[-1]

    assert verify_chain(session, CHAIN_KEY).head_hash == session.get_one(AuditEvent, last).hash


def test_stored_hash_matches_reloaded_row(engine: Engine, session: Session) -> None:
    event_id = append(session, 1, note="نص عربي")[0]
    with make_session_factory(engine)() as other:
        event = other.get_one(AuditEvent, event_id)

        assert compute_event_hash(CHAIN_KEY, event) == event.hash


def test_wrong_chain_key_fails(session: Session) -> None:
    first = append(session, 3)[0]

    assert verify_chain(session, OTHER_KEY).first_broken_id == first


def test_edited_details_detected(session: Session) -> None:
    ids = append(session, 5)
    session.execute(
        update(AuditEvent).where(AuditEvent.id == ids[2]).values(details={"reason_code": "x"})
    )
    session.commit()

    assert verify_chain(session, CHAIN_KEY).first_broken_id == ids[2]


def test_edited_actor_detected(session: Session) -> None:
    ids = append(session, 5)
    session.execute(update(AuditEvent).where(AuditEvent.id == ids[1]).values(actor="agent:99"))
    session.commit()

    assert verify_chain(session, CHAIN_KEY).first_broken_id == ids[1]


def test_edited_time_detected(session: Session) -> None:
    ids = append(session, 3)
    event = session.get_one(AuditEvent, ids[0])
    session.execute(
        update(AuditEvent)
        .where(AuditEvent.id == ids[0])
        .values(occurred_at=event.occurred_at.replace(year=2020))
    )
    session.commit()

    assert verify_chain(session, CHAIN_KEY).first_broken_id == ids[0]


def test_edited_row_fails(session: Session) -> None:
    ids = append(session, 3)
    session.execute(update(AuditEvent).where(AuditEvent.id == ids[1]).values(action="x"))
    session.commit()

    assert not verify_chain(session, CHAIN_KEY).ok


def test_deleted_row_detected(session: Session) -> None:
    ids = append(session, 5)
    session.execute(delete(AuditEvent).where(AuditEvent.id == ids[2]))
    session.commit()

    assert verify_chain(session, CHAIN_KEY).first_broken_id == ids[3]


def test_deleted_first_row_detected(session: Session) -> None:
    ids = append(session, 3)
    session.execute(delete(AuditEvent).where(AuditEvent.id == ids[0]))
    session.commit()

    assert verify_chain(session, CHAIN_KEY).first_broken_id == ids[1]


def test_count_stops_at_break(session: Session) -> None:
    ids = append(session, 5)
    session.execute(delete(AuditEvent).where(AuditEvent.id == ids[2]))
    session.commit()

    assert verify_chain(session, CHAIN_KEY).count == 2


def test_reordered_rows_detected(session: Session) -> None:
    ids = append(session, 5)
    rows = {
        event.id: event
        for event in session.scalars(select(AuditEvent).where(AuditEvent.id.in_(ids[1:3])))
    }
    swapped = {ids[1]: rows[ids[2]], ids[2]: rows[ids[1]]}
    copies = {
        target: {
            "occurred_at": source.occurred_at,
            "actor": source.actor,
            "action": source.action,
            "object_id": source.object_id,
            "details": source.details,
            "prev_hash": source.prev_hash,
            "hash": source.hash,
        }
        for target, source in swapped.items()
    }
    session.expunge_all()
    # Move both rows out of the way first, because prev_hash and hash are unique.
    for target in copies:
        session.execute(
            update(AuditEvent)
            .where(AuditEvent.id == target)
            .values(prev_hash=f"{target:064x}", hash=f"{target + 1000:064x}")
        )
    for target, values in copies.items():
        session.execute(update(AuditEvent).where(AuditEvent.id == target).values(**values))
    session.commit()

    assert verify_chain(session, CHAIN_KEY).first_broken_id == ids[1]


def test_dropped_newest_missed_without_head(session: Session) -> None:
    # The documented limit: without an exported head, a cut at the end looks complete.
    ids = append(session, 4)
    session.execute(delete(AuditEvent).where(AuditEvent.id == ids[-1]))
    session.commit()

    assert verify_chain(session, CHAIN_KEY).ok


def test_dropped_newest_caught_by_known_head(session: Session) -> None:
    ids = append(session, 4)
    head = verify_chain(session, CHAIN_KEY).head_hash
    session.execute(delete(AuditEvent).where(AuditEvent.id == ids[-1]))
    session.commit()

    assert not verify_chain(session, CHAIN_KEY, known_head=head).ok


def test_older_known_head_accepted(session: Session) -> None:
    append(session, 2)
    head = verify_chain(session, CHAIN_KEY).head_hash
    append(session, 2)

    assert verify_chain(session, CHAIN_KEY, known_head=head).ok


def test_fork_rejected(session: Session) -> None:
    first = session.get_one(AuditEvent, append(session, 2)[0])
    fork = AuditEvent(
        occurred_at=first.occurred_at,
        actor="intruder",
        action="fork",
        details={},
        prev_hash=first.prev_hash,
        hash="f" * 64,
    )
    session.add(fork)

    with pytest.raises(IntegrityError):
        session.flush()
    session.rollback()


def test_short_chain_key_rejected(session: Session) -> None:
    with pytest.raises(StorageError, match="at least 32"):
        append_event(session, chain_key=b"short", actor="agent:1", action="case.viewed")


def test_unserializable_details_rejected(session: Session) -> None:
    with pytest.raises(StorageError, match="JSON"):
        append_event(
            session,
            chain_key=CHAIN_KEY,
            actor="agent:1",
            action="case.viewed",
            details={"when": object()},
        )


def test_empty_actor_rejected(session: Session) -> None:
    with pytest.raises(StorageError, match="actor"):
        append_event(session, chain_key=CHAIN_KEY, actor="", action="case.viewed")


def test_concurrent_appends_keep_chain(engine: Engine) -> None:
    writers, per_writer = 4, 10
    barrier = threading.Barrier(writers)
    errors: list[Exception] = []
    factory = make_session_factory(engine)

    def writer(index: int) -> None:
        barrier.wait()
        try:
            for number in range(per_writer):
                with factory() as session:
                    append_event(
                        session,
                        chain_key=CHAIN_KEY,
                        actor=f"worker:{index}",
                        action="status.changed",
                        details={"number": number},
                    )
                    session.commit()
        except Exception as error:
            # Collected so that the assert below reports it from the main thread.
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    with factory() as session:
        result = verify_chain(session, CHAIN_KEY)

    assert errors == []
    assert result.ok
    assert result.count == writers * per_writer
