"""The flow model: menus, messages, the recording step and goodbye, in two languages."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class NodeKind(enum.StrEnum):
    # A bilingual menu that sets the call's language; no input keeps the default.
    LANGUAGE = "language"
    # A DTMF menu whose options set answers (complaint type, category) and move on.
    MENU = "menu"
    # Prompts only, then the next node.
    MESSAGE = "message"
    # The complaint recording (<Record>); the case is opened when the caller reaches it.
    RECORD = "record"
    # Reads the case reference number digit by digit, then the next node.
    REFERENCE = "reference"
    # Last words, then <Hangup>.
    HANGUP = "hangup"


# Answer fields a menu option may set; anything else in a flow file is a typo.
ANSWER_FIELDS = ("language", "complaint_type", "category")


@dataclass(frozen=True)
class Prompt:
    """What the caller hears at a node, one text per language code."""

    texts: Mapping[str, str]

    def text(self, language: str) -> str:
        return self.texts[language]


@dataclass(frozen=True)
class Option:
    digit: str
    next: str
    sets: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Node:
    id: str
    kind: NodeKind
    prompt: Prompt
    next: str | None = None
    options: tuple[Option, ...] = ()
    # Where a menu goes after its re-prompts are used up with no valid key.
    fallback: str | None = None
    # Prompt before the menu is read again after no input or an invalid key.
    retry_prompt: Prompt | None = None

    def option(self, digit: str) -> Option | None:
        for option in self.options:
            if option.digit == digit:
                return option
        return None


@dataclass(frozen=True)
class Flow:
    id: str
    start: str
    languages: tuple[str, ...]
    default_language: str
    max_retries: int
    nodes: Mapping[str, Node]
    source: Path

    def node(self, node_id: str) -> Node:
        return self.nodes[node_id]
