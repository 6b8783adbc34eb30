"""Identity apart from content: sealed identity records, referrals and identity requests.

The helpers and fixtures here (keys for two government bodies, a migrated runtime, a
case with sealed content, a CLI with the security commands) are shared with the
other confidentiality tests.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from callcenter import cli
from callcenter.identity import (
    Decision,
    IdentityError,
    RequestReason,
    approve_identity_request,
    caller_hash,
    content_recipients,
    linked_cases,
    open_identity,
    refer_case,
    refuse_identity_request,
    request_identity,
    store_identity,
)
from callcenter.references import allocate_reference
from callcenter.runtime import Runtime
from callcenter.security_cli import register
from callcenter.settings import Settings, load_settings
from storage.errors import SealingError
from storage.keys import KeyStore
from storage.migrate import upgrade
from storage.models import (
    AuditEvent,
    Call,
    Case,
    CaseStatus,
    Confidentiality,
    IdentityRequest,
    IdentityRequestStatus,
    KeyWrap,
    ObjectKind,
    Referral,
    SealedObject,
)
from storage.sealing import (
    ALL_ROLES,
    ROLE_CASE_OFFICE,
    ROLE_IDENTITY_CUSTODIAN,
    ROLE_TRANSCRIPTION,
    PrivateKey,
)
from storage.vault import open_sealed, store_sealed
from tests.fixtures.services import AUDIT_KEY_HEX, CALLER_HASH_KEY_HEX, PASSPHRASES

CALLER = "+962795551234"
BODY = "body_psd"
OTHER_BODY = "body_moi"
BODY_ROLES = (BODY, OTHER_BODY)
BODY_PASSPHRASES = {role: f"passphrase for {role} in tests" for role in BODY_ROLES}
AUDIO = b"RIFF....WAVEfmt " + bytes(range(256)) * 64
TRANSCRIPT_TEXT = "تعرضت للتوقيف في مركز الشرطة دون مذكرة"
IDENTITY_RECORD: dict[str, object] = {
    "phone_number": CALLER,
    "name": "سلمى عبد الله",
    "consent_callback": True,
    "consent_sms": False,
}
JUSTIFICATION = "The officer must call the complainant to arrange a meeting."


@pytest.fixture(scope="session")
def body_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a folder with key pairs of two government bodies, made once per session."""
    folder = tmp_path_factory.mktemp("body-keys")
    store = KeyStore(folder)
    for role in BODY_ROLES:
        store.init_role(role, BODY_PASSPHRASES[role].encode())
    return folder


@pytest.fixture
def keys_dir(role_keys: Path, body_keys: Path, tmp_path: Path) -> Path:
    """Return this test's own copy of every role key and both body keys."""
    folder = tmp_path / "keys"
    shutil.copytree(role_keys, folder)
    for path in body_keys.iterdir():
        shutil.copy2(path, folder / path.name)
    return folder


@pytest.fixture
def security_env(
    make_env: Callable[..., dict[str, str]], keys_dir: Path
) -> Callable[..., dict[str, str]]:
    """Return a builder of the environment with the caller-hash key and body passphrases."""

    def build(**extra: str) -> dict[str, str]:
        passphrases = {
            f"CALLCENTER_{role.upper()}_PASSPHRASE": passphrase
            for role, passphrase in BODY_PASSPHRASES.items()
        }
        options: dict[str, str] = {"CALLCENTER_CALLER_HASH_KEY": CALLER_HASH_KEY_HEX}
        options.update(passphrases)
        options.update(extra)
        return make_env(keys_dir=keys_dir, **options)

    return build


@pytest.fixture
def security_settings(security_env: Callable[..., dict[str, str]]) -> Settings:
    settings = load_settings(security_env())
    upgrade(settings.database.url)
    return settings


