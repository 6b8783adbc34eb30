"""Drive one emulated inbound call against a running web app, as Twilio Voice would.

`CallRun` requests the voice URL, executes the returned TwiML verb by verb, feeds the
scripted caller input to `<Gather>` and `<Record>`, and follows action and redirect URLs
until the call ends. Time is simulated: pauses, timeouts and recordings add to the call's
duration, but the emulator never sleeps for them.

`WebhookSender` does the HTTP side: the standard parameters, the `X-Twilio-Signature`
header, the connection overrides in a URL fragment, timeouts and retries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from ipaddress import ip_address
from urllib.parse import parse_qsl, urldefrag, urlencode, urljoin, urlsplit

import requests
from twilio.request_validator import RequestValidator

from callcenter.emulator.media import (
    API_VERSION,
    RecordingStore,
    empty_wav,
    new_sid,
    wav_duration_seconds,
    whole_seconds,
)
from callcenter.emulator.twiml import (
    Enqueue,
    Gather,
    Hangup,
    Pause,
    Play,
    Prompt,
    Record,
    Redirect,
    Say,
    TwimlError,
    Unsupported,
    Verb,
    parse_twiml,
)

logger = logging.getLogger(__name__)

# Twilio error codes the emulator reports in CallResult.errors.
HTTP_RETRIEVAL_FAILURE = "11200"
INVALID_CONTENT_TYPE = "12300"
SCHEMA_WARNING = "12200"
CALLBACK_FAILURE = "15003"

# The text recorded for Twilio's stock message to a caller when no working TwiML is left.
# The real message also apologises and ends with a goodbye.
APPLICATION_ERROR_TEXT = "An application error has occurred"

# Protects a test run from TwiML that redirects to itself forever.
MAX_WEBHOOK_REQUESTS = 200

_TWIML_CONTENT_TYPES = frozenset({"text/xml", "application/xml"})
_DTMF_KEYS = frozenset("0123456789*#")
_USER_AGENT = "TwilioProxy/1.1"

# Twilio's documented connect timeout; its read timeout is the configurable webhook timeout.
_DEFAULT_CONNECT_TIMEOUT = 5.0


class EmulatorError(Exception):
    """Raised when the emulator cannot go on with a call, such as TwiML that loops forever."""


@dataclass(frozen=True)
class Heard:
    """One thing the caller heard, or one event of the call, in the order it happened.

    `text` is the Say text, the queue name for Enqueue, the length in seconds for Pause,
    and the DTMF tones for a Play that has no URL. `voice` and `language` are the Say
    attributes as written, empty when absent. `url` is the absolute Play or Redirect URL.
    """

    verb: str
    text: str = ""
    voice: str = ""
    language: str = ""
    url: str = ""


@dataclass(frozen=True)
class RequestLog:
    """One HTTP request the emulator sent; every retry attempt gets its own entry.

    `kind` is "twiml" for the voice, action, redirect and fallback URLs, "call-status",
    "recording-status" or "play". `status_code` is None when no response arrived.
    `elapsed` is in seconds.
    """

    kind: str
    method: str
    url: str
    params: dict[str, str]
    status_code: int | None
    content_type: str
    elapsed: float


@dataclass
class CallResult:
    call_sid: str
    heard: list[Heard]
    requests: list[RequestLog]
    status: str
    recording_sids: list[str]
    errors: list[str]

    def said(self, language_prefix: str | None = None) -> list[Heard]:
        """Return the Say items, only those whose language starts with the prefix if given."""
        return [
            item
            for item in self.heard
            if item.verb == "Say"
            and (language_prefix is None or item.language.startswith(language_prefix))
        ]


@dataclass(frozen=True)
class CallerSpeech:
    """The caller's part in one `<Record>`: speak `audio`, then end the recording.

    `then` is "silence" (the caller waits for the silence timeout), "hangup", or one DTMF
    key. A key that the Record's finishOnKey does not list is ignored by Twilio, so the
    recording then ends on silence.
    """

    audio: bytes
    then: str = "silence"

    def __post_init__(self) -> None:
        if self.then not in ("silence", "hangup") and self.then not in _DTMF_KEYS:
            raise ValueError(
                f'invalid CallerSpeech.then {self.then!r}: use "silence", "hangup" or one of 0-9*#'
            )


@dataclass(frozen=True)
class CallSettings:
    """Configuration of one call, copied from the TwilioEmulator."""

    account_sid: str
    auth_token: str
    voice_url: str
    status_callback_url: str | None
    fallback_url: str | None
    caller: str
    called: str
    api_base_url: str
    recording_not_ready_responses: int
    status_callback_delay: float
    webhook_timeout: float
    webhook_retries: int
    skip_action_on_empty_recording: bool
    empty_gather_sends_digits: bool


@dataclass(frozen=True)
class HttpReply:
    """A webhook's response; `status_code` is None when no response arrived."""

    url: str
    status_code: int | None
    content_type: str
    body: bytes


