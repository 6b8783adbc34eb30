"""Key lifecycle: rotation re-wraps data keys resumably, revocation removes wraps, status counts."""

# ruff: noqa: F811 - fixtures imported from tests.test_identity are requested by parameter name

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from callcenter.runtime import Runtime
from callcenter.settings import Settings, load_settings
from storage import key_lifecycle
from storage.errors import SealingError, StorageError, WrongPassphraseError
from storage.key_lifecycle import RotationSecrets, rotate_role_key
from storage.models import (
    KeyRotation,
    KeyRotationStatus,
    KeyWrap,
    ObjectKind,
    Referral,
    SealedObject,
)
from storage.sealing import (
    ALG_HYBRID,
    ALG_X25519,
    ROLE_CASE_OFFICE,
    ROLE_TRANSCRIPTION,
    Wrap,
)
from storage.vault import open_sealed, store_sealed
from tests.fixtures.services import AUDIT_KEY_HEX, PASSPHRASES
from tests.test_identity import (  # noqa: F401 - fixtures
    BODY,
    StoredCase,
    audit_actions,
    body_keys,
    keys_dir,
    make_case,
    opens,
    private_key,
    refer,
    run_cli,
    runtime,
    security_env,
    security_settings,
)

OLD_PASSPHRASE = PASSPHRASES[ROLE_CASE_OFFICE].encode()
NEW_PASSPHRASE = b"new passphrase for the case office"


class Interrupted(Exception):
    """Raised by a progress callback to simulate a crash between batches."""


def case_office_objects(runtime: Runtime) -> list[str]:
    with runtime.session() as session:
        return sorted(
            session.scalars(
                select(KeyWrap.object_id).where(KeyWrap.role == ROLE_CASE_OFFICE).distinct()
            )
        )


def wrap_key_ids(runtime: Runtime, role: str) -> set[str]:
    with runtime.session() as session:
        return set(session.scalars(select(KeyWrap.key_id).where(KeyWrap.role == role)))


def rotate(runtime: Runtime, **options: object) -> key_lifecycle.RotationResult:
    arguments: dict[str, object] = {
        "algorithm": ALG_HYBRID,
        "chain_key": bytes.fromhex(AUDIT_KEY_HEX),
        "actor": "operator:1",
        "batch_size": 2,
    }
    arguments.update(options)
    return rotate_role_key(
        runtime.session_factory,
        runtime.keys,
        ROLE_CASE_OFFICE,
        RotationSecrets(OLD_PASSPHRASE, OLD_PASSPHRASE),
        **arguments,  # type: ignore[arg-type]
    )


def make_cases(runtime: Runtime, count: int = 3) -> list[StoredCase]:
    # Each case has a recording and a transcript sealed to the case office.
    return [make_case(runtime) for _ in range(count)]


def test_rotation_creates_new_key(runtime: Runtime) -> None:
    make_cases(runtime)
    old_key_id = runtime.keys.current_key_id(ROLE_CASE_OFFICE)

    result = rotate(runtime)

    assert result.old_key_id == old_key_id
    assert result.new_key_id != old_key_id
    assert runtime.keys.current_key_id(ROLE_CASE_OFFICE) == result.new_key_id


def test_rotation_moves_every_wrap(runtime: Runtime) -> None:
    make_cases(runtime)
    result = rotate(runtime)

    assert wrap_key_ids(runtime, ROLE_CASE_OFFICE) == {result.new_key_id}
    assert result.wraps_moved == 6


def test_new_key_opens_everything(runtime: Runtime) -> None:
    cases = make_cases(runtime)
    rotate(runtime)

    for stored in cases:
        assert opens(runtime, stored.recording_id, ROLE_CASE_OFFICE)
        assert opens(runtime, stored.transcript_id, ROLE_CASE_OFFICE)


def test_old_key_opens_nothing(runtime: Runtime) -> None:
    stored = make_case(runtime)
    old_key = private_key(runtime, ROLE_CASE_OFFICE)
    rotate(runtime)

    with runtime.session() as session:
        obj = session.get_one(SealedObject, stored.transcript_id)
        with pytest.raises(SealingError, match="no key wrap"):
            open_sealed(session, runtime.blobs, obj, old_key)


