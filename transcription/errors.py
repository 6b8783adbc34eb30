"""Exceptions of the transcription subsystem.

    TranscriptionError
    ├── AudioError          the audio is invalid, corrupt or in an unsupported format
    ├── ModelNotFoundError  no usable Vosk model at the configured place
    └── ModelInstallError   downloading, unpacking or checking a model failed

Messages name the offending value and, where there is one, the fix. They never contain
audio-derived text, a caller's phone number or key material.
"""


class TranscriptionError(Exception):
    """Base class of every error raised by the transcription package."""


class AudioError(TranscriptionError):
    """Invalid, corrupt or unsupported audio, rejected before it reaches Vosk."""


class ModelNotFoundError(TranscriptionError):
    """The configured Vosk model is missing or is not a model directory."""


class ModelInstallError(TranscriptionError):
    """A model could not be downloaded, unpacked or load-checked."""