@dataclass(frozen=True)
class _ConnectionOptions:
    connect_timeout: float
    read_timeout: float
    retries: int


class WebhookSender:
    """Send webhook requests the way Twilio does and report each attempt to `record`."""

    def __init__(
        self,
        *,
        auth_token: str,
        timeout: float,
        retries: int,
        record: Callable[[RequestLog], None],
    ) -> None:
        self._validator = RequestValidator(auth_token)
        self._defaults = _ConnectionOptions(
            connect_timeout=min(_DEFAULT_CONNECT_TIMEOUT, timeout),
            read_timeout=timeout,
            retries=retries,
        )
        self._record = record

    def send(
        self,
        *,
        kind: str,
        url: str,
        method: str,
        params: Mapping[str, str],
        signed: bool = True,
    ) -> HttpReply:
        """Send one request, retrying connection failures and timeouts only.

        A `#fragment` on the URL is read as Twilio connection overrides and never sent.
        Redirects are not followed.
        """
        plain_url, options = _split_connection_overrides(url, self._defaults)

        if not _is_loopback(plain_url):
            # The emulator is a local test tool and must never reach another host.
            logger.warning(
                "Not sending the %s request: host %s is not a loopback address",
                kind,
                urlsplit(plain_url).hostname,
            )
            return HttpReply(url=plain_url, status_code=None, content_type="", body=b"")

        prepared = self._prepare(plain_url, method, params, signed)
        with requests.Session() as session:
            # Ignore proxy variables: a proxy would move loopback traffic to another host.
            session.trust_env = False
            return self._send_with_retries(session, prepared, kind, params, options)

    def _prepare(
        self, url: str, method: str, params: Mapping[str, str], signed: bool
    ) -> requests.PreparedRequest:
        headers = {"User-Agent": _USER_AGENT}

        if method == "GET":
            # Twilio appends its parameters after any query string the URL already has.
            separator = "&" if urlsplit(url).query else "?"
            query_url = url + separator + urlencode(dict(params)) if params else url
            request = requests.Request("GET", query_url, headers=headers)
            signed_params: Mapping[str, str] = {}
        else:
            request = requests.Request("POST", url, headers=headers, data=dict(params))
            signed_params = params

        prepared = request.prepare()

        # Sign the URL exactly as requests will send it, after its normalisation.
        if signed:
            assert prepared.url is not None  # noqa: S101 - prepare() always sets the URL
            signature = self._validator.compute_signature(prepared.url, dict(signed_params))
            prepared.headers["X-Twilio-Signature"] = signature

        return prepared

    def _send_with_retries(
        self,
        session: requests.Session,
        prepared: requests.PreparedRequest,
        kind: str,
        params: Mapping[str, str],
        options: _ConnectionOptions,
    ) -> HttpReply:
        url = prepared.url or ""
        method = prepared.method or "POST"

        for attempt in range(1, options.retries + 2):
            started = time.monotonic()
            try:
                response = session.send(
                    prepared,
                    timeout=(options.connect_timeout, options.read_timeout),
                    allow_redirects=False,
                )
            except (requests.ConnectionError, requests.Timeout) as error:
                elapsed = time.monotonic() - started
                self._record(RequestLog(kind, method, url, dict(params), None, "", elapsed))
                logger.warning(
                    "%s request attempt %d to %s failed: %s",
                    kind,
                    attempt,
                    urlsplit(url).path,
                    type(error).__name__,
                )
                continue

            elapsed = time.monotonic() - started
            content_type = response.headers.get("Content-Type", "")
            status_code = response.status_code
            self._record(
                RequestLog(kind, method, url, dict(params), status_code, content_type, elapsed)
            )
            return HttpReply(
                url=url,
                status_code=response.status_code,
                content_type=content_type,
                body=response.content,
            )

        return HttpReply(url=url, status_code=None, content_type="", body=b"")


