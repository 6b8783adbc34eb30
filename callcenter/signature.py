"""Check Twilio's X-Twilio-Signature on every voice webhook.

The signed URL is rebuilt from the configured public origin, the path and the raw
query string. ``request.url`` is not used: Werkzeug percent-decodes its query, and
behind a TLS proxy its scheme and host are the proxy's, so both would reject real
Twilio requests or, worse, tempt someone to switch the check off.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from flask import abort, current_app, request
from twilio.request_validator import RequestValidator

logger = logging.getLogger("callcenter.voice")

P = ParamSpec("P")
R = TypeVar("R")


def signed_url() -> str:
    """Return the URL exactly as Twilio requested it, for signing."""
    base: str = current_app.config["PUBLIC_BASE_URL"]
    url = base + request.path
    if request.query_string:
        url += "?" + request.query_string.decode("latin-1")
    return url


def require_twilio_signature(view: Callable[P, R]) -> Callable[P, R]:
    """Reject with 403 any request whose signature does not match the auth token."""

    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        signature = request.headers.get("X-Twilio-Signature", "")
        validator: RequestValidator = current_app.extensions["twilio_validator"]

        if not signature or not validator.validate(signed_url(), request.form, signature):
            # Path and method only: the parameters carry the caller's number.
            logger.warning(
                "rejected %s %s: %s X-Twilio-Signature",
                request.method,
                request.path,
                "invalid" if signature else "missing",
            )
            abort(403)

        return view(*args, **kwargs)

    return wrapper
