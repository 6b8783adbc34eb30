"""Adversarial tests of the whole intake pipeline: webhooks, recordings, transcription, outbox.

Each test either shows a property that holds or guards the fix of a defect it found.
Every server these tests talk to listens on 127.0.0.1 and is started by the test.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import logging
import os
import signal
import socket
import stat
import struct
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
import soundfile
import soxr
from click.testing import CliRunner
from flask import Flask
from rq import Worker
from rq.job import Job
from rq.serializers import JSONSerializer
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from twilio.request_validator import RequestValidator

from callcenter import create_app, outbox, recordings
from callcenter.emulator import TwilioEmulator
from callcenter.errors import RecordingDownloadError
from callcenter.references import allocate_reference
from callcenter.runtime import Runtime
from callcenter.settings import Settings, load_settings
from callcenter.worker import make_worker, prepare_transcription
from storage.audit import verify_chain
from storage.migrate import upgrade
from storage.models import (
    Call,
    Case,
    CaseStatus,
    OutboxMessage,
    Recording,
    RecordingStatus,
    SealedObject,
    Transcript,
)
from storage.sealing import ROLE_CASE_OFFICE, ROLE_IDENTITY_CUSTODIAN
from storage.vault import open_sealed
from tests.audio_fixtures import tone, wav_bytes
from tests.fixtures.services import (
    ACCOUNT_SID,
    AUDIT_KEY_HEX,
    AUTH_TOKEN,
    CALLER_HASH_KEY_HEX,
    PASSPHRASES,
    Ports,
    free_port,
    new_call_sid,
    new_recording_sid,
    serve_app,
)
from transcription import jobs
from transcription.catalog import resolve_model_path
from transcription.engine import VoskEngine

CALLER = "+962796660123"
SPEECH = Path(__file__).resolve().parents[1] / "callcenter" / "demo_audio" / "complaint-ko.wav"


# Helpers shared by the webhook tests


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


@dataclass
class Step:
    """One webhook request of a call: the path with its query, and the form parameters."""

    path: str
    params: dict[str, str]


class Twilio:
    """Sign and send webhook requests like Twilio, through the Flask test client."""

    def __init__(self, app: Flask, public_base_url: str) -> None:
        self.app = app
        self.base = public_base_url
        self.validator = RequestValidator(AUTH_TOKEN)

    def sign(self, path: str, params: dict[str, str], *, base: str | None = None) -> str:
        signature: str = self.validator.compute_signature((base or self.base) + path, params)
        return signature

    def post(self, step: Step, *, signature: str | None = None) -> tuple[int, bytes]:
        header = self.sign(step.path, step.params) if signature is None else signature
        response = self.app.test_client().post(
            step.path, data=step.params, headers={"X-Twilio-Signature": header}
        )
        return response.status_code, response.data

    def relative(self, url: str) -> str:
        assert url.startswith(self.base), f"{url} is not under {self.base}"
        return url[len(self.base) :]

    def walk(
        self,
        call_sid: str,
        *,
        until: str = "Record",
        keys: dict[str, str] | None = None,
        until_node: str | None = None,
    ) -> list[Step]:
        """Answer a call and follow its TwiML until a response contains the element ``until``.

        At each <Gather> the walk presses ``keys[node]`` for the node named in the action
        URL, or 1. With ``until_node`` it stops instead at the first <Gather> of that node
        and returns the unsent step that would answer it. Returns every step; the answer
        to the last one holds ``until``. The walk follows the TwiML it gets, so it does
        not depend on the flow's layout.
        """
        steps = [Step("/voice/incoming", base_params(call_sid))]
        for _ in range(30):
            status, body = self.post(steps[-1])
            assert status == 200, f"{steps[-1].path} returned HTTP {status}"
            document = ET.fromstring(body)
            if document.find(f".//{until}") is not None:
                return steps

            gather = document.find("Gather")
            redirect = document.find("Redirect")
            if gather is not None:
                action = self.relative(gather.get("action", ""))
                node = action.rpartition("node=")[2]
                digit = (keys or {}).get(node, "1")
                steps.append(Step(action, {**base_params(call_sid), "Digits": digit}))
                if node == until_node:
                    return steps
            elif redirect is not None and redirect.text:
                steps.append(Step(self.relative(redirect.text), base_params(call_sid)))
            else:
                pytest.fail(f"the call ended before a <{until}>: {body!r}")

        pytest.fail(f"no <{until}> within 30 steps")

    def walk_to_record(self, call_sid: str) -> list[Step]:
        return self.walk(call_sid, until="Record")

    def record_action_path(self, call_sid: str) -> tuple[str, str]:
        """Return the <Record> action path and its recordingStatusCallback path."""
        steps = self.walk_to_record(call_sid)
        _, body = self.post(steps[-1])
        record = ET.fromstring(body).find(".//Record")
        assert record is not None
        return (
            self.relative(record.get("action", "")),
            self.relative(record.get("recordingStatusCallback", "")),
        )


def recording_status_params(
    call_sid: str, recording_sid: str, api_base_url: str, status: str = "completed"
) -> dict[str, str]:
    return {
        "AccountSid": ACCOUNT_SID,
        "CallSid": call_sid,
        "RecordingSid": recording_sid,
        "RecordingUrl": f"{api_base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/{recording_sid}",
        "RecordingStatus": status,
        "RecordingDuration": "9",
        "RecordingChannels": "1",
        "RecordingSource": "RecordVerb",
    }


def count_rows(runtime: Runtime, model: type) -> int:
    with runtime.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def case_of_call(runtime: Runtime, call_sid: str) -> Case | None:
    with runtime.session() as session:
        case = session.scalar(
            select(Case).join(Call, Call.case_id == Case.id).where(Call.call_sid == call_sid)
        )
        if case is not None:
            session.expunge(case)
        return case


@pytest.fixture
def twilio(app: Flask, settings: Settings) -> Twilio:
    return Twilio(app, settings.app.public_base_url)


@pytest.fixture
def runtime(app: Flask) -> Runtime:
    intake: Runtime = app.extensions["callcenter_runtime"]
    return intake


# Helpers shared by the worker tests


def work_burst(worker: Worker) -> None:
    """Run a forking rq worker until its queue is empty, without its pub/sub thread.

    rq 3.0.0 subscribes each worker to a command channel, and with redis-py 8.2.0
    stopping that thread took 60 s at teardown in these tests. No test sends worker
    commands, so the channel is left out. The jobs still run in forked work-horses.
    """
    with (
        mock.patch.object(Worker, "subscribe", return_value=None),
        mock.patch.object(Worker, "unsubscribe", return_value=None),
    ):
        worker.work(burst=True, logging_level="WARNING")


@pytest.fixture(scope="session")
def engine() -> VoskEngine:
    return VoskEngine(resolve_model_path("ko", Path("unused")))


@dataclass
class Workers:
    """Settings and runtimes of the recordings and transcription side, without the web app."""

    intake: Settings
    transcription: Settings
    runtime: Runtime
    emulator: TwilioEmulator
    engine: VoskEngine
    max_audio_seconds: float = 600

    def register(self, audio: bytes, *, not_ready_responses: int = 0) -> int:
        """Store audio at the emulated Twilio and register it as the recording webhook does."""
        recording_sid = self.emulator.put_recording(audio, not_ready_responses=not_ready_responses)
        with self.runtime.session() as session:
            case = Case(
                reference=allocate_reference(session),
                status=CaseStatus.RECEIVED.value,
                complaint_type="SVC",
                category="SVC",
                language="ar",
            )
            session.add(case)
            session.flush()
            recording = Recording(
                recording_sid=recording_sid,
                call_sid=new_call_sid(),
                case_id=case.id,
                source_url=self.emulator.recording_url(recording_sid),
                duration_seconds=1,
            )
            session.add(recording)
            session.flush()
            message = outbox.add_message(
                session,
                queue=outbox.RECORDINGS_QUEUE,
                job_name=outbox.PROCESS_RECORDING,
                entity_id=recording.id,
            )
            session.commit()
            outbox.enqueue(session, self.runtime.redis, message)
            return recording.id

    def run_recordings(self) -> None:
        """Drain the recordings queue with rq's forking worker."""
        worker_runtime = Runtime(self.intake)
        recordings.install_runtime(worker_runtime)
        try:
            work_burst(make_worker(worker_runtime, outbox.RECORDINGS_QUEUE))
        finally:
            recordings._context.runtime = None
            worker_runtime.close()

    def run_transcription(self) -> None:
        """Drain the transcription queue with rq's forking worker, as the real worker does."""
        limits = replace(
            self.transcription.transcription, max_audio_seconds=int(self.max_audio_seconds)
        )
        worker_runtime = Runtime(replace(self.transcription, transcription=limits))
        prepare_transcription(worker_runtime, self.engine)
        try:
            work_burst(make_worker(worker_runtime, outbox.TRANSCRIPTION_QUEUE))
        finally:
            jobs.install_context(None)  # type: ignore[arg-type]
            worker_runtime.close()

    def recording(self, recording_id: int) -> Recording:
        with self.runtime.session() as session:
            recording = session.get(Recording, recording_id)
            assert recording is not None
            session.expunge(recording)
            return recording

    def case(self, recording_id: int) -> Case:
        with self.runtime.session() as session:
            recording = session.get(Recording, recording_id)
            assert recording is not None
            case = recording.case
            session.expunge(case)
            return case


