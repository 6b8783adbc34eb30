"""Tests of the Twilio Voice emulator against a scripted Flask app over real HTTP."""

from __future__ import annotations

import io
import struct
import wave
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
import requests
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient

from callcenter.emulator import (
    APPLICATION_ERROR_TEXT,
    CallerSpeech,
    EmulatorError,
    Heard,
    TwilioEmulator,
)
from callcenter.emulator import call as call_module
from callcenter.emulator.media import wav_duration_seconds
from callcenter.twilio_rest import RebasedHttpClient, make_rest_client
from tests.fixtures.twiml_app import TwimlApp

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "emulator-test-token"

STANDARD_PARAMS = {
    "AccountSid",
    "ApiVersion",
    "CallSid",
    "CallStatus",
    "Called",
    "CalledCity",
    "CalledCountry",
    "CalledState",
    "CalledZip",
    "Caller",
    "CallerCity",
    "CallerCountry",
    "CallerState",
    "CallerZip",
    "Direction",
    "From",
    "FromCity",
    "FromCountry",
    "FromState",
    "FromZip",
    "To",
    "ToCity",
    "ToCountry",
    "ToState",
    "ToZip",
}

StartEmulator = Callable[..., TwilioEmulator]


def twiml(*verbs: str) -> str:
    return "<Response>" + "".join(verbs) + "</Response>"


def wav_bytes(seconds: float, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(b"\x01\x00" * int(rate * seconds))

    return buffer.getvalue()


def float_wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    """Build a 32-bit float WAV by hand, a format the `wave` module cannot read."""
    data = struct.pack("<f", 0.0) * int(rate * seconds)
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data))
    body = b"WAVE" + chunks + data

    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.fixture
def app() -> Iterator[TwimlApp]:
    with TwimlApp(AUTH_TOKEN) as running:
        yield running


@pytest.fixture
def start_emulator(app: TwimlApp) -> Iterator[StartEmulator]:
    started: list[TwilioEmulator] = []

    def start(**overrides: Any) -> TwilioEmulator:
        settings: dict[str, Any] = {
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "voice_url": app.url("/voice"),
            "status_callback_delay": 0.05,
        }
        settings.update(overrides)
        emulator = TwilioEmulator(**settings)
        emulator.start()
        started.append(emulator)
        return emulator

    yield start

    for emulator in started:
        emulator.stop()


@pytest.fixture
def emulator(start_emulator: StartEmulator) -> TwilioEmulator:
    return start_emulator()


def script_full_call(app: TwimlApp) -> None:
    """Script a call with a menu, a recording with a status callback and a hang-up."""
    app.reply(
        "/voice",
        twiml(
            '<Say language="ar-JO">مرحبا</Say>',
            '<Gather numDigits="1" action="/menu?lang=ar&amp;step=1">',
            '<Say language="en-US">Press 1</Say></Gather>',
        ),
    )
    app.reply(
        "/menu",
        twiml('<Record action="/done" recordingStatusCallback="/recording-status?case=7"/>'),
    )
    app.reply("/done", twiml("<Hangup/>"))
    app.reply("/recording-status", "", status=204)
    app.reply("/call-status", "", status=204)


# Signatures and standard parameters


def test_signatures_valid_everywhere(app: TwimlApp, start_emulator: StartEmulator) -> None:
    script_full_call(app)
    emulator = start_emulator(status_callback_url=app.url("/call-status?source=test"))

    emulator.call(digits=["1"], recordings=[wav_bytes(1)])

    assert all(item.signature_valid for item in app.received())


def test_signatures_cover_every_request(app: TwimlApp, start_emulator: StartEmulator) -> None:
    script_full_call(app)
    emulator = start_emulator(status_callback_url=app.url("/call-status?source=test"))

    emulator.call(digits=["1"], recordings=[wav_bytes(1)])

    paths = sorted(item.path for item in app.received())
    assert paths == ["/call-status", "/done", "/menu", "/recording-status", "/voice"]


def test_wrong_token_fails_validation(app: TwimlApp, start_emulator: StartEmulator) -> None:
    app.reply("/voice", twiml("<Hangup/>"))
    emulator = start_emulator(auth_token="another-token")

    emulator.call()

    assert app.received("/voice")[0].signature_valid is False


def test_standard_params_on_first_request(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml("<Hangup/>"))

    emulator.call()

    assert set(app.received("/voice")[0].params) >= STANDARD_PARAMS


