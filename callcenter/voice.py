"""Voice webhooks: Twilio asks, we answer with TwiML.

Every route checks Twilio's signature and is idempotent, because Twilio retries:
each action URL names the node it answers (``?node=``), and a request for a node
the call has already left is a replay, answered by re-rendering the current node
without applying it again. Recordings are keyed by RecordingSid.

Per-call state lives in the ``calls`` table keyed by CallSid, because Twilio does
not keep cookies for voice calls. The caller's number is never stored or logged.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, request, send_from_directory
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from twilio.twiml.voice_response import VoiceResponse

from callcenter import outbox
from callcenter.references import allocate_reference
from callcenter.runtime import Runtime
from callcenter.signature import require_twilio_signature
from ivr_flows import engine
from ivr_flows.engine import CallState
from ivr_flows.model import Flow, NodeKind
from ivr_flows.render import RenderOptions, render
from storage.audit import append_event
from storage.models import Call, Case, CaseStatus, Recording

logger = logging.getLogger("callcenter.voice")

bp = Blueprint("voice", __name__, url_prefix="/voice")

FAILURE_PROMPTS = (
    ("ar", "عذراً، حدث خطأ فني. سُجّل ما أرسلته حتى الآن. يرجى معاودة الاتصال لاحقاً."),
    (
        "en",
        "Sorry, a technical error occurred. What you sent so far has been kept. Please call again later.",
    ),
)


class _Urls:
    """Absolute webhook URLs with ASCII-only query strings, so signatures match byte for byte."""

    def __init__(self, base: str) -> None:
        self.base = base + bp.url_prefix if bp.url_prefix else base

    def gather(self, node: str) -> str:
        return f"{self.base}/gather?node={node}"

    def no_input(self, node: str) -> str:
        return f"{self.base}/no-input?node={node}"

    def next(self, node: str) -> str:
        return f"{self.base}/next?node={node}"

    def recorded(self, node: str) -> str:
        return f"{self.base}/recorded?node={node}"

    def empty_recording(self, node: str) -> str:
        return f"{self.base}/empty-recording?node={node}"

    def recording_status(self) -> str:
        return f"{self.base}/recording-status"


def _runtime() -> Runtime:
    runtime: Runtime = current_app.extensions["callcenter_runtime"]
    return runtime


def _flow() -> Flow:
    flow: Flow = current_app.extensions["callcenter_flow"]
    return flow


def _twiml(response: VoiceResponse) -> Response:
    return Response(response.to_xml(), mimetype="text/xml")


def _call_sid() -> str:
    sid = request.form.get("CallSid", "")
    if not (sid.startswith("CA") and len(sid) == 34 and sid.isalnum()):
        abort(400)
    return sid


def _node_param() -> str:
    node = request.args.get("node", "")
    if node not in _flow().nodes:
        abort(400)
    return node


def _state_of(call: Call) -> CallState:
    return CallState(
        node=call.node,
        language=call.language,
        answers=MappingProxyType(dict(call.answers)),
        retries=call.retries,
    )


def _store_state(call: Call, state: CallState) -> None:
    call.node = state.node
    call.language = state.language
    call.answers = dict(state.answers)
    call.retries = state.retries


def _load_call(session: Session, call_sid: str) -> Call:
    call = session.scalar(select(Call).where(Call.call_sid == call_sid))
    if call is None:
        # A continuation for a call we never answered: forged, or from another app.
        logger.warning("no call state for %s on %s", call_sid, request.path)
        abort(404)
    return call


def _prompt_file_url(language: str, node: str) -> str | None:
    folder = current_app.config.get("PROMPTS_DIR")
    if folder is None or not (Path(folder) / language / f"{node}.wav").is_file():
        return None
    return f"{current_app.config['PUBLIC_BASE_URL']}/voice/prompts/{language}/{node}.wav"


def _render_options() -> RenderOptions:
    options: RenderOptions = current_app.extensions["callcenter_render_options"]
    return RenderOptions(
        voices=options.voices,
        gather_timeout_seconds=options.gather_timeout_seconds,
        max_recording_seconds=options.max_recording_seconds,
        silence_timeout_seconds=options.silence_timeout_seconds,
        prompt_file_url=_prompt_file_url,
    )


def _open_case(session: Session, call: Call) -> Case:
    """Open the call's case when it reaches the recording step."""
    if call.case is not None:
        return call.case

    answers = call.answers
    case = Case(
        reference=allocate_reference(session),
        channel="ivr",
        status=CaseStatus.RECEIVED.value,
        complaint_type=answers.get("complaint_type"),
        category=answers.get("category") or answers.get("complaint_type"),
        language=call.language,
    )
    session.add(case)
    session.flush()
    call.case_id = case.id
    call.case = case

    append_event(
        session,
        chain_key=_runtime().settings.require_audit_key(),
        actor="intake",
        action="case.opened",
        case_id=case.id,
        details={"channel": "ivr", "call_id": call.id},
    )
    logger.info("opened case %d for call %s", case.id, call.call_sid)
    return case


