"""Render a call's current node as TwiML with twilio's VoiceResponse builder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from twilio.twiml.voice_response import Gather, VoiceResponse

from ivr_flows.engine import CallState
from ivr_flows.model import Flow, Node, NodeKind, Prompt


@dataclass(frozen=True)
class Voice:
    """The <Say> voice and language attribute used for one flow language."""

    name: str
    language: str


@dataclass(frozen=True)
class RenderOptions:
    voices: dict[str, Voice]
    gather_timeout_seconds: int
    max_recording_seconds: int
    silence_timeout_seconds: int
    # Returns the URL of a recorded prompt file for (language, node id), or None to use <Say>.
    prompt_file_url: Callable[[str, str], str | None]


class Urls(Protocol):
    """URLs of the webhook endpoints that continue a call, relative or absolute."""

    def gather(self, node: str) -> str: ...
    def no_input(self, node: str) -> str: ...
    def next(self, node: str) -> str: ...
    def recorded(self, node: str) -> str: ...
    def empty_recording(self, node: str) -> str: ...
    def recording_status(self) -> str: ...


def speak_digits(reference: str, language: str) -> str:
    """Spell a reference number digit by digit in groups of 3-3-4, so callers can write it down."""
    groups = [reference[:3], reference[3:6], reference[6:]]
    separator = "، " if language == "ar" else ", "
    return separator.join(" ".join(group) for group in groups if group)


def render(
    flow: Flow,
    state: CallState,
    urls: Urls,
    options: RenderOptions,
    *,
    reference: str | None = None,
) -> VoiceResponse:
    """Return the TwiML that plays the state's node and hands control back to us."""
    node = flow.node(state.node)
    response = VoiceResponse()

    if node.kind in (NodeKind.LANGUAGE, NodeKind.MENU):
        _render_menu(flow, node, state, urls, options, response)
    elif node.kind is NodeKind.MESSAGE:
        _say(response, node, node.prompt, state.language, options)
        response.redirect(urls.next(node.id))
    elif node.kind is NodeKind.RECORD:
        _render_record(node, state, urls, options, response)
    elif node.kind is NodeKind.REFERENCE:
        _render_reference(node, state, urls, options, response, reference)
    else:
        _say(response, node, node.prompt, state.language, options)
        response.hangup()

    return response


def _render_menu(
    flow: Flow,
    node: Node,
    state: CallState,
    urls: Urls,
    options: RenderOptions,
    response: VoiceResponse,
) -> None:
    gather = response.gather(
        action=urls.gather(node.id),
        method="POST",
        num_digits=1,
        timeout=options.gather_timeout_seconds,
        input="dtmf",
    )
    if state.retries and node.retry_prompt is not None:
        _say(gather, node, node.retry_prompt, state.language, options, use_file=False)

    # The language menu is read in every language, Arabic first, because the caller
    # has not chosen yet; every other menu speaks the chosen language only.
    languages = flow.languages if node.kind is NodeKind.LANGUAGE else (state.language,)
    for language in languages:
        _say(gather, node, node.prompt, language, options)

    # Twilio falls through to the next verb when the caller presses nothing.
    response.redirect(urls.no_input(node.id))


def _render_record(
    node: Node, state: CallState, urls: Urls, options: RenderOptions, response: VoiceResponse
) -> None:
    _say(response, node, node.prompt, state.language, options)
    response.record(
        action=urls.recorded(node.id),
        method="POST",
        max_length=options.max_recording_seconds,
        timeout=options.silence_timeout_seconds,
        finish_on_key="#",
        play_beep=True,
        recording_status_callback=urls.recording_status(),
        recording_status_callback_method="POST",
        recording_status_callback_event="completed absent",
    )
    # Reached only when Twilio skips the action because the recording was empty.
    response.redirect(urls.empty_recording(node.id))


def _render_reference(
    node: Node,
    state: CallState,
    urls: Urls,
    options: RenderOptions,
    response: VoiceResponse,
    reference: str | None,
) -> None:
    if reference is None:
        raise ValueError(f"node {node.id!r} reads a reference number, but the call has no case")

    spoken = speak_digits(reference, state.language)
    text = node.prompt.text(state.language).replace("{reference}", spoken)
    voice = options.voices[state.language]
    response.say(text, voice=voice.name, language=voice.language)
    response.redirect(urls.next(node.id))


def _say(
    target: VoiceResponse | Gather,
    node: Node,
    prompt: Prompt,
    language: str,
    options: RenderOptions,
    *,
    use_file: bool = True,
) -> None:
    file_url = options.prompt_file_url(language, node.id) if use_file else None
    if file_url is not None:
        target.play(file_url)
        return

    voice = options.voices[language]
    target.say(prompt.text(language), voice=voice.name, language=voice.language)
