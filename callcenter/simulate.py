"""One simulated phone call against a running intake app, through the local Twilio emulator."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from callcenter.emulator import CallResult, TwilioEmulator
from callcenter.errors import ConfigurationError
from callcenter.settings import LOOPBACK_HOSTS, Settings

logger = logging.getLogger("callcenter.simulate")


def free_local_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now, for a server started right after."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def emulator_for(settings: Settings, *, caller: str = "+962790000001") -> TwilioEmulator:
    """Build an emulator that serves media where the app expects Twilio's API to be."""
    api = urlsplit(settings.twilio.api_base_url)
    if api.scheme != "http" or api.hostname not in LOOPBACK_HOSTS or api.port is None:
        raise ConfigurationError(
            f"twilio.api_base_url = {settings.twilio.api_base_url!r}: a simulated call needs a "
            "loopback address with a port, such as http://127.0.0.1:8765, set for the app too "
            "(CALLCENTER_TWILIO__API_BASE_URL)."
        )

    base = settings.app.public_base_url
    return TwilioEmulator(
        account_sid=settings.twilio.account_sid,
        auth_token=settings.require_twilio(),
        voice_url=f"{base}/voice/incoming",
        status_callback_url=f"{base}/voice/status",
        caller=caller,
        media_port=api.port,
    )


def wait_until_deleted(
    emulator: TwilioEmulator, recording_sids: Sequence[str], timeout: float
) -> bool:
    """Keep the emulator serving until the app has fetched and deleted every recording."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(emulator.recording_deleted(sid) for sid in recording_sids):
            return True
        time.sleep(0.2)
    return False


def simulate_call(
    settings: Settings,
    *,
    digits: Sequence[str | None],
    audio: bytes,
    caller: str = "+962790000001",
    wait_seconds: float = 120.0,
) -> CallResult:
    """Run one call and wait until the recordings worker has taken the recording."""
    with emulator_for(settings, caller=caller) as emulator:
        result = emulator.call(digits=digits, recordings=[audio])
        if result.recording_sids and not wait_until_deleted(
            emulator, result.recording_sids, wait_seconds
        ):
            logger.warning(
                "the recordings worker did not delete recording(s) %s within %.0f s; is it running?",
                ", ".join(result.recording_sids),
                wait_seconds,
            )
    return result
