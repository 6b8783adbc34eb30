"""A local emulator of Twilio Voice for inbound calls, for tests and `simulate-call`.

`TwilioEmulator` places scripted calls against a running web app over real HTTP: it
sends signed webhooks, executes the TwiML it gets back, and serves the recordings
through a stand-in for the REST API on 127.0.0.1. It only ever sends requests to
loopback addresses.

    with TwilioEmulator(account_sid=..., auth_token=..., voice_url=...) as emulator:
        result = emulator.call(digits=["1"], recordings=[wav_bytes])
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from types import TracebackType
from urllib.parse import urlsplit

from callcenter.emulator.call import (
    APPLICATION_ERROR_TEXT,
    CallerSpeech,
    CallResult,
    CallRun,
    CallSettings,
    EmulatorError,
    Heard,
    RequestLog,
)
from callcenter.emulator.media import (
    API_VERSION,
    MediaServer,
    RecordingStore,
    wav_duration_seconds,
    whole_seconds,
)

__all__ = [
    "APPLICATION_ERROR_TEXT",
    "CallResult",
    "CallerSpeech",
    "EmulatorError",
    "Heard",
    "RequestLog",
    "TwilioEmulator",
]

logger = logging.getLogger(__name__)

_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")


class TwilioEmulator:
    """One emulated Twilio account with one phone number whose webhooks point at an app.

    `recording_not_ready_responses` is how many media GETs of each recording return 404
    before the audio is served. `status_callback_delay` is the wait in seconds between a
    `<Record>` action request and its recordingStatusCallback. `webhook_timeout` is the
    read timeout in seconds, and `webhook_retries` counts the retries after a connection
    failure or a timeout. `empty_gather_sends_digits` chooses between an empty and an
    absent `Digits` when `actionOnEmptyResult` fires without input. `media_port` fixes
    the REST and media server's port (0 picks a free one).
    """

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        voice_url: str,
        status_callback_url: str | None = None,
        fallback_url: str | None = None,
        caller: str = "+962790000001",
        called: str = "+96265008080",
        recording_not_ready_responses: int = 0,
        status_callback_delay: float = 0.2,
        webhook_timeout: float = 15.0,
        webhook_retries: int = 1,
        skip_action_on_empty_recording: bool = True,
        empty_gather_sends_digits: bool = False,
        media_port: int = 0,
    ) -> None:
        _check_settings(
            account_sid=account_sid,
            auth_token=auth_token,
            urls={
                "voice_url": voice_url,
                "status_callback_url": status_callback_url,
                "fallback_url": fallback_url,
            },
            counts={
                "recording_not_ready_responses": recording_not_ready_responses,
                "webhook_retries": webhook_retries,
            },
            status_callback_delay=status_callback_delay,
            webhook_timeout=webhook_timeout,
        )

        self._account_sid = account_sid
        self._auth_token = auth_token
        self._voice_url = voice_url
        self._status_callback_url = status_callback_url
        self._fallback_url = fallback_url
        self._caller = caller
        self._called = called
        self._recording_not_ready_responses = recording_not_ready_responses
        self._status_callback_delay = status_callback_delay
        self._webhook_timeout = webhook_timeout
        self._webhook_retries = webhook_retries
        self._skip_action_on_empty_recording = skip_action_on_empty_recording
        self._empty_gather_sends_digits = empty_gather_sends_digits

        self._store = RecordingStore()
        self._media = MediaServer(
            account_sid=account_sid, auth_token=auth_token, store=self._store, port=media_port
        )
        self._started = False

    def start(self) -> None:
        """Start the REST and media server on 127.0.0.1 and a free port."""
        self._media.start()
        self._started = True

    def stop(self) -> None:
        self._media.stop()
        self._started = False

    def __enter__(self) -> TwilioEmulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def api_base_url(self) -> str:
        """The origin of the emulated REST API, such as `http://127.0.0.1:41234`."""
        return self._media.base_url

    def call(
        self,
        *,
        digits: Sequence[str | None] = (),
        recordings: Sequence[bytes | str | CallerSpeech | None] = (),
        hang_up_after: int | None = None,
        wait_for_callbacks: float = 10.0,
    ) -> CallResult:
        """Place one inbound call and return what happened once it has ended.

        `digits` contains one item per `<Gather>`: the keys pressed, or None for silence.
        `recordings` contains one item per `<Record>`: WAV bytes the caller speaks before
        falling silent, "hangup" to hang up during the recording, a `CallerSpeech`, or
        None for an empty recording. Items that run out count as silence.
        `hang_up_after` makes the caller hang up once that many TwiML requests have been
        answered. The call waits up to `wait_for_callbacks` seconds for the recording
        status callbacks still in flight.

        Raises ValueError for invalid input and EmulatorError for TwiML that loops.
        """
        if not self._started:
            raise RuntimeError("the Twilio emulator is not running: call start() first")

        run = CallRun(
            self._settings(),
            self._store,
            digits=digits,
            recordings=recordings,
            hang_up_after=hang_up_after,
        )
        return run.run(wait_for_callbacks)

    def put_recording(
        self, audio: bytes, *, call_sid: str = "", not_ready_responses: int | None = None
    ) -> str:
        """Store a recording as if a call had made it and return its RecordingSid.

        `not_ready_responses` defaults to the emulator's `recording_not_ready_responses`.
        """
        if not_ready_responses is None:
            not_ready_responses = self._recording_not_ready_responses

        return self._store.add(
            call_sid=call_sid,
            audio=audio,
            duration=whole_seconds(wav_duration_seconds(audio)),
            not_ready_responses=not_ready_responses,
        )

    def recording_url(self, recording_sid: str) -> str:
        """Return the RecordingUrl of a recording, without a file extension."""
        account_path = f"/{API_VERSION}/Accounts/{self._account_sid}"
        return f"{self.api_base_url}{account_path}/Recordings/{recording_sid}"

    def recording_deleted(self, recording_sid: str) -> bool:
        """Return whether the recording was deleted; raise KeyError for an unknown SID."""
        return self._store.is_deleted(recording_sid)

    def recording_fetch_count(self, recording_sid: str) -> int:
        """Return how many authenticated media GETs the recording received, 404s included."""
        return self._store.fetch_count(recording_sid)

    def _settings(self) -> CallSettings:
        return CallSettings(
            account_sid=self._account_sid,
            auth_token=self._auth_token,
            voice_url=self._voice_url,
            status_callback_url=self._status_callback_url,
            fallback_url=self._fallback_url,
            caller=self._caller,
            called=self._called,
            api_base_url=self.api_base_url,
            recording_not_ready_responses=self._recording_not_ready_responses,
            status_callback_delay=self._status_callback_delay,
            webhook_timeout=self._webhook_timeout,
            webhook_retries=self._webhook_retries,
            skip_action_on_empty_recording=self._skip_action_on_empty_recording,
            empty_gather_sends_digits=self._empty_gather_sends_digits,
        )


def _check_settings(
    *,
    account_sid: str,
    auth_token: str,
    urls: dict[str, str | None],
    counts: dict[str, int],
    status_callback_delay: float,
    webhook_timeout: float,
) -> None:
    """Raise ValueError naming the first invalid constructor argument."""
    if not _ACCOUNT_SID.match(account_sid):
        raise ValueError("invalid account_sid: expected AC followed by 32 hex digits")

    if not auth_token:
        raise ValueError("missing auth_token: the emulator signs every webhook with it")

    for name, url in urls.items():
        if url is None:
            continue
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"invalid {name} {url!r}: expected an absolute http(s) URL")

    for name, count in counts.items():
        if count < 0:
            raise ValueError(f"invalid {name} {count}: expected 0 or more")

    if status_callback_delay < 0:
        raise ValueError(
            f"invalid status_callback_delay {status_callback_delay}: expected 0 or more seconds"
        )

    if webhook_timeout <= 0:
        raise ValueError(f"invalid webhook_timeout {webhook_timeout}: expected more than 0 seconds")
