"""Tests of transcription.audio.decode_audio on real encoder output and on broken input."""

import io
import struct
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.audio_fixtures import (
    ARABIC_SENTENCES,
    KOREAN_SENTENCES,
    speak,
    tone,
    wav_bytes,
    wav_with_header_rate,
)
from transcription.audio import PcmAudio, decode_audio
from transcription.errors import AudioError

# Resampling and container framing may add or drop a few milliseconds.
DURATION_TOLERANCE_SECONDS = 0.01

# (source rate, WAV subtype, channels) of the encodings a recording may arrive in.
ENCODINGS = [
    (16000, "PCM_16", 1),
    (8000, "PCM_16", 1),
    (8000, "ULAW", 1),
    (8000, "ALAW", 1),
    (16000, "PCM_16", 2),
    (8000, "ULAW", 2),
    (16000, "PCM_U8", 1),
    (16000, "FLOAT", 1),
    (44100, "PCM_16", 1),
]
ENCODING_IDS = [f"{rate}-{encoding}-{channels}ch" for rate, encoding, channels in ENCODINGS]


def _source_seconds(data: bytes) -> float:
    info = soundfile.info(io.BytesIO(data))
    return float(info.frames / info.samplerate)


def _int16(audio: PcmAudio) -> np.ndarray:
    return np.frombuffer(audio.samples, dtype="<i2")


def _cut_header(data: bytes) -> bytes:
    """Keep only the RIFF, fmt and data chunk headers of a canonical 44-byte-header WAV."""
    return data[:44]


@pytest.mark.parametrize(("rate", "encoding", "channels"), ENCODINGS, ids=ENCODING_IDS)
def test_decode_duration(rate: int, encoding: str, channels: int) -> None:
    data = speak(KOREAN_SENTENCES[0], "ko", rate=rate, encoding=encoding, channels=channels)

    audio = decode_audio(data)

    assert abs(audio.duration_seconds - _source_seconds(data)) < DURATION_TOLERANCE_SECONDS


@pytest.mark.parametrize(("rate", "encoding", "channels"), ENCODINGS, ids=ENCODING_IDS)
def test_decode_source_fields(rate: int, encoding: str, channels: int) -> None:
    data = speak(KOREAN_SENTENCES[0], "ko", rate=rate, encoding=encoding, channels=channels)

    audio = decode_audio(data)

    assert (audio.source_format, audio.source_rate, audio.source_channels) == (
        encoding,
        rate,
        channels,
    )


@pytest.mark.parametrize(("rate", "encoding", "channels"), ENCODINGS, ids=ENCODING_IDS)
def test_decode_target_rate(rate: int, encoding: str, channels: int) -> None:
    data = speak(KOREAN_SENTENCES[0], "ko", rate=rate, encoding=encoding, channels=channels)

    audio = decode_audio(data)

    assert audio.sample_rate == 16000


@pytest.mark.parametrize(("rate", "encoding", "channels"), ENCODINGS, ids=ENCODING_IDS)
def test_decode_even_length(rate: int, encoding: str, channels: int) -> None:
    data = speak(KOREAN_SENTENCES[0], "ko", rate=rate, encoding=encoding, channels=channels)

    audio = decode_audio(data)

    assert len(audio.samples) % 2 == 0


def test_decode_arabic_speech() -> None:
    data = speak(ARABIC_SENTENCES[0], "ar", rate=8000, encoding="ULAW")

    audio = decode_audio(data)

    assert abs(audio.duration_seconds - _source_seconds(data)) < DURATION_TOLERANCE_SECONDS


def test_decode_pcm16_bit_exact() -> None:
    expected = np.random.default_rng(7).integers(-32768, 32768, 16000).astype("<i2")
    buffer = io.BytesIO()
    soundfile.write(buffer, expected, 16000, format="WAV", subtype="PCM_16")

    audio = decode_audio(buffer.getvalue())

    assert np.array_equal(_int16(audio), expected)


