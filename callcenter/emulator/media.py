"""The emulator's stand-in for the Twilio REST API's Recording resource.

`MediaServer` serves the recordings made during emulated calls on 127.0.0.1:

- `GET /2010-04-01/Accounts/{AC}/Recordings/{RE}` and `.wav`: the WAV audio.
- `GET .../{RE}.mp3`: 415, because the emulator does not transcode to MP3.
- `GET .../{RE}.json`: the resource's metadata, with the fields twilio-python reads.
- `DELETE .../{RE}.json` (or without the extension): 204, and the recording is gone.

Every request needs HTTP Basic auth with the account SID and auth token, as Twilio
demands when "Enforce HTTP Auth on Media URLs" is on. Errors carry Twilio's legacy JSON
error body, so twilio-python raises `TwilioRestException` with the right code.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
import io
import json
import logging
import math
import re
import secrets
import threading
import wave
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import format_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

API_VERSION = "2010-04-01"

_RESOURCE_PATH = re.compile(
    r"^/2010-04-01/Accounts/(?P<account>AC[0-9a-fA-F]{32})"
    r"/Recordings/(?P<sid>RE[0-9a-fA-F]{32})(?P<extension>\.wav|\.mp3|\.json)?$"
)


def new_sid(prefix: str) -> str:
    """Return a random Twilio-style SID: the two-letter prefix and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def empty_wav() -> bytes:
    """Return a valid WAV file with no frames (8 kHz, 16-bit, mono)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(8000)

    return buffer.getvalue()


def wav_duration_seconds(audio: bytes) -> float:
    """Return the length of WAV audio in seconds, read from its header.

    The `wave` module reads PCM files. Float and extensible WAV files fall back to the
    byte rate in the RIFF `fmt ` chunk. Bytes that are not WAV at all are measured as
    8 kHz 16-bit mono, the telephone format.
    """
    try:
        with wave.open(io.BytesIO(audio), "rb") as reader:
            return reader.getnframes() / reader.getframerate()
    except (wave.Error, EOFError, ZeroDivisionError):
        # A header that claims 0 Hz is measured from its byte rate or estimated below.
        pass

    riff_seconds = _riff_duration_seconds(audio)
    if riff_seconds is not None:
        return riff_seconds

    # NOTE: an estimate, right only for raw 8 kHz 16-bit mono audio.
    return len(audio) / 16000


def whole_seconds(seconds: float) -> int:
    """Round a duration up to whole seconds, so audio shorter than a second still counts."""
    return math.ceil(seconds)


def _riff_duration_seconds(audio: bytes) -> float | None:
    if len(audio) < 12 or audio[:4] != b"RIFF" or audio[8:12] != b"WAVE":
        return None

    byte_rate = 0
    offset = 12
    while offset + 8 <= len(audio):
        chunk_id = audio[offset : offset + 4]
        chunk_size = int.from_bytes(audio[offset + 4 : offset + 8], "little")
        body = offset + 8

        if chunk_id == b"fmt " and chunk_size >= 16:
            byte_rate = int.from_bytes(audio[body + 8 : body + 12], "little")
        elif chunk_id == b"data":
            if byte_rate == 0:
                return None
            # A header written before the end of a stream may overstate the data size.
            return min(chunk_size, len(audio) - body) / byte_rate

        # RIFF pads every chunk to an even number of bytes.
        offset = body + chunk_size + (chunk_size & 1)

    return None


@dataclass(frozen=True)
class StoredRecording:
    """One recording as the emulated Twilio account stores it."""

    sid: str
    call_sid: str
    audio: bytes
    duration: int
    created_at: datetime
    not_ready_remaining: int
    fetch_count: int = 0
    deleted: bool = False


class MediaOutcome(enum.Enum):
    READY = "ready"
    NOT_READY = "not-ready"
    NOT_FOUND = "not-found"


class RecordingStore:
    """Thread-safe recordings of one emulated account, keyed by RecordingSid."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recordings: dict[str, StoredRecording] = {}

    def add(self, *, call_sid: str, audio: bytes, duration: int, not_ready_responses: int) -> str:
        """Store a recording and return its new RecordingSid.

        The first `not_ready_responses` media GETs of it will return 404, as Twilio
        does while it is still processing the file.
        """
        recording = StoredRecording(
            sid=new_sid("RE"),
            call_sid=call_sid,
            audio=audio,
            duration=duration,
            created_at=datetime.now(UTC),
            not_ready_remaining=not_ready_responses,
        )
        with self._lock:
            self._recordings[recording.sid] = recording

        return recording.sid

    def get(self, sid: str) -> StoredRecording | None:
        """Return the recording unless it is unknown or deleted."""
        with self._lock:
            recording = self._recordings.get(sid)

        if recording is None or recording.deleted:
            return None

        return recording

    def fetch_media(self, sid: str) -> tuple[MediaOutcome, bytes]:
        """Count one media GET and return whether the audio can be served, and the audio."""
        with self._lock:
            recording = self._recordings.get(sid)
            if recording is None or recording.deleted:
                return MediaOutcome.NOT_FOUND, b""

            fetch_count = recording.fetch_count + 1
            if recording.not_ready_remaining > 0:
                self._recordings[sid] = replace(
                    recording,
                    fetch_count=fetch_count,
                    not_ready_remaining=recording.not_ready_remaining - 1,
                )
                return MediaOutcome.NOT_READY, b""

            self._recordings[sid] = replace(recording, fetch_count=fetch_count)
            return MediaOutcome.READY, recording.audio

    def delete(self, sid: str) -> bool:
        """Delete the recording; return False when it was unknown or already deleted."""
        with self._lock:
            recording = self._recordings.get(sid)
            if recording is None or recording.deleted:
                return False

            # Drop the audio at once, as the real deletion would.
            self._recordings[sid] = replace(recording, audio=b"", deleted=True)
            return True

    def is_deleted(self, sid: str) -> bool:
        """Return whether a known recording was deleted; raise KeyError for an unknown SID."""
        return self._require(sid).deleted

    def fetch_count(self, sid: str) -> int:
        """Return how many authenticated media GETs the recording received, 404s included."""
        return self._require(sid).fetch_count

    def _require(self, sid: str) -> StoredRecording:
        with self._lock:
            recording = self._recordings.get(sid)

        if recording is None:
            raise KeyError(f"no recording with SID {sid} was created by this emulator")

        return recording


