"""The flow model: menus, messages, the recording step, follow-up and goodbye, in two languages."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class NodeKind(enum.StrEnum):
    # A bilingual menu that sets the call's language; no input keeps the default.
    LANGUAGE = "language"
    # A DTMF menu whose options set answers (complaint type, category, consent) and move on.
    MENU = "menu"
    # Prompts only, then the next node.
    MESSAGE = "message"
    # The complaint recording (<Record>); the case is opened once a recording exists.
    RECORD = "record"
    # Reads the case reference number digit by digit; * repeats it, then the next node.
    REFERENCE = "reference"
    # The caller types a reference number; its status is read in plain words.
    FOLLOW_UP = "follow_up"
    # Puts the caller in the agents' queue in working hours; reads the hours otherwise.
    AGENT = "agent"
    # Last words, then <Hangup>.
    HANGUP = "hangup"


MENU_KINDS = frozenset({NodeKind.LANGUAGE, NodeKind.MENU})

# Answer fields a menu option may set; anything else in a flow file is a typo.
ANSWER_FIELDS = (
    "language",
    "complaint_type",
    "category",
    "confidentiality",
    "consent_callback",
    "consent_sms",
    "urgent",
)

# Keys with a fixed meaning in every menu, as callers expect from other phone lines.
REPEAT_KEY = "*"
AGENT_KEY = "0"

# Extra prompts each node kind may or must have, beyond `prompt`.
EXTRA_PROMPTS: Mapping[NodeKind, tuple[str, ...]] = {
    NodeKind.FOLLOW_UP: ("invalid_prompt", "not_found_prompt", "limit_prompt"),
    NodeKind.AGENT: ("closed_prompt", "wait_prompt", "busy_prompt"),
    NodeKind.RECORD: ("short_prompt",),
}


@dataclass(frozen=True)
class Prompt:
    """Prompt text of a node, one text per language code."""

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
    # Where 0 leads in this menu; menus without it treat 0 as an invalid key.
    agent: str | None = None
    # Prompt read before the menu again after no input or an invalid key.
    retry_prompt: Prompt | None = None
    # Named extra prompts of follow-up, agent and record nodes (see EXTRA_PROMPTS).
    prompts: Mapping[str, Prompt] = field(default_factory=dict)
    # Follow-up nodes: the sentence read for each case status code.
    statuses: Mapping[str, Prompt] = field(default_factory=dict)
    # Agent nodes: where the call goes out of working hours or when the wait is too long.
    unavailable: str | None = None
    # Play recorded files <flow.prompts_dir>/<language>/<node id>.wav instead of <Say>.
    audio: bool = False

    def option(self, digit: str) -> Option | None:
        for option in self.options:
            if option.digit == digit:
                return option
        return None

    def extra_prompt(self, name: str) -> Prompt:
        return self.prompts[name]


@dataclass(frozen=True)
class Flow:
    id: str
    start: str
    languages: tuple[str, ...]
    default_language: str
    max_retries: int
    nodes: Mapping[str, Node]
    source: Path
    # Folder of recorded prompt files, <language>/<node id>.wav, relative to the flow file.
    prompts_dir: Path | None = None

    def node(self, node_id: str) -> Node:
        return self.nodes[node_id]