def test_decode_mulaw_matches_sox() -> None:
    data = speak(KOREAN_SENTENCES[1], "ko", rate=8000, encoding="ULAW")
    reference = subprocess.run(
        ["sox", "-t", "wav", "-", "-t", "raw", "-e", "signed-integer", "-b", "16", "-"],
        input=data,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout

    audio = decode_audio(data, target_rate=8000)

    assert audio.samples == reference


def test_decode_stereo_averages_channels() -> None:
    left = tone(1.0, 16000)
    stereo = np.column_stack([left, np.zeros_like(left)])

    audio = decode_audio(wav_bytes(stereo, 16000))

    expected = np.rint(left * 32768 / 2)
    assert np.max(np.abs(_int16(audio) - expected)) <= 1


def test_decode_resamples_8k_to_16k() -> None:
    data = wav_bytes(tone(2.0, 8000), 8000)

    audio = decode_audio(data, target_rate=16000)

    assert abs(len(_int16(audio)) - 32000) <= 2


def test_decode_downsamples_to_8k() -> None:
    data = wav_bytes(tone(2.0, 16000), 16000)

    audio = decode_audio(data, target_rate=8000)

    assert abs(len(_int16(audio)) - 16000) <= 2


def test_decode_keeps_tone_frequency() -> None:
    data = wav_bytes(tone(1.0, 8000, frequency=1000.0), 8000, encoding="ULAW")

    audio = decode_audio(data, target_rate=16000)

    spectrum = np.abs(np.fft.rfft(_int16(audio)))
    peak_hz = np.argmax(spectrum) * 16000 / len(_int16(audio))
    assert abs(peak_hz - 1000.0) < 2.0


def _mp3_bytes(seconds: float) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(seconds, 16000), 16000, format="MP3", subtype="MPEG_LAYER_III")
    return buffer.getvalue()


def _flac_bytes(seconds: float) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(seconds, 16000), 16000, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def _aiff_bytes() -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(1.0, 16000), 16000, format="AIFF", subtype="PCM_16")
    return buffer.getvalue()


def _three_channel_wav() -> bytes:
    return wav_bytes(np.zeros((16000, 3), dtype=np.float32), 16000)


def _zero_frame_wav() -> bytes:
    return wav_bytes(np.zeros(0, dtype=np.float32), 16000)


def _nan_float_wav() -> bytes:
    samples = tone(1.0, 16000)
    samples[100] = np.nan
    return wav_bytes(samples, 16000, encoding="FLOAT")


