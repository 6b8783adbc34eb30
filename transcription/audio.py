"""Decode call recordings into the 16-bit mono PCM that Vosk expects.

Vosk (0.3.45) checks nothing about its input: stereo, 8-bit, mu-law or a wrong sample rate
decode into plausible-looking garbage, and a sample rate below 5 Hz makes
``AcceptWaveform`` loop forever in C code, where no Python timeout can stop it. Everything
Vosk could misread is therefore rejected or normalised here first.

Decoding happens in memory only: a recording is confidential, so it never touches a
temporary file.
"""

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import soundfile
import soxr

from transcription.errors import AudioError

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000

# Containers that Twilio can deliver (WAV, MP3) plus FLAC and Ogg. Other formats are rejected
# so that untrusted bytes reach as few libsndfile parsers as possible.
SUPPORTED_CONTAINERS = frozenset({"WAV", "WAVEX", "FLAC", "OGG", "MP3"})

# Frames read from libsndfile per step, so that memory use follows the mono output size rather
# than the whole decoded float input.
_BLOCK_FRAMES = 65536

# Streaming writers (espeak-ng --stdout, for one) cannot seek back to fill in the length and
# write a placeholder near 2**31 or 2**32 instead. Data sizes from here up mean "unknown".
_PLACEHOLDER_DATA_SIZE = 0x7FFF0000

