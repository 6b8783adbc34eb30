"""Render a call's current node as TwiML with twilio's VoiceResponse builder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from twilio.twiml.voice_response import Gather, VoiceResponse

from ivr_flows.engine import CallState
from ivr_flows.model import Flow, Node, NodeKind, Prompt

REFERENCE_LENGTH = 10


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
    # Name of the Twilio queue that agents answer from.
    agent_queue: str = "agents"


@dataclass(frozen=True)
class Context:
    """Facts the web layer supplies for one rendering."""

    # The case reference, for reference nodes.
    reference: str | None = None
    # Prompts read before the node itself: a status, an error, an apology.
    preface: Sequence[Prompt] = ()
    # For agent nodes: whether agents work now.
    agents_open: bool = False
    # For agent nodes out of hours: the working hours as callers hear them, per language.
    hours: Prompt | None = None


class Urls(Protocol):
    """URLs of the webhook endpoints that continue a call, relative or absolute."""

    def gather(self, node: str) -> str: ...
    def no_input(self, node: str) -> str: ...
    def next(self, node: str) -> str: ...
    def recorded(self, node: str) -> str: ...
    def empty_recording(self, node: str) -> str: ...
    def recording_status(self) -> str: ...
    def follow_up(self, node: str) -> str: ...
    def queue_wait(self, node: str) -> str: ...
    def queue_result(self, node: str) -> str: ...
    def unavailable(self, node: str) -> str: ...


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
    context: Context | None = None,
) -> VoiceResponse:
    """Return the TwiML that plays the state's node and hands control back to us."""
    context = context or Context()
    node = flow.node(state.node)
    response = VoiceResponse()
    speaker = _Speaker(flow, options, state.language)

    for prompt in context.preface:
        speaker.say(response, prompt)

    if node.kind in (NodeKind.LANGUAGE, NodeKind.MENU):
        _render_menu(flow, node, state, urls, speaker, options, response)
    elif node.kind is NodeKind.MESSAGE:
        speaker.say(response, node.prompt, node)
        response.redirect(urls.next(node.id))
    elif node.kind is NodeKind.RECORD:
        _render_record(node, state, urls, speaker, options, response)
    elif node.kind is NodeKind.REFERENCE:
        _render_reference(node, state, urls, speaker, options, response, context.reference)
    elif node.kind is NodeKind.FOLLOW_UP:
        _render_follow_up(node, state, urls, speaker, options, response)
    elif node.kind is NodeKind.AGENT:
        _render_agent(node, urls, speaker, options, response, context)
    else:
        speaker.say(response, node.prompt, node)
        response.hangup()

    return response


class _Speaker:
    """Say a prompt in the call's language, or play its recorded file when the node has one."""

    def __init__(self, flow: Flow, options: RenderOptions, language: str) -> None:
        self.options = options
        self.language = language

    def say(
        self,
        target: VoiceResponse | Gather,
        prompt: Prompt,
        node: Node | None = None,
        *,
        language: str | None = None,
        text: str | None = None,
    ) -> None:
        language = language or self.language
        if node is not None and node.audio and text is None:
            file_url = self.options.prompt_file_url(language, node.id)
            if file_url is not None:
                target.play(file_url)
                return

        voice = self.options.voices[language]
        target.say(text or prompt.text(language), voice=voice.name, language=voice.language)


def _render_menu(
    flow: Flow,
    node: Node,
    state: CallState,
    urls: Urls,
    speaker: _Speaker,
    options: RenderOptions,
    response: VoiceResponse,
) -> None:
    # No finish key: # is an ordinary (invalid) key in a one-digit menu, not a way to skip it.
    gather = response.gather(
        action=urls.gather(node.id),
        method="POST",
        num_digits=1,
        finish_on_key="",
        timeout=options.gather_timeout_seconds,
        input="dtmf",
    )
    if state.retries and node.retry_prompt is not None:
        speaker.say(gather, node.retry_prompt)

    # The language menu is read in every language, Arabic first, because the caller
    # has not chosen yet; every other menu speaks the chosen language only.
    languages = flow.languages if node.kind is NodeKind.LANGUAGE else (state.language,)
    for language in languages:
        speaker.say(gather, node.prompt, node, language=language)

    # Twilio falls through to the next verb when the caller presses nothing.
    response.redirect(urls.no_input(node.id))


def _render_record(
    node: Node,
    state: CallState,
    urls: Urls,
    speaker: _Speaker,
    options: RenderOptions,
    response: VoiceResponse,
) -> None:
    if state.retries:
        speaker.say(response, node.extra_prompt("short_prompt"))
    speaker.say(response, node.prompt, node)
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
    speaker: _Speaker,
    options: RenderOptions,
    response: VoiceResponse,
    reference: str | None,
) -> None:
    if reference is None:
        raise ValueError(f"node {node.id!r} reads a reference number, but the call has no case")

    spoken = speak_digits(reference, state.language)
    text = node.prompt.text(state.language).replace("{reference}", spoken)
    gather = response.gather(
        action=urls.gather(node.id),
        method="POST",
        num_digits=1,
        finish_on_key="",
        timeout=options.gather_timeout_seconds,
        input="dtmf",
    )
    speaker.say(gather, node.prompt, text=text)
    response.redirect(urls.no_input(node.id))


def _render_follow_up(
    node: Node,
    state: CallState,
    urls: Urls,
    speaker: _Speaker,
    options: RenderOptions,
    response: VoiceResponse,
) -> None:
    # Ten digits then #; the timeout is longer because callers read the number off paper.
    gather = response.gather(
        action=urls.follow_up(node.id),
        method="POST",
        finish_on_key="#",
        num_digits=REFERENCE_LENGTH,
        timeout=max(options.gather_timeout_seconds, 10),
        input="dtmf",
    )
    speaker.say(gather, node.prompt, node)
    response.redirect(urls.follow_up(node.id))


def _render_agent(
    node: Node,
    urls: Urls,
    speaker: _Speaker,
    options: RenderOptions,
    response: VoiceResponse,
    context: Context,
) -> None:
    if not context.agents_open:
        speaker.say(response, node.extra_prompt("closed_prompt"))
        if context.hours is not None:
            speaker.say(response, context.hours)
        response.redirect(urls.unavailable(node.id))
        return

    speaker.say(response, node.prompt, node)
    response.enqueue(
        options.agent_queue,
        action=urls.queue_result(node.id),
        method="POST",
        wait_url=urls.queue_wait(node.id),
        wait_url_method="POST",
    )
    # Reached when the queue could not take the call.
    response.redirect(urls.unavailable(node.id))