@dataclass(frozen=True)
class _RecordingCallback:
    url: str
    method: str
    params: dict[str, str]


# Wait documents played before an emulated caller in an unanswered queue hangs up.
MAX_QUEUE_WAIT_ROUNDS = 30


@dataclass(frozen=True)
class _TwimlRequest:
    """A request for TwiML; `url` may carry a fragment of connection overrides."""

    url: str
    method: str
    extra: dict[str, str] = field(default_factory=dict)
    is_fallback: bool = False

    # Recording status callbacks that start once this action request has had its response.
    recording_callbacks: tuple[_RecordingCallback, ...] = ()


@dataclass(frozen=True)
class _Document:
    url: str
    verbs: list[Verb]


@dataclass(frozen=True)
class _Handover:
    """Control leaves the current document; `request` is None when the call ends."""

    request: _TwimlRequest | None


@dataclass(frozen=True)
class _GatherInput:
    digits: str
    finished_on_key: str
    timed_out: bool


class CallRun:
    """One emulated inbound call; create it, then call run() once."""

    def __init__(
        self,
        settings: CallSettings,
        store: RecordingStore,
        *,
        digits: Sequence[str | None],
        recordings: Sequence[bytes | str | CallerSpeech | None],
        hang_up_after: int | None,
    ) -> None:
        if hang_up_after is not None and hang_up_after < 1:
            raise ValueError(f"hang_up_after must be at least 1, got {hang_up_after}")

        self._settings = settings
        self._store = store
        self._digits: deque[str | None] = deque(_checked_digits(item) for item in digits)
        self._speech: deque[CallerSpeech | None] = deque(_as_speech(item) for item in recordings)
        self._hang_up_after = hang_up_after

        self.call_sid = new_sid("CA")
        self._lock = threading.Lock()
        self._heard: list[Heard] = []
        self._requests: list[RequestLog] = []
        self._errors: list[str] = []
        self._recording_sids: list[str] = []
        self._status = "completed"
        self._twiml_request_count = 0
        self._simulated_seconds = 0.0
        self._fetched_play_urls: set[str] = set()
        self._callback_threads: list[threading.Thread] = []

        self._sender = WebhookSender(
            auth_token=settings.auth_token,
            timeout=settings.webhook_timeout,
            retries=settings.webhook_retries,
            record=self._record_request,
        )

    def run(self, wait_for_callbacks: float) -> CallResult:
        """Run the call to its end, send the status callback and wait for recording callbacks."""
        logger.info("Emulated call %s started", self.call_sid)
        started = time.monotonic()

        self._run_documents()

        duration = whole_seconds(time.monotonic() - started + self._simulated_seconds)
        self._send_call_status(duration)
        self._join_callbacks(wait_for_callbacks)
        logger.info("Emulated call %s ended with status %s", self.call_sid, self._status)

        with self._lock:
            return CallResult(
                call_sid=self.call_sid,
                heard=list(self._heard),
                requests=list(self._requests),
                status=self._status,
                recording_sids=list(self._recording_sids),
                errors=list(self._errors),
            )

    # Documents and verbs

    def _run_documents(self) -> None:
        request: _TwimlRequest | None = _TwimlRequest(url=self._settings.voice_url, method="POST")

        while request is not None:
            if self._twiml_request_count >= MAX_WEBHOOK_REQUESTS:
                raise EmulatorError(
                    f"call {self.call_sid} made {MAX_WEBHOOK_REQUESTS} TwiML requests; "
                    "the TwiML probably redirects or re-requests itself without end"
                )

            document = self._fetch_document(request)
            self._start_recording_callbacks(request.recording_callbacks)
            if document is None or self._caller_hung_up():
                return

            request = self._execute(document)

    def _fetch_document(self, request: _TwimlRequest) -> _Document | None:
        """Fetch TwiML, then the fallback URL on failure; None ends the call."""
        document, error = self._request_twiml(request)
        if document is not None:
            return document

        if self._caller_hung_up():
            return None

        fallback_url = self._settings.fallback_url
        if fallback_url is not None and not request.is_fallback:
            fallback = _TwimlRequest(
                url=fallback_url,
                method="POST",
                extra={**request.extra, "ErrorCode": error, "ErrorUrl": urldefrag(request.url).url},
                is_fallback=True,
            )
            document, _ = self._request_twiml(fallback)
            if document is not None or self._caller_hung_up():
                return document

        self._play_application_error()
        return None

    def _request_twiml(self, request: _TwimlRequest) -> tuple[_Document | None, str]:
        """Request and parse one TwiML document; return it, or None and the error code."""
        self._twiml_request_count += 1
        params = {**self._standard_params(), **request.extra}
        reply = self._sender.send(
            kind="twiml", url=request.url, method=request.method, params=params
        )

        error = _twiml_reply_error(reply)
        if error:
            logger.warning(
                "Call %s: TwiML request to %s failed with error %s (HTTP status %s, %s)",
                self.call_sid,
                urlsplit(reply.url).path,
                error,
                reply.status_code,
                reply.content_type or "no content type",
            )
            self._add_error(error)
            return None, error

        try:
            parsed = parse_twiml(reply.body)
        except TwimlError as failure:
            logger.warning("Call %s: %s", self.call_sid, failure)
            self._add_error(failure.code)
            return None, failure.code

        for warning in parsed.warnings:
            self._add_error(warning)

        # Relative URLs resolve against the URL without the fragment and Twilio's GET parameters.
        return _Document(url=urldefrag(request.url).url, verbs=parsed.verbs), ""

    def _execute(self, document: _Document) -> _TwimlRequest | None:
        """Run the verbs in order; return the next TwiML request, or None when the call ends."""
        for verb in document.verbs:
            handover = self._run_verb(verb, document.url)
            if handover is not None:
                return handover.request

        # Twilio hangs up when a document runs out of verbs.
        return None

    def _run_verb(self, verb: Verb, document_url: str) -> _Handover | None:
        if isinstance(verb, Say | Play | Pause):
            self._run_prompt(verb, document_url)
            return None

        if isinstance(verb, Gather):
            return self._run_gather(verb, document_url)

        if isinstance(verb, Record):
            return self._run_record(verb, document_url)

        if isinstance(verb, Redirect):
            target = _resolve(document_url, verb.url)
            self._hear(Heard("Redirect", url=urldefrag(target).url))
            return _Handover(_TwimlRequest(url=target, method=verb.method))

        if isinstance(verb, Hangup):
            self._hear(Heard("Hangup"))
            return _Handover(None)

        if isinstance(verb, Enqueue):
            return self._run_enqueue(verb, document_url)

        self._skip_unsupported(verb)
        return None

    def _run_prompt(self, prompt: Prompt, document_url: str) -> None:
        if isinstance(prompt, Say):
            # loop="0" repeats until the caller acts; one entry stands for that.
            for _ in range(max(prompt.loop, 1)):
                heard = Heard("Say", text=prompt.text, voice=prompt.voice, language=prompt.language)
                self._hear(heard)
            return

        if isinstance(prompt, Pause):
            self._hear(Heard("Pause", text=str(prompt.length)))
            self._simulated_seconds += prompt.length
            return

        if not prompt.url:
            self._hear(Heard("Play", text=prompt.digits))
            return

        url = urldefrag(_resolve(document_url, prompt.url)).url
        for _ in range(max(prompt.loop, 1)):
            self._hear(Heard("Play", url=url))

        self._fetch_play_once(url)

    def _run_gather(self, gather: Gather, document_url: str) -> _Handover | None:
        self._hear(Heard("Gather"))
        for prompt in gather.prompts:
            self._run_prompt(prompt, document_url)

        # Each Gather takes one scripted item, even when it does not accept DTMF.
        keys = self._digits.popleft() if self._digits else None
        if "dtmf" not in gather.input.split():
            # NOTE: speech input is not emulated; a speech-only Gather always hears silence.
            keys = None

        entered = _collect_digits(keys or "", gather.num_digits, gather.finish_on_key)
        if entered.timed_out:
            self._simulated_seconds += gather.timeout

        if not entered.digits and not gather.action_on_empty_result:
            # With no input Twilio skips the action and goes on with the next verb.
            return None

        extra = {"Digits": entered.digits, "FinishedOnKey": entered.finished_on_key}
        if not entered.digits and not self._settings.empty_gather_sends_digits:
            # NOTE: whether Twilio omits Digits or sends it empty here is not documented.
            del extra["Digits"]

        action = _resolve(document_url, gather.action)
        return _Handover(_TwimlRequest(url=action, method=gather.method, extra=extra))

    def _run_record(self, record: Record, document_url: str) -> _Handover | None:
        self._hear(Heard("Record"))
        speech = self._speech.popleft() if self._speech else None
        if speech is None:
            speech = CallerSpeech(audio=b"")

        seconds = wav_duration_seconds(speech.audio) if speech.audio else 0.0
        duration = min(whole_seconds(seconds), record.max_length)
        hung_up = speech.then == "hangup"
        finish_key = speech.then if speech.then in record.finish_on_key else ""
        ended_on_silence = not hung_up and not finish_key
        self._simulated_seconds += duration + (record.timeout if ended_on_silence else 0)

        # An empty recording skips the action unless the caller hung up, because the
        # action must still report the hang-up.
        if duration == 0 and not hung_up and self._settings.skip_action_on_empty_recording:
            return None

        # Audio longer than maxLength is stored whole, and only the duration is capped.
        sid = self._store.add(
            call_sid=self.call_sid,
            audio=speech.audio or empty_wav(),
            duration=duration,
            not_ready_responses=self._settings.recording_not_ready_responses,
        )
        with self._lock:
            self._recording_sids.append(sid)

        recording_url = self._recording_url(sid)
        extra = {"RecordingUrl": recording_url, "RecordingDuration": str(duration)}
        if hung_up:
            extra["Digits"] = "hangup"
        elif finish_key:
            extra["Digits"] = finish_key

        action = _TwimlRequest(
            url=_resolve(document_url, record.action),
            method=record.method,
            extra=extra,
            recording_callbacks=self._recording_callbacks(record, document_url, sid, duration),
        )
        if not hung_up:
            return _Handover(action)

        # The caller is gone: Twilio still requests the action but cannot play its TwiML.
        self._request_twiml(action)
        self._start_recording_callbacks(action.recording_callbacks)
        return _Handover(None)

    def _run_enqueue(self, enqueue: Enqueue, document_url: str) -> _Handover | None:
        """Wait in a queue that no agent answers, playing waitUrl until it says <Leave>.

        NOTE: no agent ever dequeues the call. A wait that never leaves ends after
        MAX_QUEUE_WAIT_ROUNDS documents with the caller hanging up; Twilio's docs do not
        confirm QueueResult "hangup" for that case.
        """
        self._hear(Heard("Enqueue", text=enqueue.queue_name))
        queue_sid = new_sid("QU")
        started = self._simulated_seconds
        left = self._wait_in_queue(enqueue, document_url, queue_sid) if enqueue.wait_url else False
        waited = str(int(self._simulated_seconds - started))

        if not enqueue.action:
            # After <Leave> with no action, Twilio goes on with the next verb.
            return None if left else _Handover(None)

        extra = {
            "QueueResult": "leave" if left else "hangup",
            "QueueSid": queue_sid,
            "QueueTime": waited,
        }
        action = _TwimlRequest(
            url=_resolve(document_url, enqueue.action), method=enqueue.method, extra=extra
        )
        if left:
            return _Handover(action)

        self._request_twiml(action)
        return _Handover(None)

    def _wait_in_queue(self, enqueue: Enqueue, document_url: str, queue_sid: str) -> bool:
        """Play wait documents in turn; return True when one of them says <Leave>."""
        started = self._simulated_seconds
        for _round in range(MAX_QUEUE_WAIT_ROUNDS):
            extra = {
                "QueueSid": queue_sid,
                "QueuePosition": "1",
                "CurrentQueueSize": "1",
                "QueueTime": str(int(self._simulated_seconds - started)),
                "AvgQueueTime": "0",
            }
            request = _TwimlRequest(
                url=_resolve(document_url, enqueue.wait_url), method="POST", extra=extra
            )
            document, _error = self._request_twiml(request)
            if document is None or self._caller_hung_up():
                return False

            for verb in document.verbs:
                if isinstance(verb, Unsupported) and verb.name == "Leave":
                    return True
                if isinstance(verb, Say | Play | Pause):
                    self._run_verb(verb, document.url)
            # Twilio loops the wait document; a document with no pause still takes time.
            self._simulated_seconds += 1.0
        return False

    def _skip_unsupported(self, verb: Unsupported) -> None:
        logger.warning(
            "Call %s: the emulator does not execute <%s>; skipping it", self.call_sid, verb.name
        )
        self._add_error(SCHEMA_WARNING)

    def _play_application_error(self) -> None:
        # NOTE: real Twilio may report such a call as completed because it was answered.
        self._hear(Heard("Say", text=APPLICATION_ERROR_TEXT, language="en-US"))
        self._status = "failed"

    def _caller_hung_up(self) -> bool:
        limit = self._hang_up_after
        return limit is not None and self._twiml_request_count >= limit

    # Media and callbacks

    def _fetch_play_once(self, url: str) -> None:
        # Twilio caches Play media, so each URL is fetched once per call, without
        # the standard parameters and without a signature.
        if url in self._fetched_play_urls:
            return

        self._fetched_play_urls.add(url)
        reply = self._sender.send(kind="play", url=url, method="GET", params={}, signed=False)

        if not _is_success(reply):
            error = HTTP_RETRIEVAL_FAILURE
        elif not _media_type(reply.content_type).startswith("audio/"):
            error = INVALID_CONTENT_TYPE
        else:
            return

        logger.warning(
            "Call %s: Play media %s failed with error %s (HTTP status %s, %s)",
            self.call_sid,
            urlsplit(url).path,
            error,
            reply.status_code,
            reply.content_type or "no content type",
        )
        self._add_error(error)

    def _recording_url(self, sid: str) -> str:
        base = self._settings.api_base_url
        return f"{base}/{API_VERSION}/Accounts/{self._settings.account_sid}/Recordings/{sid}"

    def _recording_callbacks(
        self, record: Record, document_url: str, sid: str, duration: int
    ) -> tuple[_RecordingCallback, ...]:
        # Only the "completed" event is emulated; "in-progress" and "absent" are never sent.
        if not record.status_callback or "completed" not in record.status_callback_events:
            return ()

        params = {
            "AccountSid": self._settings.account_sid,
            "CallSid": self.call_sid,
            "RecordingSid": sid,
            "RecordingUrl": self._recording_url(sid),
            "RecordingStatus": "completed",
            "RecordingDuration": str(duration),
            "RecordingChannels": "1",
            "RecordingSource": "RecordVerb",
            "RecordingStartTime": format_datetime(datetime.now(UTC)),
        }
        url = _resolve(document_url, record.status_callback)
        return (_RecordingCallback(url=url, method=record.status_callback_method, params=params),)

    def _start_recording_callbacks(self, callbacks: tuple[_RecordingCallback, ...]) -> None:
        for callback in callbacks:
            thread = threading.Thread(
                target=self._send_recording_callback,
                args=(callback,),
                name=f"recording-status-{self.call_sid}",
                daemon=True,
            )
            self._callback_threads.append(thread)
            thread.start()

    def _send_recording_callback(self, callback: _RecordingCallback) -> None:
        time.sleep(self._settings.status_callback_delay)

        reply = self._sender.send(
            kind="recording-status",
            url=callback.url,
            method=callback.method,
            params=callback.params,
        )
        if not _is_success(reply):
            # Twilio documents 15003 for call status callbacks, and its use here is assumed.
            self._log_callback_failure("recording status", reply)
            self._add_error(CALLBACK_FAILURE)

    def _send_call_status(self, duration: int) -> None:
        url = self._settings.status_callback_url
        if url is None:
            return

        params = {
            **self._standard_params(),
            "CallStatus": self._status,
            "CallDuration": str(duration),
            "Timestamp": format_datetime(datetime.now(UTC)),
            "CallbackSource": "call-progress-events",
            "SequenceNumber": "0",
        }
        reply = self._sender.send(kind="call-status", url=url, method="POST", params=params)
        if not _is_success(reply):
            self._log_callback_failure("call status", reply)
            self._add_error(CALLBACK_FAILURE)

    def _log_callback_failure(self, name: str, reply: HttpReply) -> None:
        logger.warning(
            "Call %s: %s callback to %s failed with HTTP status %s",
            self.call_sid,
            name,
            urlsplit(reply.url).path,
            reply.status_code,
        )

    def _join_callbacks(self, wait_seconds: float) -> None:
        deadline = time.monotonic() + wait_seconds
        for thread in self._callback_threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.warning(
                    "Call %s: a recording status callback is still running after %.1f s",
                    self.call_sid,
                    wait_seconds,
                )

    # Shared state

    def _standard_params(self) -> dict[str, str]:
        settings = self._settings
        params = {
            "AccountSid": settings.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": self.call_sid,
            "CallStatus": "in-progress",
            "Direction": "inbound",
            "From": settings.caller,
            "To": settings.called,
            "Caller": settings.caller,
            "Called": settings.called,
        }

        # Twilio fills these from a number lookup. Outside North America they are often
        # empty, and the emulator always sends them empty.
        for prefix in ("From", "To", "Caller", "Called"):
            for suffix in ("City", "State", "Zip", "Country"):
                params[prefix + suffix] = ""

        return params

    def _hear(self, item: Heard) -> None:
        with self._lock:
            self._heard.append(item)

    def _add_error(self, code: str) -> None:
        with self._lock:
            self._errors.append(code)

    def _record_request(self, entry: RequestLog) -> None:
        with self._lock:
            self._requests.append(entry)


