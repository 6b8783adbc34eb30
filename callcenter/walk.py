"""Play every planned script of a flow through the Twilio emulator against a private app.

The app runs in this process on a throwaway instance folder: SQLite, the embedded
Redis, fresh role keys and random secrets, so a walk never touches real cases. Each
call checks what Twilio would notice (errors, 5xx answers, a call that does not end
at a goodbye) and what a caller would notice (prompts in the wrong language).
"""

from __future__ import annotations

import io
import logging
import math
import secrets
import struct
import tempfile
import threading
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from werkzeug.serving import make_server

from callcenter import create_app, embedded_redis
from callcenter.emulator import CallResult, Heard, TwilioEmulator
from callcenter.settings import Settings, load_settings
from callcenter.simulate import free_local_port
from ivr_flows.loader import load_flow, resolve_flow_path
from ivr_flows.walk import EMPTY, Script, plan
from storage.keys import KeyStore
from storage.migrate import upgrade
from storage.models import Recording
from storage.sealing import ALL_ROLES

logger = logging.getLogger("callcenter.walk")

WALK_ACCOUNT_SID = "AC" + "0a" * 16


@dataclass
class WalkResult:
    script: Script
    heard: list[Heard]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def tone_wav(seconds: float = 3.0, rate: int = 8000) -> bytes:
    """Return a mono 16-bit WAV of a 440 Hz tone, the 'speech' of walked calls."""
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * index / rate)))
        for index in range(int(seconds * rate))
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(frames)
    return buffer.getvalue()


@contextmanager
def private_app(flow_file: Path) -> Iterator[tuple[Settings, str, int]]:
    """Run the intake app on a throwaway instance; yield its settings, URL and media port."""
    with tempfile.TemporaryDirectory(prefix="callcenter-walk-") as folder:
        instance = Path(folder)
        app_port, media_port = free_local_port(), free_local_port()
        env = {
            "CALLCENTER_APP__INSTANCE_PATH": str(instance),
            "CALLCENTER_APP__PUBLIC_BASE_URL": f"http://127.0.0.1:{app_port}",
            "CALLCENTER_TWILIO__ACCOUNT_SID": WALK_ACCOUNT_SID,
            "CALLCENTER_TWILIO__API_BASE_URL": f"http://127.0.0.1:{media_port}",
            "CALLCENTER_VOICE__FLOW": str(flow_file),
            "CALLCENTER_TWILIO_AUTH_TOKEN": secrets.token_hex(16),
            "CALLCENTER_AUDIT_KEY": secrets.token_hex(32),
            "CALLCENTER_CALLER_HASH_KEY": secrets.token_hex(32),
        }
        settings = load_settings(env)
        redis_process = embedded_redis.start(settings.redis.socket_path)
        try:
            upgrade(settings.database.url)
            store = KeyStore(settings.sealing.keys_dir)
            for role in ALL_ROLES:
                store.init_role(role, secrets.token_bytes(16), settings.sealing.algorithm)

            app = create_app(settings)
            server = make_server("127.0.0.1", app_port, app, threaded=True)
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            try:
                yield settings, f"http://127.0.0.1:{app_port}", media_port
            finally:
                server.shutdown()
                app.extensions["callcenter_runtime"].close()
        finally:
            if redis_process is not None:
                embedded_redis.stop(redis_process)


def check_call(
    script: Script, result: CallResult, settings: Settings, registered: set[str]
) -> list[str]:
    """Return what went wrong in one walked call, in words a flow editor understands."""
    problems = [f"Twilio error {code}" for code in result.errors]
    problems += [
        f"HTTP {log.status_code} from {log.url}"
        for log in result.requests
        if log.status_code is not None and log.status_code >= 500
    ]
    if result.status != "completed":
        problems.append(f"call ended {result.status}")
    if not result.heard or result.heard[-1].verb != "Hangup":
        problems.append("call did not end at a goodbye (no <Hangup>)")

    voice_language = (
        settings.voice.arabic_language
        if script.language == "ar"
        else settings.voice.english_language
    )
    # The first menu is bilingual; from the second prompt on, one language only.
    spoken = [heard for heard in result.said()[2:] if heard.language]
    wrong = [heard for heard in spoken if heard.language != voice_language]
    if script.branch.node != "language" and wrong:
        problems.append(
            f"heard {len(wrong)} prompt(s) in {wrong[0].language}, expected {voice_language}"
        )

    missing = [sid for sid in result.recording_sids if sid not in registered]
    if missing:
        problems.append(f"recording(s) {', '.join(missing)} not registered")
    return problems


def walk(flow_name: str, *, report: Callable[[WalkResult], None] | None = None) -> list[WalkResult]:
    """Walk every branch of a flow in every language; return one result per script."""
    flow_file = resolve_flow_path(flow_name).resolve()
    scripts = plan(load_flow(flow_file))
    speech = tone_wav()
    results = []

    with private_app(flow_file) as (settings, base_url, media_port):
        token = settings.require_twilio()
        for index, script in enumerate(scripts):
            recordings: list[bytes | None] = [
                None if item == EMPTY else speech for item in script.recordings
            ]
            with TwilioEmulator(
                account_sid=WALK_ACCOUNT_SID,
                auth_token=token,
                voice_url=f"{base_url}/voice/incoming",
                status_callback_url=f"{base_url}/voice/status",
                caller=f"+9627900{index:05d}",
                media_port=media_port,
                status_callback_delay=0.0,
            ) as emulator:
                result = emulator.call(digits=script.digits, recordings=recordings)

            registered = _registered(settings, result.recording_sids)
            outcome = WalkResult(
                script, result.heard, check_call(script, result, settings, registered)
            )
            results.append(outcome)
            if report is not None:
                report(outcome)

    return results


def _registered(settings: Settings, recording_sids: list[str]) -> set[str]:
    if not recording_sids:
        return set()
    from storage.db import make_engine, make_session_factory

    engine = make_engine(settings.database.url)
    try:
        with make_session_factory(engine)() as session:
            rows = session.scalars(
                select(Recording.recording_sid).where(Recording.recording_sid.in_(recording_sids))
            )
            return set(rows)
    finally:
        engine.dispose()