def _truncated_wav() -> bytes:
    data = wav_bytes(tone(2.0, 16000), 16000)
    return data[: len(data) // 2]


def _odd_truncated_wav() -> bytes:
    return wav_bytes(tone(2.0, 16000), 16000)[:1001]


def _header_only_wav() -> bytes:
    return _cut_header(wav_bytes(tone(1.0, 16000), 16000))


def _truncated_mp3() -> bytes:
    data = _mp3_bytes(5.0)
    return data[: len(data) // 2]


def _truncated_flac() -> bytes:
    data = _flac_bytes(5.0)
    return data[: len(data) // 2]


REJECTED = {
    "rate-0": (lambda: wav_with_header_rate(0), "sample rate 0 Hz"),
    "rate-1": (lambda: wav_with_header_rate(1), "sample rate 1 Hz"),
    "rate-4": (lambda: wav_with_header_rate(4), "sample rate 4 Hz"),
    "rate-minus-5": (lambda: wav_with_header_rate(-5), "sample rate 4294967291 Hz"),
    "rate-7999": (lambda: wav_with_header_rate(7999), "sample rate 7999 Hz"),
    "rate-96000": (lambda: wav_with_header_rate(96000), "sample rate 96000 Hz"),
    "empty": (lambda: b"", "empty"),
    "random-bytes": (lambda: np.random.default_rng(3).bytes(4096), "not readable"),
    "text-file": (lambda: "مرحبا، هذا ملف نصي وليس تسجيلا\n".encode() * 20, "not readable"),
    "header-only": (_header_only_wav, "truncated"),
    "truncated-half": (_truncated_wav, "truncated"),
    "truncated-odd": (_odd_truncated_wav, "truncated"),
    "truncated-mp3": (_truncated_mp3, "truncated"),
    "truncated-flac": (_truncated_flac, "corrupt"),
    "three-channels": (_three_channel_wav, "3 audio channels"),
    "zero-frames": (_zero_frame_wav, "no samples"),
    "nan-samples": (_nan_float_wav, "NaN"),
    "aiff-container": (_aiff_bytes, "container AIFF"),
}


@pytest.mark.parametrize(("make_data", "message"), REJECTED.values(), ids=REJECTED.keys())
def test_decode_rejects(make_data: Callable[[], bytes], message: str) -> None:
    with pytest.raises(AudioError, match=message):
        decode_audio(make_data())


def test_decode_rejects_too_long() -> None:
    data = wav_bytes(tone(3.0, 8000), 8000)

    with pytest.raises(AudioError, match="longer than the maximum"):
        decode_audio(data, max_seconds=2.0)


def test_decode_rejects_long_mp3() -> None:
    with pytest.raises(AudioError, match="longer than the maximum"):
        decode_audio(_mp3_bytes(3.0), max_seconds=2.0)


def test_decode_accepts_mp3() -> None:
    audio = decode_audio(_mp3_bytes(2.0))

    assert abs(audio.duration_seconds - 2.0) < 0.1


def test_decode_accepts_placeholder_length() -> None:
    # espeak-ng writes its WAV to a pipe, so its data chunk size is a placeholder.
    data = speak(KOREAN_SENTENCES[0], "ko")
    streamed = data[:40] + struct.pack("<I", 0xFFFFFFFF) + data[44:]

    audio = decode_audio(streamed)

    assert abs(audio.duration_seconds - _source_seconds(data)) < DURATION_TOLERANCE_SECONDS


def test_decode_rejects_bad_target_rate() -> None:
    with pytest.raises(ValueError, match="target rate 4 Hz"):
        decode_audio(wav_bytes(tone(1.0, 16000), 16000), target_rate=4)


def test_duration_zero_rate() -> None:
    audio = PcmAudio(b"\x00\x00", 0, "PCM_16", 1, 0)

    assert audio.duration_seconds == 0.0


def _decode_every_format() -> None:
    for rate, encoding, channels in ENCODINGS:
        data = speak(KOREAN_SENTENCES[0], "ko", rate=rate, encoding=encoding, channels=channels)
        decode_audio(data)

    decode_audio(_mp3_bytes(1.0))
    decode_audio(_flac_bytes(1.0))


def test_decode_leaves_tmpdir_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Build the inputs first: the fixtures themselves are allowed to use temporary files.
    _decode_every_format()
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp_dir))
    monkeypatch.setattr(tempfile, "tempdir", None)

    _decode_every_format()

    assert list(temp_dir.iterdir()) == []


def test_decode_never_calls_tempfile(monkeypatch: pytest.MonkeyPatch) -> None:
    _decode_every_format()

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("decode_audio created a temporary file")

    for name in (
        "mkstemp",
        "mkdtemp",
        "NamedTemporaryFile",
        "TemporaryFile",
        "SpooledTemporaryFile",
    ):
        monkeypatch.setattr(tempfile, name, forbidden)

    _decode_every_format()


@settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.binary(max_size=2048))
def test_decode_random_bytes_fuzz(data: bytes) -> None:
    try:
        audio = decode_audio(data)
    except AudioError:
        return

    assert len(audio.samples) % 2 == 0


_FUZZ_BASE = wav_bytes(tone(0.25, 8000), 8000, encoding="ULAW")


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), min_size=1, max_size=6))
def test_decode_header_mutation_fuzz(edits: list[tuple[int, int]]) -> None:
    data = bytearray(_FUZZ_BASE)
    for offset, value in edits:
        data[offset] = value

    try:
        audio = decode_audio(bytes(data))
    except AudioError:
        return

    assert audio.source_rate >= 8000
