"""Run every benchmark once and print each measurement as a ratio to its baseline or budget.

Ratios measured in one run on one machine compare like with like, so they stay
meaningful on a busy or slower machine where absolute times do not.
Run with `make bench`; results of a reference run are in docs/benchmarks.md.
"""

from __future__ import annotations

import os
import resource
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.sealing import SealContext, generate_key_pair, seal, unseal

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT / "callcenter" / "demo_audio" / "complaint-ko.wav"
# Twilio abandons a webhook after 15 s and plays an error to the caller.
TWILIO_WEBHOOK_BUDGET_SECONDS = 15.0


def best_of(runs: int, action: Callable[[], object]) -> float:
    """Return the fastest wall time of several runs, the least disturbed by other load."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def bench_sealing() -> None:
    """Sealing 10 MB (two recipients, chunked AAD) against one-shot AES-256-GCM of the same bytes."""
    data = secrets.token_bytes(10 * 1024 * 1024)
    recipients = [generate_key_pair("transcription")[0], generate_key_pair("case_office")[0]]
    private = generate_key_pair("transcription")
    context = SealContext(case_id=1, object_id="0" * 32, kind="recording")
    key, nonce = AESGCM.generate_key(bit_length=256), secrets.token_bytes(12)

    raw = best_of(5, lambda: AESGCM(key).encrypt(nonce, data, None))
    sealed_time = best_of(5, lambda: seal(data, context, recipients))
    print(
        f"seal 10 MB / raw AES-GCM:        {sealed_time / raw:6.2f}x  ({sealed_time * 1000:.1f} ms vs {raw * 1000:.1f} ms)"
    )

    sealed = seal(data, context, [private[0]])
    opened = best_of(5, lambda: unseal(sealed.ciphertext, context, sealed.wraps[0], private[1]))
    print(f"unseal 10 MB / raw AES-GCM:      {opened / raw:6.2f}x  ({opened * 1000:.1f} ms)")
    print(f"ciphertext size / plaintext:     {len(sealed.ciphertext) / len(data):6.4f}x")


def bench_transcription() -> None:
    """Real-time factor of the engine: wall time over audio time, with the packaged Korean model."""
    from transcription.audio import decode_audio
    from transcription.catalog import resolve_model_path
    from transcription.engine import VoskEngine

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    engine = VoskEngine(resolve_model_path("ko", Path("unused")))
    load = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    audio = decode_audio(AUDIO.read_bytes(), target_rate=engine.sample_rate)
    wall = best_of(3, lambda: engine.transcribe(audio))
    print(
        f"transcription real-time factor:  {wall / audio.duration_seconds:6.3f}   ({wall:.2f} s for {audio.duration_seconds:.1f} s of audio)"
    )
    print(
        f"model load / one transcription:  {load / wall:6.2f}x  (load {load:.2f} s, peak RSS +{(after - before) / 1024:.0f} MB)"
    )


def bench_webhook() -> None:
    """Median time of a signed menu webhook (SQLite) as a share of Twilio's 15 s budget."""
    from twilio.request_validator import RequestValidator

    from callcenter import create_app
    from callcenter.settings import load_settings
    from storage.migrate import upgrade

    with tempfile.TemporaryDirectory() as folder:
        token = secrets.token_hex(16)
        env = {
            "CALLCENTER_CONFIG": str(ROOT / "config.toml"),
            "CALLCENTER_APP__INSTANCE_PATH": folder,
            "CALLCENTER_TWILIO__ACCOUNT_SID": "AC" + "0" * 32,
            "CALLCENTER_TWILIO_AUTH_TOKEN": token,
            "CALLCENTER_AUDIT_KEY": secrets.token_hex(32),
            "CALLCENTER_CALLER_HASH_KEY": secrets.token_hex(32),
        }
        settings = load_settings(env)
        upgrade(settings.database.url)
        client = create_app(settings).test_client()
        validator = RequestValidator(token)

        def post(path: str, params: dict[str, str]) -> None:
            url = settings.app.public_base_url + path
            client.post(
                path,
                data=params,
                headers={"X-Twilio-Signature": validator.compute_signature(url, params)},
            )

        times = []
        for index in range(200):
            params = {
                "CallSid": f"CA{index:032x}",
                "From": "+962790000000",
                "AccountSid": "AC" + "0" * 32,
            }
            post("/voice/incoming", params)
            started = time.perf_counter()
            post("/voice/gather?node=language", {**params, "Digits": "1"})
            times.append(time.perf_counter() - started)

    median = statistics.median(times)
    print(
        f"menu webhook / Twilio's budget:  {median / TWILIO_WEBHOOK_BUDGET_SECONDS:6.5f}   (median {median * 1000:.1f} ms of {TWILIO_WEBHOOK_BUDGET_SECONDS:.0f} s)"
    )


def main() -> None:
    print(f"benchmarks on {os.cpu_count()} CPU(s); each line is a ratio measured in this run")
    bench_sealing()
    bench_webhook()
    bench_transcription()


main()
