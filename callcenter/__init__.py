"""Intake service of the complaints line: Flask app factory."""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from twilio.request_validator import RequestValidator
from werkzeug.exceptions import HTTPException, InternalServerError

from callcenter.calls import FlowHolder
from callcenter.runtime import Runtime
from callcenter.settings import Settings, load_settings
from ivr_flows.calendar import load_calendar
from ivr_flows.render import RenderOptions, Voice

logger = logging.getLogger("callcenter.app")


def create_app(settings: Settings | None = None) -> Flask:
    """Build the intake app; a missing secret or an invalid flow stops it here."""
    settings = settings or load_settings()
    auth_token = settings.require_twilio()
    settings.require_audit_key()
    settings.require_caller_hash_key()

    app = Flask(__name__)
    app.config.update(
        PUBLIC_BASE_URL=settings.app.public_base_url,
        TWILIO_API_BASE_URL=settings.twilio.api_base_url,
        MIN_RECORDING_SECONDS=settings.voice.min_recording_seconds,
        MAX_QUEUE_WAIT_SECONDS=settings.voice.max_queue_wait_seconds,
        # The voice routes keep no session; nothing else needs a cookie yet.
        SESSION_COOKIE_HTTPONLY=True,
        MAX_CONTENT_LENGTH=64 * 1024,
    )

    runtime = Runtime(settings)
    app.extensions["callcenter_runtime"] = runtime
    app.extensions["twilio_validator"] = RequestValidator(auth_token)
    app.extensions["callcenter_flow"] = FlowHolder(settings.voice.flow)
    app.extensions["callcenter_calendar"] = load_calendar(settings.voice.calendar)
    app.extensions["callcenter_render_options"] = _render_options(settings)

    from callcenter import voice

    app.register_blueprint(voice.bp)
    app.register_error_handler(InternalServerError, _internal_error)
    return app


def _render_options(settings: Settings) -> RenderOptions:
    voice = settings.voice
    return RenderOptions(
        voices={
            "ar": Voice(voice.arabic_voice, voice.arabic_language),
            "en": Voice(voice.english_voice, voice.english_language),
        },
        gather_timeout_seconds=voice.gather_timeout_seconds,
        max_recording_seconds=voice.max_recording_seconds,
        silence_timeout_seconds=voice.silence_timeout_seconds,
        prompt_file_url=lambda _language, _node: None,
        agent_queue=voice.agent_queue,
    )


def _internal_error(error: HTTPException) -> Response | HTTPException:
    # Method and path only: the form holds the caller's number.
    original = getattr(error, "original_exception", None)
    logger.error(
        "unhandled %s on %s %s",
        type(original).__name__ if original else "error",
        request.method,
        request.path,
    )
    if request.path.startswith("/voice/"):
        from callcenter.voice import failure_twiml

        return failure_twiml()
    return error