def _collect_digits(keys: str, num_digits: int | None, finish_on_key: str) -> _GatherInput:
    """Apply a Gather's numDigits and finishOnKey to the keys the caller presses."""
    digits = ""
    for key in keys:
        if finish_on_key and key == finish_on_key:
            # The finishing key submits only after at least one digit.
            if digits:
                return _GatherInput(digits=digits, finished_on_key=key, timed_out=False)
            continue

        digits += key
        if num_digits is not None and len(digits) >= num_digits:
            return _GatherInput(digits=digits, finished_on_key="", timed_out=False)

    return _GatherInput(digits=digits, finished_on_key="", timed_out=True)


def _checked_digits(item: str | None) -> str | None:
    if item is not None and not set(item) <= _DTMF_KEYS:
        raise ValueError(f"invalid digits {item!r}: use only the keys 0-9, * and #")

    return item


def _as_speech(item: bytes | str | CallerSpeech | None) -> CallerSpeech | None:
    if item is None or isinstance(item, CallerSpeech):
        return item

    if isinstance(item, bytes):
        return CallerSpeech(audio=item)

    if item == "hangup":
        return CallerSpeech(audio=b"", then="hangup")

    raise ValueError(f'invalid recording item {item!r}: use WAV bytes, "hangup" or None')


