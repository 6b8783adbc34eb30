"""No plaintext at rest or in transit: a whole call leaves no transcript, number or audio in clear.

After one call through the emulator, the intake app and both workers, the test scans
every file under the test's folder (the instance folder with the blob store, the
SQLite database with its write-ahead log), the process's temporary folder and every
key and value in the Redis database for fragments of the transcript, the caller's
number and the recorded audio. Values that rq compresses with zlib are scanned
decompressed too.
"""

# ruff: noqa: F811 - fixtures imported from tests.test_pipeline are requested by parameter name

from __future__ import annotations

import contextlib
import stat
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer
from sqlalchemy import select

from callcenter import embedded_redis, outbox
from callcenter.errors import ConfigurationError
from callcenter.identity import caller_hash
from callcenter.runtime import Runtime
from callcenter.settings import load_settings
from callcenter.worker import make_worker
from storage.models import ObjectKind, SealedObject
from storage.sealing import ROLE_CASE_OFFICE, ROLE_IDENTITY_CUSTODIAN, ROLE_TRANSCRIPTION
from tests.fixtures.services import CALLER_HASH_KEY_HEX
from tests.test_pipeline import (  # noqa: F401 - pipeline and vosk_engine are fixtures
    AUDIO,
    CALLER,
    Pipeline,
    phone,
    pipeline,
    vosk_engine,
)

pytestmark = [pytest.mark.vosk, pytest.mark.slow]

Env = Callable[..., dict[str, str]]


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the process's temporary folder at a fresh one, so the scan sees only this call."""
    folder = tmp_path / "tmp"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def number_forms(number: str) -> list[bytes]:
    """Return the ways a Jordanian mobile number may be written: E.164, international, national."""
    digits = number.removeprefix("+")
    national = digits.removeprefix("962")
    return [form.encode() for form in (number, digits, f"0{national}", national)]


def transcript_fragments(text: str) -> list[bytes]:
    # Words of one character are three UTF-8 bytes, short enough to occur in ciphertext
    # by chance; two characters or more (six bytes or more) do not.
    words = [word for word in text.split() if len(word) >= 2]
    return [text.encode(), *(word.encode() for word in words)]


def audio_fragments(audio: bytes, count: int = 8, size: int = 32) -> list[bytes]:
    """Return high-entropy windows of the PCM data, never runs of silence."""
    fragments = []
    step = (len(audio) - 44) // (count + 1)
    for index in range(1, count + 1):
        start = 44 + index * step
        window = audio[start : start + size]
        if len(set(window)) >= 16:
            fragments.append(window)
    return fragments


def files_under(*roots: Path) -> Iterator[Path]:
    for root in roots:
        yield from (path for path in root.rglob("*") if path.is_file())


def redis_values(client: Redis) -> Iterator[tuple[bytes, bytes]]:
    """Yield (key, value) for every key in the database, with zlib values also decompressed."""
    for key in client.scan_iter("*"):
        kind = client.type(key)
        values: list[bytes] = [key]
        if kind == b"string":
            values.append(client.get(key) or b"")
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                values.extend((field, value))
        elif kind == b"list":
            values.extend(client.lrange(key, 0, -1))
        elif kind == b"set":
            values.extend(client.smembers(key))
        elif kind == b"zset":
            values.extend(member for member, _score in client.zrange(key, 0, -1, withscores=True))
        elif kind == b"stream":
            for _id, entry in client.xrange(key):
                for field, value in entry.items():
                    values.extend((field, value))

        for value in values:
            yield key, value
            with contextlib.suppress(zlib.error):
                yield key, zlib.decompress(value)


def find(fragments: list[bytes], haystack: bytes) -> list[bytes]:
    return [fragment for fragment in fragments if fragment in haystack]


def test_whole_call_leaves_no_plaintext(
    pipeline: Pipeline, private_tmp: Path, tmp_path: Path
) -> None:
    audio = AUDIO.read_bytes()
    result, emulator = phone(pipeline, audio)
    pipeline.run_workers()
    emulator.stop()
    case = pipeline.case_for(result.call_sid)
    transcript = pipeline.transcript_text(case.id)
    fragments = transcript_fragments(transcript) + number_forms(CALLER) + audio_fragments(audio)
    pipeline.runtime.engine.dispose()

    file_hits = {
        str(path.relative_to(tmp_path)): hits
        for path in files_under(tmp_path, private_tmp)
        if (hits := find(fragments, path.read_bytes()))
    }
    redis_hits = {
        key: hits
        for key, value in redis_values(pipeline.runtime.redis)
        if (hits := find(fragments, value))
    }
    database = b"".join(path.read_bytes() for path in tmp_path.glob("callcenter.sqlite3*"))
    blobs = list(files_under(pipeline.intake.sealing.blobs_dir))

    # Controls: the fragments are real, and the scans read what they claim to read.
    assert transcript
    assert len(audio_fragments(audio)) >= 4
    assert len(blobs) >= 2, "expected the sealed recording and transcript in the blob store"
    assert caller_hash(CALLER, bytes.fromhex(CALLER_HASH_KEY_HEX)).encode() in database
    assert any(True for _ in redis_values(pipeline.runtime.redis)), "Redis holds no keys to scan"
    # The claims.
    assert file_hits == {}, f"plaintext found in files: {file_hits}"
    assert redis_hits == {}, f"plaintext found in Redis: {redis_hits}"
    assert list(private_tmp.iterdir()) == [], "the call left temporary files"


