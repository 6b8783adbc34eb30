"""Whole calls through the Twilio emulator, the intake app and both rq workers.

The intake app and the recordings worker run with a key folder that holds public keys
only; the transcription worker unlocks its own private key. Workers are rq's forking
Worker in burst mode, in this process, so each job runs in a forked work-horse exactly
as in production.
"""

from __future__ import annotations

import json
import logging
import secrets
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import vosk
from flask import Flask
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from sqlalchemy import select

from callcenter import create_app, outbox
from callcenter.emulator import CallResult, TwilioEmulator
from callcenter.identity import refer_case
from callcenter.runtime import Runtime
from callcenter.settings import Settings, load_settings
from callcenter.worker import make_worker, prepare_recordings, prepare_transcription
from storage.migrate import upgrade
from storage.models import (
    Call,
    Case,
    CaseStatus,
    Recording,
    RecordingStatus,
    SealedObject,
    Transcript,
)
from storage.sealing import ROLE_CASE_OFFICE
from storage.vault import open_sealed
from tests.audio_fixtures import run_in_child
from tests.fixtures.services import (
    ACCOUNT_SID,
    AUDIT_KEY_HEX,
    AUTH_TOKEN,
    PASSPHRASES,
    LiveServer,
    Ports,
    serve_app,
)
from transcription.audio import decode_audio
from transcription.catalog import resolve_model_path
from transcription.engine import VoskEngine

pytestmark = [pytest.mark.vosk, pytest.mark.slow]

AUDIO = Path(__file__).resolve().parents[1] / "callcenter" / "demo_audio" / "complaint-ko.wav"
CALLER = "+962795551234"
# Arabic, confidential, no callback, no SMS, human rights, economic and social rights, keep.
HR_ES_DIGITS: tuple[str | None, ...] = ("1", "2", "2", "2", "1", "2", "1")


@pytest.fixture(scope="session")
def vosk_engine() -> VoskEngine:
    return VoskEngine(resolve_model_path("ko", Path("unused")))


@dataclass
class Pipeline:
    intake: Settings
    transcription: Settings
    app: Flask
    server: LiveServer
    ports: Ports
    engine: VoskEngine
    runtime: Runtime

    def emulator(self, **options: object) -> TwilioEmulator:
        return TwilioEmulator(
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            voice_url=f"{self.server.url}/voice/incoming",
            status_callback_url=f"{self.server.url}/voice/status",
            caller=CALLER,
            media_port=self.ports.media,
            **options,  # type: ignore[arg-type]
        )

    def run_workers(self) -> None:
        """Drain both queues with forking workers, recordings first."""
        self.run_recordings_worker()
        self.run_transcription_worker()

    def run_recordings_worker(self) -> None:
        recordings_runtime = Runtime(self.intake)
        prepare_recordings(recordings_runtime)
        make_worker(recordings_runtime, outbox.RECORDINGS_QUEUE).work(burst=True)
        recordings_runtime.close()

    def run_transcription_worker(self) -> None:

        transcription_runtime = Runtime(self.transcription)
        prepare_transcription(transcription_runtime, self.engine)
        make_worker(transcription_runtime, outbox.TRANSCRIPTION_QUEUE).work(burst=True)
        transcription_runtime.close()

    def case_for(self, call_sid: str) -> Case:
        with self.runtime.session() as session:
            case = session.scalar(
                select(Case).join(Call, Call.case_id == Case.id).where(Call.call_sid == call_sid)
            )
            assert case is not None, f"no case for call {call_sid}"
            session.expunge(case)
            return case

    def recording_for(self, case_id: int) -> Recording:
        with self.runtime.session() as session:
            recording = session.scalar(select(Recording).where(Recording.case_id == case_id))
            assert recording is not None
            return recording

    def transcript_text(self, case_id: int) -> str:
        private_key = self.runtime.keys.load_private(
            ROLE_CASE_OFFICE, PASSPHRASES[ROLE_CASE_OFFICE].encode()
        )
        with self.runtime.session() as session:
            transcript = session.scalar(select(Transcript).where(Transcript.case_id == case_id))
            assert transcript is not None
            sealed = session.get(SealedObject, transcript.sealed_object_id)
            assert sealed is not None
            text: str = json.loads(open_sealed(session, self.runtime.blobs, sealed, private_key))[
                "text"
            ]
            return text


