"""Tamper-evident audit: `audit verify` catches edited, deleted, reordered and dropped rows.

The database's triggers refuse UPDATE and DELETE on audit_events. Whoever owns the
database can drop them, so each tampering test drops them first, as such an attacker
would, and the keyed chain still catches the change.
"""

# ruff: noqa: F811 - fixtures imported from tests.test_identity are requested by parameter name

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.exc import DatabaseError

from callcenter.runtime import Runtime
from callcenter.settings import Settings, load_settings
from storage.audit import GENESIS_HASH, append_event, change_case_status, compute_event_hash
from storage.migrate import upgrade
from storage.models import AuditEvent, Case, CaseStatus
from tests.fixtures.services import AUDIT_KEY_HEX
from tests.test_identity import (  # noqa: F401 - fixtures
    audit_actions,
    body_keys,
    keys_dir,
    make_case,
    run_cli,
    runtime,
    security_env,
    security_settings,
)

CHAIN_KEY = bytes.fromhex(AUDIT_KEY_HEX)
EVENT_COUNT = 6


def append_events(runtime: Runtime, count: int = EVENT_COUNT) -> list[int]:
    ids = []
    with runtime.session() as session:
        for index in range(count):
            event = append_event(
                session,
                chain_key=CHAIN_KEY,
                actor="agent:17",
                action="transcript.read",
                details={"index": index},
            )
            ids.append(event.id)
        session.commit()
    return ids