def _resolve(document_url: str, target: str) -> str:
    """Resolve an action or redirect URL; an empty target means the document URL itself."""
    if not target:
        return document_url

    return urljoin(document_url, target)


def _split_connection_overrides(
    url: str, defaults: _ConnectionOptions
) -> tuple[str, _ConnectionOptions]:
    """Strip the fragment and apply the connection overrides it may hold.

    `ct` and `rt` are the connect and read timeouts in milliseconds, `rc` the retry count,
    each clamped to the range Twilio accepts.
    """
    plain_url, fragment = urldefrag(url)
    if not fragment:
        return plain_url, defaults

    overrides = dict(parse_qsl(fragment))
    try:
        options = _ConnectionOptions(
            connect_timeout=_override_seconds(overrides, "ct", defaults.connect_timeout, 10_000),
            read_timeout=_override_seconds(overrides, "rt", defaults.read_timeout, 15_000),
            retries=min(max(int(overrides["rc"]), 0), 5) if "rc" in overrides else defaults.retries,
        )
    except ValueError:
        logger.warning("Ignoring connection overrides that are not integers: %s", fragment)
        return plain_url, defaults

    # Twilio also reads tt (total time), rp (retry policy), e and sni; the emulator ignores them.
    return plain_url, options


def _override_seconds(
    overrides: Mapping[str, str], key: str, default: float, maximum_ms: int
) -> float:
    if key not in overrides:
        return default

    return min(max(int(overrides[key]), 100), maximum_ms) / 1000


def _twiml_reply_error(reply: HttpReply) -> str:
    """Return the Twilio error code for an unusable TwiML answer, or an empty string."""
    # Twilio follows HTTP redirects, but the emulator reports a 3xx as 11200 so that a
    # webhook redirected to a login page shows up in tests.
    if not _is_success(reply):
        return HTTP_RETRIEVAL_FAILURE

    if _media_type(reply.content_type) not in _TWIML_CONTENT_TYPES:
        return INVALID_CONTENT_TYPE

    return ""


def _is_success(reply: HttpReply) -> bool:
    return reply.status_code is not None and 200 <= reply.status_code < 300


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname
    if host is None:
        return False

    if host == "localhost":
        return True

    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False