@pytest.fixture
def runtime(security_settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(security_settings)
    yield runtime
    runtime.close()


def private_key(runtime: Runtime, role: str) -> PrivateKey:
    passphrase = PASSPHRASES.get(role) or BODY_PASSPHRASES[role]
    return runtime.keys.load_private(role, passphrase.encode())


@dataclass
class StoredCase:
    case_id: int
    reference: str
    recording_id: str
    transcript_id: str
    identity_id: str | None


def make_case(
    runtime: Runtime,
    confidentiality: Confidentiality = Confidentiality.CONFIDENTIAL,
    *,
    caller: str | None = CALLER,
    status: CaseStatus = CaseStatus.AWAITING_REVIEW,
) -> StoredCase:
    """Store a case as the pipeline leaves it: a call, a recording, a transcript, an identity."""
    with runtime.session() as session:
        case = Case(
            reference=allocate_reference(session),
            language="ar",
            status=status.value,
            confidentiality=confidentiality.value,
        )
        session.add(case)
        session.flush()

        hashed = None
        if caller and confidentiality != Confidentiality.ANONYMOUS:
            hashed = caller_hash(caller, bytes.fromhex(CALLER_HASH_KEY_HEX))
        session.add(
            Call(
                call_sid=f"CA{case.id:032d}",
                flow_id="complaints",
                node="done",
                language="ar",
                answers={},
                case_id=case.id,
                caller_hash=hashed,
            )
        )

        recording = store_sealed(
            session,
            runtime.blobs,
            data=AUDIO,
            kind=ObjectKind.RECORDING,
            case_id=case.id,
            recipients=[
                runtime.public_key(ROLE_TRANSCRIPTION),
                runtime.public_key(ROLE_CASE_OFFICE),
            ],
        )
        transcript = store_sealed(
            session,
            runtime.blobs,
            data=json.dumps({"text": TRANSCRIPT_TEXT}, ensure_ascii=False).encode(),
            kind=ObjectKind.TRANSCRIPT,
            case_id=case.id,
            recipients=[runtime.public_key(ROLE_CASE_OFFICE)],
        )
        identity = store_identity(session, runtime, case=case, record=IDENTITY_RECORD)
        session.commit()

        return StoredCase(
            case_id=case.id,
            reference=case.reference,
            recording_id=recording.id,
            transcript_id=transcript.id,
            identity_id=identity.id if identity is not None else None,
        )


def refer(runtime: Runtime, stored: StoredCase, body: str = BODY) -> None:
    with runtime.session() as session:
        case = session.get_one(Case, stored.case_id)
        refer_case(
            session,
            runtime,
            case=case,
            body=body,
            actor="agent:7",
            case_office_key=private_key(runtime, ROLE_CASE_OFFICE),
        )
        session.commit()


def file_request(runtime: Runtime, stored: StoredCase, body: str = BODY) -> int:
    with runtime.session() as session:
        request = request_identity(
            session,
            runtime,
            case=session.get_one(Case, stored.case_id),
            body=body,
            officer="officer:psd:12",
            reason=RequestReason.CALLER_FOLLOW_UP,
            justification=JUSTIFICATION,
        )
        session.commit()
        return request.id


def approve(runtime: Runtime, request_id: int) -> None:
    with runtime.session() as session:
        approve_identity_request(
            session,
            runtime,
            request=session.get_one(IdentityRequest, request_id),
            custodian="custodian:1",
            custodian_key=private_key(runtime, ROLE_IDENTITY_CUSTODIAN),
            decision=Decision.NECESSARY_FOR_CASE,
        )
        session.commit()


def refuse(runtime: Runtime, request_id: int) -> None:
    with runtime.session() as session:
        refuse_identity_request(
            session,
            runtime,
            request=session.get_one(IdentityRequest, request_id),
            custodian="custodian:1",
            decision=Decision.NO_CONSENT,
        )
        session.commit()


def opens(runtime: Runtime, object_id: str, role: str) -> bool:
    """Return whether ``role``'s current private key opens the object."""
    with runtime.session() as session:
        obj = session.get_one(SealedObject, object_id)
        try:
            open_sealed(session, runtime.blobs, obj, private_key(runtime, role))
        except SealingError:
            return False
        return True


def wrap_roles(runtime: Runtime, object_id: str) -> list[str]:
    with runtime.session() as session:
        return sorted(session.scalars(select(KeyWrap.role).where(KeyWrap.object_id == object_id)))


def audit_actions(runtime: Runtime, case_id: int | None = None) -> list[str]:
    with runtime.session() as session:
        statement = select(AuditEvent.action).order_by(AuditEvent.id)
        if case_id is not None:
            statement = statement.where(AuditEvent.case_id == case_id)
        return list(session.scalars(statement))


def build_cli() -> click.Group:
    """Return a copy of the ``callcenter`` command with the security commands registered."""
    keys = click.Group("keys", commands=dict(cli.keys.commands), help=cli.keys.help)
    case = click.Group("case", commands=dict(cli.case.commands), help=cli.case.help)
    commands = {**cli.main.commands, "keys": keys, "case": case}
    root = type(cli.main)("callcenter", commands=commands, callback=cli.main.callback)
    register(root, keys)
    return root


def run_cli(settings: Settings, *args: str, input: str | None = None) -> Result:
    """Invoke the CLI with ready settings, so it neither reads the environment nor reconfigures logging."""
    return CliRunner().invoke(build_cli(), list(args), obj={"settings": settings}, input=input)


def test_identity_sealed_to_custodian_only(runtime: Runtime) -> None:
    stored = make_case(runtime)

    assert stored.identity_id is not None
    assert wrap_roles(runtime, stored.identity_id) == [ROLE_IDENTITY_CUSTODIAN]


def test_custodian_opens_identity(runtime: Runtime) -> None:
    stored = make_case(runtime)
    with runtime.session() as session:
        record = open_identity(
            session,
            runtime.blobs,
            case=session.get_one(Case, stored.case_id),
            private_key=private_key(runtime, ROLE_IDENTITY_CUSTODIAN),
            actor="custodian:1",
            chain_key=bytes.fromhex(AUDIT_KEY_HEX),
        )
        session.commit()

    assert record == IDENTITY_RECORD
    assert "identity.read" in audit_actions(runtime, stored.case_id)


@pytest.mark.parametrize("role", [ROLE_CASE_OFFICE, ROLE_TRANSCRIPTION])
def test_other_roles_cannot_open_identity(runtime: Runtime, role: str) -> None:
    stored = make_case(runtime)
    assert stored.identity_id is not None

    assert not opens(runtime, stored.identity_id, role)


def test_custodian_cannot_open_content(runtime: Runtime) -> None:
    stored = make_case(runtime)

    assert not opens(runtime, stored.transcript_id, ROLE_IDENTITY_CUSTODIAN)
    assert not opens(runtime, stored.recording_id, ROLE_IDENTITY_CUSTODIAN)


def test_identity_linked_to_case(runtime: Runtime) -> None:
    stored = make_case(runtime)
    with runtime.session() as session:
        case = session.get_one(Case, stored.case_id)

        assert case.identity_object_id == stored.identity_id


def test_anonymous_case_stores_no_identity(runtime: Runtime) -> None:
    stored = make_case(runtime, Confidentiality.ANONYMOUS)
    with runtime.session() as session:
        identities = session.scalar(
            select(func.count())
            .select_from(SealedObject)
            .where(SealedObject.kind == ObjectKind.IDENTITY.value)
        )
        case = session.get_one(Case, stored.case_id)

        assert stored.identity_id is None
        assert identities == 0
        assert case.identity_object_id is None


def test_anonymous_case_keeps_no_number(runtime: Runtime) -> None:
    stored = make_case(runtime, Confidentiality.ANONYMOUS)
    with runtime.session() as session:
        hashes = session.scalars(select(Call.caller_hash).where(Call.case_id == stored.case_id))

        assert list(hashes) == [None]


def test_identity_sealed_with_public_key_only(
    security_env: Callable[..., dict[str, str]], public_keys_only: Path
) -> None:
    # The intake app seals the identity on a machine that holds public keys only.
    settings = load_settings(security_env(CALLCENTER_SEALING__KEYS_DIR=str(public_keys_only)))
    upgrade(settings.database.url)
    intake = Runtime(settings)
    try:
        with intake.session() as session:
            case = Case(
                reference=allocate_reference(session), language="ar", confidentiality="named"
            )
            session.add(case)
            session.flush()
            sealed = store_identity(session, intake, case=case, record=IDENTITY_RECORD)
            session.commit()
    finally:
        intake.close()

    assert sealed is not None
    assert not any(path.name.endswith(".private.json") for path in public_keys_only.iterdir())


def test_replaced_identity_erased(runtime: Runtime) -> None:
    stored = make_case(runtime)
    with runtime.session() as session:
        case = session.get_one(Case, stored.case_id)
        newer = store_identity(session, runtime, case=case, record={"phone_number": CALLER})
        session.commit()
        old = session.get_one(SealedObject, stored.identity_id)

        assert newer is not None
        assert case.identity_object_id == newer.id
        assert old.erased_at is not None
        assert old.wraps == []


def test_referral_wraps_content_to_body(runtime: Runtime) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)

    assert opens(runtime, stored.transcript_id, BODY)
    assert opens(runtime, stored.recording_id, BODY)