def build_pipeline(
    make_env: Callable[..., dict[str, str]],
    role_keys: Path,
    public_keys_only: Path,
    ports: Ports,
    engine: VoskEngine,
    database_url: str | None = None,
) -> Iterator[Pipeline]:
    intake = load_settings(make_env(keys_dir=public_keys_only, database_url=database_url))
    transcription = load_settings(make_env(keys_dir=role_keys, database_url=database_url))
    upgrade(intake.database.url)
    app = create_app(intake)
    runtime = Runtime(transcription)
    for server in serve_app(app, ports.app):
        yield Pipeline(intake, transcription, app, server, ports, engine, runtime)
    runtime.close()
    app.extensions["callcenter_runtime"].close()


@pytest.fixture
def pipeline(
    make_env: Callable[..., dict[str, str]],
    role_keys: Path,
    public_keys_only: Path,
    ports: Ports,
    vosk_engine: VoskEngine,
) -> Iterator[Pipeline]:
    yield from build_pipeline(make_env, role_keys, public_keys_only, ports, vosk_engine)


def phone(
    pipeline: Pipeline,
    audio: bytes,
    digits: tuple[str | None, ...] = HR_ES_DIGITS,
    **options: object,
) -> tuple[CallResult, TwilioEmulator]:
    emulator = pipeline.emulator(**options)
    emulator.start()
    result = emulator.call(digits=digits, recordings=[audio])
    return result, emulator


def raw_vosk_text(engine: VoskEngine, audio: bytes) -> str:
    """Transcribe the same decoded samples with Vosk by hand: the worker's model, one recognizer."""
    pcm = decode_audio(audio, target_rate=engine.sample_rate).samples
    recognizer = vosk.KaldiRecognizer(engine._model, engine.sample_rate)
    texts = []
    for start in range(0, len(pcm), 8000):
        if recognizer.AcceptWaveform(pcm[start : start + 8000]):
            texts.append(json.loads(recognizer.Result())["text"])
    texts.append(json.loads(recognizer.FinalResult())["text"])
    return " ".join(text for text in texts if text)


def test_call_becomes_case_for_review(pipeline: Pipeline) -> None:
    result, emulator = phone(pipeline, AUDIO.read_bytes())
    pipeline.run_workers()
    emulator.stop()

    case = pipeline.case_for(result.call_sid)
    assert result.status == "completed"
    assert case.status == CaseStatus.AWAITING_REVIEW.value
    assert case.complaint_type == "HR"
    assert case.category == "HR.ES"
    assert case.language == "ar"
    assert len(case.reference) == 10


def test_transcript_equals_raw_vosk(pipeline: Pipeline) -> None:
    audio = AUDIO.read_bytes()
    result, emulator = phone(pipeline, audio)
    pipeline.run_workers()
    emulator.stop()

    text = pipeline.transcript_text(pipeline.case_for(result.call_sid).id)
    # Vosk's output drifts with what a loaded model has decoded before, so the raw run
    # uses the worker's model in a forked child, exactly as each work-horse does.
    raw = run_in_child(lambda: raw_vosk_text(pipeline.engine, audio))
    assert text
    assert raw == f"ok: {text}"


def test_twilio_copy_deleted_after_sealing(pipeline: Pipeline) -> None:
    result, emulator = phone(pipeline, AUDIO.read_bytes())
    pipeline.run_workers()
    deleted = emulator.recording_deleted(result.recording_sids[0])
    emulator.stop()

    recording = pipeline.recording_for(pipeline.case_for(result.call_sid).id)
    assert deleted
    assert recording.status == RecordingStatus.STORED.value
    assert recording.twilio_deleted_at is not None


