"""Plan caller scripts that take every branch of a flow at least once.

A branch is one event at one node: a menu key, silence until the fallback, 0 for an
agent, * to repeat, a spoken or an empty recording. For each branch the planner
builds one script: the shortest way from the start to the node, the branch itself,
and the shortest way from there to a goodbye. Scripts are plain data, so the emulator
can play them against a running app and tests can inspect them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from ivr_flows.engine import RECORD_RETRIES
from ivr_flows.model import AGENT_KEY, REPEAT_KEY, Flow, Node, NodeKind

# Caller inputs: keys or None (silence) at a <Gather>, SPEAK or EMPTY at a <Record>.
SPEAK = "speak"
EMPTY = "empty"
INVALID_REFERENCE = "1234567890"


@dataclass(frozen=True)
class Step:
    """One caller input: at a Gather (``keys``) or at a Record (``recording``)."""

    node: str
    keys: str | None = None
    recording: str | None = None

    @property
    def at_record(self) -> bool:
        return self.recording is not None


@dataclass(frozen=True)
class Branch:
    node: str
    event: str
    target: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Script:
    """A whole call: the branch it exists for and every input in order."""

    language: str
    branch: Branch
    steps: tuple[Step, ...] = field(default_factory=tuple)

    @property
    def digits(self) -> list[str | None]:
        return [step.keys for step in self.steps if not step.at_record]

    @property
    def recordings(self) -> list[str]:
        return [step.recording for step in self.steps if step.recording is not None]

    def describe(self) -> str:
        return f"[{self.language}] {self.branch.node} --{self.branch.event}--> {self.branch.target}"


def branches(flow: Flow, node: Node) -> Iterator[Branch]:
    """Yield every branch leaving a node, with the inputs that take it."""
    silences = 1 if node.kind is NodeKind.LANGUAGE else flow.max_retries + 1

    if node.kind in (NodeKind.LANGUAGE, NodeKind.MENU):
        for option in node.options:
            yield Branch(
                node.id, f"key {option.digit}", option.next, (Step(node.id, keys=option.digit),)
            )
        if node.fallback is not None:
            steps = tuple(Step(node.id, keys=None) for _ in range(silences))
            yield Branch(node.id, "silence", node.fallback, steps)
        if node.agent is not None:
            yield Branch(node.id, f"key {AGENT_KEY}", node.agent, (Step(node.id, keys=AGENT_KEY),))
        if node.kind is NodeKind.MENU and node.fallback is not None:
            invalid = "#" if node.option("#") is None else "9"
            steps = (
                Step(node.id, keys=REPEAT_KEY),
                *(Step(node.id, keys=invalid) for _ in range(silences)),
            )
            yield Branch(node.id, f"key * then invalid {invalid}", node.fallback, steps)
    elif node.kind is NodeKind.RECORD:
        yield Branch(node.id, "speaks", _target(node, "next"), (Step(node.id, recording=SPEAK),))
        empty = tuple(Step(node.id, recording=EMPTY) for _ in range(RECORD_RETRIES + 1))
        yield Branch(node.id, "says nothing", _target(node, "fallback"), empty)
    elif node.kind is NodeKind.REFERENCE:
        yield Branch(
            node.id,
            "key * then silence",
            _target(node, "next"),
            (Step(node.id, keys=REPEAT_KEY), Step(node.id, keys=None)),
        )
    elif node.kind is NodeKind.FOLLOW_UP:
        steps = tuple(Step(node.id, keys=INVALID_REFERENCE) for _ in range(flow.max_retries + 1))
        yield Branch(node.id, "invalid reference", _target(node, "next"), steps)
    elif node.kind is NodeKind.AGENT:
        # Out of hours, or when no agent answers in the emulator, the call moves on.
        yield Branch(node.id, "no agent", _target(node, "unavailable"), ())
    elif node.kind is NodeKind.MESSAGE:
        yield Branch(node.id, "listens", _target(node, "next"), ())


def _target(node: Node, field: str) -> str:
    target: str | None = getattr(node, field)
    if target is None:
        # The loader requires these fields, so only a hand-built flow gets here.
        raise ValueError(f"node {node.id!r} has no {field}")
    return target


def _cost(branch: Branch) -> int:
    return len(branch.steps)


def _shortest_paths_from_start(flow: Flow, language_key: str) -> dict[str, tuple[Step, ...]]:
    """Return the cheapest input sequence that reaches each node, choosing the language first."""
    best: dict[str, tuple[Step, ...]] = {flow.start: ()}
    queue = deque([flow.start])
    while queue:
        node = flow.node(queue.popleft())
        for branch in sorted(branches(flow, node), key=_cost):
            if node.kind is NodeKind.LANGUAGE and branch.event != f"key {language_key}":
                continue
            candidate = best[node.id] + branch.steps
            known = best.get(branch.target)
            if known is None or len(candidate) < len(known):
                best[branch.target] = candidate
                queue.append(branch.target)
    return best


def _shortest_to_end(flow: Flow, node_id: str) -> tuple[Step, ...]:
    """Return the cheapest inputs from a node to a goodbye (no language choice is needed there)."""
    best: dict[str, tuple[Step, ...]] = {node_id: ()}
    queue = deque([node_id])
    while queue:
        current = flow.node(queue.popleft())
        if current.kind is NodeKind.HANGUP:
            return best[current.id]
        for branch in sorted(branches(flow, current), key=_cost):
            if branch.target not in best:
                best[branch.target] = best[current.id] + branch.steps
                queue.append(branch.target)
    raise ValueError(f"no goodbye is reachable from node {node_id!r}")


def plan(flow: Flow) -> list[Script]:
    """Return one script per branch of every node, for every language of the flow."""
    language_node = next(
        (node for node in flow.nodes.values() if node.kind is NodeKind.LANGUAGE), None
    )
    scripts: list[Script] = []

    for language in flow.languages:
        key = _language_key(language_node, language) if language_node else ""
        prefixes = _shortest_paths_from_start(flow, key)
        for node in flow.nodes.values():
            if node.id not in prefixes:
                continue
            for branch in branches(flow, node):
                if node.kind is NodeKind.LANGUAGE and not _speaks(branch, key, language, flow):
                    continue
                steps = prefixes[node.id] + branch.steps + _shortest_to_end(flow, branch.target)
                scripts.append(Script(language=language, branch=branch, steps=steps))

    return scripts


def _speaks(branch: Branch, key: str, language: str, flow: Flow) -> bool:
    """Keep only the language menu's branches that end in this script's language."""
    if branch.event == "silence":
        return language == flow.default_language
    return branch.event == f"key {key}"


def _language_key(node: Node, language: str) -> str:
    for option in node.options:
        if option.sets.get("language") == language:
            return option.digit
    raise ValueError(f"the language menu {node.id!r} has no option for {language!r}")