def test_call_objects_wrapped_by_role(pipeline: Pipeline) -> None:
    result, emulator = phone(pipeline, AUDIO.read_bytes())
    pipeline.run_workers()
    emulator.stop()
    case = pipeline.case_for(result.call_sid)

    with pipeline.runtime.session() as session:
        roles = {
            obj.kind: sorted(wrap.role for wrap in obj.wraps)
            for obj in session.scalars(select(SealedObject).where(SealedObject.case_id == case.id))
        }

    # The recording opens for transcription and the case office, the transcript for the
    # case office alone, and the identity record for the identity custodian alone.
    assert roles == {
        ObjectKind.RECORDING.value: [ROLE_CASE_OFFICE, ROLE_TRANSCRIPTION],
        ObjectKind.TRANSCRIPT.value: [ROLE_CASE_OFFICE],
        ObjectKind.IDENTITY.value: [ROLE_IDENTITY_CUSTODIAN],
    }


def test_jobs_carry_ids_only(pipeline: Pipeline) -> None:
    result, emulator = phone(pipeline, AUDIO.read_bytes())
    pipeline.run_workers()
    emulator.stop()
    redis = pipeline.runtime.redis

    job_ids = [key.decode().removeprefix("rq:job:") for key in redis.scan_iter("rq:job:*")]
    jobs = [Job.fetch(job_id, connection=redis, serializer=JSONSerializer) for job_id in job_ids]

    assert result.status == "completed"
    assert {job.func_name for job in jobs} == {
        outbox.PROCESS_RECORDING,
        outbox.TRANSCRIBE_RECORDING,
    }
    for job in jobs:
        assert len(job.args) == 1, f"job {job.id} has arguments {job.args}"
        assert isinstance(job.args[0], int), f"job {job.id} has arguments {job.args}"
        assert job.kwargs == {}
        assert job.description == job.id


def test_worker_logs_no_job_description(pipeline: Pipeline) -> None:
    for queue in (outbox.RECORDINGS_QUEUE, outbox.TRANSCRIPTION_QUEUE):
        assert make_worker(pipeline.runtime, queue).log_job_description is False


def test_embedded_redis_arguments_have_no_tcp_port(tmp_path: Path) -> None:
    arguments = embedded_redis.server_arguments(tmp_path / "redis.sock", tmp_path)

    assert arguments[arguments.index("--port") + 1] == "0"
    assert arguments[arguments.index("--unixsocketperm") + 1] == "700"


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Path]:
    socket_path = tmp_path / "redis.sock"
    process = embedded_redis.start(socket_path)
    assert process is not None
    yield socket_path
    embedded_redis.stop(process)


def test_embedded_redis_socket_owner_only(embedded: Path) -> None:
    assert stat.S_IMODE(embedded.stat().st_mode) == 0o700


def test_embedded_redis_listens_on_no_port(embedded: Path) -> None:
    with Redis(unix_socket_path=str(embedded)) as client:
        port = client.config_get("port")["port"]

    assert port == "0"


def test_default_redis_is_unix_socket(make_env: Env) -> None:
    env = make_env()
    env["CALLCENTER_REDIS__URL"] = ""
    settings = load_settings(env)

    assert settings.redis.embedded
    assert settings.redis.url.startswith("unix://")


def test_remote_redis_needs_password(make_env: Env) -> None:
    with pytest.raises(ConfigurationError, match="without a password"):
        load_settings(make_env(CALLCENTER_REDIS__URL="redis://queue.internal:6379/0"))


def test_remote_redis_with_password_accepted(make_env: Env) -> None:
    settings = load_settings(
        make_env(CALLCENTER_REDIS__URL="rediss://:s3cret-pass@queue.internal:6380/0")
    )

    assert not settings.redis.embedded


def test_loopback_redis_accepted(make_env: Env) -> None:
    # The tests' own Redis: reachable only from this machine.
    settings = load_settings(make_env(CALLCENTER_REDIS__URL="redis://127.0.0.1:6379/7"))

    assert settings.redis.url.endswith("/7")


def test_outbox_job_argument_is_row_id(pipeline: Pipeline) -> None:
    runtime: Runtime = pipeline.runtime
    with runtime.session() as session:
        message = outbox.add_message(
            session, queue=outbox.RECORDINGS_QUEUE, job_name=outbox.PROCESS_RECORDING, entity_id=42
        )
        session.commit()
        outbox.enqueue(session, runtime.redis, message)

    job = Job.fetch(message.job_id, connection=runtime.redis, serializer=JSONSerializer)
    assert job.args == [42]
