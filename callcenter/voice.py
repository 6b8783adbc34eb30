"""Voice webhooks: Twilio asks, we answer with TwiML.

Every route checks Twilio's signature and is idempotent, because Twilio retries:
each action URL names the node it answers (``?node=``), and a request for a node
the call has already left is a replay, answered by re-rendering the current node
without applying it again. Recordings are keyed by RecordingSid.

The caller's number is never stored in clear or logged: it goes only into the
sealed identity record and, as a keyed hash, into ``calls.caller_hash``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, request, send_from_directory
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from twilio.twiml.voice_response import VoiceResponse

from callcenter import outbox
from callcenter.calls import FlowHolder, find_call, open_case, state_of, store_state
from callcenter.identity import caller_hash_or_none
from callcenter.identity_hooks import caller_key, on_case_opened, seal_identity_if_missing
from callcenter.references import is_valid_reference
from callcenter.runtime import Runtime
from callcenter.signature import require_twilio_signature
from ivr_flows import engine
from ivr_flows.calendar import Calendar
from ivr_flows.engine import CallState
from ivr_flows.model import Flow, NodeKind, Prompt
from ivr_flows.render import Context, RenderOptions, render
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
# Follow-up lookups allowed per caller per hour, against guessing other callers' references.
FOLLOW_UP_LIMIT = 5
FOLLOW_UP_WINDOW_SECONDS = 3600
# Set on a call when Twilio reports its recording absent before the <Record> action arrives.
ABSENT_FLAG = "_recording_absent"


class _Urls:
    """Absolute webhook URLs with ASCII-only query strings, so signatures match byte for byte."""

    def __init__(self, base: str) -> None:
        self.base = f"{base}/voice"

    def _url(self, path: str, node: str) -> str:
        return f"{self.base}/{path}?node={node}"

    def gather(self, node: str) -> str:
        return self._url("gather", node)

    def no_input(self, node: str) -> str:
        return self._url("no-input", node)

    def next(self, node: str) -> str:
        return self._url("next", node)

    def recorded(self, node: str) -> str:
        return self._url("recorded", node)

    def empty_recording(self, node: str) -> str:
        return self._url("empty-recording", node)

    def recording_status(self) -> str:
        return f"{self.base}/recording-status"

    def follow_up(self, node: str) -> str:
        return self._url("follow-up", node)

    def queue_wait(self, node: str) -> str:
        return self._url("queue-wait", node)

    def queue_result(self, node: str) -> str:
        return self._url("queue-result", node)

    def unavailable(self, node: str) -> str:
        return self._url("unavailable", node)


def _runtime() -> Runtime:
    runtime: Runtime = current_app.extensions["callcenter_runtime"]
    return runtime


def _flow() -> Flow:
    holder: FlowHolder = current_app.extensions["callcenter_flow"]
    return holder.current()


def _calendar() -> Calendar:
    calendar: Calendar = current_app.extensions["callcenter_calendar"]
    return calendar


def _audit_key() -> bytes:
    return _runtime().settings.require_audit_key()


def _twiml(response: VoiceResponse) -> Response:
    return Response(response.to_xml(), mimetype="text/xml")


def _empty() -> Response:
    return _twiml(VoiceResponse())


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


def _load_call(session: Session, call_sid: str) -> Call:
    call = find_call(session, call_sid)
    if call is None:
        # A continuation for a call we never answered: forged, or from another app.
        logger.warning("no call state for %s on %s", call_sid, request.path)
        abort(404)
    if call.node not in _flow().nodes:
        # The flow was edited and this node removed: continue from the start.
        logger.warning("call %s was at node %s, which the reloaded flow lacks", call_sid, call.node)
        store_state(call, engine.start(_flow()))
    return call


def _prompt_file_url(language: str, node: str) -> str | None:
    flow = _flow()
    if flow.prompts_dir is None or not (flow.prompts_dir / language / f"{node}.wav").is_file():
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
        agent_queue=options.agent_queue,
    )


def _open_case(session: Session, call: Call) -> Case:
    opened = open_case(session, call, audit_key=_audit_key())
    if opened.created:
        on_case_opened(
            session, _runtime(), call=call, case=opened.case, caller=request.form.get("From", "")
        )
    return opened.case


def _respond(session: Session, call: Call, preface: Sequence[Prompt] = ()) -> Response:
    """Render the call's current node after committing its state."""
    flow = _flow()
    node = flow.node(call.node)
    context = Context(preface=preface)

    if node.kind is NodeKind.REFERENCE:
        case = session.get(Case, call.case_id) if call.case_id is not None else None
        if case is None:
            # No recording reached us, so there is no case and no number to read.
            store_state(call, engine.advance(flow, state_of(call)))
            return _respond(session, call, preface)
        context = Context(reference=case.reference, preface=preface)
    elif node.kind is NodeKind.AGENT:
        open_now = _calendar().is_open(datetime.now(UTC))
        hours = Prompt(texts=_calendar().description)
        context = Context(preface=preface, agents_open=open_now, hours=hours)

    session.commit()
    urls = _Urls(current_app.config["PUBLIC_BASE_URL"])
    return _twiml(render(flow, state_of(call), urls, _render_options(), context))


