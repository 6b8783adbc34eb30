"""Retention and crypto-erasure: expired objects and erased cases open with no key at all."""

# ruff: noqa: F811 - fixtures imported from tests.test_identity are requested by parameter name

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from callcenter.errors import ConfigurationError
from callcenter.retention import run_retention
from callcenter.runtime import Runtime
from callcenter.settings import Settings, load_settings
from storage.db import make_engine
from storage.errors import SealingError, TamperedError
from storage.migrate import upgrade
from storage.models import AuditEvent, Call, Case, CaseStatus, KeyWrap, SealedObject, utcnow
from storage.sealing import ALL_ROLES, PrivateKey, unwrap_data_key
from storage.vault import context_of, destroy_wraps, open_sealed, wrap_of
from tests.fixtures.services import AUDIT_KEY_HEX, PASSPHRASES
from tests.test_identity import (  # noqa: F401 - fixtures
    BODY,
    BODY_PASSPHRASES,
    BODY_ROLES,
    StoredCase,
    audit_actions,
    body_keys,
    keys_dir,
    make_case,
    refer,
    run_cli,
    runtime,
    security_env,
    security_settings,
)

CHAIN_KEY = bytes.fromhex(AUDIT_KEY_HEX)


def every_private_key(runtime: Runtime) -> list[PrivateKey]:
    """Return every private key in the key folder, current and retired, of every role."""
    keys = []
    for info in runtime.keys.list_keys():
        passphrase = PASSPHRASES.get(info.role) or BODY_PASSPHRASES[info.role]
        keys.append(runtime.keys.load_private_by_id(info.role, info.key_id, passphrase.encode()))
    return keys


def age_case(runtime: Runtime, case_id: int, status: CaseStatus, days: int) -> None:
    """Put a case in ``status`` as if it had entered it ``days`` days ago."""
    with runtime.session() as session:
        session.execute(
            update(Case)
            .where(Case.id == case_id)
            .values(status=status.value, status_changed_at=utcnow() - timedelta(days=days))
        )
        session.commit()


def retention_pass(runtime: Runtime, **options: object) -> object:
    return run_retention(
        runtime.session_factory,
        runtime.blobs,
        runtime.settings.retention,
        chain_key=CHAIN_KEY,
        **options,  # type: ignore[arg-type]
    )


def erased_at(runtime: Runtime, object_id: str) -> object:
    with runtime.session() as session:
        return session.get_one(SealedObject, object_id).erased_at


def wraps_of(runtime: Runtime, object_id: str) -> list[KeyWrap]:
    with runtime.session() as session:
        return list(session.scalars(select(KeyWrap).where(KeyWrap.object_id == object_id)))


def database_files(settings: Settings) -> list[Path]:
    """Return the SQLite database file and its write-ahead log and shared-memory files."""
    path = Path(settings.database.url.removeprefix("sqlite:///"))
    return [candidate for candidate in path.parent.glob(f"{path.name}*") if candidate.is_file()]


@pytest.fixture
def closed_case(runtime: Runtime) -> StoredCase:
    """Return a referred case closed 100 days ago: its recording (90 days) has expired."""
    stored = make_case(runtime)
    refer(runtime, stored)
    age_case(runtime, stored.case_id, CaseStatus.CLOSED, 100)
    return stored


def test_expired_recording_erased(runtime: Runtime, closed_case: StoredCase) -> None:
    retention_pass(runtime)

    assert erased_at(runtime, closed_case.recording_id) is not None
    assert wraps_of(runtime, closed_case.recording_id) == []


def test_unexpired_transcript_kept(runtime: Runtime, closed_case: StoredCase) -> None:
    retention_pass(runtime)

    assert erased_at(runtime, closed_case.transcript_id) is None


def test_expired_ciphertext_deleted(runtime: Runtime, closed_case: StoredCase) -> None:
    with runtime.session() as session:
        blob_key = session.get_one(SealedObject, closed_case.recording_id).blob_key
    retention_pass(runtime)

    assert not runtime.blobs.exists(blob_key)


def test_open_case_kept(runtime: Runtime) -> None:
    stored = make_case(runtime)
    age_case(runtime, stored.case_id, CaseStatus.AWAITING_REVIEW, 10_000)

    retention_pass(runtime)

    assert erased_at(runtime, stored.recording_id) is None
    assert erased_at(runtime, stored.identity_id or "") is None


def test_recently_closed_case_kept(runtime: Runtime) -> None:
    stored = make_case(runtime)
    age_case(runtime, stored.case_id, CaseStatus.CLOSED, 89)

    retention_pass(runtime)

    assert erased_at(runtime, stored.recording_id) is None