class _MediaHttpServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that carries the account credentials and the store."""

    daemon_threads = True

    allow_reuse_address = True

    def __init__(self, account_sid: str, auth_token: str, store: RecordingStore, port: int) -> None:
        super().__init__(("127.0.0.1", port), _MediaRequestHandler)
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.store = store
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}"


class MediaServer:
    """The Recording REST endpoints of one emulated account, on 127.0.0.1.

    Port 0 picks a free port. A fixed port is for an app that was configured with
    the emulator's address before the emulator started.
    """

    def __init__(
        self, *, account_sid: str, auth_token: str, store: RecordingStore, port: int = 0
    ) -> None:
        self._port = port
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._store = store
        self._server: _MediaHttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The server's origin, such as `http://127.0.0.1:41234`; only valid after start()."""
        if self._server is None:
            raise RuntimeError("the media server is not running: call start() first")

        return self._server.base_url

    def start(self) -> None:
        if self._server is not None:
            return

        self._server = _MediaHttpServer(
            self._account_sid, self._auth_token, self._store, self._port
        )
        # A short poll interval lets stop() return quickly; shutdown() waits for one poll.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="twilio-emulator-media",
            daemon=True,
        )
        self._thread.start()
        logger.info("Twilio emulator media server started on %s", self._server.base_url)

    def stop(self) -> None:
        if self._server is None:
            return

        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

        logger.info("Twilio emulator media server stopped on %s", self._server.base_url)
        self._server = None
        self._thread = None