def _apply(session: Session, call: Call, node_id: str, step: str) -> Response:
    """Apply one step to a call unless this request is a replay of an older one."""
    flow = _flow()
    if call.node != node_id:
        logger.info(
            "replayed %s for node %s; call %s is at %s", step, node_id, call.call_sid, call.node
        )
        return _respond(session, call)

    state = state_of(call)
    if step == "gather":
        state = engine.press(flow, state, request.form.get("Digits", ""))
    elif step == "no-input":
        state = engine.no_input(flow, state)
    elif step == "unavailable":
        state = engine.unavailable(flow, state)
    else:
        state = engine.advance(flow, state)

    store_state(call, state)
    if state.answers.get("confidentiality") == "anonymous":
        # Chosen now, so even a call that ends before recording keeps no trace of the number.
        call.caller_hash = None
    return _respond(session, call)


@bp.post("/incoming")
@require_twilio_signature
def incoming() -> Response:
    """Answer a new call with the flow's first node (or the current one, on a retry)."""
    call_sid = _call_sid()
    flow = _flow()

    with _runtime().session() as session:
        call = find_call(session, call_sid)
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
                caller_key(session, _runtime(), call=call, caller=request.form.get("From", ""))
                logger.info("answered call %s", call_sid)
        return _respond(session, call)


@bp.post("/gather")
@require_twilio_signature
def gather() -> Response:
    """Apply the key a caller pressed at a menu or at the reference read-back."""
    node_id = _node_param()
    with _runtime().session() as session:
        return _apply(session, _load_call(session, _call_sid()), node_id, "gather")


@bp.post("/no-input")
@require_twilio_signature
def no_input() -> Response:
    """Handle a menu the caller let time out."""
    node_id = _node_param()
    with _runtime().session() as session:
        return _apply(session, _load_call(session, _call_sid()), node_id, "no-input")


@bp.post("/next")
@require_twilio_signature
def next_node() -> Response:
    """Continue after a message."""
    node_id = _node_param()
    with _runtime().session() as session:
        return _apply(session, _load_call(session, _call_sid()), node_id, "next")


@bp.post("/recorded")
@require_twilio_signature
def recorded() -> Response:
    """Open the case and move on after <Record>; the file itself arrives by the status callback."""
    node_id = _node_param()
    form = request.form
    flow = _flow()
    minimum = current_app.config["MIN_RECORDING_SECONDS"]

    with _runtime().session() as session:
        call = _load_call(session, _call_sid())
        if call.node != node_id:
            return _respond(session, call)

        # Twilio may report the recording absent before this action arrives.
        reported_absent = call.answers.get(ABSENT_FLAG) == "yes"
        if reported_absent:
            call.answers = {
                name: value for name, value in call.answers.items() if name != ABSENT_FLAG
            }
        has_recording = bool(form.get("RecordingUrl")) and not reported_absent
        duration = _int_or_none(form.get("RecordingDuration")) or 0
        if has_recording:
            case = _open_case(session, call)
            seal_identity_if_missing(
                session, _runtime(), call=call, case=case, caller=form.get("From", "")
            )

        if form.get("Digits") == "hangup":
            # The caller is gone: TwiML returned now would not be played.
            store_state(call, engine.advance(flow, state_of(call)))
            session.commit()
            return _empty()

        if not has_recording or duration < minimum:
            store_state(call, engine.retry(flow, state_of(call)))
        else:
            store_state(call, engine.advance(flow, state_of(call)))
        return _respond(session, call)


