"""Parse the TwiML voice documents that the emulator receives into typed verbs.

Only the verbs an inbound intake call uses are modelled. Any other verb becomes
`Unsupported`, and the call driver skips it with schema warning 12200, so a test notices.
Attribute defaults follow Twilio's TwiML reference for each verb.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field

# Twilio error codes that a TwiML document itself can raise.
PARSE_FAILURE = "12100"
SCHEMA_WARNING = "12200"
INVALID_FINISH_ON_KEY = "13310"

_DEFAULT_RECORD_FINISH_KEYS = "1234567890*#"
_DTMF_KEYS = frozenset("0123456789*#")


class TwimlError(Exception):
    """Raised when a response body is not a TwiML `<Response>` document."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"TwiML error {code}: {reason}")
        self.code = code


@dataclass(frozen=True)
class Say:
    text: str
    voice: str
    language: str
    loop: int


@dataclass(frozen=True)
class Play:
    """A `<Play>`: `url` is empty when the verb only plays the DTMF tones in `digits`."""

    url: str
    digits: str
    loop: int


@dataclass(frozen=True)
class Pause:
    length: int


Prompt = Say | Play | Pause


@dataclass(frozen=True)
class Gather:
    """A `<Gather>`: an empty `action` means the URL of the current document."""

    action: str
    method: str
    num_digits: int | None
    finish_on_key: str
    timeout: int
    input: str
    action_on_empty_result: bool
    prompts: tuple[Prompt, ...]


@dataclass(frozen=True)
class Record:
    """A `<Record>`: an empty `action` means the URL of the current document."""

    action: str
    method: str
    timeout: int
    finish_on_key: str
    max_length: int
    trim: str
    status_callback: str
    status_callback_method: str
    status_callback_events: frozenset[str]


@dataclass(frozen=True)
class Redirect:
    """A `<Redirect>`: an empty `url` means the URL of the current document."""

    url: str
    method: str


@dataclass(frozen=True)
class Hangup:
    pass


@dataclass(frozen=True)
class Enqueue:
    queue_name: str
    action: str
    method: str
    wait_url: str


@dataclass(frozen=True)
class Unsupported:
    name: str


Verb = Say | Play | Pause | Gather | Record | Redirect | Hangup | Enqueue | Unsupported


@dataclass
class Document:
    """A parsed `<Response>`: its verbs in order and the warning codes found while parsing."""

    verbs: list[Verb]
    warnings: list[str] = field(default_factory=list)


def parse_twiml(body: bytes) -> Document:
    """Parse a response body into verbs.

    Raises TwimlError with code 12100 when the body is not well-formed XML or its root
    element is not `<Response>`. Invalid attribute values and misplaced elements do not
    raise: they add warning 12200 and fall back to Twilio's default, as Twilio does.
    """
    try:
        # Expat 2.4 and later caps entity expansion, and ElementTree never fetches
        # external entities, so a hostile document cannot exhaust memory here.
        root = ET.fromstring(body)  # noqa: S314
    except ET.ParseError as error:
        raise TwimlError(PARSE_FAILURE, f"the body is not well-formed XML ({error})") from None

    if root.tag != "Response":
        raise TwimlError(PARSE_FAILURE, f"the root element is <{root.tag}>, not <Response>")

    document = Document(verbs=[])
    for element in root:
        document.verbs.append(_parse_verb(element, document.warnings))

    return document


def _parse_verb(element: ET.Element, warnings: list[str]) -> Verb:
    parsers: dict[str, Callable[[ET.Element, list[str]], Verb]] = {
        "Say": _parse_say,
        "Play": _parse_play,
        "Pause": _parse_pause,
        "Gather": _parse_gather,
        "Record": _parse_record,
        "Redirect": _parse_redirect,
        "Hangup": _parse_hangup,
        "Enqueue": _parse_enqueue,
    }
    parser = parsers.get(element.tag)
    if parser is None:
        return Unsupported(name=element.tag)

    return parser(element, warnings)


def _parse_say(element: ET.Element, warnings: list[str]) -> Say:
    # Say may contain SSML elements such as <break> or <prosody>, so read all nested text.
    text = "".join(element.itertext()).strip()

    return Say(
        text=text,
        voice=element.get("voice", ""),
        language=element.get("language", ""),
        loop=_int_attribute(element, "loop", 1, warnings),
    )


