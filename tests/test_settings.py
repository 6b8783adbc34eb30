"""Settings: defaults from config.toml, environment overrides, secrets and errors."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from callcenter import create_app
from callcenter.errors import ConfigurationError
from callcenter.settings import load_settings

Env = Callable[..., dict[str, str]]


def test_defaults_loaded(make_env: Env) -> None:
    settings = load_settings(make_env())
    assert settings.voice.arabic_voice == "Polly.Zeina"
    assert settings.voice.arabic_language == "arb"


def test_override_converted_to_type(make_env: Env) -> None:
    settings = load_settings(make_env(CALLCENTER_VOICE__MAX_RECORDING_SECONDS="120"))
    assert settings.voice.max_recording_seconds == 120


def test_bad_number_names_variable(make_env: Env) -> None:
    with pytest.raises(
        ConfigurationError, match=re.escape("CALLCENTER_VOICE__MAX_RECORDING_SECONDS='long'")
    ):
        load_settings(make_env(CALLCENTER_VOICE__MAX_RECORDING_SECONDS="long"))


def test_unknown_variable_rejected(make_env: Env) -> None:
    with pytest.raises(
        ConfigurationError, match=re.escape("CALLCENTER_VOICE__MAX_LENGTH does not match")
    ):
        load_settings(make_env(CALLCENTER_VOICE__MAX_LENGTH="1"))


def test_bad_account_sid_named(make_env: Env) -> None:
    with pytest.raises(ConfigurationError, match=r"twilio\.account_sid"):
        load_settings(make_env(CALLCENTER_TWILIO__ACCOUNT_SID="AC123"))


def test_bad_public_url_named(make_env: Env) -> None:
    with pytest.raises(ConfigurationError, match=r"app\.public_base_url"):
        load_settings(make_env(CALLCENTER_APP__PUBLIC_BASE_URL="voice.example.jo/path"))


def test_recording_limit_enforced(make_env: Env) -> None:
    with pytest.raises(ConfigurationError, match="14400"):
        load_settings(make_env(CALLCENTER_VOICE__MAX_RECORDING_SECONDS="20000"))


def test_missing_auth_token_stops_app(make_env: Env) -> None:
    env = make_env()
    del env["CALLCENTER_TWILIO_AUTH_TOKEN"]
    with pytest.raises(ConfigurationError, match="CALLCENTER_TWILIO_AUTH_TOKEN is not set"):
        create_app(load_settings(env))


def test_missing_audit_key_stops_app(make_env: Env) -> None:
    env = make_env()
    del env["CALLCENTER_AUDIT_KEY"]
    with pytest.raises(ConfigurationError, match="CALLCENTER_AUDIT_KEY is not set"):
        create_app(load_settings(env))


def test_short_audit_key_rejected(make_env: Env) -> None:
    with pytest.raises(ConfigurationError, match="at least 32"):
        load_settings(make_env(CALLCENTER_AUDIT_KEY="abcd"))


def test_missing_passphrase_named(make_env: Env) -> None:
    env = make_env()
    del env["CALLCENTER_TRANSCRIPTION_PASSPHRASE"]
    settings = load_settings(env)
    with pytest.raises(ConfigurationError, match="CALLCENTER_TRANSCRIPTION_PASSPHRASE"):
        settings.secrets.passphrase("transcription")


def test_secret_in_file_rejected(make_env: Env, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    original = Path(make_env()["CALLCENTER_CONFIG"]).read_text(encoding="utf-8")
    config.write_text(
        original.replace("[twilio]\n", '[twilio]\nauth_token = "x"\n'), encoding="utf-8"
    )
    with pytest.raises(ConfigurationError, match="looks like a secret"):
        load_settings(make_env(CALLCENTER_CONFIG=str(config)))


def test_secrets_hidden_in_repr(make_env: Env) -> None:
    settings = load_settings(make_env())
    assert "test-auth-token" not in repr(settings)
    assert "passphrase for" not in repr(settings)


def test_every_default_documented() -> None:
    lines = (
        (Path(__file__).resolve().parents[1] / "config.toml")
        .read_text(encoding="utf-8")
        .splitlines()
    )
    for index, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[index - 1].startswith("#"), f"config.toml line {index + 1} has no comment"