@bp.post("/empty-recording")
@require_twilio_signature
def empty_recording() -> Response:
    """Ask once more after an empty recording, then take the record node's fallback."""
    node_id = _node_param()
    with _runtime().session() as session:
        call = _load_call(session, _call_sid())
        if call.node != node_id:
            return _respond(session, call)
        store_state(call, engine.retry(_flow(), state_of(call)))
        return _respond(session, call)


@bp.post("/follow-up")
@require_twilio_signature
def follow_up() -> Response:
    """Read the status of the case whose reference the caller typed, in plain words."""
    node_id = _node_param()
    flow = _flow()
    node = flow.node(node_id)
    digits = request.form.get("Digits", "")

    with _runtime().session() as session:
        call = _load_call(session, _call_sid())
        if call.node != node_id:
            return _respond(session, call)

        state = state_of(call)
        if not digits:
            store_state(call, engine.retry(flow, state))
            return _respond(session, call)

        if not _follow_up_allowed(call):
            store_state(call, engine.advance(flow, state))
            return _respond(session, call, [node.extra_prompt("limit_prompt")])

        if not is_valid_reference(digits):
            store_state(call, engine.retry(flow, state))
            return _respond(session, call, [node.extra_prompt("invalid_prompt")])

        case = session.scalar(select(Case).where(Case.reference == digits))
        if case is None:
            store_state(call, engine.retry(flow, state))
            return _respond(session, call, [node.extra_prompt("not_found_prompt")])

        append_event(
            session,
            chain_key=_audit_key(),
            actor="intake",
            action="case.status_read_by_phone",
            case_id=case.id,
            details={"call_id": call.id},
        )
        status = node.statuses.get(case.status) or node.statuses["other"]
        store_state(call, engine.advance(flow, state))
        return _respond(session, call, [status])


def _follow_up_counter_id(call: Call) -> str:
    """Return who a follow-up lookup counts against, without storing the number.

    The id is a keyed hash of the caller's number and the current hour, so it works for
    anonymous callers too and cannot be matched with ``calls.caller_hash``. It lives in
    Redis for one hour only. A withheld number falls back to the CallSid.
    """
    hour = datetime.now(UTC).strftime("%Y%m%d%H")
    secret = _runtime().settings.require_caller_hash_key()
    counter = caller_hash_or_none(request.form.get("From"), secret)
    if counter is None:
        return call.call_sid
    return hmac.new(secret, f"follow-up|{hour}|{counter}".encode(), hashlib.sha256).hexdigest()


def _follow_up_allowed(call: Call) -> bool:
    """Count a lookup against the caller's hourly limit; False once it is used up.

    The counter gets its expiry when it is created, in the same transaction as the
    increment, so a crash cannot leave a caller limited for ever. With Redis down the
    lookup is allowed: guessing a ten-digit number with a check digit by telephone is
    slow, and callers should not lose the status line during an outage.
    """
    key = f"callcenter:follow-up:{_follow_up_counter_id(call)}"
    try:
        with _runtime().redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=FOLLOW_UP_WINDOW_SECONDS, nx=True)
            pipe.incr(key)
            _created, count = pipe.execute()
    except RedisError as error:
        logger.warning(
            "follow-up limit not checked for call %s, Redis failed: %s", call.call_sid, error
        )
        return True
    return int(count) <= FOLLOW_UP_LIMIT


