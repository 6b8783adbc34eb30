"""Logging setup: one named logger per component and a filter that masks phone numbers.

Code never passes a caller's number, a transcript or a key to a logger. The filter is
the second line of defence: it masks anything shaped like an E.164 number, so a
library that logs request parameters cannot leak one either.
"""

from __future__ import annotations

import logging
import re

PHONE_PATTERN = re.compile(r"(?<![\w/])\+?\d[\d\s-]{7,}\d")
MASK = "[number removed]"


class RedactPhoneNumbers(logging.Filter):
    """Replace phone-number-shaped text in every record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = PHONE_PATTERN.sub(MASK, message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


def configure_logging(level: str = "INFO") -> None:
    """Send every component's records to stderr through the redaction filter."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactPhoneNumbers())

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