def test_referral_leaves_identity_out(runtime: Runtime) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    assert stored.identity_id is not None

    assert not opens(runtime, stored.identity_id, BODY)
    assert wrap_roles(runtime, stored.identity_id) == [ROLE_IDENTITY_CUSTODIAN]


def test_unreferred_body_opens_nothing(runtime: Runtime) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)

    assert not opens(runtime, stored.transcript_id, OTHER_BODY)


def test_referral_audited(runtime: Runtime) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)

    assert "case.referred" in audit_actions(runtime, stored.case_id)


def test_referral_rejects_non_body_role(runtime: Runtime) -> None:
    stored = make_case(runtime)

    with pytest.raises(IdentityError, match="body_"):
        refer(runtime, stored, body=ROLE_IDENTITY_CUSTODIAN)


def test_new_content_recipients_include_body(runtime: Runtime) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    with runtime.session() as session:
        roles = [key.role for key in content_recipients(session, runtime.keys, stored.case_id)]

    assert roles == [ROLE_CASE_OFFICE, BODY]


def test_request_needs_referral(runtime: Runtime) -> None:
    stored = make_case(runtime)

    with pytest.raises(IdentityError, match="not referred"):
        file_request(runtime, stored)


def test_request_for_anonymous_rejected(runtime: Runtime) -> None:
    stored = make_case(runtime, Confidentiality.ANONYMOUS)
    refer(runtime, stored)

    with pytest.raises(IdentityError, match="no identity record"):
        file_request(runtime, stored)


