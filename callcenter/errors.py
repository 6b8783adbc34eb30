"""Exceptions of the callcenter package.

The four packages stay independent, so each has its own root: ``storage.errors``,
``transcription.errors``, ``ivr_flows.errors`` and this module. Every message names
the value at fault and what to do, and never carries personal data or secrets.
"""

from __future__ import annotations


class CallcenterError(Exception):
    """Root of the errors raised by the callcenter package."""


class ConfigurationError(CallcenterError):
    """A setting or secret is missing or invalid; the message names it and the fix."""


class TelephonyError(CallcenterError):
    """Talking to Twilio failed."""


class RecordingDownloadError(TelephonyError):
    """A recording could not be downloaded from Twilio."""

    def __init__(self, message: str, *, recording_sid: str, retryable: bool) -> None:
        super().__init__(message)
        self.recording_sid = recording_sid
        self.retryable = retryable