def test_other_roles_untouched(runtime: Runtime) -> None:
    make_cases(runtime)
    before = wrap_key_ids(runtime, ROLE_TRANSCRIPTION)
    rotate(runtime)

    assert wrap_key_ids(runtime, ROLE_TRANSCRIPTION) == before


def test_ciphertext_not_rewritten(runtime: Runtime) -> None:
    stored = make_case(runtime)
    with runtime.session() as session:
        blob_key = session.get_one(SealedObject, stored.recording_id).blob_key
    before = runtime.blobs.get(blob_key)
    rotate(runtime)

    assert runtime.blobs.get(blob_key) == before


def test_interrupted_rotation_resumes(runtime: Runtime) -> None:
    cases = make_cases(runtime)

    def crash(_done: int, _total: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        rotate(runtime, progress=crash)
    first_key = runtime.keys.current_key_id(ROLE_CASE_OFFICE)
    result = rotate(runtime)

    assert result.resumed
    assert result.new_key_id == first_key
    assert wrap_key_ids(runtime, ROLE_CASE_OFFICE) == {first_key}
    for stored in cases:
        assert opens(runtime, stored.transcript_id, ROLE_CASE_OFFICE)


def test_interrupted_rotation_keeps_objects_open(runtime: Runtime) -> None:
    cases = make_cases(runtime)

    def crash(_done: int, _total: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        rotate(runtime, progress=crash)

    # Mid-rotation, every object still has a wrap for the old key or the new one.
    new_key = private_key(runtime, ROLE_CASE_OFFICE)
    old_key = runtime.keys.load_private_by_id(
        ROLE_CASE_OFFICE,
        next(iter(wrap_key_ids(runtime, ROLE_CASE_OFFICE) - {new_key.key_id})),
        OLD_PASSPHRASE,
    )
    with runtime.session() as session:
        for stored in cases:
            obj = session.get_one(SealedObject, stored.transcript_id)
            wrapped_to = {wrap.key_id for wrap in obj.wraps}
            assert wrapped_to & {new_key.key_id, old_key.key_id}


def test_resume_after_crash_before_recording_key(runtime: Runtime) -> None:
    # A crash after the new key was written but before the rotation row recorded it.
    make_cases(runtime, 1)
    old_key_id = runtime.keys.current_key_id(ROLE_CASE_OFFICE)
    assert old_key_id is not None
    with runtime.session() as session:
        session.add(
            KeyRotation(role=ROLE_CASE_OFFICE, old_key_id=old_key_id, started_by="operator:1")
        )
        session.commit()
    orphan = runtime.keys.init_role(ROLE_CASE_OFFICE, OLD_PASSPHRASE, replace=True)

    result = rotate(runtime)

    assert result.new_key_id == orphan.key_id
    assert len(runtime.keys.list_keys()) == len({info.key_id for info in runtime.keys.list_keys()})
    assert [info.key_id for info in runtime.keys.list_keys() if info.role == ROLE_CASE_OFFICE] == [
        old_key_id,
        orphan.key_id,
    ]


def test_failed_check_keeps_old_wraps(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    stored = make_case(runtime)
    old_key = private_key(runtime, ROLE_CASE_OFFICE)
    original = key_lifecycle.wrap_data_key

    def wrap_wrong_key(data_key: bytes, *args: object) -> Wrap:
        return original(bytes(32), *args)  # type: ignore[arg-type]

    monkeypatch.setattr(key_lifecycle, "wrap_data_key", wrap_wrong_key)

    with pytest.raises(StorageError, match="does not yield"):
        rotate(runtime)
    with runtime.session() as session:
        obj = session.get_one(SealedObject, stored.transcript_id)
        opened = open_sealed(session, runtime.blobs, obj, old_key)

    assert old_key.key_id in wrap_key_ids(runtime, ROLE_CASE_OFFICE)
    assert opened


def test_wrong_passphrase_changes_nothing(runtime: Runtime) -> None:
    make_case(runtime)
    before = runtime.keys.current_key_id(ROLE_CASE_OFFICE)

    with pytest.raises(WrongPassphraseError):
        rotate_role_key(
            runtime.session_factory,
            runtime.keys,
            ROLE_CASE_OFFICE,
            RotationSecrets(b"wrong passphrase", NEW_PASSPHRASE),
            algorithm=ALG_HYBRID,
            chain_key=bytes.fromhex(AUDIT_KEY_HEX),
            actor="operator:1",
        )

    assert runtime.keys.current_key_id(ROLE_CASE_OFFICE) == before
    with runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(KeyRotation)) == 0


def test_rotation_audited(runtime: Runtime) -> None:
    make_case(runtime)
    rotate(runtime)

    actions = audit_actions(runtime)
    assert actions.index("key.rotation_started") < actions.index("key.rotation_finished")


def test_rotation_recorded_done(runtime: Runtime) -> None:
    make_cases(runtime)
    rotate(runtime)
    with runtime.session() as session:
        rotation = session.scalars(select(KeyRotation)).one()

        assert rotation.status == KeyRotationStatus.DONE.value
        assert rotation.wraps_done == rotation.wraps_total == 6


def test_every_wrap_records_key_and_algorithm(runtime: Runtime) -> None:
    make_case(runtime)
    current = runtime.keys.load_public(ROLE_CASE_OFFICE)
    with runtime.session() as session:
        wraps = session.scalars(select(KeyWrap).where(KeyWrap.role == ROLE_CASE_OFFICE)).all()

        assert wraps
        assert {(wrap.key_id, wrap.algorithm) for wrap in wraps} == {(current.key_id, ALG_HYBRID)}


def test_rotation_can_change_algorithm(runtime: Runtime) -> None:
    make_case(runtime)
    rotate(runtime, algorithm=ALG_X25519)
    with runtime.session() as session:
        algorithms = set(
            session.scalars(select(KeyWrap.algorithm).where(KeyWrap.role == ROLE_CASE_OFFICE))
        )

    assert algorithms == {ALG_X25519}


def test_cli_rotation_with_progress(
    runtime: Runtime, security_env: Callable[..., dict[str, str]]
) -> None:
    cases = make_cases(runtime)
    settings = load_settings(
        security_env(CALLCENTER_CASE_OFFICE_NEW_PASSPHRASE=NEW_PASSPHRASE.decode())
    )

    result = run_cli(settings, "keys", "rotate", ROLE_CASE_OFFICE)
    new_key = runtime.keys.load_private(ROLE_CASE_OFFICE, NEW_PASSPHRASE)

    assert result.exit_code == 0, result.output
    assert "6 wraps moved" in result.output
    assert "Re-wrapping case_office" in result.output
    assert wrap_key_ids(runtime, ROLE_CASE_OFFICE) == {new_key.key_id}
    with runtime.session() as session:
        obj = session.get_one(SealedObject, cases[0].transcript_id)
        assert open_sealed(session, runtime.blobs, obj, new_key)


def test_status_lists_keys_and_objects(runtime: Runtime, security_settings: Settings) -> None:
    make_cases(runtime, 2)
    old_key_id = runtime.keys.current_key_id(ROLE_CASE_OFFICE)
    result_rotation = rotate(runtime)

    result = run_cli(security_settings, "keys", "status")
    rows = {line.split("\t")[1]: line.split("\t") for line in result.output.splitlines()[1:]}

    assert result.exit_code == 0, result.output
    assert rows[result_rotation.new_key_id][3] == "current"
    assert rows[result_rotation.new_key_id][6] == "4"
    assert old_key_id is not None
    assert rows[old_key_id][3] == "retired"
    assert rows[old_key_id][6] == "0"
    assert rows[old_key_id][5] == "0"


def test_status_warns_about_stale_wraps(runtime: Runtime, security_settings: Settings) -> None:
    make_case(runtime)
    old_key_id = runtime.keys.current_key_id(ROLE_CASE_OFFICE)
    assert old_key_id is not None
    rotate(runtime)
    # An intake machine that was not given the new public file keeps sealing to the old key.
    stale = runtime.keys.load_public_by_id(ROLE_CASE_OFFICE, old_key_id)
    with runtime.session() as session:
        store_sealed(
            session,
            runtime.blobs,
            data=b"note",
            kind=ObjectKind.NOTE,
            case_id=None,
            recipients=[stale],
        )
        session.commit()

    status = run_cli(security_settings, "keys", "status")
    rewrapped = run_cli(security_settings, "keys", "rotate", ROLE_CASE_OFFICE, "--rewrap-only")

    assert f"retired key {old_key_id}" in status.output
    assert rewrapped.exit_code == 0, rewrapped.output
    assert "moved 1 wraps" in rewrapped.output
    assert wrap_key_ids(runtime, ROLE_CASE_OFFICE) == {
        runtime.keys.current_key_id(ROLE_CASE_OFFICE)
    }


def test_revoke_removes_body_wraps(runtime: Runtime, security_settings: Settings) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    assert opens(runtime, stored.transcript_id, BODY)

    result = run_cli(security_settings, "keys", "revoke", BODY, "--actor", "operator:1")

    assert result.exit_code == 0, result.output
    assert wrap_key_ids(runtime, BODY) == set()
    assert runtime.keys.current_key_id(BODY) is None
    assert "key.revoked" in audit_actions(runtime)


def test_revoking_one_key_keeps_referral(runtime: Runtime) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    body_key_id = runtime.keys.current_key_id(BODY)
    with runtime.session() as session:
        key_lifecycle.revoke_wraps(
            session,
            BODY,
            key_id=body_key_id,
            chain_key=bytes.fromhex(AUDIT_KEY_HEX),
            actor="operator:1",
        )
        session.commit()
        referral = session.scalars(select(Referral)).one()

    assert wrap_key_ids(runtime, BODY) == set()
    assert referral.revoked_at is None


def test_revoke_marks_referral_revoked(runtime: Runtime, security_settings: Settings) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)

    run_cli(security_settings, "keys", "revoke", BODY, "--actor", "operator:1")

    with runtime.session() as session:
        assert session.scalars(select(Referral)).one().revoked_at is not None


def test_revoked_body_opens_nothing(runtime: Runtime, security_settings: Settings) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    body_key = private_key(runtime, BODY)
    run_cli(security_settings, "keys", "revoke", BODY, "--actor", "operator:1")

    with runtime.session() as session:
        obj = session.get_one(SealedObject, stored.transcript_id)
        with pytest.raises(SealingError, match="no key wrap"):
            open_sealed(session, runtime.blobs, obj, body_key)


@pytest.mark.parametrize("role", [ROLE_CASE_OFFICE, ROLE_TRANSCRIPTION, "identity_custodian"])
def test_core_roles_not_revocable(security_settings: Settings, role: str) -> None:
    result = run_cli(security_settings, "keys", "revoke", role, "--actor", "operator:1")

    assert result.exit_code == 1
    assert "keys rotate" in result.output


def test_revoke_refuses_to_orphan(runtime: Runtime, security_settings: Settings) -> None:
    body_public = runtime.keys.load_public(BODY)
    with runtime.session() as session:
        store_sealed(
            session,
            runtime.blobs,
            data=b"x",
            kind=ObjectKind.NOTE,
            case_id=None,
            recipients=[body_public],
        )
        session.commit()

    result = run_cli(security_settings, "keys", "revoke", BODY, "--actor", "operator:1")

    assert result.exit_code == 1
    assert "no key wrap" in result.output
    assert wrap_key_ids(runtime, BODY) == {body_public.key_id}


def test_add_body_key(runtime: Runtime, security_env: Callable[..., dict[str, str]]) -> None:
    settings = load_settings(security_env(CALLCENTER_BODY_JIACC_PASSPHRASE="jiacc passphrase"))

    result = run_cli(settings, "keys", "add", "body_jiacc", "--actor", "operator:1")

    assert result.exit_code == 0, result.output
    assert runtime.keys.load_private("body_jiacc", b"jiacc passphrase")
    assert "key.created" in audit_actions(runtime)


def test_add_rejects_core_role(security_settings: Settings) -> None:
    result = run_cli(security_settings, "keys", "add", ROLE_CASE_OFFICE, "--actor", "operator:1")

    assert result.exit_code == 1
    assert "keys init" in result.output