def test_request_audited_with_reason(runtime: Runtime) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    request_id = file_request(runtime, stored)
    with runtime.session() as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "identity.requested")
        ).one()

        assert event.actor == "officer:psd:12"
        assert event.details["reason"] == RequestReason.CALLER_FOLLOW_UP.value
        assert event.details["request_id"] == request_id


def test_request_alone_rewraps_nothing(runtime: Runtime) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    file_request(runtime, stored)
    assert stored.identity_id is not None

    assert wrap_roles(runtime, stored.identity_id) == [ROLE_IDENTITY_CUSTODIAN]


def test_justification_sealed_to_custodian(runtime: Runtime) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    request_id = file_request(runtime, stored)
    with runtime.session() as session:
        request = session.get_one(IdentityRequest, request_id)
        note_id = request.justification_object_id

    assert note_id is not None
    assert wrap_roles(runtime, note_id) == [ROLE_IDENTITY_CUSTODIAN]
    assert not opens(runtime, note_id, BODY)


def test_refusal_rewraps_nothing(runtime: Runtime) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    refuse(runtime, file_request(runtime, stored))
    assert stored.identity_id is not None

    assert wrap_roles(runtime, stored.identity_id) == [ROLE_IDENTITY_CUSTODIAN]
    assert not opens(runtime, stored.identity_id, BODY)


def test_refusal_audited(runtime: Runtime) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    refuse(runtime, file_request(runtime, stored))

    actions = audit_actions(runtime, stored.case_id)
    assert actions.index("identity.requested") < actions.index("identity.refused")


def test_approval_opens_identity_to_body(runtime: Runtime) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    approve(runtime, file_request(runtime, stored))
    assert stored.identity_id is not None

    assert opens(runtime, stored.identity_id, BODY)
    assert wrap_roles(runtime, stored.identity_id) == sorted([ROLE_IDENTITY_CUSTODIAN, BODY])