def test_caller_hears_arabic_first(pipeline: Pipeline) -> None:
    result, emulator = phone(pipeline, AUDIO.read_bytes())
    emulator.stop()
    said = result.said()
    assert said[0].language == "arb"
    assert said[0].voice == "Polly.Zeina"
    assert said[1].language == "en-US"


def test_reference_read_back(pipeline: Pipeline) -> None:
    result, emulator = phone(pipeline, AUDIO.read_bytes())
    emulator.stop()
    reference = pipeline.case_for(result.call_sid).reference
    spoken = " ".join(heard.text for heard in result.said("arb"))
    assert " ".join(reference[:3]) in spoken
    assert " ".join(reference[6:]) in spoken


def test_english_caller_hears_english(pipeline: Pipeline) -> None:
    result, emulator = phone(pipeline, AUDIO.read_bytes(), digits=("2", "2", "2", "2", "2", "1"))
    emulator.stop()
    after_language_menu = result.said()[2:]
    assert after_language_menu
    assert {heard.language for heard in after_language_menu} == {"en-US"}
    assert pipeline.case_for(result.call_sid).complaint_type == "SVC"


def test_silent_caller_gets_arabic(pipeline: Pipeline) -> None:
    result, emulator = phone(pipeline, AUDIO.read_bytes(), digits=(None, "3", "3", "1"))
    emulator.stop()
    case = pipeline.case_for(result.call_sid)
    assert case.language == "ar"
    assert case.complaint_type == "OTH"


def test_download_retried_until_ready(pipeline: Pipeline) -> None:
    result, emulator = phone(pipeline, AUDIO.read_bytes(), recording_not_ready_responses=2)
    pipeline.run_workers()
    emulator.stop()
    recording = pipeline.recording_for(pipeline.case_for(result.call_sid).id)
    assert recording.download_attempts == 3
    assert recording.status == RecordingStatus.STORED.value


def test_no_private_key_on_intake(pipeline: Pipeline) -> None:
    keys_dir = pipeline.intake.sealing.keys_dir
    assert sorted(path.name.split(".")[1] for path in keys_dir.iterdir()) == ["public"] * 3
    result, emulator = phone(pipeline, AUDIO.read_bytes())
    pipeline.run_workers()
    emulator.stop()
    assert pipeline.case_for(result.call_sid).status == CaseStatus.AWAITING_REVIEW.value


def corrupt_wav() -> bytes:
    """Return a WAV whose header claims 0 Hz: it would hang Vosk forever."""
    buffer = __import__("io").BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(8000)
        writer.writeframes(secrets.token_bytes(16000))
    data = bytearray(buffer.getvalue())
    data[24:28] = (0).to_bytes(4, "little")
    return bytes(data)


def test_corrupt_recording_keeps_audio(pipeline: Pipeline) -> None:
    result, emulator = phone(pipeline, corrupt_wav())
    pipeline.run_workers()
    emulator.stop()

    case = pipeline.case_for(result.call_sid)
    recording = pipeline.recording_for(case.id)
    assert case.status == CaseStatus.TRANSCRIPTION_FAILED.value
    assert case.failure_reason is not None
    assert "sample rate" in case.failure_reason
    assert recording.sealed_object_id is not None


def test_redis_loss_recovered_by_outbox(pipeline: Pipeline) -> None:
    result, emulator = phone(pipeline, AUDIO.read_bytes())
    # A Redis restart without persistence drops every queued job.
    pipeline.runtime.redis.flushdb()
    requeued = outbox.reconcile(pipeline.runtime.session_factory, pipeline.runtime.redis)
    pipeline.run_workers()
    emulator.stop()

    assert requeued == 1
    assert pipeline.case_for(result.call_sid).status == CaseStatus.AWAITING_REVIEW.value


