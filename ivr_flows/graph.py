"""Draw a flow as a Graphviz graph, so the people who own the menus can see them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ivr_flows.errors import FlowError
from ivr_flows.model import Flow, Node, NodeKind

SHAPES = {
    NodeKind.LANGUAGE: "diamond",
    NodeKind.MENU: "diamond",
    NodeKind.MESSAGE: "box",
    NodeKind.RECORD: "cylinder",
    NodeKind.REFERENCE: "note",
    NodeKind.FOLLOW_UP: "component",
    NodeKind.AGENT: "house",
    NodeKind.HANGUP: "doubleoctagon",
}


def _quote(text: str) -> str:
    """Quote a DOT string; a newline becomes DOT's line break."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _label(node: Node, language: str) -> str:
    text = node.prompt.text(language)
    short = text if len(text) <= 40 else text[:37] + "..."
    return f"{node.id} ({node.kind.value})\n{short}"


def to_dot(flow: Flow, language: str | None = None) -> str:
    """Return the flow as DOT text: one box per node, one arrow per key or event."""
    language = language or flow.languages[-1]
    lines = [
        f"digraph {_quote(flow.id)} {{",
        "  rankdir=TB;",
        '  node [fontname="DejaVu Sans", fontsize=10];',
        '  edge [fontname="DejaVu Sans", fontsize=9];',
    ]
    for node in flow.nodes.values():
        style = ", style=bold" if node.id == flow.start else ""
        lines.append(
            f"  {_quote(node.id)} [shape={SHAPES[node.kind]}, label={_quote(_label(node, language))}{style}];"
        )

    for node in flow.nodes.values():
        for option in node.options:
            sets = ", ".join(f"{key}={value}" for key, value in option.sets.items())
            label = f"{option.digit} {sets}".strip()
            lines.append(f"  {_quote(node.id)} -> {_quote(option.next)} [label={_quote(label)}];")
        for field, style in (
            ("next", "solid"),
            ("fallback", "dashed"),
            ("agent", "dotted"),
            ("unavailable", "dashed"),
        ):
            target = getattr(node, field)
            if target is not None:
                label = "0" if field == "agent" else ("" if field == "next" else field)
                lines.append(
                    f"  {_quote(node.id)} -> {_quote(target)} [label={_quote(label)}, style={style}];"
                )

    lines.append("}")
    return "\n".join(lines) + "\n"


def render_svg(flow: Flow, output: Path, language: str | None = None) -> None:
    """Write the flow as an SVG file with Graphviz's dot command."""
    dot = shutil.which("dot")
    if dot is None:
        raise FlowError(
            flow.source,
            None,
            None,
            "Graphviz is not installed: install the Debian package graphviz",
        )

    result = subprocess.run(  # noqa: S603 - fixed program, text passed on stdin
        [dot, "-Tsvg", "-o", str(output)],
        input=to_dot(flow, language).encode("utf-8"),
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise FlowError(
            flow.source, None, None, f"dot failed: {result.stderr.decode(errors='replace').strip()}"
        )
