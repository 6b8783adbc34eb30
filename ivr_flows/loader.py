"""Load a flow from TOML and validate it before any caller reaches it.

Each problem raises FlowError naming the file, the node and the field, so the
person who edited the menus can fix the file without reading code.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ivr_flows.errors import FlowError
from ivr_flows.model import (
    AGENT_KEY,
    ANSWER_FIELDS,
    EXTRA_PROMPTS,
    MENU_KINDS,
    REPEAT_KEY,
    Flow,
    Node,
    NodeKind,
    Option,
    Prompt,
)

PACKAGE_DIR = Path(__file__).resolve().parent
DIGITS = frozenset("0123456789*#")


def resolve_flow_path(name: str) -> Path:
    """Find a flow file: an existing path, else a file shipped in this package."""
    path = Path(name)
    if path.is_file():
        return path

    shipped = PACKAGE_DIR / name
    if shipped.is_file():
        return shipped

    raise FlowError(name, None, None, "file not found: give a path or the name of a shipped flow")


def load_flow(name: str | Path) -> Flow:
    """Parse and validate a flow file."""
    path = resolve_flow_path(str(name))

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise FlowError(
            path, None, None, "not UTF-8 text: a flow file is TOML saved as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise FlowError(path, None, None, f"not valid TOML: {error}") from error

    flow = _parse_flow(path, raw)
    _validate(flow)
    return flow


def _parse_flow(path: Path, raw: Mapping[str, Any]) -> Flow:
    header = _table(path, None, "flow", raw.get("flow"))
    languages = tuple(_required(path, None, "flow.languages", header.get("languages")))
    if not languages or not all(isinstance(code, str) for code in languages):
        raise FlowError(path, None, "flow.languages", "must list language codes, Arabic first")

    default_language = str(
        _required(path, None, "flow.default_language", header.get("default_language"))
    )
    if default_language not in languages:
        raise FlowError(
            path, None, "flow.default_language", f"{default_language!r} is not in flow.languages"
        )

    max_retries = header.get("max_retries", 2)
    if not isinstance(max_retries, int) or not 0 <= max_retries <= 5:
        raise FlowError(
            path, None, "flow.max_retries", f"{max_retries!r} must be a whole number from 0 to 5"
        )

    nodes_raw = _table(path, None, "nodes", raw.get("nodes"))
    nodes = {
        node_id: _parse_node(path, node_id, _table(path, node_id, "node", body), languages)
        for node_id, body in nodes_raw.items()
    }

    prompts_dir = header.get("prompts_dir")
    return Flow(
        id=str(_required(path, None, "flow.id", header.get("id"))),
        start=str(_required(path, None, "flow.start", header.get("start"))),
        languages=languages,
        default_language=default_language,
        max_retries=max_retries,
        nodes=nodes,
        source=path,
        prompts_dir=(path.parent / str(prompts_dir)) if prompts_dir else None,
    )


def _parse_node(
    path: Path, node_id: str, body: Mapping[str, Any], languages: tuple[str, ...]
) -> Node:
    if not node_id.replace("_", "").isalnum() or not node_id.isascii():
        raise FlowError(
            path,
            node_id,
            None,
            "node ids use ASCII letters, digits and _ only (they appear in URLs)",
        )

    kind_text = _required(path, node_id, "kind", body.get("kind"))
    try:
        kind = NodeKind(kind_text)
    except ValueError:
        known = ", ".join(kind.value for kind in NodeKind)
        raise FlowError(
            path, node_id, "kind", f"{kind_text!r} is unknown: use one of {known}"
        ) from None

    retry_raw = body.get("retry_prompt")
    statuses = _table(path, node_id, "statuses", body.get("statuses", {}))
    return Node(
        id=node_id,
        kind=kind,
        prompt=_parse_prompt(path, node_id, "prompt", body.get("prompt"), languages),
        next=_optional_text(path, node_id, "next", body.get("next")),
        options=tuple(_parse_options(path, node_id, body.get("options", []))),
        fallback=_optional_text(path, node_id, "fallback", body.get("fallback")),
        agent=_optional_text(path, node_id, "agent", body.get("agent")),
        retry_prompt=(
            _parse_prompt(path, node_id, "retry_prompt", retry_raw, languages)
            if retry_raw
            else None
        ),
        prompts={
            name: _parse_prompt(path, node_id, name, body.get(name), languages)
            for name in EXTRA_PROMPTS.get(kind, ())
        },
        statuses={
            code: _parse_prompt(path, node_id, f"statuses.{code}", text, languages)
            for code, text in statuses.items()
        },
        unavailable=_optional_text(path, node_id, "unavailable", body.get("unavailable")),
        audio=bool(body.get("audio", False)),
    )


def _optional_text(path: Path, node_id: str, field: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise FlowError(path, node_id, field, f"{value!r} must be a node id in quotes")
    return value


def _parse_prompt(
    path: Path, node_id: str, field: str, raw: Any, languages: tuple[str, ...]
) -> Prompt:
    table = _table(path, node_id, field, raw)
    texts = {}
    for language in languages:
        text = table.get(language)
        if not isinstance(text, str) or not text.strip():
            raise FlowError(
                path,
                node_id,
                f"{field}.{language}",
                "missing translation: add the text in this language",
            )
        texts[language] = text.strip()

    extra = set(table) - set(languages)
    if extra:
        raise FlowError(
            path, node_id, field, f"languages {sorted(extra)} are not in flow.languages"
        )

    return Prompt(texts=texts)


def _parse_options(path: Path, node_id: str, raw: Any) -> Iterator[Option]:
    if not isinstance(raw, list):
        raise FlowError(path, node_id, "options", "must be a list of [[nodes.<id>.options]] tables")

    seen: set[str] = set()
    for index, item in enumerate(raw):
        field = f"options[{index}]"
        table = _table(path, node_id, field, item)
        digit = str(_required(path, node_id, f"{field}.digit", table.get("digit")))
        if digit not in DIGITS or len(digit) != 1:
            raise FlowError(
                path, node_id, f"{field}.digit", f"{digit!r} must be one key: 0-9, * or #"
            )
        if digit == REPEAT_KEY:
            raise FlowError(
                path, node_id, f"{field}.digit", f"{REPEAT_KEY!r} is reserved: it repeats the menu"
            )
        if digit in seen:
            raise FlowError(
                path, node_id, f"{field}.digit", f"duplicate digit {digit!r} in this menu"
            )
        seen.add(digit)

        sets = _table(path, node_id, f"{field}.set", table.get("set", {}))
        for key in sets:
            if key not in ANSWER_FIELDS:
                raise FlowError(
                    path,
                    node_id,
                    f"{field}.set.{key}",
                    f"unknown answer field: use one of {', '.join(ANSWER_FIELDS)}",
                )

        yield Option(
            digit=digit,
            next=str(_required(path, node_id, f"{field}.next", table.get("next"))),
            sets={key: str(value) for key, value in sets.items()},
        )


def _validate(flow: Flow) -> None:
    path = flow.source
    if flow.start not in flow.nodes:
        raise FlowError(path, None, "flow.start", f"{flow.start!r} is not a node")

    for node in flow.nodes.values():
        _validate_node(flow, node)

    reachable = _reachable(flow)
    for node_id in flow.nodes:
        if node_id not in reachable:
            raise FlowError(
                path, node_id, None, "unreachable: no option, next or fallback leads here"
            )

    if not any(node.kind is NodeKind.HANGUP for node in flow.nodes.values()):
        raise FlowError(path, None, "nodes", "no hangup node: every call needs a goodbye")


# Fields each node kind must have, so that no caller reaches a dead end.
REQUIRED_TARGETS: dict[NodeKind, tuple[str, ...]] = {
    NodeKind.LANGUAGE: ("fallback",),
    NodeKind.MENU: ("fallback",),
    NodeKind.MESSAGE: ("next",),
    NodeKind.RECORD: ("next", "fallback"),
    NodeKind.REFERENCE: ("next",),
    NodeKind.FOLLOW_UP: ("next",),
    NodeKind.AGENT: ("unavailable",),
    NodeKind.HANGUP: (),
}


def _validate_node(flow: Flow, node: Node) -> None:
    path = flow.source

    if node.kind in MENU_KINDS:
        if not node.options:
            raise FlowError(path, node.id, "options", "a menu needs at least one option")
        if node.agent is not None and node.option(AGENT_KEY) is not None:
            raise FlowError(
                path, node.id, "agent", f"{AGENT_KEY!r} cannot be both an option and the agent key"
            )
    elif node.options:
        raise FlowError(path, node.id, "options", f"a {node.kind.value} node has no options")

    for field in REQUIRED_TARGETS[node.kind]:
        if getattr(node, field) is None:
            raise FlowError(
                path, node.id, field, f"dead end: a {node.kind.value} node needs {field}"
            )

    if node.kind is NodeKind.HANGUP and node.next is not None:
        raise FlowError(path, node.id, "next", "a hangup node ends the call and has no next")

    if node.kind is NodeKind.FOLLOW_UP and "other" not in node.statuses:
        raise FlowError(
            path,
            node.id,
            "statuses.other",
            "missing: the sentence read for any status without its own",
        )

    if node.audio:
        _check_audio_files(flow, node)

    for field, target in _targets(node):
        if target not in flow.nodes:
            raise FlowError(path, node.id, field, f"unknown target {target!r}")

    if node.kind is NodeKind.LANGUAGE:
        for index, option in enumerate(node.options):
            if option.sets.get("language") not in flow.languages:
                raise FlowError(
                    path,
                    node.id,
                    f"options[{index}].set.language",
                    "a language option must set a language from flow.languages",
                )


def _check_audio_files(flow: Flow, node: Node) -> None:
    if flow.prompts_dir is None:
        raise FlowError(
            flow.source, node.id, "audio", "set flow.prompts_dir to the folder of recorded prompts"
        )
    for language in flow.languages:
        file = flow.prompts_dir / language / f"{node.id}.wav"
        if not file.is_file():
            raise FlowError(flow.source, node.id, "audio", f"prompt file not found: {file}")


def _targets(node: Node) -> Iterator[tuple[str, str]]:
    for field in ("next", "fallback", "agent", "unavailable"):
        target = getattr(node, field)
        if target is not None:
            yield field, target
    for index, option in enumerate(node.options):
        yield f"options[{index}].next", option.next


def _reachable(flow: Flow) -> set[str]:
    seen = {flow.start}
    pending = [flow.start]
    while pending:
        node = flow.nodes[pending.pop()]
        for _field, target in _targets(node):
            if target not in seen:
                seen.add(target)
                pending.append(target)
    return seen


def _table(path: Path, node_id: str | None, field: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise FlowError(path, node_id, field, "missing or not a table")
    return value


def _required(path: Path, node_id: str | None, field: str, value: Any) -> Any:
    if value is None:
        raise FlowError(path, node_id, field, "missing")
    return value