def test_withdrawn_identity_erased(runtime: Runtime) -> None:
    stored = make_case(runtime)
    age_case(runtime, stored.case_id, CaseStatus.WITHDRAWN, 31)

    retention_pass(runtime)

    assert erased_at(runtime, stored.identity_id or "") is not None


def test_identity_erasure_forgets_caller(runtime: Runtime) -> None:
    stored = make_case(runtime)
    age_case(runtime, stored.case_id, CaseStatus.WITHDRAWN, 31)

    retention_pass(runtime)

    with runtime.session() as session:
        hashes = list(
            session.scalars(select(Call.caller_hash).where(Call.case_id == stored.case_id))
        )
    assert hashes == [None]


def test_retention_audited(runtime: Runtime, closed_case: StoredCase) -> None:
    retention_pass(runtime)
    with runtime.session() as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.object_id == closed_case.recording_id)
        ).one()

        assert event.action == "object.erased"
        assert event.details["reason"] == "retention"
        assert event.details["status"] == CaseStatus.CLOSED.value
        assert event.details["wraps"] == 3


def test_dry_run_changes_nothing(runtime: Runtime, closed_case: StoredCase) -> None:
    report = retention_pass(runtime, dry_run=True)

    assert report.erased == {"recording": 1}  # type: ignore[attr-defined]
    assert erased_at(runtime, closed_case.recording_id) is None
    assert len(wraps_of(runtime, closed_case.recording_id)) == 3


def test_erased_object_opens_with_no_key(runtime: Runtime, closed_case: StoredCase) -> None:
    with runtime.session() as session:
        blob_key = session.get_one(SealedObject, closed_case.recording_id).blob_key
    # A backup taken before the erasure still holds the ciphertext.
    backup = runtime.blobs.get(blob_key)
    retention_pass(runtime)

    keys = every_private_key(runtime)
    assert {key.role for key in keys} == {*ALL_ROLES, *BODY_ROLES}
    with runtime.session() as session:
        obj = session.get_one(SealedObject, closed_case.recording_id)
        remaining = session.scalars(select(KeyWrap)).all()
        for key in keys:
            with pytest.raises(SealingError):
                open_sealed(session, runtime.blobs, obj, key)
            # No wrap left anywhere in the database yields this object's data key.
            for wrap in remaining:
                with pytest.raises((TamperedError, SealingError)):
                    unwrap_data_key(wrap_of(wrap), context_of(obj), key)
    assert backup


def test_erased_wraps_gone_from_database_files(
    runtime: Runtime, closed_case: StoredCase, security_settings: Settings
) -> None:
    wraps = [wrap.encapsulated for wrap in wraps_of(runtime, closed_case.recording_id)]
    # Another process (a worker) stays connected, so closing ours does not checkpoint
    # the write-ahead log; only the retention pass's own checkpoint clears it.
    worker = make_engine(security_settings.database.url)
    with worker.connect() as idle:
        idle.exec_driver_sql("SELECT 1").all()
        retention_pass(runtime)
        runtime.engine.dispose()
        contents = b"".join(path.read_bytes() for path in database_files(security_settings))
    worker.dispose()

    assert len(wraps) == 3
    for encapsulated in wraps:
        # Any 64-byte stretch of a wrap would be enough to find it.
        assert encapsulated[:64] not in contents
        assert encapsulated[-64:] not in contents


def test_kept_wraps_still_in_database(
    runtime: Runtime, closed_case: StoredCase, security_settings: Settings
) -> None:
    # The scan above can find wraps: the transcript's wraps are still present.
    retention_pass(runtime)
    wraps = [wrap.encapsulated for wrap in wraps_of(runtime, closed_case.transcript_id)]
    runtime.engine.dispose()

    contents = b"".join(path.read_bytes() for path in database_files(security_settings))
    assert wraps
    assert all(encapsulated[:64] in contents for encapsulated in wraps)


def test_interrupted_erasure_finished(runtime: Runtime) -> None:
    stored = make_case(runtime)
    with runtime.session() as session:
        obj = session.get_one(SealedObject, stored.recording_id)
        destroy_wraps(session, obj)
        session.commit()
        blob_key = obj.blob_key
    assert runtime.blobs.exists(blob_key)

    report = retention_pass(runtime)

    assert report.blobs_deleted == 1  # type: ignore[attr-defined]
    assert not runtime.blobs.exists(blob_key)


def test_cli_retention_run(
    runtime: Runtime, closed_case: StoredCase, security_settings: Settings
) -> None:
    result = run_cli(security_settings, "retention", "run")

    assert result.exit_code == 0, result.output
    assert "erased 1 objects (recording 1)" in result.output
    assert erased_at(runtime, closed_case.recording_id) is not None