def build_workers(
    make_env: Callable[..., dict[str, str]],
    role_keys: Path,
    public_keys_only: Path,
    ports: Ports,
    engine: VoskEngine,
    **extra: str,
) -> Iterator[Workers]:
    intake = load_settings(make_env(keys_dir=public_keys_only, **extra))
    transcription = load_settings(make_env(keys_dir=role_keys, **extra))
    upgrade(intake.database.url)
    runtime = Runtime(transcription)
    app_url = f"http://127.0.0.1:{ports.app}"
    emulator = TwilioEmulator(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        voice_url=f"{app_url}/voice/incoming",
        status_callback_url=f"{app_url}/voice/status",
        caller=CALLER,
        status_callback_delay=0.05,
        media_port=ports.media,
    )
    emulator.start()
    try:
        yield Workers(intake, transcription, runtime, emulator, engine)
    finally:
        emulator.stop()
        runtime.close()


@pytest.fixture
def workers(
    make_env: Callable[..., dict[str, str]],
    role_keys: Path,
    public_keys_only: Path,
    ports: Ports,
    engine: VoskEngine,
) -> Iterator[Workers]:
    yield from build_workers(make_env, role_keys, public_keys_only, ports, engine)


def speech_8k() -> bytes:
    """Return the demo's Korean complaint as 8 kHz 16-bit mono, the telephone format."""
    samples, rate = soundfile.read(str(SPEECH), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != 8000:
        mono = soxr.resample(mono, rate, 8000)
    return wav_bytes(mono.astype(np.float32), 8000)


# Recordings worker


def run_recording_job_in_process(workers: Workers, recording_id: int) -> None:
    runtime = Runtime(workers.intake)
    recordings.install_runtime(runtime)
    try:
        recordings.process_recording(recording_id)
    finally:
        recordings._context.runtime = None
        runtime.close()


def test_recording_stored_and_deleted_once(workers: Workers) -> None:
    recording_id = workers.register(speech_8k())
    workers.run_recordings()
    # A second run, as after a duplicated reconciler pass, must change nothing.
    run_recording_job_in_process(workers, recording_id)

    recording = workers.recording(recording_id)
    assert recording.status == RecordingStatus.STORED.value
    assert recording.twilio_deleted_at is not None
    assert workers.emulator.recording_fetch_count(recording.recording_sid) == 1
    assert count_rows(workers.runtime, SealedObject) == 1
    with workers.runtime.session() as session:
        transcription_rows = session.scalars(
            select(OutboxMessage).where(OutboxMessage.job_name == outbox.TRANSCRIBE_RECORDING)
        ).all()
    assert len(transcription_rows) == 1


def test_horse_killed_before_twilio_delete(
    workers: Workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recording_id = workers.register(speech_8k())
    marker = tmp_path / "killed-once"
    delete = recordings._delete_at_twilio

    def die_first_time(runtime: Runtime, recording: Recording) -> None:
        if not marker.exists():
            marker.touch()
            # The sealed copy is committed; the work-horse dies as under the OOM killer.
            os.kill(os.getpid(), signal.SIGKILL)
        delete(runtime, recording)

    monkeypatch.setattr(recordings, "_delete_at_twilio", die_first_time)
    workers.run_recordings()
    assert marker.exists()
    assert not workers.emulator.recording_deleted(workers.recording(recording_id).recording_sid)

    outbox.reconcile(workers.runtime.session_factory, workers.runtime.redis)
    workers.run_recordings()

    recording = workers.recording(recording_id)
    assert recording.status == RecordingStatus.STORED.value
    assert recording.twilio_deleted_at is not None
    assert workers.emulator.recording_deleted(recording.recording_sid)
    assert workers.emulator.recording_fetch_count(recording.recording_sid) == 1
    assert count_rows(workers.runtime, SealedObject) == 1
    workers.run_transcription()
    assert workers.case(recording_id).status == CaseStatus.AWAITING_REVIEW.value


def test_erased_case_stays_erased(workers: Workers) -> None:
    from callcenter.retention import ErasureReason, erase_case

    # The download is still queued (a busy worker, a Twilio outage) when the caller's
    # erasure request is carried out.
    recording_id = workers.register(speech_8k())
    with workers.runtime.session() as session:
        recording = session.get(Recording, recording_id)
        assert recording is not None
        erase_case(
            session,
            recording.case,
            chain_key=bytes.fromhex(AUDIT_KEY_HEX),
            actor="adversarial-test",
            reason=ErasureReason.CALLER_REQUEST,
        )
        session.commit()

    workers.run_recordings()
    workers.run_transcription()

    case = workers.case(recording_id)
    with workers.runtime.session() as session:
        readable = session.scalars(
            select(SealedObject).where(
                SealedObject.case_id == case.id, SealedObject.erased_at.is_(None)
            )
        ).all()
    assert case.status == CaseStatus.ERASED.value
    assert readable == [], "new sealed content was stored for an erased case"


def test_retry_command_requeues_download(workers: Workers) -> None:
    recording_id = workers.register(speech_8k())
    with workers.runtime.session() as session:
        recording = session.get(Recording, recording_id)
        assert recording is not None
        recording.status = RecordingStatus.FAILED.value
        for row in session.scalars(select(OutboxMessage)):
            row.done_at = row.created_at
        session.commit()

    from callcenter.cli import main

    result = CliRunner().invoke(
        main, ["recordings", "retry", str(recording_id)], obj={"settings": workers.intake}
    )

    assert result.exception is None, repr(result.exception)
    assert result.exit_code == 0
    workers.run_recordings()
    assert workers.recording(recording_id).status == RecordingStatus.STORED.value


@pytest.fixture
def short_timeout_workers(
    make_env: Callable[..., dict[str, str]],
    role_keys: Path,
    public_keys_only: Path,
    ports: Ports,
    engine: VoskEngine,
) -> Iterator[Workers]:
    yield from build_workers(
        make_env,
        role_keys,
        public_keys_only,
        ports,
        engine,
        CALLCENTER_TRANSCRIPTION__JOB_TIMEOUT_SECONDS="77",
    )


def test_transcription_job_timeout_setting(short_timeout_workers: Workers) -> None:
    workers = short_timeout_workers
    recording_id = workers.register(speech_8k())
    workers.run_recordings()

    job = Job.fetch(
        f"transcribe_recording-{recording_id}",
        connection=workers.runtime.redis,
        serializer=JSONSerializer,
    )
    assert workers.transcription.transcription.job_timeout_seconds == 77
    assert job.timeout == 77


def fail_twilio_delete(*_args: object) -> None:
    raise requests.ConnectionError("Twilio's API did not answer")


def test_undeleted_twilio_copy_is_reported(
    workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    recording_id = workers.register(speech_8k())
    monkeypatch.setattr(recordings, "_delete_at_twilio", fail_twilio_delete)
    for _ in range(outbox.MAX_ATTEMPTS):
        workers.run_recordings()
        outbox.reconcile(workers.runtime.session_factory, workers.runtime.redis)

    recording = workers.recording(recording_id)
    case = workers.case(recording_id)
    with workers.runtime.session() as session:
        process_row = session.scalar(
            select(OutboxMessage).where(OutboxMessage.job_name == outbox.PROCESS_RECORDING)
        )
    assert recording.status == RecordingStatus.STORED.value
    assert recording.twilio_deleted_at is None
    assert not workers.emulator.recording_deleted(recording.recording_sid)
    assert process_row is not None
    assert process_row.done_at is not None
    # The copy at Twilio stays forever, so a person must learn of it from the case.
    assert case.failure_reason is not None
    assert "Twilio" in case.failure_reason


def test_failing_download_gives_up_after_max_attempts(
    make_env: Callable[..., dict[str, str]],
    role_keys: Path,
    public_keys_only: Path,
    ports: Ports,
    engine: VoskEngine,
) -> None:
    for workers in build_workers(
        make_env,
        role_keys,
        public_keys_only,
        ports,
        engine,
        CALLCENTER_TWILIO__DOWNLOAD_ATTEMPTS="1",
    ):
        # Twilio returns 404 for every download, as after a deletion by someone else.
        recording_id = workers.register(speech_8k(), not_ready_responses=1000)
        for _ in range(outbox.MAX_ATTEMPTS + 1):
            workers.run_recordings()
            # A second pass straight after the first must not spend an attempt.
            outbox.reconcile(workers.runtime.session_factory, workers.runtime.redis)
            outbox.reconcile(workers.runtime.session_factory, workers.runtime.redis)

        recording = workers.recording(recording_id)
        case = workers.case(recording_id)
        assert (
            workers.emulator.recording_fetch_count(recording.recording_sid) == outbox.MAX_ATTEMPTS
        )
        assert recording.status == RecordingStatus.FAILED.value
        assert case.status == CaseStatus.RECORDING_FAILED.value
        assert case.failure_reason is not None
        assert recording.recording_sid in case.failure_reason
        assert count_rows(workers.runtime, SealedObject) == 0
        with workers.runtime.session() as session:
            rows = session.scalars(select(OutboxMessage)).all()
        assert [row.attempts for row in rows] == [outbox.MAX_ATTEMPTS]
        assert rows[0].done_at is not None


# Voice webhooks: caller identity and the order of Twilio's requests

WITHHELD_CALLER_ID = "+266696687"


def identity_record(runtime: Runtime, case_id: int) -> dict[str, object] | None:
    """Open the case's sealed identity record with the identity custodian's key."""
    private_key = runtime.keys.load_private(
        ROLE_IDENTITY_CUSTODIAN, PASSPHRASES[ROLE_IDENTITY_CUSTODIAN].encode()
    )
    with runtime.session() as session:
        case = session.get(Case, case_id)
        assert case is not None
        if case.identity_object_id is None:
            return None
        sealed = session.get(SealedObject, case.identity_object_id)
        assert sealed is not None
        record: dict[str, object] = json.loads(
            open_sealed(session, runtime.blobs, sealed, private_key)
        )
        return record


def test_withheld_number_can_call(twilio: Twilio, runtime: Runtime) -> None:
    call_sid = new_call_sid()
    params = {**base_params(call_sid), "From": WITHHELD_CALLER_ID, "Caller": WITHHELD_CALLER_ID}

    status, body = twilio.post(Step("/voice/incoming", params))

    assert status == 200
    assert ET.fromstring(body).find("Gather") is not None
    with runtime.session() as session:
        call = session.scalar(select(Call).where(Call.call_sid == call_sid))
        assert call is not None
        assert call.caller_hash is None


def test_anonymous_caller_keeps_no_hash(twilio: Twilio, runtime: Runtime) -> None:
    call_sid = new_call_sid()
    # The caller chooses anonymity (3), then hangs up in the next menu, before any recording.
    twilio.walk(call_sid, keys={"confidentiality": "3"}, until_node="complaint_type")
    ended = {**base_params(call_sid), "CallStatus": "completed"}
    assert twilio.post(Step("/voice/status", ended))[0] == 200

    with runtime.session() as session:
        call = session.scalar(select(Call).where(Call.call_sid == call_sid))
        assert call is not None
        assert call.answers.get("confidentiality") == "anonymous"
        assert call.case_id is None
        assert call.caller_hash is None, "the keyed hash of an anonymous caller's number is kept"


def test_racing_webhooks_open_one_case(
    twilio: Twilio,
    runtime: Runtime,
    settings: Settings,
    app: Flask,
    ports: Ports,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import callcenter.calls
    import callcenter.references

    call_sid = new_call_sid()
    action, status_callback = twilio.record_action_path(call_sid)
    status_params = recording_status_params(
        call_sid, new_recording_sid(), settings.twilio.api_base_url
    )
    action_params = {
        **base_params(call_sid),
        "RecordingUrl": status_params["RecordingUrl"],
        "RecordingDuration": "9",
        "Digits": "#",
    }

    # Both requests read "no case yet" before either inserts one.
    barrier = threading.Barrier(2, timeout=5)
    allocate = callcenter.references.allocate_reference

    def allocate_together(session: Session) -> str:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return allocate(session)

    monkeypatch.setattr(callcenter.calls, "allocate_reference", allocate_together)
    answers: list[int] = []

    def send(base_url: str, path: str, params: dict[str, str]) -> None:
        headers = {"X-Twilio-Signature": twilio.sign(path, params)}
        response = requests.post(base_url + path, data=params, headers=headers, timeout=30)
        answers.append(response.status_code)

    for server in serve_app(app, ports.app):
        live = [(server.url, action, action_params), (server.url, status_callback, status_params)]
        threads = [threading.Thread(target=send, args=request) for request in live]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(40)

    assert not barrier.broken, "the two requests never ran side by side"
    assert answers == [200, 200]
    assert count_rows(runtime, Case) == 1
    case = case_of_call(runtime, call_sid)
    assert case is not None
    with runtime.session() as session:
        recording = session.scalar(select(Recording))
        assert recording is not None
        assert recording.case_id == case.id
        chain = verify_chain(session, bytes.fromhex(AUDIT_KEY_HEX))
    assert chain.ok, chain.reason


def test_identity_kept_when_status_callback_first(
    twilio: Twilio, runtime: Runtime, settings: Settings
) -> None:
    call_sid = new_call_sid()
    action, status_callback = twilio.record_action_path(call_sid)
    recording_sid = new_recording_sid()
    status_params = recording_status_params(call_sid, recording_sid, settings.twilio.api_base_url)

    # Twilio sends the status callback and the action independently; here the
    # callback wins, as it does when the action request times out and is retried.
    status, _ = twilio.post(Step(status_callback, status_params))
    assert status == 200
    action_params = {
        **base_params(call_sid),
        "RecordingUrl": status_params["RecordingUrl"],
        "RecordingDuration": "9",
        "Digits": "#",
    }
    status, _ = twilio.post(Step(action, action_params))
    assert status == 200

    case = case_of_call(runtime, call_sid)
    assert case is not None
    record = identity_record(runtime, case.id)
    assert record is not None
    assert record["phone_number"] == CALLER


def test_absent_recording_leaves_no_silent_case(
    twilio: Twilio, runtime: Runtime, settings: Settings
) -> None:
    call_sid = new_call_sid()
    action, status_callback = twilio.record_action_path(call_sid)
    recording_sid = new_recording_sid()
    status_params = recording_status_params(
        call_sid, recording_sid, settings.twilio.api_base_url, status="absent"
    )
    action_params = {
        **base_params(call_sid),
        "RecordingUrl": status_params["RecordingUrl"],
        "RecordingDuration": "0",
        "Digits": "hangup",
    }

    # The caller hangs up right after the beep: Twilio reports the action, then "absent".
    assert twilio.post(Step(action, action_params))[0] == 200
    assert twilio.post(Step(status_callback, {**status_params, "ErrorCode": "16101"}))[0] == 200
    assert (
        twilio.post(Step("/voice/status", {**base_params(call_sid), "CallStatus": "completed"}))[0]
        == 200
    )

    case = case_of_call(runtime, call_sid)
    assert count_rows(runtime, Recording) == 0
    # Either no case, as for a call that ended in the menus, or a case with a failure reason.
    if case is not None:
        assert case.failure_reason is not None


# Whole calls through the emulator, the intake app and both workers


def transcript_text(runtime: Runtime, recording_id: int) -> str:
    private_key = runtime.keys.load_private(
        ROLE_CASE_OFFICE, PASSPHRASES[ROLE_CASE_OFFICE].encode()
    )
    with runtime.session() as session:
        transcript = session.scalar(
            select(Transcript).where(Transcript.recording_id == recording_id)
        )
        assert transcript is not None, f"recording {recording_id} has no transcript"
        sealed = session.get(SealedObject, transcript.sealed_object_id)
        assert sealed is not None
        text: str = json.loads(open_sealed(session, runtime.blobs, sealed, private_key))["text"]
        return text


@dataclass
class Line:
    """The intake app served on 127.0.0.1 with public keys only, plus the workers."""

    workers: Workers

    def phone(self, digits: tuple[str | None, ...], recordings: list[bytes | str | None]) -> str:
        result = self.workers.emulator.call(digits=digits, recordings=recordings)
        assert result.status == "completed", result
        return result.call_sid


@pytest.fixture
def line(
    make_env: Callable[..., dict[str, str]],
    role_keys: Path,
    public_keys_only: Path,
    ports: Ports,
    engine: VoskEngine,
) -> Iterator[Line]:
    for workers in build_workers(make_env, role_keys, public_keys_only, ports, engine):
        application = create_app(workers.intake)
        try:
            for _server in serve_app(application, ports.app):
                yield Line(workers)
        finally:
            application.extensions["callcenter_runtime"].close()


def test_case_shows_rerecorded_complaint(line: Line) -> None:
    from callcenter.cases import read_case

    # The first take is a tone, in which Vosk hears almost nothing. The caller presses 2
    # to record again, speaks the complaint and presses 1 to keep that take.
    first_take = wav_bytes(tone(3.0, 8000), 8000)
    keys = ("1", "1", "1", "1", "1", "1", "2", "1")
    call_sid = line.phone(keys, [first_take, speech_8k()])
    line.workers.run_recordings()
    line.workers.run_transcription()

    runtime = line.workers.runtime
    case = case_of_call(runtime, call_sid)
    assert case is not None
    with runtime.session() as session:
        takes = session.scalars(
            select(Recording).where(Recording.case_id == case.id).order_by(Recording.id)
        ).all()
    assert len(takes) == 2

    texts = [transcript_text(runtime, take.id) for take in takes]
    case_view = read_case(runtime, case.reference, actor="adversarial-test")
    assert texts[1], "Vosk heard nothing in the spoken take"
    assert texts[0] != texts[1]
    assert case_view["status"] == CaseStatus.AWAITING_REVIEW.value
    assert case_view["transcript"] == texts[1], "the case shows the take the caller discarded"


# Redis trouble during a webhook


@contextlib.contextmanager
def hung_redis() -> Iterator[str]:
    """Yield the URL of a TCP port that accepts connections but never replies.

    This is what a stopped (SIGSTOP), swapping or partitioned Redis looks like to a
    client: the connection opens, and no reply ever arrives.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    finally:
        # Closing the listener resets the queued connections, which frees any stuck client.
        listener.close()


def post_in_thread(twilio: Twilio, step: Step, seconds: float) -> tuple[int, bytes] | None:
    """Send a webhook and return its answer, or None if none came within ``seconds``."""
    answers: list[tuple[int, bytes]] = []
    thread = threading.Thread(target=lambda: answers.append(twilio.post(step)), daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return None
    assert time.monotonic() - started < seconds
    return answers[0]


def test_recording_webhook_survives_hung_redis(
    make_env: Callable[..., dict[str, str]], ports: Ports
) -> None:
    with hung_redis() as url:
        intake = load_settings(make_env(CALLCENTER_REDIS__URL=url))
        upgrade(intake.database.url)
        application = create_app(intake)
        runtime: Runtime = application.extensions["callcenter_runtime"]
        try:
            twilio = Twilio(application, intake.app.public_base_url)
            call_sid = new_call_sid()
            _, status_callback = twilio.record_action_path(call_sid)
            params = recording_status_params(
                call_sid, new_recording_sid(), intake.twilio.api_base_url
            )

            # Twilio gives up on a webhook after 15 s; the outbox row makes the enqueue optional.
            answer = post_in_thread(twilio, Step(status_callback, params), seconds=10)

            assert answer is not None, "the webhook hung on Redis"
            assert answer[0] == 200
            assert count_rows(runtime, OutboxMessage) == 1
        finally:
            runtime.close()


def test_follow_up_survives_redis_down(make_env: Callable[..., dict[str, str]]) -> None:
    closed_port = free_port()
    intake = load_settings(make_env(CALLCENTER_REDIS__URL=f"redis://127.0.0.1:{closed_port}/0"))
    upgrade(intake.database.url)
    application = create_app(intake)
    try:
        twilio = Twilio(application, intake.app.public_base_url)
        call_sid = new_call_sid()
        steps = twilio.walk(
            call_sid,
            keys={"complaint_type": "4", "follow_up": "2600000001"},
            until_node="follow_up",
        )

        status, body = twilio.post(steps[-1])

        spoken = " ".join(say.text or "" for say in ET.fromstring(body).iter("Say"))
        assert status == 200
        assert "technical error" not in spoken
    finally:
        application.extensions["callcenter_runtime"].close()


# Confidentiality after a whole call


def printable_strings(data: bytes) -> str:
    """Decode bytes leniently, as `strings` would, for substring searches."""
    return data.decode("utf-8", errors="replace")


def test_no_clear_secrets_after_call(
    line: Line, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private_tmp = tmp_path / "tmpdir"
    private_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    # A file handler, because forked work-horses log in other processes.
    log_file = tmp_path / "all.log"
    handler = logging.FileHandler(log_file)
    root = logging.getLogger()
    previous_level = root.level
    # setLevel, not an attribute write, so that loggers drop their cached levels.
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        keys = ("1", "1", "1", "1", "1", "1", "1")
        call_sid = line.phone(keys, [speech_8k()])
        line.workers.run_recordings()
        line.workers.run_transcription()
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()

    runtime = line.workers.runtime
    case = case_of_call(runtime, call_sid)
    assert case is not None
    with runtime.session() as session:
        recording = session.scalar(select(Recording).where(Recording.case_id == case.id))
        assert recording is not None
    words = [word for word in transcript_text(runtime, recording.id).split() if len(word) > 1]
    assert words
    secrets_in_clear = {
        "caller number": CALLER,
        "caller number without +": CALLER[1:],
        "national caller number": "0" + CALLER[4:],
        "auth token": AUTH_TOKEN,
        "audit key": AUDIT_KEY_HEX,
        "caller hash key": CALLER_HASH_KEY_HEX,
        **{f"passphrase of {role}": phrase for role, phrase in PASSPHRASES.items()},
        **{f"transcript word {word}": word for word in words},
    }

    # Every file the call left behind: the SQLite database with its WAL, the instance
    # folder (keys, sealed blobs) and the private temporary folder.
    database = Path(runtime.settings.database.url.removeprefix("sqlite:///"))
    files = [path for path in database.parent.rglob("*") if path.is_file()]
    assert database in files
    assert log_file in files
    assert "registered recording" in log_file.read_text(encoding="utf-8")
    haystacks = {str(path): printable_strings(path.read_bytes()) for path in files}

    redis = runtime.redis
    for key in redis.keys("*"):
        kind = redis.type(key)
        if kind == b"hash":
            haystacks[f"redis {key!r}"] = printable_strings(repr(redis.hgetall(key)).encode())
        elif kind == b"string":
            value = redis.get(key) or b""
            haystacks[f"redis {key!r}"] = printable_strings(
                value if isinstance(value, bytes) else value.encode()
            )

    assert list(private_tmp.iterdir()) == []
    for place, text in haystacks.items():
        for name, secret in secrets_in_clear.items():
            assert secret not in text, f"{name} found in clear in {place}"


def test_private_files_not_readable_by_others(line: Line) -> None:
    line.phone(("1", "1", "1", "1", "1", "1", "1"), [speech_8k()])
    line.workers.run_recordings()

    settings = line.workers.transcription
    keys = settings.sealing.keys_dir
    blobs = settings.sealing.blobs_dir
    for path in [keys, *keys.iterdir(), *blobs.rglob("*")]:
        if path.name.endswith(".public.json"):
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} has mode {mode:o}"


# Signatures and media URLs


def test_signature_bound_to_path_and_query(twilio: Twilio, runtime: Runtime) -> None:
    call_sid = new_call_sid()
    steps = twilio.walk_to_record(call_sid)
    gather = next(step for step in steps if "/voice/gather?node=" in step.path)
    signature = twilio.sign(gather.path, gather.params)
    path, _, query = gather.path.partition("?")
    https_base = twilio.base.replace("http://", "https://")

    forged = {
        "another route": Step(path.replace("/gather", "/next") + "?" + query, gather.params),
        "a second node": Step(f"{gather.path}&node=record", gather.params),
        "a node first": Step(f"{path}?node=record&{query}", gather.params),
        "another call": Step(gather.path, {**gather.params, "CallSid": new_call_sid()}),
        "an added parameter": Step(gather.path, {**gather.params, "RecordingUrl": "x"}),
    }
    for name, step in forged.items():
        status, _ = twilio.post(step, signature=signature)
        assert status == 403, f"a signature replayed on {name} was accepted"

    status, _ = twilio.post(
        gather, signature=twilio.sign(gather.path, gather.params, base=https_base)
    )
    assert status == 403, "a signature over https:// was accepted for the http:// origin"


def test_huge_and_non_ascii_webhooks(twilio: Twilio, runtime: Runtime) -> None:
    huge = {**base_params(new_call_sid()), "Padding": "x" * (1024 * 1024)}
    status, _ = twilio.post(Step("/voice/incoming", huge))
    assert status == 413
    assert count_rows(runtime, Call) == 0

    arabic = {**base_params(new_call_sid()), "CallerName": "محمد ✓", "FromCity": "عمّان"}
    status, body = twilio.post(Step("/voice/incoming", arabic))
    assert status == 200
    assert ET.fromstring(body).find("Gather") is not None


@pytest.mark.parametrize(
    "media_url",
    [
        "{api}@127.0.0.1:9/2010-04-01/Accounts/{account}/Recordings/{sid}",
        "http://user:pass@{netloc}/2010-04-01/Accounts/{account}/Recordings/{sid}",
        "http://127.0.0.1:9/2010-04-01/Accounts/{account}/Recordings/{sid}",
        "https://{netloc}/2010-04-01/Accounts/{account}/Recordings/{sid}",
        "{api}/2010-04-01/Accounts/{account}/Calls/{sid}",
        "{api}.evil.example/2010-04-01/Accounts/{account}/Recordings/{sid}",
        "http://[::1]:{port}/2010-04-01/Accounts/{account}/Recordings/{sid}",
        "{api}\\@127.0.0.1:9/Recordings/{sid}",
        "file:///etc/passwd#/Recordings/{sid}",
    ],
)
def test_foreign_media_url_never_fetched(
    twilio: Twilio, runtime: Runtime, settings: Settings, media_url: str
) -> None:
    call_sid = new_call_sid()
    _, status_callback = twilio.record_action_path(call_sid)
    api = settings.twilio.api_base_url
    recording_sid = new_recording_sid()
    url = media_url.format(
        api=api,
        netloc=urlsplit(api).netloc,
        port=urlsplit(api).port,
        account=ACCOUNT_SID,
        sid=recording_sid,
    )
    params = recording_status_params(call_sid, recording_sid, api)
    params["RecordingUrl"] = url

    status, _ = twilio.post(Step(status_callback, params))

    assert status == 400
    assert count_rows(runtime, Recording) == 0
    # The worker checks the host again before it sends the credentials.
    with pytest.raises(RecordingDownloadError):
        recordings.download_recording(
            url,
            recording_sid=recording_sid,
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            api_base_url=api,
            attempts=1,
            backoff_seconds=0,
            timeout=1,
        )


def redirecting_handler(seen: list[str], location: str) -> type[http.server.BaseHTTPRequestHandler]:
    """Return a handler that notes each GET's Authorization header and redirects it."""

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    return Redirecting


def test_media_redirect_not_followed(ports: Ports) -> None:
    api_seen: list[str] = []
    evil_seen: list[str] = []
    evil = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), redirecting_handler(evil_seen, "/again")
    )
    evil_url = f"http://127.0.0.1:{evil.server_address[1]}/loot"
    api = http.server.ThreadingHTTPServer(
        ("127.0.0.1", ports.media), redirecting_handler(api_seen, evil_url)
    )
    servers = [evil, api]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()

    try:
        recording_sid = new_recording_sid()
        with pytest.raises(RecordingDownloadError, match="302"):
            recordings.download_recording(
                f"http://127.0.0.1:{ports.media}/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/{recording_sid}",
                recording_sid=recording_sid,
                account_sid=ACCOUNT_SID,
                auth_token=AUTH_TOKEN,
                api_base_url=f"http://127.0.0.1:{ports.media}",
                attempts=2,
                backoff_seconds=0,
                timeout=2,
            )
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()

    assert len(api_seen) == 1
    assert api_seen[0].startswith("Basic ")
    assert evil_seen == [], "Twilio credentials followed a redirect to another host"


# Corrupt and unusual audio through both workers


def riff(*chunks: tuple[bytes, bytes]) -> bytes:
    body = b"".join(
        name + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)
        for name, data in chunks
    )
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


def pcm_fmt(rate: int, channels: int = 1) -> bytes:
    return struct.pack("<HHIIHH", 1, channels, rate, rate * 2 * channels, 2 * channels, 16)


def encoded(samples: np.ndarray, rate: int, container: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=container, subtype=subtype)
    return buffer.getvalue()


def unusual_recordings() -> dict[str, tuple[bytes, str]]:
    """Return recordings by name with the case status each must end in."""
    speech, _ = soundfile.read(io.BytesIO(speech_8k()), dtype="float32")
    pcm = (tone(1.0, 8000) * 32767).astype("<i2").tobytes()
    stereo = np.tile(soxr.resample(speech, 8000, 44100)[:, None], (1, 2)).astype(np.float32)
    failed = CaseStatus.TRANSCRIPTION_FAILED.value
    return {
        "random bytes": (os.urandom(4096), failed),
        "an HTML error page": (b"<html><body>503 Service Unavailable</body></html>", failed),
        "a JSON error body": (b'{"code": 20404, "status": 404}', failed),
        "a header without samples": (wav_bytes(np.zeros(0, dtype=np.float32), 8000), failed),
        "a 0 Hz header": (riff((b"fmt ", pcm_fmt(0)), (b"data", pcm)), failed),
        "a 1 Hz header": (riff((b"fmt ", pcm_fmt(1)), (b"data", pcm)), failed),
        "data before fmt": (riff((b"data", pcm), (b"fmt ", pcm_fmt(8000))), failed),
        "a truncated WAV": (wav_bytes(tone(2.0, 8000), 8000)[:5000], failed),
        "NaN samples": (
            wav_bytes(np.full(8000, np.nan, np.float32), 8000, encoding="FLOAT"),
            failed,
        ),
        "three channels": (wav_bytes(np.tile(tone(1.0, 8000)[:, None], (1, 3)), 8000), failed),
        "an AIFF file": (encoded(tone(1.0, 8000), 8000, "AIFF", "PCM_16"), failed),
        "a cut MP3": (encoded(tone(3.0, 16000), 16000, "MP3", "MPEG_LAYER_III")[:1500], failed),
        "too long": (wav_bytes(np.zeros(8000 * 25, np.float32), 8000), failed),
        "stereo 44.1 kHz speech": (wav_bytes(stereo, 44100), CaseStatus.AWAITING_REVIEW.value),
        "8 kHz mu-law speech": (SPEECH.read_bytes(), CaseStatus.AWAITING_REVIEW.value),
    }


def test_unusual_audio_ends_with_a_reason(workers: Workers) -> None:
    workers.max_audio_seconds = 20
    cases = unusual_recordings()
    ids = {name: workers.register(audio) for name, (audio, _) in cases.items()}
    empty_id = workers.register(b"")

    workers.run_recordings()
    workers.run_transcription()

    for name, (_, expected) in cases.items():
        recording = workers.recording(ids[name])
        case = workers.case(ids[name])
        assert case.status == expected, f"{name}: {case.status}, {case.failure_reason}"
        assert recording.sealed_object_id is not None, f"{name}: the sealed audio is gone"
        assert workers.runtime.blobs.exists(recording.sealed_object_id), name
        assert recording.twilio_deleted_at is not None, name
        if expected == CaseStatus.TRANSCRIPTION_FAILED.value:
            assert case.failure_reason, f"{name}: the case does not say why"

    empty = workers.case(empty_id)
    assert empty.status == CaseStatus.RECORDING_FAILED.value
    assert empty.failure_reason is not None
    assert "0 bytes" in empty.failure_reason
    assert not workers.emulator.recording_deleted(workers.recording(empty_id).recording_sid)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """Run with umask 022, systemd's default for services, whatever the test runner uses."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_database_not_readable_by_others(usual_umask: None, line: Line) -> None:
    line.phone(("1", "1", "1", "1", "1", "1", "1"), [speech_8k()])

    database = Path(line.workers.intake.database.url.removeprefix("sqlite:///"))
    files = [path for path in database.parent.glob(database.name + "*") if path.is_file()]
    assert database in files
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path.name} has mode {mode:o}"