_INT16_SCALE = 32768.0

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PcmAudio:
    """Decoded audio: signed 16-bit little-endian mono samples and what they came from."""

    samples: bytes
    sample_rate: int
    source_format: str
    source_channels: int
    source_rate: int

    @property
    def duration_seconds(self) -> float:
        """Length in seconds, or 0.0 when the sample rate is not positive."""
        if self.sample_rate <= 0:
            return 0.0

        return (len(self.samples) // 2) / self.sample_rate


def decode_audio(data: bytes, *, target_rate: int = 16000, max_seconds: float = 3600.0) -> PcmAudio:
    """Decode an audio file held in memory into mono int16 PCM at ``target_rate``.

    Accepts WAV (PCM 8/16/24/32-bit, float, mu-law, A-law), FLAC, Ogg and MP3, mono or
    stereo, at 8000..48000 Hz. Stereo is averaged to mono and other rates are resampled with
    soxr. Raises AudioError for empty, unreadable, truncated, too long or out-of-range input,
    and ValueError for an invalid ``target_rate``.
    """
    _check_target_rate(target_rate)

    if not data:
        raise AudioError("audio is empty (0 bytes)")

    # The WAV header is checked by hand first: libsndfile reports a 0 Hz header only as
    # "SF_INFO struct incomplete" and silently accepts a data chunk cut short.
    if _is_wav(data):
        _check_wav_header(data)

    with _open_sound_file(data) as sound_file:
        _check_stream_info(sound_file, max_seconds)

        max_frames = int(max_seconds * sound_file.samplerate) + 1
        samples, frames_read = _decode_to_int16(sound_file, target_rate, max_frames)

        # libsndfile shortens a truncated MP3 or Ogg stream without an error, so the frame
        # count from the header is the only sign left.
        if frames_read < sound_file.frames:
            raise AudioError(
                f"audio is truncated: the header declares {sound_file.frames} frames "
                f"but only {frames_read} could be decoded"
            )

        return PcmAudio(
            samples=samples,
            sample_rate=target_rate,
            source_format=sound_file.subtype,
            source_channels=sound_file.channels,
            source_rate=sound_file.samplerate,
        )


def _check_target_rate(target_rate: int) -> None:
    if not MIN_SAMPLE_RATE <= target_rate <= MAX_SAMPLE_RATE:
        raise ValueError(
            f"target rate {target_rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        )


def _check_rate_and_channels(sample_rate: int, channels: int) -> None:
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"sample rate {sample_rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        )

    if channels not in (1, 2):
        raise AudioError(f"{channels} audio channels are not supported (expected 1 or 2)")


def _is_wav(data: bytes) -> bool:
    return len(data) >= 12 and data[0:4] == b"RIFF" and data[8:12] == b"WAVE"


def _iter_riff_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """Yield (chunk id, declared size, offset of the chunk body) of each WAV chunk."""
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = data[offset : offset + 4]
        (size,) = struct.unpack_from("<I", data, offset + 4)
        body_offset = offset + 8
        yield chunk_id, size, body_offset

        # RIFF pads every chunk body to an even length.
        offset = body_offset + size + (size & 1)


def _check_wav_header(data: bytes) -> None:
    """Raise AudioError for an impossible rate or channel count, or a cut-short data chunk."""
    for chunk_id, size, body_offset in _iter_riff_chunks(data):
        if chunk_id == b"fmt ":
            if size < 16 or body_offset + 16 > len(data):
                raise AudioError(f"WAV fmt chunk is truncated ({size} bytes declared)")

            _, channels, sample_rate = struct.unpack_from("<HHI", data, body_offset)
            _check_rate_and_channels(sample_rate, channels)

        elif chunk_id == b"data":
            available = len(data) - body_offset
            if size < _PLACEHOLDER_DATA_SIZE and size > available:
                raise AudioError(
                    f"WAV data chunk declares {size} bytes but only {available} are present "
                    "(the file is truncated)"
                )

            return


def _open_sound_file(data: bytes) -> soundfile.SoundFile:
    try:
        return soundfile.SoundFile(io.BytesIO(data))
    except soundfile.LibsndfileError as error:
        raise AudioError(f"audio is not readable: {error.error_string}") from None


def _check_stream_info(sound_file: soundfile.SoundFile, max_seconds: float) -> None:
    if sound_file.format not in SUPPORTED_CONTAINERS:
        supported = ", ".join(sorted(SUPPORTED_CONTAINERS))
        raise AudioError(
            f"audio container {sound_file.format} is not supported (expected one of {supported})"
        )

    _check_rate_and_channels(sound_file.samplerate, sound_file.channels)

    if sound_file.frames <= 0:
        raise AudioError("audio contains no samples (0 frames)")

    seconds = sound_file.frames / sound_file.samplerate
    if seconds > max_seconds:
        raise AudioError(
            f"audio lasts {seconds:.1f} s, longer than the maximum of {max_seconds:.1f} s"
        )


def _decode_to_int16(
    sound_file: soundfile.SoundFile, target_rate: int, max_frames: int
) -> tuple[bytes, int]:
    """Return (mono int16 little-endian samples at target_rate, source frames read)."""
    resampler = None
    if sound_file.samplerate != target_rate:
        resampler = soxr.ResampleStream(sound_file.samplerate, target_rate, 1, dtype="float32")

    pieces: list[bytes] = []
    frames_read = 0
    for block in _read_blocks(sound_file):
        frames_read += block.shape[0]
        if frames_read > max_frames:
            raise AudioError(
                f"audio is longer than the maximum of {max_frames - 1} frames "
                f"at {sound_file.samplerate} Hz"
            )

        mono = _downmix(block)
        if resampler is not None:
            mono = resampler.resample_chunk(mono)
        pieces.append(_to_int16_bytes(mono))

    # soxr keeps the last few milliseconds buffered until it is called with last=True.
    if resampler is not None:
        tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        pieces.append(_to_int16_bytes(tail))

    return b"".join(pieces), frames_read


def _read_blocks(sound_file: soundfile.SoundFile) -> Iterator[FloatArray]:
    """Yield (frames, channels) float blocks until libsndfile returns no more frames."""
    # SoundFile.blocks() is not used: it reports the header's frame count even when a
    # truncated MP3 ends early, which would hide the truncation.
    while True:
        try:
            block = sound_file.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
        except soundfile.LibsndfileError as error:
            raise AudioError(f"audio is corrupt: {error.error_string}") from None

        if block.shape[0] == 0:
            return

        if not np.all(np.isfinite(block)):
            raise AudioError("audio contains NaN or infinite float samples")

        yield block


def _downmix(block: FloatArray) -> FloatArray:
    """Average the channels of a (frames, channels) block into one channel.

    Twilio records mono unless dual-channel recording is requested, and then each call leg
    has its own channel. Vosk reads any interleaved stereo as one mono stream of twice the
    length, so both legs are averaged into a single channel here.
    """
    if block.shape[1] == 1:
        return block[:, 0]

    mono: FloatArray = block.mean(axis=1, dtype=np.float32)
    return mono


def _to_int16_bytes(samples: FloatArray) -> bytes:
    # Resampling can overshoot full scale slightly, so clip before the conversion.
    scaled = np.clip(np.rint(samples * _INT16_SCALE), -32768, 32767)
    pcm: bytes = scaled.astype("<i2").tobytes()
    return pcm