def _parse_play(element: ET.Element, warnings: list[str]) -> Play:
    return Play(
        url=(element.text or "").strip(),
        digits=element.get("digits", ""),
        loop=_int_attribute(element, "loop", 1, warnings),
    )


def _parse_pause(element: ET.Element, warnings: list[str]) -> Pause:
    return Pause(length=_int_attribute(element, "length", 1, warnings))


def _parse_gather(element: ET.Element, warnings: list[str]) -> Gather:
    prompts: list[Prompt] = []
    for child in element:
        # Twilio allows only Say, Play and Pause inside Gather and ignores anything else.
        if child.tag not in ("Say", "Play", "Pause"):
            warnings.append(SCHEMA_WARNING)
            continue

        prompt = _parse_verb(child, warnings)
        assert isinstance(prompt, Say | Play | Pause)  # noqa: S101 - guaranteed by the tag check
        prompts.append(prompt)

    num_digits = _int_attribute(element, "numDigits", 0, warnings)

    return Gather(
        action=element.get("action", "").strip(),
        method=_method_attribute(element, "method", warnings),
        num_digits=num_digits if num_digits > 0 else None,
        finish_on_key=_finish_on_key(element, warnings),
        timeout=_int_attribute(element, "timeout", 5, warnings),
        input=element.get("input", "dtmf"),
        action_on_empty_result=element.get("actionOnEmptyResult", "false") == "true",
        prompts=tuple(prompts),
    )


def _parse_record(element: ET.Element, warnings: list[str]) -> Record:
    if len(element) > 0 or (element.text or "").strip():
        warnings.append(SCHEMA_WARNING)

    events = element.get("recordingStatusCallbackEvent", "completed").split()

    return Record(
        action=element.get("action", "").strip(),
        method=_method_attribute(element, "method", warnings),
        timeout=_int_attribute(element, "timeout", 5, warnings),
        finish_on_key=element.get("finishOnKey", _DEFAULT_RECORD_FINISH_KEYS),
        max_length=_int_attribute(element, "maxLength", 3600, warnings),
        trim=element.get("trim", "trim-silence"),
        status_callback=element.get("recordingStatusCallback", "").strip(),
        status_callback_method=_method_attribute(
            element, "recordingStatusCallbackMethod", warnings
        ),
        status_callback_events=frozenset(events),
    )


def _parse_redirect(element: ET.Element, warnings: list[str]) -> Redirect:
    if len(element) > 0:
        warnings.append(SCHEMA_WARNING)

    return Redirect(
        url=(element.text or "").strip(),
        method=_method_attribute(element, "method", warnings),
    )


def _parse_hangup(element: ET.Element, warnings: list[str]) -> Hangup:
    return Hangup()


def _parse_enqueue(element: ET.Element, warnings: list[str]) -> Enqueue:
    return Enqueue(
        queue_name=(element.text or "").strip(),
        action=element.get("action", "").strip(),
        method=_method_attribute(element, "method", warnings),
        wait_url=element.get("waitUrl", "").strip(),
    )


def _int_attribute(element: ET.Element, name: str, default: int, warnings: list[str]) -> int:
    raw = element.get(name)
    if raw is None:
        return default

    try:
        value = int(raw.strip())
    except ValueError:
        warnings.append(SCHEMA_WARNING)
        return default

    if value < 0:
        warnings.append(SCHEMA_WARNING)
        return default

    return value


def _method_attribute(element: ET.Element, name: str, warnings: list[str]) -> str:
    method = element.get(name, "POST").strip().upper()
    if method not in ("GET", "POST"):
        warnings.append(SCHEMA_WARNING)
        return "POST"

    return method


def _finish_on_key(element: ET.Element, warnings: list[str]) -> str:
    key = element.get("finishOnKey", "#")

    # Gather accepts one key or the empty string, which disables the finishing key.
    # NOTE: Twilio reports other values as warning 13310; that it then keeps the default
    # key is an assumption.
    if key and (len(key) != 1 or key not in _DTMF_KEYS):
        warnings.append(INVALID_FINISH_ON_KEY)
        return "#"

    return key