def test_worker_survives_native_crash(pipeline: Pipeline) -> None:
    redis = pipeline.runtime.redis
    queue = outbox.make_queue(outbox.TRANSCRIPTION_QUEUE, redis)
    crashed = queue.enqueue_call("tests.crash_jobs.segfault", job_id="crash")
    aborted = queue.enqueue_call("tests.crash_jobs.abort", job_id="abort")
    normal = queue.enqueue_call("tests.crash_jobs.succeed", job_id="normal")

    make_worker(pipeline.runtime, outbox.TRANSCRIPTION_QUEUE).work(burst=True)

    def status(job: Job) -> JobStatus:
        return Job.fetch(job.id, connection=redis, serializer=JSONSerializer).get_status()

    assert status(crashed) == JobStatus.FAILED
    assert status(aborted) == JobStatus.FAILED
    assert status(normal) == JobStatus.FINISHED


def test_logs_hold_no_secrets(pipeline: Pipeline, tmp_path: Path) -> None:
    log_file = tmp_path / "all.log"
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        result, emulator = phone(pipeline, AUDIO.read_bytes())
        pipeline.run_workers()
        emulator.stop()
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()

    text = log_file.read_text(encoding="utf-8")
    transcript_words = pipeline.transcript_text(pipeline.case_for(result.call_sid).id).split()
    assert "registered recording" in text
    assert CALLER not in text
    assert CALLER[1:] not in text
    assert AUTH_TOKEN not in text
    assert AUDIT_KEY_HEX not in text
    for passphrase in PASSPHRASES.values():
        assert passphrase not in text
    for word in transcript_words:
        if len(word) > 1:
            assert word not in text, f"transcript word {word!r} found in the logs"


@pytest.mark.postgres
def test_call_on_postgres(
    make_env: Callable[..., dict[str, str]],
    role_keys: Path,
    public_keys_only: Path,
    ports: Ports,
    vosk_engine: VoskEngine,
    fresh_postgres_url: str,
) -> None:
    for pipeline in build_pipeline(
        make_env, role_keys, public_keys_only, ports, vosk_engine, fresh_postgres_url
    ):
        result, emulator = phone(pipeline, AUDIO.read_bytes())
        pipeline.run_workers()
        emulator.stop()
        case = pipeline.case_for(result.call_sid)
        assert case.status == CaseStatus.AWAITING_REVIEW.value
        assert pipeline.transcript_text(case.id)


def test_referred_body_reads_later_transcript(pipeline: Pipeline) -> None:
    body = "body_pipeline"
    store = pipeline.runtime.keys
    store.init_role(body, b"passphrase of the test body")
    try:
        referred_transcript_opens(pipeline, body)
    finally:
        # The key folder is shared by the session; other tests enumerate every key in it.
        for path in store.directory.glob(f"{body}.*"):
            path.unlink()


def referred_transcript_opens(pipeline: Pipeline, body: str) -> None:
    store = pipeline.runtime.keys

    result, emulator = phone(pipeline, AUDIO.read_bytes())
    pipeline.run_recordings_worker()
    case_id = pipeline.case_for(result.call_sid).id
    with pipeline.runtime.session() as session:
        refer_case(
            session,
            pipeline.runtime,
            case=session.get_one(Case, case_id),
            body=body,
            actor="agent:1",
            case_office_key=store.load_private(
                ROLE_CASE_OFFICE, PASSPHRASES[ROLE_CASE_OFFICE].encode()
            ),
        )
        session.commit()
    pipeline.run_transcription_worker()
    emulator.stop()

    body_key = store.load_private(body, b"passphrase of the test body")
    with pipeline.runtime.session() as session:
        transcript = session.scalar(select(Transcript).where(Transcript.case_id == case_id))
        assert transcript is not None
        sealed = session.get_one(SealedObject, transcript.sealed_object_id)
        text = json.loads(open_sealed(session, pipeline.runtime.blobs, sealed, body_key))["text"]
    assert text == pipeline.transcript_text(case_id)