def test_case_erase_destroys_everything(runtime: Runtime, security_settings: Settings) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    object_ids = [stored.recording_id, stored.transcript_id, stored.identity_id or ""]

    result = run_cli(
        security_settings,
        "case", "erase", stored.reference,
        "--reason", "caller_request", "--actor", "agent:7", "--yes",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    for object_id in object_ids:
        assert erased_at(runtime, object_id) is not None
        assert wraps_of(runtime, object_id) == []
    with runtime.session() as session:
        case = session.get_one(Case, stored.case_id)
        blobs_left = [
            runtime.blobs.exists(obj.blob_key) for obj in session.scalars(select(SealedObject))
        ]
        assert case.status == CaseStatus.ERASED.value
        assert not any(blobs_left)


def test_case_erase_opens_with_no_key(runtime: Runtime, security_settings: Settings) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    run_cli(
        security_settings,
        "case", "erase", stored.reference,
        "--reason", "caller_request", "--actor", "agent:7", "--yes",
    )  # fmt: skip

    with runtime.session() as session:
        for object_id in (stored.recording_id, stored.transcript_id, stored.identity_id or ""):
            obj = session.get_one(SealedObject, object_id)
            for key in every_private_key(runtime):
                with pytest.raises(SealingError):
                    open_sealed(session, runtime.blobs, obj, key)


def test_case_erase_audited(runtime: Runtime, security_settings: Settings) -> None:
    stored = make_case(runtime)
    run_cli(
        security_settings,
        "case", "erase", stored.reference,
        "--reason", "caller_request", "--actor", "agent:7", "--yes",
    )  # fmt: skip

    actions = audit_actions(runtime, stored.case_id)
    assert actions.count("object.erased") == 3
    assert "case.status_changed" in actions
    assert actions[-1] == "case.erased"


def test_case_erase_forgets_caller(runtime: Runtime, security_settings: Settings) -> None:
    stored = make_case(runtime)
    run_cli(
        security_settings,
        "case", "erase", stored.reference,
        "--reason", "caller_request", "--actor", "agent:7", "--yes",
    )  # fmt: skip

    with runtime.session() as session:
        hashes = list(
            session.scalars(select(Call.caller_hash).where(Call.case_id == stored.case_id))
        )
    assert hashes == [None]


def test_case_erase_twice_is_quiet(runtime: Runtime, security_settings: Settings) -> None:
    stored = make_case(runtime)
    arguments = (
        "case",
        "erase",
        stored.reference,
        "--reason",
        "caller_request",
        "--actor",
        "agent:7",
        "--yes",
    )
    run_cli(security_settings, *arguments)
    events = len(audit_actions(runtime, stored.case_id))

    again = run_cli(security_settings, *arguments)

    assert again.exit_code == 0, again.output
    assert "erased 0 objects" in again.output
    assert len(audit_actions(runtime, stored.case_id)) == events


def test_case_erase_asks_first(runtime: Runtime, security_settings: Settings) -> None:
    stored = make_case(runtime)

    result = run_cli(
        security_settings,
        "case", "erase", stored.reference, "--reason", "caller_request", "--actor", "agent:7",
        input="n\n",
    )  # fmt: skip

    assert result.exit_code == 1
    assert erased_at(runtime, stored.recording_id) is None


def test_retention_periods_from_environment(security_env: Callable[..., dict[str, str]]) -> None:
    settings = load_settings(security_env(CALLCENTER_RETENTION__RECORDING_DAYS="{ closed = 7 }"))

    assert settings.retention.days_for("recording", "closed") == 7
    assert settings.retention.days_for("recording", "withdrawn") is None


def test_unknown_status_rejected(security_env: Callable[..., dict[str, str]]) -> None:
    with pytest.raises(ConfigurationError, match="unknown case status 'shut'"):
        load_settings(security_env(CALLCENTER_RETENTION__RECORDING_DAYS="{ shut = 7 }"))


def test_negative_days_rejected(security_env: Callable[..., dict[str, str]]) -> None:
    with pytest.raises(ConfigurationError, match="whole number of days"):
        load_settings(security_env(CALLCENTER_RETENTION__RECORDING_DAYS="{ closed = -1 }"))


@pytest.mark.postgres
def test_erasure_on_postgres(
    security_env: Callable[..., dict[str, str]], fresh_postgres_url: str
) -> None:
    settings = load_settings(security_env(database_url=fresh_postgres_url))
    upgrade(settings.database.url)
    postgres = Runtime(settings)
    try:
        stored = make_case(postgres)
        age_case(postgres, stored.case_id, CaseStatus.CLOSED, 100)
        retention_pass(postgres)

        assert erased_at(postgres, stored.recording_id) is not None
        assert wraps_of(postgres, stored.recording_id) == []
        assert erased_at(postgres, stored.transcript_id) is None
    finally:
        postgres.close()
