"""Flow files: the shipped flow, the validator's errors and TwiML rendering."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ivr_flows import engine
from ivr_flows.errors import FlowError
from ivr_flows.loader import load_flow
from ivr_flows.model import NodeKind, Prompt
from ivr_flows.render import Context, RenderOptions, Voice, render, speak_digits

SHIPPED = Path(__file__).resolve().parents[1] / "ivr_flows" / "complaints.toml"


class Urls:
    def gather(self, node: str) -> str:
        return f"/voice/gather?node={node}"

    def no_input(self, node: str) -> str:
        return f"/voice/no-input?node={node}"

    def next(self, node: str) -> str:
        return f"/voice/next?node={node}"

    def recorded(self, node: str) -> str:
        return f"/voice/recorded?node={node}"

    def empty_recording(self, node: str) -> str:
        return f"/voice/empty-recording?node={node}"

    def recording_status(self) -> str:
        return "/voice/recording-status"

    def follow_up(self, node: str) -> str:
        return f"/voice/follow-up?node={node}"

    def queue_wait(self, node: str) -> str:
        return f"/voice/queue-wait?node={node}"

    def queue_result(self, node: str) -> str:
        return f"/voice/queue-result?node={node}"

    def unavailable(self, node: str) -> str:
        return f"/voice/unavailable?node={node}"


OPTIONS = RenderOptions(
    voices={"ar": Voice("Polly.Zeina", "arb"), "en": Voice("Polly.Joanna", "en-US")},
    gather_timeout_seconds=6,
    max_recording_seconds=300,
    silence_timeout_seconds=5,
    prompt_file_url=lambda _language, _node: None,
)


def edited(tmp_path: Path, old: str, new: str) -> Path:
    text = SHIPPED.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "flow.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def test_shipped_flow_loads() -> None:
    flow = load_flow("complaints.toml")
    assert flow.start == "language"
    assert flow.languages == ("ar", "en")


def test_unknown_target_named(tmp_path: Path) -> None:
    path = edited(tmp_path, 'next = "rights_group"', 'next = "rights"')
    with pytest.raises(FlowError) as caught:
        load_flow(path)
    assert caught.value.node == "complaint_type"
    assert caught.value.field == "options[0].next"
    assert str(path) in str(caught.value)


def test_unreachable_node_named(tmp_path: Path) -> None:
    path = edited(
        tmp_path,
        "[nodes.goodbye]",
        '[nodes.orphan]\nkind = "hangup"\nprompt.ar = "أ"\nprompt.en = "a"\n\n[nodes.goodbye]',
    )
    with pytest.raises(FlowError) as caught:
        load_flow(path)
    assert caught.value.node == "orphan"
    assert "unreachable" in caught.value.problem


def test_duplicate_digit_named(tmp_path: Path) -> None:
    path = edited(tmp_path, 'digit = "2"\nnext = "record"', 'digit = "1"\nnext = "record"')
    with pytest.raises(FlowError) as caught:
        load_flow(path)
    assert caught.value.node == "complaint_type"
    assert "duplicate digit" in caught.value.problem


def test_missing_translation_named(tmp_path: Path) -> None:
    path = edited(tmp_path, 'prompt.en = "Thank you for calling. Goodbye."\n', "")
    with pytest.raises(FlowError) as caught:
        load_flow(path)
    assert caught.value.node == "goodbye"
    assert caught.value.field == "prompt.en"


def test_dead_end_named(tmp_path: Path) -> None:
    path = edited(tmp_path, 'kind = "message"\nnext = "confidentiality"', 'kind = "message"')
    with pytest.raises(FlowError) as caught:
        load_flow(path)
    assert caught.value.node == "notice"
    assert caught.value.field == "next"


def test_unknown_kind_named(tmp_path: Path) -> None:
    path = edited(tmp_path, 'kind = "hangup"', 'kind = "hang"')
    with pytest.raises(FlowError) as caught:
        load_flow(path)
    assert caught.value.field == "kind"


def test_invalid_toml_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[flow\n", encoding="utf-8")
    with pytest.raises(FlowError, match="not valid TOML"):
        load_flow(path)


def test_missing_file_named() -> None:
    with pytest.raises(FlowError, match="file not found"):
        load_flow("no-such-flow.toml")


def test_language_menu_arabic_first() -> None:
    flow = load_flow("complaints.toml")
    root = ET.fromstring(render(flow, engine.start(flow), Urls(), OPTIONS).to_xml())
    languages = [say.get("language") for say in root.findall("./Gather/Say")]
    assert languages == ["arb", "en-US"]


def test_menu_falls_through_to_no_input() -> None:
    flow = load_flow("complaints.toml")
    root = ET.fromstring(render(flow, engine.start(flow), Urls(), OPTIONS).to_xml())
    redirect = root.find("Redirect")
    assert redirect is not None
    assert redirect.text == "/voice/no-input?node=language"


def test_english_caller_hears_english_only() -> None:
    flow = load_flow("complaints.toml")
    state = engine.advance(flow, engine.press(flow, engine.start(flow), "2"))
    root = ET.fromstring(render(flow, state, Urls(), OPTIONS).to_xml())
    languages = {say.get("language") for say in root.iter("Say")}
    assert languages == {"en-US"}


def test_reference_read_digit_by_digit() -> None:
    flow = load_flow("complaints.toml")
    state = engine.CallState(node="reference", language="en")
    root = ET.fromstring(
        render(flow, state, Urls(), OPTIONS, Context(reference="2612345674")).to_xml()
    )
    say = root.find("Gather/Say")
    assert say is not None
    assert "2 6 1, 2 3 4, 5 6 7 4" in (say.text or "")


def test_speak_digits_arabic_separator() -> None:
    assert speak_digits("2612345674", "ar") == "2 6 1، 2 3 4، 5 6 7 4"


def test_record_has_status_callback() -> None:
    flow = load_flow("complaints.toml")
    state = engine.CallState(node="record", language="ar")
    record = ET.fromstring(render(flow, state, Urls(), OPTIONS).to_xml()).find("Record")
    assert record is not None
    assert record.get("recordingStatusCallback") == "/voice/recording-status"
    assert record.get("transcribe") is None


def test_retries_then_fallback() -> None:
    flow = load_flow("complaints.toml")
    state = engine.CallState(node="complaint_type", language="ar")
    for _ in range(flow.max_retries):
        state = engine.press(flow, state, "9")
        assert state.node == "complaint_type"
    state = engine.press(flow, state, "9")
    assert state.node == flow.node("complaint_type").fallback


def test_every_node_kind_used() -> None:
    flow = load_flow("complaints.toml")
    assert {node.kind for node in flow.nodes.values()} == set(NodeKind)


def test_star_repeats_menu() -> None:
    flow = load_flow("complaints.toml")
    state = engine.CallState(node="complaint_type", language="ar", retries=1)
    assert engine.press(flow, state, "*") == state


def test_zero_reaches_agent() -> None:
    flow = load_flow("complaints.toml")
    state = engine.CallState(node="complaint_type", language="ar")
    assert engine.press(flow, state, "0").node == "agent"


def test_zero_invalid_without_agent() -> None:
    flow = load_flow("complaints.toml")
    state = engine.CallState(node="consent_sms", language="ar")
    assert engine.press(flow, state, "0").retries == 1


def test_pound_is_invalid_in_menus() -> None:
    flow = load_flow("complaints.toml")
    state = engine.CallState(node="complaint_type", language="en")
    assert engine.press(flow, state, "#").retries == 1


def test_star_option_rejected(tmp_path: Path) -> None:
    path = edited(tmp_path, 'digit = "4"', 'digit = "*"')
    with pytest.raises(FlowError, match="reserved"):
        load_flow(path)


def test_follow_up_needs_other_status(tmp_path: Path) -> None:
    path = edited(tmp_path, "statuses.other.ar", "statuses.unused.ar")
    path.write_text(
        path.read_text(encoding="utf-8").replace("statuses.other.en", "statuses.unused.en"),
        encoding="utf-8",
    )
    with pytest.raises(FlowError) as caught:
        load_flow(path)
    assert caught.value.field == "statuses.other"


def test_missing_audio_file_named(tmp_path: Path) -> None:
    path = edited(
        tmp_path,
        '[nodes.goodbye]\nkind = "hangup"',
        '[nodes.goodbye]\nkind = "hangup"\naudio = true',
    )
    path.write_text(
        path.read_text(encoding="utf-8").replace(
            "max_retries = 2", 'max_retries = 2\nprompts_dir = "prompts"'
        ),
        encoding="utf-8",
    )
    with pytest.raises(FlowError, match="prompt file not found"):
        load_flow(path)


def test_audio_file_played(tmp_path: Path) -> None:
    path = edited(
        tmp_path,
        '[nodes.goodbye]\nkind = "hangup"',
        '[nodes.goodbye]\nkind = "hangup"\naudio = true',
    )
    path.write_text(
        path.read_text(encoding="utf-8").replace(
            "max_retries = 2", 'max_retries = 2\nprompts_dir = "prompts"'
        ),
        encoding="utf-8",
    )
    for language in ("ar", "en"):
        (tmp_path / "prompts" / language).mkdir(parents=True)
        (tmp_path / "prompts" / language / "goodbye.wav").write_bytes(b"RIFF")
    flow = load_flow(path)
    options = RenderOptions(
        voices=OPTIONS.voices,
        gather_timeout_seconds=6,
        max_recording_seconds=300,
        silence_timeout_seconds=5,
        prompt_file_url=lambda language, node: f"/voice/prompts/{language}/{node}.wav",
    )
    root = ET.fromstring(
        render(flow, engine.CallState(node="goodbye", language="ar"), Urls(), options).to_xml()
    )
    play = root.find("Play")
    assert play is not None
    assert play.text == "/voice/prompts/ar/goodbye.wav"


def test_agent_closed_reads_hours() -> None:
    flow = load_flow("complaints.toml")
    hours = Prompt(texts={"ar": "من الأحد إلى الخميس", "en": "Sunday to Thursday"})
    state = engine.CallState(node="agent", language="en")
    root = ET.fromstring(
        render(flow, state, Urls(), OPTIONS, Context(agents_open=False, hours=hours)).to_xml()
    )
    texts = [say.text for say in root.findall("Say")]
    assert texts[-1] == "Sunday to Thursday"
    assert root.find("Enqueue") is None


def test_agent_open_enqueues() -> None:
    flow = load_flow("complaints.toml")
    state = engine.CallState(node="agent", language="ar")
    root = ET.fromstring(render(flow, state, Urls(), OPTIONS, Context(agents_open=True)).to_xml())
    enqueue = root.find("Enqueue")
    assert enqueue is not None
    assert enqueue.get("waitUrl") == "/voice/queue-wait?node=agent"


def test_reference_star_repeats() -> None:
    flow = load_flow("complaints.toml")
    state = engine.CallState(node="reference", language="ar")
    assert engine.press(flow, state, "*") == state
    assert engine.press(flow, state, "1").node == "goodbye"


def test_short_recording_retried_once() -> None:
    flow = load_flow("complaints.toml")
    state = engine.CallState(node="record", language="ar")
    again = engine.retry(flow, state)
    assert again.node == "record"
    assert engine.retry(flow, again).node == "goodbye"


def test_graph_has_every_node_and_key() -> None:
    from ivr_flows.graph import to_dot

    flow = load_flow("complaints.toml")
    dot = to_dot(flow)
    for node_id in flow.nodes:
        assert f'"{node_id}" [shape=' in dot
    assert '"complaint_type" -> "follow_up" [label="4"]' in dot


def test_graph_command_writes_svg(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from callcenter.cli import main

    output = tmp_path / "flow.svg"
    result = CliRunner().invoke(main, ["flows", "graph", str(SHIPPED), "--out", str(output)])
    assert result.exit_code == 0, result.output
    assert output.read_text(encoding="utf-8").lstrip().startswith("<?xml")
    assert "confirm_recording" in output.read_text(encoding="utf-8")


def test_check_command_names_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from callcenter.cli import main

    path = edited(tmp_path, 'next = "rights_group"', 'next = "rights"')
    result = CliRunner().invoke(main, ["flows", "check", str(path)])
    assert result.exit_code == 1
    assert (
        "node 'complaint_type', field 'options[0].next': unknown target 'rights'" in result.output
    )