@bp.post("/queue-wait")
@require_twilio_signature
def queue_wait() -> Response:
    """Tell a waiting caller their position; leave the queue once the wait is too long."""
    node = _flow().node(_node_param())
    waited = _int_or_none(request.form.get("QueueTime")) or 0
    position = request.form.get("QueuePosition", "")
    response = VoiceResponse()

    if waited >= current_app.config["MAX_QUEUE_WAIT_SECONDS"]:
        response.leave()
        return _twiml(response)

    with _runtime().session() as session:
        call = _load_call(session, _call_sid())
        language = call.language
    voice = _render_options().voices[language]
    text = (
        node.extra_prompt("wait_prompt")
        .text(language)
        .replace("{position}", position if position.isdigit() else "")
    )
    response.say(text, voice=voice.name, language=voice.language)
    response.pause(length=20)
    return _twiml(response)


@bp.post("/queue-result")
@require_twilio_signature
def queue_result() -> Response:
    """After the queue: hang up when an agent took the call, else offer to record."""
    node_id = _node_param()
    result = request.form.get("QueueResult", "")
    with _runtime().session() as session:
        call = _load_call(session, _call_sid())
        if result == "bridged" or call.node != node_id:
            return _empty() if result == "bridged" else _respond(session, call)
        store_state(call, engine.unavailable(_flow(), state_of(call)))
        return _respond(session, call, [_flow().node(node_id).extra_prompt("busy_prompt")])


@bp.post("/unavailable")
@require_twilio_signature
def unavailable() -> Response:
    """Continue after the hours were read, or when the queue could not take the call."""
    node_id = _node_param()
    with _runtime().session() as session:
        return _apply(session, _load_call(session, _call_sid()), node_id, "unavailable")


def _recording_url_allowed(url: str) -> bool:
    """Accept only media URLs on Twilio's API host; anything else is never downloaded."""
    allowed = urlsplit(current_app.config["TWILIO_API_BASE_URL"])
    media = urlsplit(url)
    return (
        (media.scheme, media.netloc) == (allowed.scheme, allowed.netloc)
        and media.username is None
        and "/Recordings/RE" in media.path
    )


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
        _note_missing_recording(call_sid, status)
        return _empty()

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
            return _empty()

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
            return _empty()

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

    return _empty()


def _note_missing_recording(call_sid: str, status: str) -> None:
    """Tell a person why a case opened at the <Record> action has no recording after all."""
    with _runtime().session() as session:
        call = find_call(session, call_sid)
        if call is None:
            return
        case = session.get(Case, call.case_id) if call.case_id else None
        if case is None:
            # The <Record> action has not arrived yet: tell it not to open a case.
            call.answers = {**call.answers, ABSENT_FLAG: "yes"}
            session.commit()
            return
        if case.recordings:
            return
        case.set_intake_status(CaseStatus.RECORDING_FAILED)
        case.failure_reason = (
            f"Twilio reported the recording {status}: the caller hung up before saying anything, "
            "so there is nothing to listen to. Call back only if the caller consented."
        )
        session.commit()
        logger.info("case %d has no recording: Twilio reported it %s", case.id, status)


@bp.post("/status")
@require_twilio_signature
def call_status() -> Response:
    """Record the call's final status; a call that ended in the menus stays without a case."""
    with _runtime().session() as session:
        call = find_call(session, _call_sid())
        if call is not None:
            case = session.get(Case, call.case_id) if call.case_id is not None else None
            if case is not None:
                caller = request.form.get("From", "")
                seal_identity_if_missing(session, _runtime(), call=call, case=case, caller=caller)
            call.twilio_status = request.form.get("CallStatus", "completed")[:32]
            call.ended_at = call.ended_at or datetime.now(UTC)
            session.commit()
            logger.info(
                "call %s ended %s at node %s %s",
                call.call_sid,
                call.twilio_status,
                call.node,
                "with a case" if call.case_id is not None else "without a case",
            )
    return _empty()


@bp.get("/prompts/<language>/<name>")
def prompt_file(language: str, name: str) -> Response:
    """Serve recorded prompts; Twilio fetches <Play> URLs without parameters or signature."""
    flow = _flow()
    if flow.prompts_dir is None or language not in flow.languages:
        abort(404)
    return send_from_directory(flow.prompts_dir / language, name, mimetype="audio/wav")


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


__all__ = ["CallState", "bp", "failure_twiml"]