def test_standard_param_values(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml("<Hangup/>"))

    emulator.call()

    params = app.received("/voice")[0].params
    expected = {
        "AccountSid": ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
        "CallStatus": "in-progress",
        "Direction": "inbound",
        "From": "+962790000001",
        "Caller": "+962790000001",
        "To": "+96265008080",
        "Called": "+96265008080",
    }
    assert {key: params[key] for key in expected} == expected


def test_call_sid_constant(app: TwimlApp, start_emulator: StartEmulator) -> None:
    script_full_call(app)
    emulator = start_emulator(status_callback_url=app.url("/call-status"))

    result = emulator.call(digits=["1"], recordings=[wav_bytes(1)])

    assert {item.params["CallSid"] for item in app.received()} == {result.call_sid}


def test_call_sid_format(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml("<Hangup/>"))

    result = emulator.call()

    assert result.call_sid.startswith("CA")
    assert len(result.call_sid) == 34


def test_action_params_repeat_standard_set(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Gather numDigits="1" action="/menu"/>'))
    app.reply("/menu", twiml("<Hangup/>"))

    emulator.call(digits=["1"])

    assert set(app.received("/menu")[0].params) >= STANDARD_PARAMS


# Gather


def test_gather_num_digits(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Gather numDigits="2" action="/menu"/>'))
    app.reply("/menu", twiml("<Hangup/>"))

    emulator.call(digits=["123"])

    params = app.received("/menu")[0].params
    assert params["Digits"] == "12"
    assert params["FinishedOnKey"] == ""


def test_gather_finish_on_key(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Gather action="/menu"/>'))
    app.reply("/menu", twiml("<Hangup/>"))

    emulator.call(digits=["12#"])

    params = app.received("/menu")[0].params
    assert params["Digits"] == "12"
    assert params["FinishedOnKey"] == "#"


def test_gather_custom_finish_key(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Gather finishOnKey="*" action="/menu"/>'))
    app.reply("/menu", twiml("<Hangup/>"))

    emulator.call(digits=["45*6"])

    params = app.received("/menu")[0].params
    assert params["Digits"] == "45"
    assert params["FinishedOnKey"] == "*"


def test_gather_timeout_submits_partial(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Gather numDigits="3" action="/menu"/>'))
    app.reply("/menu", twiml("<Hangup/>"))

    emulator.call(digits=["7"])

    params = app.received("/menu")[0].params
    assert params["Digits"] == "7"
    assert params["FinishedOnKey"] == ""


def test_gather_silence_falls_through(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply(
        "/voice",
        twiml('<Gather numDigits="1" action="/menu"/>', "<Say>No input</Say>"),
    )
    app.reply("/menu", twiml("<Hangup/>"))

    result = emulator.call(digits=[None])

    assert app.received("/menu") == []
    assert result.said() == [Heard("Say", text="No input")]


def test_gather_digits_run_out(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply(
        "/voice",
        twiml(
            '<Gather numDigits="1" action="/menu"/>', '<Redirect method="POST">/again</Redirect>'
        ),
    )
    app.reply("/again", twiml('<Gather numDigits="1" action="/menu"/>'))
    app.reply("/menu", twiml("<Hangup/>"))

    emulator.call(digits=[None])

    assert app.received("/menu") == []
    assert len(app.received("/again")) == 1


def test_gather_lone_finish_key_ignored(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Gather action="/menu"/>'))
    app.reply("/menu", twiml("<Hangup/>"))

    emulator.call(digits=["#"])

    assert app.received("/menu") == []


def test_action_on_empty_result(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Gather actionOnEmptyResult="true" action="/menu"/>'))
    app.reply("/menu", twiml("<Hangup/>"))

    emulator.call(digits=[None])

    params = app.received("/menu")[0].params
    assert "Digits" not in params
    assert params["FinishedOnKey"] == ""


def test_empty_result_digits_option(app: TwimlApp, start_emulator: StartEmulator) -> None:
    app.reply("/voice", twiml('<Gather actionOnEmptyResult="true" action="/menu"/>'))
    app.reply("/menu", twiml("<Hangup/>"))
    emulator = start_emulator(empty_gather_sends_digits=True)

    emulator.call(digits=[None])

    assert app.received("/menu")[0].params["Digits"] == ""


def test_gather_get_appends_query(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Gather numDigits="1" method="GET" action="/menu?lang=ar"/>'))
    app.reply("/menu", twiml("<Hangup/>"))

    emulator.call(digits=["5"])

    received = app.received("/menu")[0]
    assert received.method == "GET"
    assert received.query_string.startswith("lang=ar&")
    assert received.params["Digits"] == "5"
    assert received.signature_valid


def test_speech_gather_hears_silence(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Gather input="speech" action="/menu"/>'))
    app.reply("/menu", twiml("<Hangup/>"))

    emulator.call(digits=["1"])

    assert app.received("/menu") == []


def test_gather_ignores_record_child(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Gather numDigits="1" action="/menu"><Record/></Gather>'))
    app.reply("/menu", twiml("<Hangup/>"))

    result = emulator.call(digits=["1"])

    assert result.errors == ["12200"]
    assert "Record" not in [item.verb for item in result.heard]


# Record


def test_record_action_params(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Record action="/done"/>'))
    app.reply("/done", twiml("<Hangup/>"))

    result = emulator.call(recordings=[wav_bytes(2)])

    params = app.received("/done")[0].params
    sid = result.recording_sids[0]
    assert params["RecordingUrl"] == emulator.recording_url(sid)
    assert params["RecordingDuration"] == "2"
    assert "Digits" not in params


def test_recording_url_shape(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Record action="/done"/>'))
    app.reply("/done", twiml("<Hangup/>"))

    result = emulator.call(recordings=[wav_bytes(1)])

    sid = result.recording_sids[0]
    expected = f"{emulator.api_base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/{sid}"
    assert app.received("/done")[0].params["RecordingUrl"] == expected
    assert sid.startswith("RE")
    assert len(sid) == 34


def test_record_finish_key(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Record finishOnKey="#" action="/done"/>'))
    app.reply("/done", twiml("<Hangup/>"))

    emulator.call(recordings=[CallerSpeech(wav_bytes(1), then="#")])

    assert app.received("/done")[0].params["Digits"] == "#"


def test_record_unlisted_key_ignored(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Record finishOnKey="#" action="/done"/>'))
    app.reply("/done", twiml("<Hangup/>"))

    emulator.call(recordings=[CallerSpeech(wav_bytes(1), then="5")])

    assert "Digits" not in app.received("/done")[0].params


def test_record_max_length_caps(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Record maxLength="2" action="/done"/>'))
    app.reply("/done", twiml("<Hangup/>"))

    emulator.call(recordings=[wav_bytes(4)])

    assert app.received("/done")[0].params["RecordingDuration"] == "2"


def test_status_callback_after_action(app: TwimlApp, start_emulator: StartEmulator) -> None:
    script_full_call(app)
    emulator = start_emulator(status_callback_delay=0.3)

    emulator.call(digits=["1"], recordings=[wav_bytes(1)])

    action_at = app.received("/done")[0].received_at
    callback_at = app.received("/recording-status")[0].received_at
    assert callback_at - action_at >= 0.25


def test_status_callback_params(app: TwimlApp, emulator: TwilioEmulator) -> None:
    script_full_call(app)

    result = emulator.call(digits=["1"], recordings=[wav_bytes(3)])

    sid = result.recording_sids[0]
    params = app.received("/recording-status")[0].params
    expected = {
        "AccountSid": ACCOUNT_SID,
        "CallSid": result.call_sid,
        "RecordingSid": sid,
        "RecordingUrl": emulator.recording_url(sid),
        "RecordingStatus": "completed",
        "RecordingDuration": "3",
        "RecordingChannels": "1",
        "RecordingSource": "RecordVerb",
    }
    assert {key: params.get(key) for key in expected} == expected


def test_status_callback_keeps_query(app: TwimlApp, emulator: TwilioEmulator) -> None:
    script_full_call(app)

    emulator.call(digits=["1"], recordings=[wav_bytes(1)])

    assert app.received("/recording-status")[0].query_string == "case=7"


def test_relative_status_callback(app: TwimlApp, start_emulator: StartEmulator) -> None:
    app.reply("/ivr/voice", twiml('<Record action="done" recordingStatusCallback="status"/>'))
    app.reply("/ivr/done", twiml("<Hangup/>"))
    app.reply("/ivr/status", "", status=204)
    emulator = start_emulator(voice_url=app.url("/ivr/voice"))

    emulator.call(recordings=[wav_bytes(1)])

    assert len(app.received("/ivr/status")) == 1


def test_hangup_during_record(app: TwimlApp, start_emulator: StartEmulator) -> None:
    app.reply("/voice", twiml('<Record action="/done"/>'))
    app.reply("/done", twiml("<Say>Never heard</Say>", '<Redirect method="POST">/next</Redirect>'))
    app.reply("/call-status", "", status=204)
    emulator = start_emulator(status_callback_url=app.url("/call-status"))

    result = emulator.call(recordings=["hangup"])

    assert app.received("/done")[0].params["Digits"] == "hangup"
    assert result.said() == []
    assert app.received("/next") == []
    assert app.received("/call-status")[0].params["CallStatus"] == "completed"


def test_speech_then_hangup(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Record action="/done" recordingStatusCallback="/rs"/>'))
    app.reply("/done", twiml())
    app.reply("/rs", "", status=204)

    result = emulator.call(recordings=[CallerSpeech(wav_bytes(2), then="hangup")])

    assert app.received("/done")[0].params["RecordingDuration"] == "2"
    assert app.received("/rs")[0].params["RecordingSid"] == result.recording_sids[0]


def test_empty_recording_skips_action(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Record action="/done"/>', "<Say>No recording</Say>"))
    app.reply("/done", twiml("<Hangup/>"))

    result = emulator.call(recordings=[None])

    assert app.received("/done") == []
    assert result.said() == [Heard("Say", text="No recording")]
    assert result.recording_sids == []


def test_empty_recording_action_option(app: TwimlApp, start_emulator: StartEmulator) -> None:
    app.reply("/voice", twiml('<Record action="/done"/>'))
    app.reply("/done", twiml("<Hangup/>"))
    emulator = start_emulator(skip_action_on_empty_recording=False)

    emulator.call(recordings=[None])

    assert app.received("/done")[0].params["RecordingDuration"] == "0"


def test_record_without_action_rerequests(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml("<Record/>"))

    emulator.call(recordings=[wav_bytes(1)], hang_up_after=2)

    second = app.received("/voice")[1]
    assert second.params["RecordingDuration"] == "1"


# URL resolution and Redirect


def test_relative_action_resolves(app: TwimlApp, start_emulator: StartEmulator) -> None:
    app.reply("/ivr/voice", twiml('<Gather numDigits="1" action="menu"/>'))
    app.reply("/ivr/menu", twiml('<Gather numDigits="1" action="../top"/>'))
    app.reply("/top", twiml("<Hangup/>"))
    emulator = start_emulator(voice_url=app.url("/ivr/voice"))

    emulator.call(digits=["1", "2"])

    assert app.received("/top")[0].params["Digits"] == "2"


def test_missing_action_uses_document(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Gather numDigits="1"/>'))

    emulator.call(digits=["4", None])

    requests_to_voice = app.received("/voice")
    assert len(requests_to_voice) == 2
    assert requests_to_voice[1].params["Digits"] == "4"


def test_redirect_default_post(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml("<Redirect>next?step=2</Redirect>", "<Say>Unreachable</Say>"))
    app.reply("/next", twiml("<Hangup/>"))

    result = emulator.call()

    received = app.received("/next")[0]
    assert received.method == "POST"
    assert received.query_string == "step=2"
    assert result.said() == []


def test_redirect_get(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Redirect method="GET">/next</Redirect>'))
    app.reply("/next", twiml("<Hangup/>"))

    emulator.call()

    received = app.received("/next")[0]
    assert received.method == "GET"
    assert received.params["CallStatus"] == "in-progress"
    assert received.signature_valid


def test_redirect_heard_absolute(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml("<Redirect>/next#rc=0</Redirect>"))
    app.reply("/next", twiml("<Hangup/>"))

    result = emulator.call()

    assert result.heard[0] == Heard("Redirect", url=app.url("/next"))


def test_fragment_not_sent(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml("<Redirect>/next#rc=0&amp;rt=2000</Redirect>"))
    app.reply("/next", twiml("<Hangup/>"))

    result = emulator.call()

    assert all("#" not in entry.url for entry in result.requests)
    assert app.received("/next")[0].signature_valid


def test_end_of_document_hangs_up(app: TwimlApp, start_emulator: StartEmulator) -> None:
    app.reply("/voice", twiml("<Say>Hello</Say>"))
    app.reply("/call-status", "", status=204)
    emulator = start_emulator(status_callback_url=app.url("/call-status"))

    result = emulator.call()

    assert result.status == "completed"
    assert app.received("/call-status")[0].params["CallStatus"] == "completed"


def test_redirect_loop_raises(
    app: TwimlApp, emulator: TwilioEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.reply("/voice", twiml("<Redirect/>"))
    monkeypatch.setattr(call_module, "MAX_WEBHOOK_REQUESTS", 5)

    with pytest.raises(EmulatorError, match="5 TwiML requests"):
        emulator.call()


# What the caller hears


def test_heard_order(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply(
        "/voice",
        twiml(
            '<Say voice="Polly.Zeina" language="arb">أهلا</Say>',
            '<Say voice="Polly.Joanna" language="en-US">Welcome</Say>',
            '<Pause length="2"/>',
            "<Play>/prompt.wav</Play>",
            "<Hangup/>",
        ),
    )
    app.reply("/prompt.wav", wav_bytes(0.1), content_type="audio/x-wav")

    result = emulator.call()

    assert result.heard == [
        Heard("Say", text="أهلا", voice="Polly.Zeina", language="arb"),
        Heard("Say", text="Welcome", voice="Polly.Joanna", language="en-US"),
        Heard("Pause", text="2"),
        Heard("Play", url=app.url("/prompt.wav")),
        Heard("Hangup"),
    ]


def test_said_filters_language(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply(
        "/voice",
        twiml('<Say language="ar-JO">مرحبا</Say>', '<Say language="en-US">Hello</Say>'),
    )

    result = emulator.call()

    assert [item.text for item in result.said("ar")] == ["مرحبا"]


def test_say_loop_repeats(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Say loop="3">Again</Say>'))

    result = emulator.call()

    assert len(result.said()) == 3


def test_play_fetched_once_unsigned(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply(
        "/voice",
        twiml('<Play loop="2">/prompt.wav</Play>', "<Play>prompt.wav</Play>"),
    )
    app.reply("/prompt.wav", wav_bytes(0.1), content_type="audio/x-wav")

    result = emulator.call()

    fetches = app.received("/prompt.wav")
    assert len(fetches) == 1
    assert fetches[0].method == "GET"
    assert fetches[0].signature is None
    assert fetches[0].params == {}
    assert len([item for item in result.heard if item.verb == "Play"]) == 3


def test_play_not_audio_error(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml("<Play>/prompt.txt</Play>"))
    app.reply("/prompt.txt", "text", content_type="text/plain")

    result = emulator.call()

    assert result.errors == ["12300"]


def test_play_missing_error(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml("<Play>/missing.wav</Play>"))

    result = emulator.call()

    assert result.errors == ["11200"]


def test_unsupported_verb_skipped(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml("<Dial>+962790000002</Dial>", "<Say>After</Say>"))

    result = emulator.call()

    assert result.errors == ["12200"]
    assert result.said() == [Heard("Say", text="After")]


def test_enqueue_heard_and_action(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml('<Enqueue action="/left">officers</Enqueue>'))
    app.reply("/left", twiml("<Say>Never heard</Say>"))

    result = emulator.call()

    assert result.heard == [Heard("Enqueue", text="officers")]
    assert app.received("/left")[0].params["QueueResult"] == "hangup"


# Errors and fallback


def test_json_reply_is_12300(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", '{"say": "hello"}', content_type="application/json")

    result = emulator.call()

    assert result.errors == ["12300"]


def test_fallback_gets_error_code(app: TwimlApp, start_emulator: StartEmulator) -> None:
    app.reply("/voice", '{"say": "hello"}', content_type="application/json")
    app.reply("/fallback", twiml('<Say language="en-US">Sorry</Say>'))
    emulator = start_emulator(fallback_url=app.url("/fallback"))

    result = emulator.call()

    params = app.received("/fallback")[0].params
    assert params["ErrorCode"] == "12300"
    assert params["ErrorUrl"] == app.url("/voice")
    assert result.said() == [Heard("Say", text="Sorry", language="en-US")]
    assert result.status == "completed"


def test_fallback_signed(app: TwimlApp, start_emulator: StartEmulator) -> None:
    app.reply("/voice", "", status=500)
    app.reply("/fallback", twiml("<Hangup/>"))
    emulator = start_emulator(fallback_url=app.url("/fallback"))

    emulator.call()

    assert app.received("/fallback")[0].signature_valid


def test_no_fallback_application_error(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", "<html>login</html>", content_type="text/html")

    result = emulator.call()

    assert result.heard == [Heard("Say", text=APPLICATION_ERROR_TEXT, language="en-US")]
    assert result.status == "failed"


def test_failed_fallback_application_error(app: TwimlApp, start_emulator: StartEmulator) -> None:
    app.reply("/voice", "", status=500)
    app.reply("/fallback", "not xml", content_type="text/xml")
    emulator = start_emulator(fallback_url=app.url("/fallback"))

    result = emulator.call()

    assert result.errors == ["11200", "12100"]
    assert result.status == "failed"


def test_server_error_is_11200(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", "boom", status=500, content_type="text/xml")

    result = emulator.call()

    assert result.errors == ["11200"]


def test_server_error_not_retried(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", "boom", status=500, content_type="text/xml")

    emulator.call()

    assert len(app.received("/voice")) == 1


def test_bad_xml_is_12100(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", "<Response><Say>unclosed</Response>")

    result = emulator.call()

    assert result.errors == ["12100"]


def test_wrong_root_is_12100(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", "<Reply><Say>Hello</Say></Reply>")

    result = emulator.call()

    assert result.errors == ["12100"]


def test_application_xml_accepted(app: TwimlApp, emulator: TwilioEmulator) -> None:
    app.reply("/voice", twiml("<Say>Hi</Say>"), content_type="application/xml; charset=utf-8")

    result = emulator.call()

    assert result.errors == []


def test_timeout_retried_then_11200(app: TwimlApp, start_emulator: StartEmulator) -> None:
    app.reply("/voice", twiml("<Hangup/>"), delay=1.0)
    emulator = start_emulator(webhook_timeout=0.3, webhook_retries=1)

    result = emulator.call()

    assert result.errors == ["11200"]
    assert [entry.status_code for entry in result.requests] == [None, None]


def test_fragment_sets_retry_count(app: TwimlApp, start_emulator: StartEmulator) -> None:
    app.reply("/voice", twiml("<Hangup/>"), delay=1.0)
    emulator = start_emulator(voice_url=app.url("/voice#rc=0&rt=300"), webhook_retries=3)

    result = emulator.call()

    assert len(result.requests) == 1


def test_connection_refused_11200(start_emulator: StartEmulator) -> None:
    # A port that was free a moment ago: nothing listens there any more.
    with TwimlApp(AUTH_TOKEN) as gone:
        closed_url = gone.url("/voice")
    emulator = start_emulator(voice_url=closed_url, webhook_retries=2)

    result = emulator.call()

    assert result.errors == ["11200"]
    assert len(result.requests) == 3


# Call status callback


def test_call_status_params(app: TwimlApp, start_emulator: StartEmulator) -> None:
    app.reply("/voice", twiml('<Pause length="3"/>', "<Hangup/>"))
    app.reply("/call-status", "", status=204)
    emulator = start_emulator(status_callback_url=app.url("/call-status?site=amman"))

    emulator.call()

    received = app.received("/call-status")[0]
    assert received.params["CallStatus"] == "completed"
    assert int(received.params["CallDuration"]) >= 3
    assert parsedate_to_datetime(received.params["Timestamp"]).tzinfo is not None
    assert received.params["CallbackSource"] == "call-progress-events"
    assert received.params["SequenceNumber"] == "0"
    assert received.signature_valid


def test_call_status_failed(app: TwimlApp, start_emulator: StartEmulator) -> None:
    app.reply("/voice", "", status=500)
    app.reply("/call-status", "", status=204)
    emulator = start_emulator(status_callback_url=app.url("/call-status"))

    emulator.call()

    assert app.received("/call-status")[0].params["CallStatus"] == "failed"


def test_call_status_error_15003(app: TwimlApp, start_emulator: StartEmulator) -> None:
    app.reply("/voice", twiml("<Hangup/>"))
    emulator = start_emulator(status_callback_url=app.url("/no-such-path"))

    result = emulator.call()

    assert result.errors == ["15003"]


def test_hang_up_after_first(app: TwimlApp, start_emulator: StartEmulator) -> None:
    app.reply("/voice", twiml('<Redirect method="POST">/next</Redirect>'))
    app.reply("/next", twiml("<Hangup/>"))
    app.reply("/call-status", "", status=204)
    emulator = start_emulator(status_callback_url=app.url("/call-status"))

    result = emulator.call(hang_up_after=1)

    assert app.received("/next") == []
    assert result.heard == []
    assert app.received("/call-status")[0].params["CallStatus"] == "completed"


# Input checks


def test_invalid_digits_rejected(emulator: TwilioEmulator) -> None:
    with pytest.raises(ValueError, match="invalid digits"):
        emulator.call(digits=["1a"])


def test_invalid_recording_rejected(emulator: TwilioEmulator) -> None:
    with pytest.raises(ValueError, match="invalid recording item"):
        emulator.call(recordings=["complaint.wav"])


def test_call_before_start_rejected(app: TwimlApp) -> None:
    emulator = TwilioEmulator(
        account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, voice_url=app.url("/voice")
    )

    with pytest.raises(RuntimeError, match="start"):
        emulator.call()


def test_invalid_account_sid_rejected() -> None:
    with pytest.raises(ValueError, match="account_sid"):
        TwilioEmulator(account_sid="AC123", auth_token=AUTH_TOKEN, voice_url="http://127.0.0.1/")


def test_loopback_check() -> None:
    assert call_module._is_loopback("http://127.0.0.1:5000/voice")
    assert call_module._is_loopback("http://[::1]:5000/voice")
    assert call_module._is_loopback("http://localhost/voice")
    assert not call_module._is_loopback("https://api.twilio.com/2010-04-01")
    assert not call_module._is_loopback("http://192.0.2.10/voice")


# Media server


def media_url(emulator: TwilioEmulator, sid: str, extension: str = "") -> str:
    return emulator.recording_url(sid) + extension


AUTH = (ACCOUNT_SID, AUTH_TOKEN)


def test_media_needs_auth(emulator: TwilioEmulator) -> None:
    sid = emulator.put_recording(wav_bytes(1))

    response = requests.get(media_url(emulator, sid), timeout=5)

    assert response.status_code == 401
    assert response.json()["code"] == 20003


def test_media_wrong_token_401(emulator: TwilioEmulator) -> None:
    sid = emulator.put_recording(wav_bytes(1))

    response = requests.get(media_url(emulator, sid), auth=(ACCOUNT_SID, "wrong"), timeout=5)

    assert response.status_code == 401


def test_media_unauthorized_not_counted(emulator: TwilioEmulator) -> None:
    sid = emulator.put_recording(wav_bytes(1))

    requests.get(media_url(emulator, sid), timeout=5)

    assert emulator.recording_fetch_count(sid) == 0


def test_media_served_as_wav(emulator: TwilioEmulator) -> None:
    audio = wav_bytes(1)
    sid = emulator.put_recording(audio)

    response = requests.get(media_url(emulator, sid), auth=AUTH, timeout=5)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "audio/x-wav"
    assert response.content == audio


def test_media_wav_extension(emulator: TwilioEmulator) -> None:
    audio = wav_bytes(1)
    sid = emulator.put_recording(audio)

    response = requests.get(media_url(emulator, sid, ".wav"), auth=AUTH, timeout=5)

    assert response.content == audio


def test_media_mp3_unsupported(emulator: TwilioEmulator) -> None:
    sid = emulator.put_recording(wav_bytes(1))

    response = requests.get(media_url(emulator, sid, ".mp3"), auth=AUTH, timeout=5)

    assert response.status_code == 415


def test_media_metadata_json(emulator: TwilioEmulator) -> None:
    sid = emulator.put_recording(wav_bytes(2), call_sid="CA" + "1" * 32)

    response = requests.get(media_url(emulator, sid, ".json"), auth=AUTH, timeout=5)

    body = response.json()
    assert body["sid"] == sid
    assert body["duration"] == "2"
    assert body["call_sid"] == "CA" + "1" * 32
    assert body["status"] == "completed"
    assert body["channels"] == 1
    assert body["source"] == "RecordVerb"
    assert body["media_url"] == emulator.recording_url(sid)


def test_media_not_ready_then_served(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(recording_not_ready_responses=2)
    sid = emulator.put_recording(wav_bytes(1))

    statuses = [
        requests.get(media_url(emulator, sid), auth=AUTH, timeout=5).status_code for _ in range(3)
    ]

    assert statuses == [404, 404, 200]
    assert emulator.recording_fetch_count(sid) == 3


def test_metadata_processing_until_ready(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(recording_not_ready_responses=1)
    sid = emulator.put_recording(wav_bytes(1))

    response = requests.get(media_url(emulator, sid, ".json"), auth=AUTH, timeout=5)

    assert response.json()["status"] == "processing"


def test_call_recording_served(app: TwimlApp, emulator: TwilioEmulator) -> None:
    audio = wav_bytes(1)
    app.reply("/voice", twiml('<Record action="/done"/>'))
    app.reply("/done", twiml("<Hangup/>"))

    emulator.call(recordings=[audio])

    recording_url = app.received("/done")[0].params["RecordingUrl"]
    assert requests.get(recording_url, auth=AUTH, timeout=5).content == audio


def test_delete_then_gone(emulator: TwilioEmulator) -> None:
    sid = emulator.put_recording(wav_bytes(1))

    deleted = requests.delete(media_url(emulator, sid, ".json"), auth=AUTH, timeout=5)
    after = requests.get(media_url(emulator, sid), auth=AUTH, timeout=5)

    assert deleted.status_code == 204
    assert after.status_code == 404
    assert after.json()["code"] == 20404
    assert emulator.recording_deleted(sid)


def test_delete_needs_auth(emulator: TwilioEmulator) -> None:
    sid = emulator.put_recording(wav_bytes(1))

    response = requests.delete(media_url(emulator, sid, ".json"), timeout=5)

    assert response.status_code == 401
    assert not emulator.recording_deleted(sid)


def test_unknown_recording_404(emulator: TwilioEmulator) -> None:
    response = requests.get(media_url(emulator, "RE" + "f" * 32), auth=AUTH, timeout=5)

    assert response.status_code == 404
    assert response.json()["code"] == 20404


def test_other_account_404(emulator: TwilioEmulator) -> None:
    sid = emulator.put_recording(wav_bytes(1))
    url = media_url(emulator, sid).replace(ACCOUNT_SID, "AC" + "9" * 32)

    response = requests.get(url, auth=AUTH, timeout=5)

    assert response.status_code == 404


def test_unknown_sid_raises(emulator: TwilioEmulator) -> None:
    with pytest.raises(KeyError):
        emulator.recording_deleted("RE" + "0" * 32)


# REST client factory


def test_rest_client_deletes(emulator: TwilioEmulator) -> None:
    sid = emulator.put_recording(wav_bytes(1))
    client = make_rest_client(ACCOUNT_SID, AUTH_TOKEN, api_base_url=emulator.api_base_url)

    assert client.recordings(sid).delete() is True
    assert emulator.recording_deleted(sid)


def test_rest_client_fetches(emulator: TwilioEmulator) -> None:
    sid = emulator.put_recording(wav_bytes(2))
    client = make_rest_client(ACCOUNT_SID, AUTH_TOKEN, api_base_url=emulator.api_base_url)

    recording = client.recordings(sid).fetch()

    assert recording.sid == sid
    assert recording.duration == "2"


def test_rest_client_delete_twice(emulator: TwilioEmulator) -> None:
    sid = emulator.put_recording(wav_bytes(1))
    client = make_rest_client(ACCOUNT_SID, AUTH_TOKEN, api_base_url=emulator.api_base_url)
    client.recordings(sid).delete()

    with pytest.raises(TwilioRestException) as raised:
        client.recordings(sid).delete()

    assert raised.value.code == 20404


def test_rest_client_wrong_token(emulator: TwilioEmulator) -> None:
    sid = emulator.put_recording(wav_bytes(1))
    client = make_rest_client(ACCOUNT_SID, "wrong", api_base_url=emulator.api_base_url)

    with pytest.raises(TwilioRestException) as raised:
        client.recordings(sid).delete()

    assert raised.value.status == 401


def test_rebase_keeps_path_and_query() -> None:
    client = RebasedHttpClient("http://127.0.0.1:8080/twilio", timeout=5.0)

    rebased = client.rebase("https://api.dublin.ie1.twilio.com/2010-04-01/Calls.json?Page=2")

    assert rebased == "http://127.0.0.1:8080/twilio/2010-04-01/Calls.json?Page=2"


def test_default_client_not_rebased() -> None:
    client = make_rest_client(ACCOUNT_SID, AUTH_TOKEN)

    assert type(client.http_client) is TwilioHttpClient
    assert client.http_client.timeout == 30.0


def test_invalid_base_url_rejected() -> None:
    with pytest.raises(ValueError, match="api_base_url"):
        make_rest_client(ACCOUNT_SID, AUTH_TOKEN, api_base_url="127.0.0.1:8080")


# WAV duration


def test_duration_pcm_wav() -> None:
    assert wav_duration_seconds(wav_bytes(1.5, rate=16000)) == pytest.approx(1.5)


def test_duration_float_wav() -> None:
    assert wav_duration_seconds(float_wav_bytes(2.0)) == pytest.approx(2.0)


def test_duration_raw_bytes_estimate() -> None:
    assert wav_duration_seconds(b"\x00" * 32000) == pytest.approx(2.0)
