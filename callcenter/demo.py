"""The demo: one spoken complaint, end to end, on embedded defaults.

It starts the embedded Redis, migrates SQLite, creates role keys, starts the intake
app and both workers as separate processes (as in production), phones the app
through the local Twilio emulator, waits for the transcript and returns the case.

NOTE: the demo keeps its generated secrets in <instance>/demo-secrets.env beside
the keys they protect, which is fine for a demonstration and wrong for a deployment.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select

from callcenter import embedded_redis
from callcenter.cases import read_case
from callcenter.errors import CallcenterError
from callcenter.runtime import Runtime
from callcenter.settings import Settings, load_settings
from callcenter.simulate import emulator_for, free_local_port, wait_until_deleted
from storage.keys import KeyStore
from storage.migrate import upgrade
from storage.models import Call, Case, CaseStatus
from storage.sealing import ALL_ROLES
from transcription.catalog import resolve_model_path
from transcription.errors import ModelNotFoundError

logger = logging.getLogger("callcenter.demo")

DEMO_ACCOUNT_SID = "AC" + "de" * 16
AUDIO_DIR = Path(__file__).resolve().parent / "demo_audio"
FINAL_STATUSES = (
    CaseStatus.AWAITING_REVIEW.value,
    CaseStatus.TRANSCRIPTION_FAILED.value,
    CaseStatus.RECORDING_FAILED.value,
)
# Arabic, confidential, no callback, no SMS, human rights, economic and social rights,
# then keep the recording.
DEMO_DIGITS = ("1", "2", "2", "2", "1", "2", "1")


def _demo_secrets(instance: Path) -> dict[str, str]:
    """Read the demo's secrets, creating any that are missing (all of them on the first run)."""
    path = instance / "demo-secrets.env"
    values: dict[str, str] = {}
    if path.exists():
        pairs = (
            line.split("=", 1)
            for line in path.read_text(encoding="utf-8").splitlines()
            if "=" in line
        )
        values = {name: value for name, value in pairs}

    names = [
        "CALLCENTER_TWILIO_AUTH_TOKEN",
        "CALLCENTER_AUDIT_KEY",
        "CALLCENTER_CALLER_HASH_KEY",
        *(f"CALLCENTER_{role.upper()}_PASSPHRASE" for role in ALL_ROLES),
    ]
    missing = {name: _new_secret(name) for name in names if not values.get(name)}
    if missing:
        values.update(missing)
        instance.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.writelines(f"{name}={value}\n" for name, value in values.items())
    return values


def _new_secret(name: str) -> str:
    if name.endswith("_PASSPHRASE"):
        return secrets.token_urlsafe(24)
    # Keys are hex; the auth token only needs to match between the app and the emulator.
    return secrets.token_hex(16 if name.endswith("AUTH_TOKEN") else 32)


def _choose_model(settings: Settings) -> tuple[str, Path]:
    """Use the Arabic model when installed, else the packaged Korean one, and say so."""
    try:
        resolve_model_path("ar", settings.transcription.models_dir)
    except ModelNotFoundError:
        print(
            "The Arabic Vosk model is not installed (`callcenter models install ar` needs internet); "
            "this demo uses the packaged Korean model and a Korean recording instead.",
            file=sys.stderr,
        )
        return "ko", AUDIO_DIR / "complaint-ko.wav"
    return "ar", AUDIO_DIR / "complaint-ar.wav"


def _environment(instance: Path, model: str, app_port: int, media_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(_demo_secrets(instance))
    env.update(
        {
            "CALLCENTER_APP__PUBLIC_BASE_URL": f"http://127.0.0.1:{app_port}",
            "CALLCENTER_APP__PORT": str(app_port),
            "CALLCENTER_TWILIO__ACCOUNT_SID": DEMO_ACCOUNT_SID,
            "CALLCENTER_TWILIO__API_BASE_URL": f"http://127.0.0.1:{media_port}",
            # The emulator has the recording ready at once; short waits keep the demo quick.
            "CALLCENTER_TWILIO__DOWNLOAD_BACKOFF_SECONDS": "0.5",
            "CALLCENTER_TRANSCRIPTION__MODEL": model,
            "CALLCENTER_REDIS__RECONCILE_INTERVAL_SECONDS": "5",
        }
    )
    return env


@contextmanager
def _process(
    args: list[str], env: Mapping[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own console script
            [sys.executable, "-m", "callcenter", *args],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for_port(
    port: int, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CallcenterError(
                f"the intake app exited with status {process.returncode}; see {log_path}"
            )
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise CallcenterError(
        f"the intake app did not listen on port {port} within {timeout:.0f} s; see {log_path}"
    )


def _wait_for_case(
    runtime: Runtime, call_sid: str, workers: list[subprocess.Popen[bytes]], timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            if worker.poll() is not None:
                raise CallcenterError(
                    f"a worker exited with status {worker.returncode}; see the logs in instance/logs"
                )
        with runtime.session() as session:
            case = session.scalar(
                select(Case).join(Call, Call.case_id == Case.id).where(Call.call_sid == call_sid)
            )
            if case is not None and case.status in FINAL_STATUSES:
                return case.reference
        time.sleep(0.5)
    raise CallcenterError(f"no transcript within {timeout:.0f} s; see the logs in instance/logs")


def run_demo(*, timeout: float = 600) -> dict[str, Any]:
    """Run the whole pipeline once and return the case as the demo prints it."""
    base_settings = load_settings()
    if not base_settings.redis.embedded or not base_settings.database.url.startswith("sqlite"):
        raise CallcenterError(
            "the demo runs on embedded defaults: unset CALLCENTER_DATABASE__URL and CALLCENTER_REDIS__URL"
        )

    instance = base_settings.app.instance_path
    logs = instance / "logs"
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)

    model, audio_path = _choose_model(base_settings)
    app_port, media_port = free_local_port(), free_local_port()
    env = _environment(instance, model, app_port, media_port)
    settings = load_settings(env)

    with ExitStack() as stack:
        redis_process = embedded_redis.start(settings.redis.socket_path)
        if redis_process is not None:
            stack.callback(embedded_redis.stop, redis_process)

        upgrade(settings.database.url)
        store = KeyStore(settings.sealing.keys_dir)
        for role in ALL_ROLES:
            if role not in store.roles():
                store.init_role(role, settings.secrets.passphrase(role), settings.sealing.algorithm)

        emulator = stack.enter_context(emulator_for(settings))
        app = stack.enter_context(_process(["serve"], env, logs / "intake.log"))
        workers = [
            stack.enter_context(
                _process(["worker", "recordings"], env, logs / "worker-recordings.log")
            ),
            stack.enter_context(
                _process(["worker", "transcription"], env, logs / "worker-transcription.log")
            ),
        ]
        _wait_for_port(app_port, app, logs / "intake.log")

        result = emulator.call(digits=DEMO_DIGITS, recordings=[audio_path.read_bytes()])
        if result.status != "completed" or not result.recording_sids:
            raise CallcenterError(
                f"the simulated call ended {result.status} with errors {result.errors}; see {logs / 'intake.log'}"
            )
        wait_until_deleted(emulator, result.recording_sids, timeout)

        runtime = Runtime(settings)
        try:
            reference = _wait_for_case(runtime, result.call_sid, workers, timeout)
            case = read_case(runtime, reference, actor="demo")
        finally:
            runtime.close()

    keys = (
        "reference",
        "status",
        "complaint_type",
        "category",
        "language",
        "recording_seconds",
        "transcript",
    )
    return {key: case[key] for key in keys}
