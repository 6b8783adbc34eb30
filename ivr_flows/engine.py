"""Move a call through a flow: pure functions from (state, event) to the next state.

The web layer stores the state per CallSid and renders TwiML for it. The transitions
do no I/O, so tests can walk every path without a server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from ivr_flows.model import AGENT_KEY, MENU_KINDS, REPEAT_KEY, Flow, Node, NodeKind

# An empty or too short recording is asked for once more, then the call moves on.
RECORD_RETRIES = 1


@dataclass(frozen=True)
class CallState:
    node: str
    language: str
    answers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # Re-prompts used at the current node; reset whenever the call moves on.
    retries: int = 0


def start(flow: Flow) -> CallState:
    """Return the state of a call that has just been answered."""
    return CallState(node=flow.start, language=flow.default_language)


def press(flow: Flow, state: CallState, digits: str) -> CallState:
    """Apply the keys a caller typed at a menu or at the reference read-back."""
    node = flow.node(state.node)
    key = digits[:1]

    if node.kind is NodeKind.REFERENCE:
        # * hears the number again; anything else moves on.
        return state if key == REPEAT_KEY else advance(flow, state)

    if key == REPEAT_KEY:
        return state
    if key == AGENT_KEY and node.agent is not None:
        return _move(state, node.agent)

    option = node.option(key) if key else None
    if option is None:
        return retry(flow, state)

    answers = dict(state.answers)
    answers.update(option.sets)
    language = option.sets.get("language", state.language)
    return CallState(node=option.next, language=language, answers=MappingProxyType(answers))


def no_input(flow: Flow, state: CallState) -> CallState:
    """Handle a prompt that timed out; the language menu keeps the default language at once."""
    node = flow.node(state.node)
    if node.kind is NodeKind.LANGUAGE:
        return _move(state, _fallback_of(node))
    if node.kind is NodeKind.REFERENCE:
        return advance(flow, state)
    return retry(flow, state)


def advance(flow: Flow, state: CallState) -> CallState:
    """Move past a node that has a single next step (message, record, reference, follow-up)."""
    node = flow.node(state.node)
    if node.next is None:
        return state
    return _move(state, node.next)


def retry(flow: Flow, state: CallState) -> CallState:
    """Re-prompt the current node, or take its fallback once the retries are used up."""
    node = flow.node(state.node)
    limit = RECORD_RETRIES if node.kind is NodeKind.RECORD else flow.max_retries
    if state.retries < limit:
        return replace(state, retries=state.retries + 1)

    if node.kind in MENU_KINDS or node.kind is NodeKind.RECORD:
        return _move(state, _fallback_of(node))
    return advance(flow, state)


def unavailable(flow: Flow, state: CallState) -> CallState:
    """Move an agent node to where callers go when no agent can take the call."""
    node = flow.node(state.node)
    if node.unavailable is None:
        raise ValueError(f"node {node.id!r} has no unavailable target")
    return _move(state, node.unavailable)


def with_answer(state: CallState, name: str, value: str) -> CallState:
    """Return the state with one answer set, for answers the web layer learns itself."""
    answers = dict(state.answers)
    answers[name] = value
    return replace(state, answers=MappingProxyType(answers))


def _move(state: CallState, node_id: str) -> CallState:
    return replace(state, node=node_id, retries=0)


def _fallback_of(node: Node) -> str:
    if node.fallback is None:
        # The loader requires a fallback on menus and record nodes, so only a hand-built flow gets here.
        raise ValueError(f"node {node.id!r} has no fallback")
    return node.fallback
