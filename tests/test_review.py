"""Review of the IVR webhooks and the confidentiality commands, from outside the code.

Each test pins a property that was checked and holds, or the fix of a defect it found.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from flask import Flask
from sqlalchemy import select

from callcenter.retention import ErasureReason, erase_case
from callcenter.runtime import Runtime
from callcenter.settings import Settings
from storage.errors import SealingError
from storage.models import Case, CaseStatus, Recording, SealedObject
from storage.sealing import ROLE_CASE_OFFICE
from storage.vault import open_sealed
from tests.fixtures.services import AUDIT_KEY_HEX, new_call_sid, new_recording_sid
from tests.test_identity import (
    BODY,
    body_keys,
    keys_dir,
    make_case,
    private_key,
    refer,
    run_cli,
    runtime,
    security_env,
    security_settings,
)
from tests.test_ivr_features import (
    ARABIC_HR_CP,
    Post,
    _Always,
    follow_up,
    params,
    post,
    record,
    says,
    start_follow_up,
    stored,
    walk,
)

__all__ = ["body_keys", "keys_dir", "post", "runtime", "security_env", "security_settings"]

# Twilio accepts only these verbs nested in <Gather>.
GATHER_CHILDREN = {"Say", "Play", "Pause"}
ENGLISH_SERVICE = [
    ("language", "2"),
    ("notice", ""),
    ("confidentiality", "2"),
    ("consent_callback", "2"),
    ("consent_sms", "2"),
    ("complaint_type", "2"),
]
TOO_MANY = "You have made too many attempts. Please try again in an hour."


def media_url(settings: Settings, recording_sid: str) -> str:
    base = settings.twilio.api_base_url
    return f"{base}/2010-04-01/Accounts/{settings.twilio.account_sid}/Recordings/{recording_sid}"


def recording_status(
    post: Post, settings: Settings, call_sid: str, recording_sid: str, status: str
) -> None:
    form = params(
        call_sid,
        RecordingSid=recording_sid,
        RecordingStatus=status,
        RecordingUrl=media_url(settings, recording_sid),
        RecordingDuration="12" if status == "completed" else "0",
    )
    response = post("/voice/recording-status", form)
    assert response.status_code == 200


def check_twiml(data: bytes) -> None:
    root = ET.fromstring(data)
    assert root.tag == "Response"
    for gather in root.iter("Gather"):
        assert {child.tag for child in gather} <= GATHER_CHILDREN
    for verb in root.iter("Record"):
        assert list(verb) == []
    for verb in root.iter("Enqueue"):
        assert list(verb) == []


def case_count(app: Flask) -> int:
    with app.extensions["callcenter_runtime"].session() as session:
        return len(session.scalars(select(Case)).all())


# IVR ---------------------------------------------------------------------------------


def test_twiml_valid_at_every_node(post: Post, app: Flask) -> None:
    call_sid = new_call_sid()
    responses = [post("/voice/incoming", params(call_sid))]
    for node, key in [*ARABIC_HR_CP]:
        if node == "notice":
            responses.append(post("/voice/next?node=notice", params(call_sid)))
        else:
            # Silence first, so each retry prompt is rendered too.
            responses.append(post(f"/voice/no-input?node={node}", params(call_sid)))
            responses.append(post(f"/voice/gather?node={node}", params(call_sid, Digits=key)))
    responses.append(record(post, call_sid))
    responses.append(post("/voice/gather?node=confirm_recording", params(call_sid, Digits="1")))
    responses.append(post("/voice/gather?node=reference", params(call_sid, Digits="*")))

    asking = new_call_sid()
    start_follow_up(post, asking)
    responses.append(follow_up(post, asking, "1234567890"))
    responses.append(post("/voice/follow-up?node=follow_up", params(asking)))

    for response in responses:
        assert response.status_code == 200
        check_twiml(response.data)


def test_replayed_gather_applied_once(post: Post, app: Flask) -> None:
    call_sid = new_call_sid()
    walk(post, call_sid, [("language", "2"), ("notice", ""), ("confidentiality", "2")])
    # A replay of the confidentiality key, now that the call is at consent_callback.
    replay = post("/voice/gather?node=confidentiality", params(call_sid, Digits="3"))
    call, _case = stored(app, call_sid)

    assert call.node == "consent_callback"
    assert call.answers["confidentiality"] == "confidential"
    assert call.caller_hash is not None
    check_twiml(replay.data)


def test_replayed_recorded_opens_one_case(post: Post, app: Flask) -> None:
    call_sid = new_call_sid()
    walk(post, call_sid, ENGLISH_SERVICE)
    record(post, call_sid)
    record(post, call_sid)

    call, case = stored(app, call_sid)
    assert case is not None
    assert call.node == "confirm_recording"
    assert case_count(app) == 1


@pytest.mark.parametrize("steps", [1, 3, 6])
def test_hangup_in_menus_files_no_case(post: Post, app: Flask, steps: int) -> None:
    call_sid = new_call_sid()
    walk(post, call_sid, ENGLISH_SERVICE[:steps])
    post("/voice/status", params(call_sid, CallStatus="completed"))

    call, case = stored(app, call_sid)
    assert case is None
    assert call.twilio_status == "completed"
    assert case_count(app) == 0


def test_hangup_during_recording_files_case(post: Post, app: Flask) -> None:
    call_sid = new_call_sid()
    walk(post, call_sid, ENGLISH_SERVICE)
    form = params(
        call_sid,
        RecordingUrl=media_url(app.extensions["callcenter_runtime"].settings, "RE" + "3" * 32),
        RecordingDuration="8",
        Digits="hangup",
    )
    response = post("/voice/recorded?node=record", form)
    post("/voice/status", params(call_sid, CallStatus="completed"))

    _call, case = stored(app, call_sid)
    assert response.data.count(b"<Say") == 0
    assert case is not None
    assert case.identity_object_id is not None


def test_empty_recording_twice_no_case(post: Post, app: Flask) -> None:
    call_sid = new_call_sid()
    walk(post, call_sid, ENGLISH_SERVICE)
    first = post("/voice/empty-recording?node=record", params(call_sid))
    second = post("/voice/empty-recording?node=record", params(call_sid))

    call, case = stored(app, call_sid)
    assert "We did not hear your complaint." in " ".join(says(first))
    assert "Thank you for calling. Goodbye." in says(second)
    assert call.node == "goodbye"
    assert case is None


def test_absent_status_before_action_marks_failed(
    post: Post, app: Flask, settings: Settings
) -> None:
    call_sid = new_call_sid()
    walk(post, call_sid, ENGLISH_SERVICE)
    recording_sid = new_recording_sid()
    # The two webhooks are independent requests, so the status callback can come first.
    recording_status(post, settings, call_sid, recording_sid, "absent")
    form = params(call_sid, RecordingUrl=media_url(settings, recording_sid), RecordingDuration="0")
    post("/voice/recorded?node=record", form)

    _call, case = stored(app, call_sid)
    assert case is None or case.status == CaseStatus.RECORDING_FAILED.value


def test_record_again_keeps_one_case(post: Post, app: Flask, settings: Settings) -> None:
    call_sid = new_call_sid()
    walk(post, call_sid, ENGLISH_SERVICE)
    record(post, call_sid)
    post("/voice/gather?node=confirm_recording", params(call_sid, Digits="2"))
    record(post, call_sid)
    for _ in range(2):
        recording_status(post, settings, call_sid, new_recording_sid(), "completed")
    response = post("/voice/gather?node=confirm_recording", params(call_sid, Digits="1"))

    call, case = stored(app, call_sid)
    assert case is not None
    assert call.node == "reference"
    assert case_count(app) == 1
    assert any(" ".join(case.reference[:3]) in text for text in says(response))
    with app.extensions["callcenter_runtime"].session() as session:
        recordings = session.scalars(select(Recording).where(Recording.case_id == case.id)).all()
    assert len(recordings) == 2


def test_follow_up_reads_only_status(post: Post, app: Flask) -> None:
    filed = new_call_sid()
    walk(post, filed, ENGLISH_SERVICE)
    record(post, filed)
    _call, case = stored(app, filed)
    assert case is not None

    asking = new_call_sid()
    start_follow_up(post, asking)
    response = follow_up(post, asking, case.reference)
    spoken = says(response)

    assert spoken == [
        "Your complaint has been received and is waiting to be reviewed.",
        "Thank you for calling. Goodbye.",
    ]
    assert b"<Hangup" in response.data


def test_follow_up_replay_reads_nothing_more(post: Post, app: Flask) -> None:
    filed = new_call_sid()
    walk(post, filed, ENGLISH_SERVICE)
    record(post, filed)
    _call, case = stored(app, filed)
    assert case is not None

    asking = new_call_sid()
    start_follow_up(post, asking)
    follow_up(post, asking, case.reference)
    replay = follow_up(post, asking, case.reference)

    assert says(replay) == ["Thank you for calling. Goodbye."]


def test_follow_up_erased_case_not_handled(post: Post, app: Flask) -> None:
    filed = new_call_sid()
    walk(post, filed, ENGLISH_SERVICE)
    record(post, filed)
    _call, case = stored(app, filed)
    assert case is not None
    with app.extensions["callcenter_runtime"].session() as session:
        erase_case(
            session,
            session.get(Case, case.id),
            chain_key=bytes.fromhex(AUDIT_KEY_HEX),
            actor="reviewer",
            reason=ErasureReason.CALLER_REQUEST,
        )
        session.commit()

    asking = new_call_sid()
    start_follow_up(post, asking)
    spoken = says(follow_up(post, asking, case.reference))

    assert "Your complaint is being handled." not in spoken


def test_follow_up_limit_survives_anonymous(post: Post, app: Flask) -> None:
    texts: list[str] = []
    for _ in range(3):
        call_sid = new_call_sid()
        # The caller number is the same every time, and only the confidentiality choice is anonymous.
        start_follow_up(post, call_sid)
        for _ in range(3):
            texts += says(follow_up(post, call_sid, "1234567890"))

    assert TOO_MANY in texts


def test_queue_result_replay_ignored(post: Post, app: Flask) -> None:
    real = app.extensions["callcenter_calendar"]
    app.extensions["callcenter_calendar"] = _Always(True, real)
    call_sid = new_call_sid()
    walk(post, call_sid, [("language", "2"), ("notice", ""), ("confidentiality", "0")])
    first = post("/voice/queue-result?node=agent", params(call_sid, QueueResult="leave"))
    replay = post("/voice/queue-result?node=agent", params(call_sid, QueueResult="leave"))

    call, _case = stored(app, call_sid)
    assert call.node == "offer_record"
    assert "Sorry, all agents are busy." in says(first)
    assert "Sorry, all agents are busy." not in says(replay)
    check_twiml(first.data)


# Confidentiality commands ------------------------------------------------------------


def opens_with(runtime: Runtime, object_id: str, key: object) -> bool:
    with runtime.session() as session:
        obj = session.get_one(SealedObject, object_id)
        try:
            open_sealed(session, runtime.blobs, obj, key)  # type: ignore[arg-type]
        except SealingError:
            return False
        return True


def test_erased_case_reads_nothing(runtime: Runtime, security_settings: Settings) -> None:
    stored = make_case(runtime)
    office_key = private_key(runtime, ROLE_CASE_OFFICE)
    erased = run_cli(
        security_settings,
        "case",
        "erase",
        stored.reference,
        "--reason",
        "caller_request",
        "--actor",
        "rev",
        "--yes",
    )
    shown = run_cli(security_settings, "case", "show", stored.reference, "--actor", "rev")
    referred = run_cli(
        security_settings, "case", "refer", stored.reference, "--body", BODY, "--actor", "rev"
    )

    assert erased.exit_code == 0, erased.output
    assert "erased" in shown.output
    assert referred.exit_code == 1
    assert "erased" in referred.output
    assert not opens_with(runtime, stored.transcript_id, office_key)
    assert not opens_with(runtime, stored.recording_id, office_key)


def test_rotated_key_reads_old_case(runtime: Runtime, security_settings: Settings) -> None:
    stored = make_case(runtime)
    old_key = private_key(runtime, ROLE_CASE_OFFICE)
    rotated = run_cli(security_settings, "keys", "rotate", ROLE_CASE_OFFICE, "--actor", "rev")
    shown = run_cli(security_settings, "case", "show", stored.reference, "--actor", "rev")

    assert rotated.exit_code == 0, rotated.output
    assert shown.exit_code == 0, shown.output
    assert stored.reference in shown.output
    assert opens_with(runtime, stored.transcript_id, private_key(runtime, ROLE_CASE_OFFICE))
    assert not opens_with(runtime, stored.transcript_id, old_key)


def test_revoked_body_reads_nothing(runtime: Runtime, security_settings: Settings) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    body_key = private_key(runtime, BODY)
    assert opens_with(runtime, stored.transcript_id, body_key)

    revoked = run_cli(security_settings, "keys", "revoke", BODY, "--actor", "rev")

    assert revoked.exit_code == 0, revoked.output
    assert not opens_with(runtime, stored.transcript_id, body_key)
    assert not opens_with(runtime, stored.recording_id, body_key)


def test_revoke_unknown_role_fails(runtime: Runtime, security_settings: Settings) -> None:
    stored = make_case(runtime)
    refer(runtime, stored)
    # body_pds is a typo of the referred body body_psd.
    revoked = run_cli(security_settings, "keys", "revoke", "body_pds", "--actor", "rev")

    assert revoked.exit_code != 0
    assert "body_pds" in revoked.output


def test_audit_tampering_caught(runtime: Runtime, security_settings: Settings) -> None:
    from sqlalchemy import update

    from storage.models import AuditEvent
    from tests.test_audit_cli import tamper

    stored = make_case(runtime)
    intact = run_cli(security_settings, "audit", "verify")
    tamper(
        runtime,
        update(AuditEvent).where(AuditEvent.case_id == stored.case_id).values(actor="nobody"),
    )
    broken = run_cli(security_settings, "audit", "verify")

    assert intact.exit_code == 0, intact.output
    assert broken.exit_code == 1
    assert "BROKEN at first broken event" in broken.output


@pytest.mark.parametrize("change", [str.upper, lambda head: head[:-1]])
def test_audit_head_typo_not_tampering(
    runtime: Runtime, security_settings: Settings, change: object
) -> None:
    make_case(runtime)
    head = run_cli(security_settings, "audit", "head").output.strip()
    result = run_cli(security_settings, "audit", "verify", "--head", change(head))  # type: ignore[operator]

    assert "newest events were deleted" not in result.output


def test_show_erased_case_prints_status(runtime: Runtime, security_settings: Settings) -> None:
    from storage.models import Transcript

    stored = make_case(runtime)
    with runtime.session() as session:
        recording = Recording(
            recording_sid=new_recording_sid(),
            call_sid=f"CA{stored.case_id:032d}",
            case_id=stored.case_id,
            source_url="http://127.0.0.1:1/Recordings/RE0",
            duration_seconds=12,
        )
        session.add(recording)
        session.flush()
        session.add(
            Transcript(
                case_id=stored.case_id,
                recording_id=recording.id,
                sealed_object_id=stored.transcript_id,
                engine="vosk",
                model_name="test",
            )
        )
        session.commit()
    run_cli(
        security_settings,
        "case",
        "erase",
        stored.reference,
        "--reason",
        "caller_request",
        "--actor",
        "rev",
        "--yes",
    )
    shown = run_cli(security_settings, "case", "show", stored.reference, "--actor", "rev")

    assert shown.exit_code == 0, shown.output
    assert '"status": "erased"' in shown.output