def _respond(session: Session, call: Call) -> Response:
    """Render the call's current node, opening the case where the flow records."""
    flow = _flow()
    state = _state_of(call)
    node = flow.node(state.node)

    reference = None
    if node.kind in (NodeKind.RECORD, NodeKind.REFERENCE):
        reference = _open_case(session, call).reference

    session.commit()
    return _twiml(
        render(
            flow,
            state,
            _Urls(current_app.config["PUBLIC_BASE_URL"]),
            _render_options(),
            reference=reference,
        )
    )


def _move(session: Session, call: Call, node_id: str, step: str) -> Response:
    """Apply one step to a call unless this request is a replay of an older one."""
    flow = _flow()
    if call.node != node_id:
        logger.info(
            "replayed %s for node %s; call %s is at %s", step, node_id, call.call_sid, call.node
        )
        return _respond(session, call)

    state = _state_of(call)
    if step == "gather":
        state = engine.press(flow, state, request.form.get("Digits", ""))
    elif step == "no-input":
        state = engine.no_input(flow, state)
    else:
        state = engine.advance(flow, state)

    _store_state(call, state)
    return _respond(session, call)


@bp.post("/incoming")
@require_twilio_signature
def incoming() -> Response:
    """Answer a new call with the flow's first node (or the current one, on a retry)."""
    call_sid = _call_sid()
    flow = _flow()

    with _runtime().session() as session:
        call = session.scalar(select(Call).where(Call.call_sid == call_sid))
        if call is None:
            state = engine.start(flow)
            call = Call(
                call_sid=call_sid,
                flow_id=flow.id,
                node=state.node,
                language=state.language,
                answers={},
            )
            session.add(call)
            try:
                session.flush()
            except IntegrityError:
                # Twilio's retry raced the first request; continue with the stored row.
                session.rollback()
                call = _load_call(session, call_sid)
            else:
                logger.info("answered call %s", call_sid)
        return _respond(session, call)


@bp.post("/gather")
@require_twilio_signature
def gather() -> Response:
    """Apply the key a caller pressed at a menu."""
    node_id = _node_param()
    with _runtime().session() as session:
        return _move(session, _load_call(session, _call_sid()), node_id, "gather")


@bp.post("/no-input")
@require_twilio_signature
def no_input() -> Response:
    """Handle a menu the caller let time out."""
    node_id = _node_param()
    with _runtime().session() as session:
        return _move(session, _load_call(session, _call_sid()), node_id, "no-input")


@bp.post("/next")
@require_twilio_signature
def next_node() -> Response:
    """Continue after a message or the reference read-back."""
    node_id = _node_param()
    with _runtime().session() as session:
        return _move(session, _load_call(session, _call_sid()), node_id, "next")


@bp.post("/recorded")
@require_twilio_signature
def recorded() -> Response:
    """Move the call on after <Record>; the file itself arrives by the status callback."""
    node_id = _node_param()
    with _runtime().session() as session:
        call = _load_call(session, _call_sid())
        if request.form.get("Digits") == "hangup":
            # The caller is gone: TwiML returned now would not be played.
            if call.node == node_id:
                _store_state(call, engine.advance(_flow(), _state_of(call)))
                session.commit()
            return _twiml(VoiceResponse())
        return _move(session, call, node_id, "next")