def test_approval_audited(runtime: Runtime) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    approve(runtime, file_request(runtime, stored))

    actions = audit_actions(runtime, stored.case_id)
    assert actions.index("identity.requested") < actions.index("identity.approved")


def test_approval_for_one_body_only(runtime: Runtime) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    refer(runtime, stored, body=OTHER_BODY)
    approve(runtime, file_request(runtime, stored))
    assert stored.identity_id is not None

    assert not opens(runtime, stored.identity_id, OTHER_BODY)


def test_decided_request_not_decided_again(runtime: Runtime) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    request_id = file_request(runtime, stored)
    refuse(runtime, request_id)

    with pytest.raises(IdentityError, match="already refused"):
        approve(runtime, request_id)


def test_refusal_ground_cannot_approve(runtime: Runtime) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    request_id = file_request(runtime, stored)
    with runtime.session() as session, pytest.raises(IdentityError, match="not a ground"):
        approve_identity_request(
            session,
            runtime,
            request=session.get_one(IdentityRequest, request_id),
            custodian="custodian:1",
            custodian_key=private_key(runtime, ROLE_IDENTITY_CUSTODIAN),
            decision=Decision.NO_CONSENT,
        )


def test_linked_cases_share_caller_hash(runtime: Runtime) -> None:
    first = make_case(runtime)
    second = make_case(runtime, caller="0795551234")
    make_case(runtime, caller="+962785550000")
    with runtime.session() as session:
        linked = linked_cases(session, session.get_one(Case, second.case_id))

        assert [case.id for case in linked] == [first.case_id]


def test_cli_referral_and_approval(runtime: Runtime, security_settings: Settings) -> None:
    stored = make_case(runtime)

    referred = run_cli(
        security_settings, "case", "refer", stored.reference, "--body", BODY, "--actor", "agent:7"
    )
    requested = run_cli(
        security_settings,
        "identity", "request", stored.reference,
        "--body", BODY, "--officer", "officer:psd:12",
        "--reason", "investigation", "--justification-file", "-",
        input=JUSTIFICATION,
    )  # fmt: skip
    pending = run_cli(security_settings, "identity", "pending")
    request_id = json.loads(pending.output.splitlines()[0])["request"]
    justification = run_cli(
        security_settings,
        "identity",
        "justification",
        str(request_id),
        "--custodian",
        "custodian:1",
    )
    approved = run_cli(
        security_settings,
        "identity", "approve", str(request_id),
        "--custodian", "custodian:1", "--decision", "necessary_for_case",
    )  # fmt: skip
    assert stored.identity_id is not None

    assert referred.exit_code == 0, referred.output
    assert requested.exit_code == 0, requested.output
    assert justification.output.strip() == JUSTIFICATION
    assert approved.exit_code == 0, approved.output
    assert opens(runtime, stored.identity_id, BODY)


def test_cli_refusal(runtime: Runtime, security_settings: Settings) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    request_id = file_request(runtime, stored)

    refused = run_cli(
        security_settings,
        "identity", "refuse", str(request_id),
        "--custodian", "custodian:1", "--decision", "risk_of_reprisal",
    )  # fmt: skip
    with runtime.session() as session:
        status = session.get_one(IdentityRequest, request_id).status
    assert stored.identity_id is not None

    assert refused.exit_code == 0, refused.output
    assert status == IdentityRequestStatus.REFUSED.value
    assert not opens(runtime, stored.identity_id, BODY)


def test_cli_request_unknown_case(security_settings: Settings) -> None:
    result = run_cli(
        security_settings,
        "identity", "request", "0000000000",
        "--body", BODY, "--officer", "officer:psd:12", "--reason", "investigation",
    )  # fmt: skip

    assert result.exit_code == 1
    assert "0000000000" in result.output


def test_referral_revoked_blocks_request(runtime: Runtime) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    with runtime.session() as session:
        referral = session.scalars(select(Referral)).one()
        referral.revoked_at = referral.created_at
        session.commit()

    with pytest.raises(IdentityError, match="not referred"):
        file_request(runtime, stored)


def test_every_role_key_available(runtime: Runtime) -> None:
    # Guards the fixtures: every role and both bodies have a current key.
    assert set(runtime.keys.roles()) == {*ALL_ROLES, *BODY_ROLES}
