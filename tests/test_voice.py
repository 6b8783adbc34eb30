"""Voice webhooks: signatures, TwiML, idempotency on CallSid and RecordingSid."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator
from werkzeug.test import TestResponse

from callcenter.settings import Settings
from storage.models import AuditEvent, Call, Case, OutboxMessage, Recording
from tests.fixtures.services import ACCOUNT_SID, AUTH_TOKEN, new_call_sid, new_recording_sid

CALLER = "+962791234567"

SignedPost = Callable[..., TestResponse]


def base_params(call_sid: str) -> dict[str, str]:
    return {
        "CallSid": call_sid,
        "AccountSid": ACCOUNT_SID,
        "From": CALLER,
        "To": "+96265008080",
        "Caller": CALLER,
        "Called": "+96265008080",
        "CallStatus": "in-progress",
        "ApiVersion": "2010-04-01",
        "Direction": "inbound",
    }


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def signed_post(client: FlaskClient, settings: Settings) -> SignedPost:
    """POST like Twilio: form parameters signed over the public URL and raw query."""
    validator = RequestValidator(AUTH_TOKEN)

    def post(
        path_and_query: str, params: dict[str, str], *, signature: str | None = None
    ) -> TestResponse:
        url = settings.app.public_base_url + path_and_query
        header = validator.compute_signature(url, params) if signature is None else signature
        headers = {"X-Twilio-Signature": header} if header else {}
        return client.post(path_and_query, data=params, headers=headers)

    return post


def count(settings: Settings, app: Flask, model: type) -> int:
    with app.extensions["callcenter_runtime"].session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def twiml(response: TestResponse) -> ET.Element:
    return ET.fromstring(response.data)


def test_incoming_returns_arabic_first(signed_post: SignedPost) -> None:
    response = signed_post("/voice/incoming", base_params(new_call_sid()))
    says = twiml(response).findall("./Gather/Say")
    assert response.status_code == 200
    assert response.mimetype == "text/xml"
    assert says[0].get("language") == "arb"
    assert says[0].get("voice") == "Polly.Zeina"
    assert says[1].get("language") == "en-US"


def test_missing_signature_rejected(
    signed_post: SignedPost, settings: Settings, app: Flask
) -> None:
    response = signed_post("/voice/incoming", base_params(new_call_sid()), signature="")
    assert response.status_code == 403
    assert count(settings, app, Call) == 0


def test_forged_signature_rejected(signed_post: SignedPost) -> None:
    forged = RequestValidator("not-the-token").compute_signature(
        "http://127.0.0.1/voice/incoming", base_params(new_call_sid())
    )
    response = signed_post("/voice/incoming", base_params(new_call_sid()), signature=forged)
    assert response.status_code == 403


def test_altered_parameter_rejected(client: FlaskClient, settings: Settings) -> None:
    params = base_params(new_call_sid())
    url = settings.app.public_base_url + "/voice/incoming"
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, params)
    params["Digits"] = "9"
    response = client.post(
        "/voice/incoming", data=params, headers={"X-Twilio-Signature": signature}
    )
    assert response.status_code == 403


def test_altered_query_rejected(
    client: FlaskClient, settings: Settings, signed_post: SignedPost
) -> None:
    call_sid = new_call_sid()
    signed_post("/voice/incoming", base_params(call_sid))
    params = {**base_params(call_sid), "Digits": "1"}
    url = settings.app.public_base_url + "/voice/gather?node=language"
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, params)
    response = client.post(
        "/voice/gather?node=notice", data=params, headers={"X-Twilio-Signature": signature}
    )
    assert response.status_code == 403


def test_rejection_log_has_no_parameters(
    signed_post: SignedPost, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    signed_post("/voice/incoming", base_params(new_call_sid()), signature="bad")
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "/voice/incoming" in messages
    assert CALLER not in messages
    assert "CA" not in messages.replace("CALL", "")


def test_signature_checked_on_every_route(signed_post: SignedPost) -> None:
    paths = [
        "/voice/gather?node=language",
        "/voice/no-input?node=language",
        "/voice/next?node=notice",
        "/voice/recorded?node=record",
        "/voice/empty-recording?node=record",
        "/voice/recording-status",
        "/voice/status",
    ]
    statuses = [
        signed_post(path, base_params(new_call_sid()), signature="x").status_code for path in paths
    ]
    assert statuses == [403] * len(paths)


def test_incoming_replay_creates_one_call(
    signed_post: SignedPost, settings: Settings, app: Flask
) -> None:
    params = base_params(new_call_sid())
    first = signed_post("/voice/incoming", params)
    second = signed_post("/voice/incoming", params)
    assert first.data == second.data
    assert count(settings, app, Call) == 1


def test_gather_replay_not_applied_twice(signed_post: SignedPost, app: Flask) -> None:
    call_sid = new_call_sid()
    signed_post("/voice/incoming", base_params(call_sid))
    signed_post("/voice/gather?node=language", {**base_params(call_sid), "Digits": "2"})
    replay = signed_post("/voice/gather?node=language", {**base_params(call_sid), "Digits": "1"})

    with app.extensions["callcenter_runtime"].session() as session:
        call = session.scalar(select(Call).where(Call.call_sid == call_sid))
    assert call is not None
    assert call.language == "en"
    assert call.node == "notice"
    assert twiml(replay).find("Say") is not None


def test_no_input_keeps_arabic(signed_post: SignedPost) -> None:
    call_sid = new_call_sid()
    signed_post("/voice/incoming", base_params(call_sid))
    response = signed_post("/voice/no-input?node=language", base_params(call_sid))
    say = twiml(response).find("Say")
    assert say is not None
    assert say.get("language") == "arb"


def test_invalid_key_reprompts(signed_post: SignedPost) -> None:
    call_sid = new_call_sid()
    signed_post("/voice/incoming", base_params(call_sid))
    response = signed_post("/voice/gather?node=language", {**base_params(call_sid), "Digits": "7"})
    gather = twiml(response).find("Gather")
    assert gather is not None
    assert gather.get("action", "").endswith("/voice/gather?node=language")


def walk_to_recording(
    signed_post: SignedPost, call_sid: str, confidentiality: str = "2"
) -> TestResponse:
    signed_post("/voice/incoming", base_params(call_sid))
    signed_post("/voice/gather?node=language", {**base_params(call_sid), "Digits": "1"})
    signed_post("/voice/next?node=notice", base_params(call_sid))
    signed_post(
        "/voice/gather?node=confidentiality", {**base_params(call_sid), "Digits": confidentiality}
    )
    if confidentiality != "3":
        signed_post("/voice/gather?node=consent_callback", {**base_params(call_sid), "Digits": "1"})
        signed_post("/voice/gather?node=consent_sms", {**base_params(call_sid), "Digits": "2"})
    signed_post("/voice/gather?node=complaint_type", {**base_params(call_sid), "Digits": "1"})
    return signed_post("/voice/gather?node=rights_group", {**base_params(call_sid), "Digits": "1"})


def record_action(signed_post: SignedPost, call_sid: str, duration: str = "9") -> TestResponse:
    params = {
        **base_params(call_sid),
        "RecordingUrl": f"http://127.0.0.1:1/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/RE{'1' * 32}",
        "RecordingDuration": duration,
        "Digits": "#",
    }
    return signed_post("/voice/recorded?node=record", params)


def test_record_node_renders_record(signed_post: SignedPost, settings: Settings) -> None:
    response = walk_to_recording(signed_post, new_call_sid())
    record = twiml(response).find("Record")
    assert record is not None
    assert (
        record.get("recordingStatusCallback")
        == settings.app.public_base_url + "/voice/recording-status"
    )
    assert record.get("maxLength") == str(settings.voice.max_recording_seconds)


def test_no_case_before_recording(signed_post: SignedPost, settings: Settings, app: Flask) -> None:
    walk_to_recording(signed_post, new_call_sid())
    assert count(settings, app, Case) == 0


def test_case_opened_with_answers(signed_post: SignedPost, app: Flask) -> None:
    call_sid = new_call_sid()
    walk_to_recording(signed_post, call_sid)
    record_action(signed_post, call_sid)
    with app.extensions["callcenter_runtime"].session() as session:
        case = session.scalar(
            select(Case).join(Call, Call.case_id == Case.id).where(Call.call_sid == call_sid)
        )
    assert case is not None
    assert case.complaint_type == "HR"
    assert case.category == "HR.CP"
    assert len(case.reference) == 10


def recording_params(call_sid: str, recording_sid: str) -> dict[str, str]:
    return {
        "AccountSid": ACCOUNT_SID,
        "CallSid": call_sid,
        "RecordingSid": recording_sid,
        "RecordingUrl": f"http://127.0.0.1:1/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/{recording_sid}",
        "RecordingStatus": "completed",
        "RecordingDuration": "9",
        "RecordingChannels": "1",
        "RecordingSource": "RecordVerb",
    }


@pytest.fixture
def media_host_params(settings: Settings) -> Callable[[str, str], dict[str, str]]:
    def build(call_sid: str, recording_sid: str) -> dict[str, str]:
        params = recording_params(call_sid, recording_sid)
        params["RecordingUrl"] = (
            f"{settings.twilio.api_base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/{recording_sid}"
        )
        return params

    return build


def test_recording_status_replay_registers_once(
    signed_post: SignedPost,
    settings: Settings,
    app: Flask,
    media_host_params: Callable[[str, str], dict[str, str]],
) -> None:
    call_sid = new_call_sid()
    walk_to_recording(signed_post, call_sid)
    params = media_host_params(call_sid, new_recording_sid())

    responses = [signed_post("/voice/recording-status", params) for _ in range(3)]

    assert [response.status_code for response in responses] == [200, 200, 200]
    assert count(settings, app, Recording) == 1
    assert count(settings, app, OutboxMessage) == 1


def test_recording_status_enqueues_ids_only(
    signed_post: SignedPost,
    settings: Settings,
    media_host_params: Callable[[str, str], dict[str, str]],
) -> None:
    call_sid = new_call_sid()
    walk_to_recording(signed_post, call_sid)
    signed_post("/voice/recording-status", media_host_params(call_sid, new_recording_sid()))

    redis = Redis.from_url(settings.redis.url)
    dump = b" ".join(
        str(redis.hgetall(key)).encode()
        for key in redis.keys("rq:job:*")
        if redis.type(key) == b"hash"
    )
    redis.close()
    assert b"process_recording" in dump
    assert CALLER.encode() not in dump
    assert b"RecordingUrl" not in dump


def test_recording_on_foreign_host_rejected(
    signed_post: SignedPost, settings: Settings, app: Flask
) -> None:
    call_sid = new_call_sid()
    walk_to_recording(signed_post, call_sid)
    params = recording_params(call_sid, new_recording_sid())
    params["RecordingUrl"] = "http://127.0.0.1:9/2010-04-01/Accounts/x/Recordings/RE" + "0" * 32
    response = signed_post("/voice/recording-status", params)
    assert response.status_code == 400
    assert count(settings, app, Recording) == 0


def test_recording_committed_when_redis_down(
    make_env: Callable[..., dict[str, str]],
    media_host_params: Callable[[str, str], dict[str, str]],
) -> None:
    from callcenter import create_app
    from callcenter.settings import load_settings
    from storage.migrate import upgrade

    settings = load_settings(make_env(CALLCENTER_REDIS__URL="redis://127.0.0.1:1/0"))
    upgrade(settings.database.url)
    application = create_app(settings)
    client = application.test_client()
    validator = RequestValidator(AUTH_TOKEN)

    def post(path: str, params: dict[str, str]) -> TestResponse:
        url = settings.app.public_base_url + path
        return client.post(
            path,
            data=params,
            headers={"X-Twilio-Signature": validator.compute_signature(url, params)},
        )

    call_sid = new_call_sid()
    walk_to_recording(post, call_sid)
    response = post("/voice/recording-status", media_host_params(call_sid, new_recording_sid()))

    with application.extensions["callcenter_runtime"].session() as session:
        message = session.scalar(select(OutboxMessage))
    application.extensions["callcenter_runtime"].close()
    assert response.status_code == 200
    assert message is not None
    assert message.enqueued_at is None


def test_case_opening_is_audited(signed_post: SignedPost, settings: Settings, app: Flask) -> None:
    call_sid = new_call_sid()
    walk_to_recording(signed_post, call_sid)
    record_action(signed_post, call_sid)
    actions = audit_actions(app)
    assert actions.count("case.opened") == 1


def audit_actions(app: Flask) -> list[str]:
    with app.extensions["callcenter_runtime"].session() as session:
        return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def test_record_action_replay_opens_one_case(
    signed_post: SignedPost, settings: Settings, app: Flask
) -> None:
    call_sid = new_call_sid()
    walk_to_recording(signed_post, call_sid)
    record_action(signed_post, call_sid)
    record_action(signed_post, call_sid)
    assert count(settings, app, Case) == 1


def test_short_recording_asked_again(signed_post: SignedPost) -> None:
    call_sid = new_call_sid()
    walk_to_recording(signed_post, call_sid)
    response = record_action(signed_post, call_sid, duration="1")
    assert twiml(response).find("Record") is not None


def test_keep_or_record_again_offered(signed_post: SignedPost) -> None:
    call_sid = new_call_sid()
    walk_to_recording(signed_post, call_sid)
    response = record_action(signed_post, call_sid)
    gather = twiml(response).find("Gather")
    assert gather is not None
    assert gather.get("action", "").endswith("node=confirm_recording")


def test_unknown_call_continuation_is_404(signed_post: SignedPost) -> None:
    response = signed_post(
        "/voice/gather?node=language", {**base_params(new_call_sid()), "Digits": "1"}
    )
    assert response.status_code == 404


def test_unknown_node_is_400(signed_post: SignedPost) -> None:
    call_sid = new_call_sid()
    signed_post("/voice/incoming", base_params(call_sid))
    response = signed_post("/voice/gather?node=nowhere", {**base_params(call_sid), "Digits": "1"})
    assert response.status_code == 400