def drop_append_only_triggers(engine: Engine) -> None:
    """Do what a database owner can: remove the triggers that refuse changes."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("DROP TRIGGER audit_events_no_change ON audit_events"))
        else:
            connection.execute(text("DROP TRIGGER audit_events_no_update"))
            connection.execute(text("DROP TRIGGER audit_events_no_delete"))


def tamper(runtime: Runtime, *statements: object) -> None:
    drop_append_only_triggers(runtime.engine)
    with runtime.session() as session:
        for statement in statements:
            session.execute(statement)  # type: ignore[call-overload]
        session.commit()


def verify(settings: Settings, *options: str) -> tuple[int, str]:
    result = run_cli(settings, "audit", "verify", *options)
    return result.exit_code, result.output


def head(settings: Settings) -> str:
    result = run_cli(settings, "audit", "head")
    assert result.exit_code == 0, result.output
    return result.output.strip()


def test_intact_chain_verifies(runtime: Runtime, security_settings: Settings) -> None:
    append_events(runtime)

    code, output = verify(security_settings)

    assert code == 0
    assert f"{EVENT_COUNT} events" in output


def test_edited_row_caught(runtime: Runtime, security_settings: Settings) -> None:
    ids = append_events(runtime)
    tamper(runtime, update(AuditEvent).where(AuditEvent.id == ids[2]).values(actor="agent:99"))

    code, output = verify(security_settings)

    assert code == 1
    assert f"first broken event {ids[2]}" in output


def test_edited_details_caught(runtime: Runtime, security_settings: Settings) -> None:
    ids = append_events(runtime)
    tamper(
        runtime,
        update(AuditEvent).where(AuditEvent.id == ids[4]).values(details={"index": 99}),
    )

    code, output = verify(security_settings)

    assert code == 1
    assert f"first broken event {ids[4]}" in output


def test_deleted_row_caught(runtime: Runtime, security_settings: Settings) -> None:
    ids = append_events(runtime)
    tamper(runtime, delete(AuditEvent).where(AuditEvent.id == ids[1]))

    code, output = verify(security_settings)

    assert code == 1
    assert f"first broken event {ids[2]}" in output


def test_reordered_rows_caught(runtime: Runtime, security_settings: Settings) -> None:
    ids = append_events(runtime)
    with runtime.session() as session:
        first, second = (session.get_one(AuditEvent, ids[index]) for index in (2, 3))
        swapped = [
            {
                "occurred_at": event.occurred_at,
                "details": event.details,
                "prev_hash": event.prev_hash,
                "hash": event.hash,
            }
            for event in (second, first)
        ]
    # The unique constraints on the hashes need a placeholder while the rows swap.
    tamper(
        runtime,
        update(AuditEvent).where(AuditEvent.id == ids[2]).values(prev_hash="p", hash="h"),
        update(AuditEvent).where(AuditEvent.id == ids[3]).values(**swapped[1]),
        update(AuditEvent).where(AuditEvent.id == ids[2]).values(**swapped[0]),
    )

    code, output = verify(security_settings)

    assert code == 1
    assert f"first broken event {ids[2]}" in output


def test_forged_row_caught(runtime: Runtime, security_settings: Settings) -> None:
    ids = append_events(runtime)
    with runtime.session() as session:
        # Without the chain key, a forger can only guess a hash for the new row.
        append_event(session, chain_key=b"f" * 32, actor="agent:99", action="transcript.read")
        session.commit()

    code, output = verify(security_settings)

    assert code == 1
    assert f"first broken event {ids[-1] + 1}" in output


def test_dropped_newest_rows_need_head(runtime: Runtime, security_settings: Settings) -> None:
    ids = append_events(runtime)
    exported = head(security_settings)
    tamper(runtime, delete(AuditEvent).where(AuditEvent.id.in_(ids[-2:])))

    code_without, _ = verify(security_settings)
    code_with, output = verify(security_settings, "--head", exported)

    # The rest of the chain is consistent, so only the exported head shows the loss.
    assert code_without == 0
    assert code_with == 1
    assert "newest events were deleted" in output


def test_rewritten_chain_caught_by_head(runtime: Runtime, security_settings: Settings) -> None:
    # Whoever holds the chain key can edit an event and recompute every later hash, so
    # the chain verifies again; only a head exported before the rewrite shows it.
    ids = append_events(runtime)
    exported = head(security_settings)
    drop_append_only_triggers(runtime.engine)
    with runtime.session() as session:
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        # Clear the hashes first: each is unique, and the rewrite moves them along.
        for event in events:
            event.prev_hash, event.hash = f"p{event.id}", f"h{event.id}"
        session.flush()
        previous = GENESIS_HASH
        for event in events:
            if event.id == ids[1]:
                event.actor = "agent:99"
            event.prev_hash = previous
            event.hash = compute_event_hash(CHAIN_KEY, event)
            previous = event.hash
        session.commit()

    code_without, _ = verify(security_settings)
    code_with, output = verify(security_settings, "--head", exported)

    assert code_without == 0
    assert code_with == 1
    assert "newest events were deleted" in output


def test_current_head_verifies(runtime: Runtime, security_settings: Settings) -> None:
    append_events(runtime)
    exported = head(security_settings)
    append_events(runtime, 2)

    code, _ = verify(security_settings, "--head", exported)

    assert code == 0


def test_head_is_hash_of_newest_event(runtime: Runtime, security_settings: Settings) -> None:
    ids = append_events(runtime)
    with runtime.session() as session:
        newest = session.get_one(AuditEvent, ids[-1]).hash

    exported = head(security_settings)

    assert re.fullmatch(r"[0-9a-f]{64}", exported)
    assert exported == newest


def test_head_of_empty_chain(security_settings: Settings) -> None:
    assert head(security_settings) == GENESIS_HASH


def test_head_refused_when_broken(runtime: Runtime, security_settings: Settings) -> None:
    ids = append_events(runtime)
    tamper(runtime, update(AuditEvent).where(AuditEvent.id == ids[0]).values(action="x"))

    result = run_cli(security_settings, "audit", "head")

    assert result.exit_code == 1
    assert "audit verify" in result.output


@pytest.mark.parametrize(
    "statement",
    [
        update(AuditEvent).values(actor="agent:99"),
        delete(AuditEvent),
    ],
    ids=["update", "delete"],
)
def test_database_refuses_changes(runtime: Runtime, statement: object) -> None:
    append_events(runtime, 2)

    with runtime.session() as session, pytest.raises(DatabaseError, match="append-only"):
        session.execute(statement)  # type: ignore[call-overload]


@pytest.mark.postgres
@pytest.mark.parametrize(
    "sql",
    ["UPDATE audit_events SET actor = 'x'", "DELETE FROM audit_events", "TRUNCATE audit_events"],
)
def test_postgres_refuses_changes(
    security_env: Callable[..., dict[str, str]], fresh_postgres_url: str, sql: str
) -> None:
    settings = load_settings(security_env(database_url=fresh_postgres_url))
    upgrade(settings.database.url)
    postgres = Runtime(settings)
    try:
        append_events(postgres, 2)
        with (
            postgres.engine.begin() as connection,
            pytest.raises(DatabaseError, match="append-only"),
        ):
            connection.execute(text(sql))
    finally:
        postgres.close()


def test_append_still_allowed(runtime: Runtime, security_settings: Settings) -> None:
    # The chain lock's no-op UPDATE must not trip the triggers.
    append_events(runtime, 3)

    assert verify(security_settings)[0] == 0


def test_status_change_audited(runtime: Runtime) -> None:
    stored = make_case(runtime)
    with runtime.session() as session:
        case = session.get_one(Case, stored.case_id)
        change_case_status(
            session, case, CaseStatus.SCREENING, chain_key=CHAIN_KEY, actor="agent:7"
        )
        session.commit()
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "case.status_changed")
        ).one()

        assert event.details == {"from": "awaiting_review", "to": "screening"}
        assert event.actor == "agent:7"


def test_same_status_not_audited(runtime: Runtime) -> None:
    stored = make_case(runtime)
    with runtime.session() as session:
        case = session.get_one(Case, stored.case_id)
        event = change_case_status(
            session, case, CaseStatus.AWAITING_REVIEW, chain_key=CHAIN_KEY, actor="agent:7"
        )

    assert event is None


def test_status_change_time_recorded(runtime: Runtime) -> None:
    stored = make_case(runtime)
    with runtime.session() as session:
        case = session.get_one(Case, stored.case_id)
        before = case.status_changed_at
        case.status = CaseStatus.CLOSED.value
        session.commit()

        # SQLite returns naive datetimes; every stored time is UTC.
        assert case.status_changed_at.replace(tzinfo=None) > before.replace(tzinfo=None)


def test_key_operations_audited(runtime: Runtime, security_settings: Settings) -> None:
    run_cli(security_settings, "keys", "rotate", "case_office", "--actor", "operator:1")

    assert {"key.rotation_started", "key.rotation_finished"} <= set(audit_actions(runtime))
    assert verify(security_settings)[0] == 0