class _MediaRequestHandler(BaseHTTPRequestHandler):
    server: _MediaHttpServer

    def do_GET(self) -> None:
        match = self._authorized_match()
        if match is None:
            return

        sid = match["sid"]
        extension = match["extension"] or ""

        if extension == ".json":
            self._send_metadata(sid)
            return

        if extension == ".mp3":
            # NOTE: Twilio transcodes to MP3 on request; the emulator only serves WAV.
            self._send_error_json(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                code=415,
                message="The emulator does not transcode recordings to MP3; request .wav",
            )
            return

        self._send_media(sid)

    def do_DELETE(self) -> None:
        match = self._authorized_match()
        if match is None:
            return

        if match["extension"] not in (None, ".json"):
            self._send_error_json(
                HTTPStatus.METHOD_NOT_ALLOWED, code=20004, message="Method not allowed"
            )
            return

        if not self.server.store.delete(match["sid"]):
            self._send_not_found()
            return

        self.send_response(HTTPStatus.NO_CONTENT)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self._reject_method()

    def do_PUT(self) -> None:
        self._reject_method()

    def log_message(self, format: str, *args: object) -> None:
        # The request line contains only SIDs; the auth header and the audio are never logged.
        logger.debug("media server: " + format, *args)

    def _reject_method(self) -> None:
        # Read and discard the body so the reply is not mixed with unread request bytes.
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._send_error_json(
            HTTPStatus.METHOD_NOT_ALLOWED, code=20004, message="Method not allowed"
        )

    def _authorized_match(self) -> re.Match[str] | None:
        """Check Basic auth, then match the path; send 401 or 404 and return None on failure."""
        if not self._has_valid_credentials():
            self._send_unauthorized()
            return None

        path = urlsplit(self.path).path
        match = _RESOURCE_PATH.match(path)
        if match is None or match["account"] != self.server.account_sid:
            self._send_not_found()
            return None

        return match

    def _has_valid_credentials(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False

        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False

        username, _, password = decoded.partition(":")
        username_ok = hmac.compare_digest(username.encode(), self.server.account_sid.encode())
        password_ok = hmac.compare_digest(password.encode(), self.server.auth_token.encode())

        return username_ok and password_ok

    def _send_media(self, sid: str) -> None:
        outcome, audio = self.server.store.fetch_media(sid)
        if outcome is not MediaOutcome.READY:
            self._send_not_found()
            return

        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "audio/x-wav")
        self.send_header("Content-Length", str(len(audio)))
        self.end_headers()
        self.wfile.write(audio)

    def _send_metadata(self, sid: str) -> None:
        recording = self.server.store.get(sid)
        if recording is None:
            self._send_not_found()
            return

        self._send_json(HTTPStatus.OK, _metadata(recording, self.server))

    def _send_unauthorized(self) -> None:
        self._send_error_json(
            HTTPStatus.UNAUTHORIZED,
            code=20003,
            message="Authenticate",
            extra_headers={"WWW-Authenticate": 'Basic realm="Twilio API"'},
        )

    def _send_not_found(self) -> None:
        path = urlsplit(self.path).path
        self._send_error_json(
            HTTPStatus.NOT_FOUND,
            code=20404,
            message=f"The requested resource {path} was not found",
        )

    def _send_error_json(
        self,
        status: HTTPStatus,
        *,
        code: int,
        message: str,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        body = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": int(status),
        }
        self._send_json(status, body, extra_headers)

    def _send_json(
        self,
        status: HTTPStatus,
        body: dict[str, object],
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        payload = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)

        self.end_headers()
        self.wfile.write(payload)


def _metadata(recording: StoredRecording, server: _MediaHttpServer) -> dict[str, object]:
    """Build the Recording resource JSON with the field names of the 2010-04-01 API."""
    resource_path = f"/{API_VERSION}/Accounts/{server.account_sid}/Recordings/{recording.sid}"
    created = format_datetime(recording.created_at)

    # Twilio reports "processing" until the media can be downloaded.
    status = "processing" if recording.not_ready_remaining > 0 else "completed"

    return {
        "account_sid": server.account_sid,
        "api_version": API_VERSION,
        "call_sid": recording.call_sid or None,
        "conference_sid": None,
        "date_created": created,
        "date_updated": created,
        "start_time": created,
        "duration": str(recording.duration),
        "sid": recording.sid,
        "price": None,
        "price_unit": "USD",
        "status": status,
        "channels": 1,
        "source": "RecordVerb",
        "error_code": None,
        "track": "both",
        "uri": resource_path + ".json",
        "media_url": server.base_url + resource_path,
        "encryption_details": None,
        "subresource_uris": {
            "add_on_results": resource_path + "/AddOnResults.json",
            "transcriptions": resource_path + "/Transcriptions.json",
        },
    }
