"""Errors raised while loading or validating a flow file."""

from __future__ import annotations

from pathlib import Path


class FlowError(Exception):
    """A flow file is invalid; the message names the file, the node and the field."""

    def __init__(
        self, source: Path | str, node: str | None, field: str | None, problem: str
    ) -> None:
        self.source = str(source)
        self.node = node
        self.field = field
        self.problem = problem
        super().__init__(self._describe())

    def _describe(self) -> str:
        place = self.source
        if self.node is not None:
            place += f": node {self.node!r}"
        if self.field is not None:
            place += f", field {self.field!r}"
        return f"{place}: {self.problem}"
