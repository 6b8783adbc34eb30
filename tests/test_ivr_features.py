"""IVR features through the webhooks: confidentiality, urgency, follow-up, agents, reload."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from twilio.request_validator import RequestValidator
from werkzeug.test import TestResponse

from callcenter.settings import Settings
from ivr_flows.calendar import Calendar
from storage.models import Call, Case
from tests.fixtures.services import ACCOUNT_SID, AUTH_TOKEN, new_call_sid

CALLER = "+962791112233"
Post = Callable[..., TestResponse]


def params(call_sid: str, **extra: str) -> dict[str, str]:
    return {
        "CallSid": call_sid,
        "AccountSid": ACCOUNT_SID,
        "From": CALLER,
        "To": "+96265008080",
        **extra,
    }


@pytest.fixture
def post(app: Flask, settings: Settings) -> Post:
    client: FlaskClient = app.test_client()
    validator = RequestValidator(AUTH_TOKEN)

    def send(path: str, form: dict[str, str]) -> TestResponse:
        url = settings.app.public_base_url + path
        return client.post(
            path, data=form, headers={"X-Twilio-Signature": validator.compute_signature(url, form)}
        )

    return send


def says(response: TestResponse) -> list[str]:
    return [element.text or "" for element in ET.fromstring(response.data).iter("Say")]


def walk(post: Post, call_sid: str, keys: list[tuple[str, str]]) -> TestResponse:
    """Answer the call, then press each (node, key); a key of "" is silence at that node."""
    response = post("/voice/incoming", params(call_sid))
    for node, key in keys:
        if node == "notice":
            response = post("/voice/next?node=notice", params(call_sid))
        elif key:
            response = post(f"/voice/gather?node={node}", params(call_sid, Digits=key))
        else:
            response = post(f"/voice/no-input?node={node}", params(call_sid))
    return response


def record(post: Post, call_sid: str) -> TestResponse:
    form = params(
        call_sid,
        RecordingUrl=f"http://127.0.0.1:1/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/RE{'2' * 32}",
        RecordingDuration="12",
        Digits="#",
    )
    return post("/voice/recorded?node=record", form)


def stored(app: Flask, call_sid: str) -> tuple[Call, Case | None]:
    with app.extensions["callcenter_runtime"].session() as session:
        call = session.scalar(select(Call).where(Call.call_sid == call_sid))
        assert call is not None
        case = session.get(Case, call.case_id) if call.case_id else None
        return call, case


ARABIC_HR_CP = [
    ("language", "1"),
    ("notice", ""),
    ("confidentiality", "1"),
    ("consent_callback", "1"),
    ("consent_sms", "2"),
    ("complaint_type", "1"),
    ("rights_group", "1"),
]


def test_named_caller_identity_sealed(post: Post, app: Flask) -> None:
    call_sid = new_call_sid()
    walk(post, call_sid, ARABIC_HR_CP)
    record(post, call_sid)
    call, case = stored(app, call_sid)
    assert case is not None
    assert case.confidentiality == "named"
    assert case.identity_object_id is not None
    assert call.caller_hash is not None


def test_anonymous_caller_leaves_no_number(post: Post, app: Flask) -> None:
    call_sid = new_call_sid()
    walk(
        post,
        call_sid,
        [("language", "1"), ("notice", ""), ("confidentiality", "3"), ("complaint_type", "2")],
    )
    record(post, call_sid)
    call, case = stored(app, call_sid)
    assert case is not None
    assert case.confidentiality == "anonymous"
    assert case.identity_object_id is None
    assert call.caller_hash is None


def test_anonymous_hangup_in_menus_leaves_no_hash(post: Post, app: Flask) -> None:
    call_sid = new_call_sid()
    walk(post, call_sid, [("language", "1"), ("notice", ""), ("confidentiality", "3")])
    post("/voice/status", params(call_sid, CallStatus="completed"))
    call, case = stored(app, call_sid)
    assert case is None
    assert call.caller_hash is None
    assert call.ended_at is not None


def test_urgent_case_flagged(post: Post, app: Flask) -> None:
    call_sid = new_call_sid()
    keys = [*ARABIC_HR_CP[:-1], ("rights_group", "9")]
    response = walk(post, call_sid, keys)
    assert any("911" in text or "تسعة تسعة واحد" in text for text in says(response))
    post("/voice/next?node=urgent_notice", params(call_sid))
    record(post, call_sid)
    _call, case = stored(app, call_sid)
    assert case is not None
    assert case.urgent


def follow_up(post: Post, call_sid: str, digits: str) -> TestResponse:
    return post("/voice/follow-up?node=follow_up", params(call_sid, Digits=digits))


def start_follow_up(post: Post, call_sid: str) -> None:
    walk(
        post,
        call_sid,
        [("language", "2"), ("notice", ""), ("confidentiality", "3"), ("complaint_type", "4")],
    )


def test_follow_up_reads_status(post: Post, app: Flask) -> None:
    filed = new_call_sid()
    walk(post, filed, ARABIC_HR_CP)
    record(post, filed)
    _call, case = stored(app, filed)
    assert case is not None

    asking = new_call_sid()
    start_follow_up(post, asking)
    response = follow_up(post, asking, case.reference)
    assert "Your complaint has been received and is waiting to be reviewed." in says(response)


def test_follow_up_checks_digit_before_lookup(post: Post) -> None:
    call_sid = new_call_sid()
    start_follow_up(post, call_sid)
    response = follow_up(post, call_sid, "1234567890")
    assert "The number you entered is not valid." in says(response)


def test_follow_up_unknown_reference(post: Post) -> None:
    call_sid = new_call_sid()
    start_follow_up(post, call_sid)
    response = follow_up(post, call_sid, "2612345674")
    assert "We found no complaint with this number." in says(response)


def test_follow_up_rate_limited_per_caller(post: Post) -> None:
    texts: list[str] = []
    for _ in range(3):
        call_sid = new_call_sid()
        walk(
            post,
            call_sid,
            [
                ("language", "2"),
                ("notice", ""),
                ("confidentiality", "2"),
                ("consent_callback", "2"),
                ("consent_sms", "2"),
                ("complaint_type", "4"),
            ],
        )
        for _ in range(3):
            texts += says(follow_up(post, call_sid, "1234567890"))
    assert "You have made too many attempts. Please try again in an hour." in texts


class _Always:
    def __init__(self, open_now: bool, real: Calendar) -> None:
        self.open_now = open_now
        self.description = real.description

    def is_open(self, _moment: datetime) -> bool:
        return self.open_now


@pytest.mark.parametrize(("open_now", "verb"), [(True, "Enqueue"), (False, "Redirect")])
def test_agent_depends_on_hours(post: Post, app: Flask, open_now: bool, verb: str) -> None:
    app.extensions["callcenter_calendar"] = _Always(open_now, app.extensions["callcenter_calendar"])
    call_sid = new_call_sid()
    response = walk(post, call_sid, [("language", "2"), ("notice", ""), ("confidentiality", "0")])
    root = ET.fromstring(response.data)
    assert root[-1].tag == "Redirect"
    assert (root.find("Enqueue") is not None) == open_now
    if not open_now:
        assert any("Sunday to Thursday" in text for text in says(response))
    assert verb in {element.tag for element in root}


def test_queue_wait_leaves_after_limit(post: Post, app: Flask, settings: Settings) -> None:
    app.extensions["callcenter_calendar"] = _Always(True, app.extensions["callcenter_calendar"])
    call_sid = new_call_sid()
    walk(post, call_sid, [("language", "2"), ("notice", ""), ("confidentiality", "0")])
    waiting = post(
        "/voice/queue-wait?node=agent", params(call_sid, QueuePosition="3", QueueTime="10")
    )
    leaving = post(
        "/voice/queue-wait?node=agent",
        params(call_sid, QueuePosition="1", QueueTime=str(settings.voice.max_queue_wait_seconds)),
    )
    assert "You are number 3 in line. Thank you for waiting." in says(waiting)
    assert ET.fromstring(leaving.data).find("Leave") is not None

    result = post("/voice/queue-result?node=agent", params(call_sid, QueueResult="leave"))
    assert "Sorry, all agents are busy." in says(result)
    gather = ET.fromstring(result.data).find("Gather")
    assert gather is not None
    assert gather.get("action", "").endswith("node=offer_record")


def test_edited_flow_reloads(post: Post, app: Flask, tmp_path: Path) -> None:
    from callcenter.calls import FlowHolder

    source = Path(__file__).resolve().parents[1] / "ivr_flows" / "complaints.toml"
    copy = tmp_path / "complaints.toml"
    copy.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    app.extensions["callcenter_flow"] = FlowHolder(str(copy))

    copy.write_text(
        copy.read_text(encoding="utf-8").replace(
            "For English, press 2.", "For English, press two."
        ),
        encoding="utf-8",
    )
    import os

    os.utime(copy, (1, 2_000_000_000))
    response = post("/voice/incoming", params(new_call_sid()))
    assert any("press two" in text for text in says(response))


def test_invalid_edit_keeps_previous_flow(post: Post, app: Flask, tmp_path: Path) -> None:
    from callcenter.calls import FlowHolder

    source = Path(__file__).resolve().parents[1] / "ivr_flows" / "complaints.toml"
    copy = tmp_path / "complaints.toml"
    copy.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    app.extensions["callcenter_flow"] = FlowHolder(str(copy))

    copy.write_text(
        copy.read_text(encoding="utf-8").replace('next = "rights_group"', 'next = "nowhere"'),
        encoding="utf-8",
    )
    import os

    os.utime(copy, (1, 2_000_000_000))
    response = post("/voice/incoming", params(new_call_sid()))
    assert response.status_code == 200
    assert any("For English, press 2." in text for text in says(response))
