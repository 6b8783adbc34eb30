"""Per-call state and case opening, shared by the voice webhooks.

Per-call state lives in the ``calls`` table keyed by CallSid, because Twilio keeps no
cookies for voice calls. A case is opened only once a recording exists, so a call that
ends in the menus is logged without a case.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from callcenter.references import allocate_reference
from ivr_flows.engine import CallState
from ivr_flows.errors import FlowError
from ivr_flows.loader import load_flow, resolve_flow_path
from ivr_flows.model import Flow
from storage.audit import append_event
from storage.models import Call, Case, CaseStatus

logger = logging.getLogger("callcenter.voice")


def state_of(call: Call) -> CallState:
    return CallState(
        node=call.node,
        language=call.language,
        answers=MappingProxyType(dict(call.answers)),
        retries=call.retries,
    )


def store_state(call: Call, state: CallState) -> None:
    call.node = state.node
    call.language = state.language
    call.answers = dict(state.answers)
    call.retries = state.retries


@dataclass(frozen=True)
class OpenedCase:
    case: Case
    # False when another request (a Twilio retry, the status callback) opened it first.
    created: bool


def open_case(session: Session, call: Call, *, audit_key: bytes) -> OpenedCase:
    """Open the call's case once, even when two webhooks race to do it.

    The case row is inserted first, then ``calls.case_id`` is set only where it is still
    empty. The losing request finds no row to update, rolls back its case and uses the
    winner's. This holds on SQLite, where writers queue on the database lock, and on
    PostgreSQL, where the second UPDATE waits on the row lock and re-checks its WHERE.
    """
    if call.case_id is not None:
        existing = session.get(Case, call.case_id)
        if existing is not None:
            return OpenedCase(existing, created=False)

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

    claimed = session.execute(
        update(Call).where(Call.id == call.id, Call.case_id.is_(None)).values(case_id=case.id)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        winner = session.scalar(
            select(Case).join(Call, Call.case_id == Case.id).where(Call.id == call.id)
        )
        if winner is None:
            raise RuntimeError(f"call {call.call_sid} lost the race to open a case, but has none")
        session.refresh(call)
        return OpenedCase(winner, created=False)

    session.refresh(call)
    append_event(
        session,
        chain_key=audit_key,
        actor="intake",
        action="case.opened",
        case_id=case.id,
        details={"channel": "ivr", "call_id": call.id},
    )
    logger.info("opened case %d for call %s", case.id, call.call_sid)
    return OpenedCase(case, created=True)


def find_call(session: Session, call_sid: str) -> Call | None:
    return session.scalar(select(Call).where(Call.call_sid == call_sid))


class FlowHolder:
    """The current flow, reloaded when its file changes so menus change without a restart.

    An edited file that does not validate is logged and ignored: callers keep the last
    valid flow rather than hearing an application error.
    """

    def __init__(self, name: str) -> None:
        self._path = resolve_flow_path(name)
        self._lock = threading.Lock()
        self._flow = load_flow(self._path)
        self._mtime = self._stat()

    def _stat(self) -> float:
        try:
            return self._path.stat().st_mtime
        except OSError:
            return self._mtime if hasattr(self, "_mtime") else 0.0

    @property
    def path(self) -> Path:
        return self._path

    def current(self) -> Flow:
        mtime = self._stat()
        if mtime != self._mtime:
            with self._lock:
                if mtime != self._mtime:
                    self._reload(mtime)
        return self._flow

    def _reload(self, mtime: float) -> None:
        self._mtime = mtime
        try:
            self._flow = load_flow(self._path)
        except FlowError as error:
            logger.error("kept the previous flow; the edited file is invalid: %s", error)
            return
        logger.info("reloaded flow %s from %s", self._flow.id, self._path)