@bp.post("/empty-recording")
@require_twilio_signature
def empty_recording() -> Response:
    """Ask once more after an empty recording, then say goodbye."""
    node_id = _node_param()
    flow = _flow()
    with _runtime().session() as session:
        call = _load_call(session, _call_sid())
        if call.node != node_id:
            return _respond(session, call)

        node = flow.node(node_id)
        if call.retries < 1 or node.fallback is None:
            call.retries += 1
        else:
            call.node = node.fallback
            call.retries = 0
            if call.case is not None and not call.case.recordings:
                call.case.failure_reason = "The caller did not speak after the beep, twice."
        return _respond(session, call)


def _recording_url_allowed(url: str) -> bool:
    """Accept only media URLs on Twilio's API host; anything else is never downloaded."""
    allowed = urlsplit(current_app.config["TWILIO_API_BASE_URL"])
    given = urlsplit(url)
    return (given.scheme, given.netloc) == (
        allowed.scheme,
        allowed.netloc,
    ) and "/Recordings/RE" in given.path


@bp.post("/recording-status")
@require_twilio_signature
def recording_status() -> Response:
    """Register a finished recording and queue its download, exactly once per RecordingSid."""
    form = request.form
    call_sid = _call_sid()
    recording_sid = form.get("RecordingSid", "")
    status = form.get("RecordingStatus", "")

    if not (
        recording_sid.startswith("RE") and len(recording_sid) == 34 and recording_sid.isalnum()
    ):
        abort(400)
    if status != "completed":
        logger.info(
            "recording %s of call %s is %s (error %s)",
            recording_sid,
            call_sid,
            status,
            form.get("ErrorCode", "none"),
        )
        return _twiml(VoiceResponse())

    url = form.get("RecordingUrl", "")
    if not _recording_url_allowed(url):
        logger.warning(
            "recording %s has a media URL outside the Twilio API host; ignored", recording_sid
        )
        abort(400)

    runtime = _runtime()
    with runtime.session() as session:
        if (
            session.scalar(select(Recording.id).where(Recording.recording_sid == recording_sid))
            is not None
        ):
            logger.info("recording %s already registered (replay)", recording_sid)
            return _twiml(VoiceResponse())

        call = _load_call(session, call_sid)
        case = _open_case(session, call)
        recording = Recording(
            recording_sid=recording_sid,
            call_sid=call_sid,
            case_id=case.id,
            source_url=url,
            duration_seconds=_int_or_none(form.get("RecordingDuration")),
        )
        session.add(recording)
        try:
            session.flush()
        except IntegrityError:
            session.rollback()
            logger.info("recording %s registered by a concurrent retry", recording_sid)
            return _twiml(VoiceResponse())

        message = outbox.add_message(
            session,
            queue=outbox.RECORDINGS_QUEUE,
            job_name=outbox.PROCESS_RECORDING,
            entity_id=recording.id,
        )
        session.commit()
        logger.info("registered recording %s for case %d", recording_sid, case.id)

        # Committed first, enqueued second: if Redis is down the reconciler enqueues it.
        outbox.enqueue(session, runtime.redis, message)

    return _twiml(VoiceResponse())


@bp.post("/status")
@require_twilio_signature
def call_status() -> Response:
    """Record the call's final status; Twilio ignores the response body."""
    with _runtime().session() as session:
        call = session.scalar(select(Call).where(Call.call_sid == _call_sid()))
        if call is not None:
            call.twilio_status = request.form.get("CallStatus", "completed")[:32]
            call.ended_at = call.ended_at or datetime.now(UTC)
            session.commit()
            logger.info("call %s ended: %s", call.call_sid, call.twilio_status)
    return _twiml(VoiceResponse())


@bp.get("/prompts/<language>/<name>")
def prompt_file(language: str, name: str) -> Response:
    """Serve recorded prompts; Twilio fetches <Play> URLs without parameters or signature."""
    folder = current_app.config.get("PROMPTS_DIR")
    if folder is None or language not in _flow().languages:
        abort(404)
    return send_from_directory(Path(folder) / language, name, mimetype="audio/wav")


def failure_twiml() -> Response:
    """Return TwiML that apologises in both languages and hangs up, for unexpected errors."""
    response = VoiceResponse()
    options: RenderOptions = current_app.extensions["callcenter_render_options"]
    for language, text in FAILURE_PROMPTS:
        voice = options.voices[language]
        response.say(text, voice=voice.name, language=voice.language)
    response.hangup()
    return _twiml(response)


def _int_or_none(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)
