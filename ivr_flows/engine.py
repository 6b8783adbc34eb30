"""Move a call through a flow: pure functions from (state, event) to the next state.

The web layer stores the state per CallSid and renders TwiML for it; keeping the
transitions free of I/O lets tests walk every path without a server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from ivr_flows.model import Flow, Node, NodeKind


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
    """Apply the keys a caller typed at a menu; an unknown key re-prompts."""
    node = flow.node(state.node)
    key = digits[:1]
    option = node.option(key) if key else None
    if option is None:
        return _retry(flow, state)

    answers = dict(state.answers)
    answers.update(option.sets)
    language = option.sets.get("language", state.language)
    return CallState(node=option.next, language=language, answers=MappingProxyType(answers))


def no_input(flow: Flow, state: CallState) -> CallState:
    """Handle a menu that timed out; the language menu keeps the default language at once."""
    node = flow.node(state.node)
    if node.kind is NodeKind.LANGUAGE:
        return replace(state, node=_fallback_of(node), retries=0)
    return _retry(flow, state)


def advance(flow: Flow, state: CallState) -> CallState:
    """Move past a node that has a single next step (message, record, reference)."""
    node = flow.node(state.node)
    if node.next is None:
        return state
    return replace(state, node=node.next, retries=0)


def _retry(flow: Flow, state: CallState) -> CallState:
    node = flow.node(state.node)
    if state.retries < flow.max_retries:
        return replace(state, retries=state.retries + 1)

    return replace(state, node=_fallback_of(node), retries=0)


def _fallback_of(node: Node) -> str:
    if node.fallback is None:
        # The loader requires a fallback on every menu, so only a hand-built flow gets here.
        raise ValueError(f"menu {node.id!r} has no fallback node")
    return node.fallback
