"""Log hygiene: no log record of a whole call holds a number, transcript, key, passphrase or token.

The whole-call test replaces the log record factory, so it sees every record any
logger creates (in this process and in the forked rq work-horses), before any filter
or handler. It therefore checks what the code logs, not what the redaction filter
hides. The filter has tests of its own.
"""

# ruff: noqa: F811 - fixtures imported from tests.test_pipeline are requested by parameter name

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from callcenter.identity import caller_hash
from callcenter.logs import HEX_MASK, MASK, SECRET_MASK, RedactSensitive, redact, register_secrets
from storage.keys import KeyStore
from tests.fixtures.services import (
    AUDIT_KEY_HEX,
    AUTH_TOKEN,
    CALLER_HASH_KEY_HEX,
    PASSPHRASES,
)
from tests.test_pipeline import (  # noqa: F401 - pipeline and vosk_engine are fixtures
    AUDIO,
    CALLER,
    Pipeline,
    phone,
    pipeline,
    vosk_engine,
)


@pytest.fixture
def every_record(tmp_path: Path) -> Iterator[Path]:
    """Write every log record created from now on, in any process forked from this one, to a file."""
    path = tmp_path / "records.jsonl"
    previous_factory = logging.getLogRecordFactory()
    root = logging.getLogger()
    previous_level = root.level

    def capture(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous_factory(*args, **kwargs)  # type: ignore[arg-type]
        entry = {
            "pid": os.getpid(),
            "logger": record.name,
            "message": record.getMessage(),
            "exception": "".join(traceback.format_exception(*record.exc_info))
            if record.exc_info and record.exc_info[0]
            else "",
        }
        # Appending one line per write keeps the lines of forked processes whole.
        with path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        return record

    logging.setLogRecordFactory(capture)
    root.setLevel(logging.DEBUG)
    yield path
    logging.setLogRecordFactory(previous_factory)
    root.setLevel(previous_level)


def private_key_forms(keys_dir: Path) -> list[str]:
    """Return hex and base64 of every role's raw private key."""
    store = KeyStore(keys_dir)
    forms = []
    for role, passphrase in PASSPHRASES.items():
        raw = store.load_private(role, passphrase.encode()).raw
        forms.extend((raw.hex(), base64.b64encode(raw).decode()))
    return forms


@pytest.mark.vosk
@pytest.mark.slow
def test_whole_call_logs_nothing_sensitive(pipeline: Pipeline, every_record: Path) -> None:
    result, emulator = phone(pipeline, AUDIO.read_bytes())
    pipeline.run_workers()
    emulator.stop()

    case = pipeline.case_for(result.call_sid)
    words = [word for word in pipeline.transcript_text(case.id).split() if len(word) >= 2]
    national = CALLER.removeprefix("+962")
    forbidden = {
        "caller number": [CALLER, CALLER[1:], f"0{national}", national],
        "caller hash": [caller_hash(CALLER, bytes.fromhex(CALLER_HASH_KEY_HEX))],
        "transcript word": words,
        "Twilio auth token": [AUTH_TOKEN],
        "audit key": [AUDIT_KEY_HEX],
        "caller hash key": [CALLER_HASH_KEY_HEX],
        "passphrase": list(PASSPHRASES.values()),
        "private key": private_key_forms(pipeline.transcription.sealing.keys_dir),
    }
    records = [json.loads(line) for line in every_record.read_text(encoding="utf-8").splitlines()]
    found = [
        (kind, record["logger"], record["message"][:200])
        for record in records
        for kind, values in forbidden.items()
        for value in values
        if value in record["message"] or value in record["exception"]
    ]

    assert words, "the transcript has no word to look for"
    assert len({record["pid"] for record in records}) >= 2, "no record came from a work-horse"
    assert any("registered recording" in record["message"] for record in records)
    assert found == []


def make_record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("test", logging.INFO, __file__, 1, message, args, None)


def filtered(record: logging.LogRecord) -> str:
    RedactSensitive().filter(record)
    return logging.Formatter("%(message)s").format(record)


@pytest.mark.parametrize(
    "number", ["+962795551234", "0795551234", "+962 79 555 1234", "00962795551234"]
)
def test_filter_masks_numbers(number: str) -> None:
    assert filtered(make_record("call from %s", number)) == f"call from {MASK}"


def test_filter_masks_registered_secret() -> None:
    register_secrets(["a registered passphrase"])

    assert filtered(make_record("opened with %s", "a registered passphrase")) == (
        f"opened with {SECRET_MASK}"
    )


def test_filter_masks_registered_key_in_hex() -> None:
    key = bytes(range(32, 64))
    register_secrets([key])

    assert SECRET_MASK in filtered(make_record("key %s", key.hex().upper()))


def test_filter_masks_long_hex() -> None:
    assert filtered(make_record("hash %s", "ab" * 32)) == f"hash {HEX_MASK}"


def test_filter_keeps_ids() -> None:
    # Object ids and key ids are 32 hex digits and say nothing about a caller.
    message = "sealed object 0123456789abcdef0123456789abcdef for case 17"

    assert filtered(make_record(message)) == message


def test_filter_masks_exception_text() -> None:
    try:
        raise ValueError("rejected +962795551234")
    except ValueError:
        record = logging.LogRecord(
            "test", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )

    text = filtered(record)

    assert "795551234" not in text
    assert MASK in text


def test_settings_register_secrets(make_env: object) -> None:
    from callcenter.settings import load_settings

    load_settings(make_env())  # type: ignore[operator]

    assert AUTH_TOKEN not in redact(f"token {AUTH_TOKEN}")
    assert PASSPHRASES["case_office"] not in redact(PASSPHRASES["case_office"])


def test_configured_handler_filters() -> None:
    from callcenter.logs import configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO")
        filters = [type(item) for handler in root.handlers for item in handler.filters]
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)

    assert filters == [RedactSensitive]
