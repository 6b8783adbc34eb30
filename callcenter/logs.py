"""Logging setup: one named logger per component and a filter that redacts sensitive text.

Code never passes a caller's number, a transcript, a key or a passphrase to a logger.
The filter is the second line of defence, so that a library that logs request
parameters or an exception that quotes a value cannot leak one either. It replaces:

- every secret registered with :func:`register_secrets` (load_settings registers the
  Twilio auth token, the audit and caller-hash keys and every passphrase);
- runs of 64 or more hex digits, the shape of those keys and of caller hashes;
- anything shaped like a phone number.

It cannot recognize transcript words, which is why no code logs transcript text.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

# Digits inside a longer word, such as a hex object id that starts with ten digits,
# are not a phone number.
PHONE_PATTERN = re.compile(r"(?<![\w/])\+?\d[\d\s-]{7,}\d(?!\w)")
LONG_HEX_PATTERN = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64,}(?![0-9A-Fa-f])")
MASK = "[number removed]"
SECRET_MASK = "[secret removed]"  # noqa: S105 - the replacement text, not a secret
HEX_MASK = "[key or hash removed]"

# Shorter values would mask ordinary words; every real secret here is longer.
MIN_SECRET_LENGTH = 8

_secrets_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()


def register_secrets(values: Iterable[str | bytes | None]) -> None:
    """Add values that the filter must mask wherever they appear in a log record.

    Bytes are registered as their UTF-8 text (passphrases) and as lower- and
    upper-case hex (keys). Values shorter than MIN_SECRET_LENGTH are ignored.
    """
    global _secrets

    forms: set[str] = set()
    for value in values:
        if value is None:
            continue
        if isinstance(value, bytes):
            forms.update((value.hex(), value.hex().upper()))
            value = value.decode("utf-8", errors="ignore")
        forms.add(value)

    with _secrets_lock:
        _secrets = _secrets | {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


def redact(text: str) -> str:
    """Return ``text`` with registered secrets, long hex runs and phone numbers masked."""
    # Longest first, so a secret that contains another is masked whole.
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, SECRET_MASK)

    text = LONG_HEX_PATTERN.sub(HEX_MASK, text)
    return PHONE_PATTERN.sub(MASK, text)


class RedactSensitive(logging.Filter):
    """Redact every record's final message, traceback and stack before any handler formats it."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None

        # The formatter renders exc_info only when exc_text is empty, so rendering it
        # here lets the redacted text replace the traceback.
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)

        return True


# The earlier name, for callers that still use it.
RedactPhoneNumbers = RedactSensitive


def configure_logging(level: str = "INFO") -> None:
    """Send every component's records to stderr through the redaction filter."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSensitive())

    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

    # Werkzeug logs each request line with its query string; ours carry only node ids,
    # but the access log adds nothing a person must act on.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # At INFO it logs full request URLs with their query parameters.
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)
    # rq logs job descriptions at INFO; ours are ids only, and it stays at WARNING anyway.
    logging.getLogger("rq.worker").setLevel(max(logging.getLevelName(level), logging.INFO))
