"""Settings: config.toml defaults, CALLCENTER_* overrides, secrets from the environment.

Settings are parsed once into frozen dataclasses and validated before any process
starts serving, so a typo fails the start with the name of the setting instead of
failing the first caller.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from callcenter.errors import ConfigurationError
from callcenter.logs import register_secrets
from storage.models import CaseStatus, ObjectKind

ENV_PREFIX = "CALLCENTER_"
CONFIG_ENV = "CALLCENTER_CONFIG"
ACCOUNT_SID_PATTERN = re.compile(r"^AC[0-9a-f]{32}$")
ALGORITHMS = (
    "HPKE-MLKEM768X25519-HKDFSHA256-AES256GCM",
    "HPKE-X25519-HKDFSHA256-AES256GCM",
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Keys that must never appear in config.toml, because the file is committed.
SECRET_NAMES = ("auth_token", "password", "passphrase", "secret", "audit_key", "hash_key")
# Redis hosts that may be reached without a password: only this machine's own users
# can connect to them.
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class AppSettings:
    public_base_url: str
    instance_path: Path
    host: str
    port: int
    log_level: str


@dataclass(frozen=True)
class DatabaseSettings:
    url: str


@dataclass(frozen=True)
class RedisSettings:
    url: str
    embedded: bool
    socket_path: Path
    reconcile_interval_seconds: int


@dataclass(frozen=True)
class TwilioSettings:
    account_sid: str
    api_base_url: str
    request_timeout_seconds: float
    download_attempts: int
    download_backoff_seconds: float


@dataclass(frozen=True)
class VoiceSettings:
    flow: str
    arabic_voice: str
    arabic_language: str
    english_voice: str
    english_language: str
    calendar: str
    agent_queue: str
    max_queue_wait_seconds: int
    max_recording_seconds: int
    silence_timeout_seconds: int
    min_recording_seconds: int
    gather_timeout_seconds: int


@dataclass(frozen=True)
class TranscriptionSettings:
    model: str
    models_dir: Path
    max_audio_seconds: int
    job_timeout_seconds: int


@dataclass(frozen=True)
class SealingSettings:
    algorithm: str
    keys_dir: Path
    blobs_dir: Path
    rotation_batch_size: int


@dataclass(frozen=True)
class RetentionSettings:
    """Retention periods in days, per object kind and then per case status.

    An object expires that many days after its case entered the status. A status that
    is not listed for a kind keeps objects of that kind indefinitely.
    """

    periods: Mapping[str, Mapping[str, int]]
    interval_seconds: int

    def days_for(self, kind: str, status: str) -> int | None:
        """Return the retention period of ``kind`` in ``status``, or None to keep it."""
        return self.periods.get(kind, {}).get(status)


@dataclass(frozen=True)
class Secrets:
    """Secrets read from the environment; the repr hides every value."""

    twilio_auth_token: str | None = field(default=None, repr=False)
    audit_key: bytes | None = field(default=None, repr=False)
    passphrases: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    caller_hash_key: bytes | None = field(default=None, repr=False)
    # From CALLCENTER_<ROLE>_NEW_PASSPHRASE, for the key that a rotation creates.
    new_passphrases: Mapping[str, bytes] = field(default_factory=dict, repr=False)

    def passphrase(self, role: str) -> bytes:
        """Return a role's passphrase, or raise naming the variable to set."""
        value = self.passphrases.get(role)
        if not value:
            raise ConfigurationError(
                f"{passphrase_variable(role)} is not set: export the passphrase that "
                f"protects the {role} private key (chosen at `callcenter keys init`)."
            )
        return value

    def new_passphrase(self, role: str) -> bytes:
        """Return the passphrase for a role's next key: the new one if set, else the current."""
        return self.new_passphrases.get(role) or self.passphrase(role)


@dataclass(frozen=True)
class Settings:
    app: AppSettings
    database: DatabaseSettings
    redis: RedisSettings
    twilio: TwilioSettings
    voice: VoiceSettings
    transcription: TranscriptionSettings
    sealing: SealingSettings
    retention: RetentionSettings
    secrets: Secrets
    source: Path

    def require_twilio(self) -> str:
        """Return the Twilio auth token, or raise naming how to set it."""
        token = self.secrets.twilio_auth_token
        if not token:
            raise ConfigurationError(
                "CALLCENTER_TWILIO_AUTH_TOKEN is not set: export the Auth Token of the "
                "Twilio account (Twilio console, Account info)."
            )
        if not self.twilio.account_sid:
            raise ConfigurationError(
                "twilio.account_sid is empty: set CALLCENTER_TWILIO__ACCOUNT_SID to the "
                "Account SID (AC followed by 32 hex digits)."
            )
        return token

    def require_audit_key(self) -> bytes:
        """Return the audit chain key, or raise naming how to set it."""
        if self.secrets.audit_key is None:
            raise ConfigurationError(
                "CALLCENTER_AUDIT_KEY is not set: export 64 hex digits, for example from "
                "`python -c 'import secrets; print(secrets.token_hex(32))'`, and keep it "
                "outside the database."
            )
        return self.secrets.audit_key

    def require_caller_hash_key(self) -> bytes:
        """Return the key of the caller hash (HMAC-SHA256), or raise naming how to set it."""
        if self.secrets.caller_hash_key is None:
            raise ConfigurationError(
                "CALLCENTER_CALLER_HASH_KEY is not set: export 64 hex digits, for example "
                "from `python -c 'import secrets; print(secrets.token_hex(32))'`, keep it "
                "outside the database, and use the same value on every intake machine."
            )
        return self.secrets.caller_hash_key


def passphrase_variable(role: str) -> str:
    """Return the name of the environment variable that contains a role's key passphrase."""
    return f"{ENV_PREFIX}{role.upper()}_PASSPHRASE"


def find_config_file(environ: Mapping[str, str]) -> Path:
    """Locate config.toml: $CALLCENTER_CONFIG, the working directory, then the source tree."""
    explicit = environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigurationError(
                f"{CONFIG_ENV}={explicit} does not name a file: point it at config.toml."
            )
        return path

    for candidate in (
        Path.cwd() / "config.toml",
        Path(__file__).resolve().parents[1] / "config.toml",
    ):
        if candidate.is_file():
            return candidate

    raise ConfigurationError(
        f"config.toml not found in {Path.cwd()}: run from the repository root or set {CONFIG_ENV}."
    )


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate every setting; raise ConfigurationError naming the first bad one."""
    env = os.environ if environ is None else environ
    path = find_config_file(env)

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"{path} is not valid TOML: {error}") from error

    _reject_secrets_in_file(raw, path)
    values = _apply_environment(raw, env)
    settings = _build(values, env, path)

    # Every secret read is masked in log records from now on.
    found = settings.secrets
    register_secrets(
        [
            found.twilio_auth_token,
            found.audit_key,
            found.caller_hash_key,
            *found.passphrases.values(),
            *found.new_passphrases.values(),
        ]
    )
    return settings


def _reject_secrets_in_file(raw: Mapping[str, Any], path: Path) -> None:
    for section, table in raw.items():
        if not isinstance(table, dict):
            continue
        for key in table:
            if any(secret in key for secret in SECRET_NAMES):
                raise ConfigurationError(
                    f"{path}: [{section}] {key} looks like a secret; remove it from the file "
                    "and set it in the environment instead."
                )


def _apply_environment(raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Overlay CALLCENTER_<SECTION>__<KEY> variables, converted to the default's type."""
    values = {section: dict(table) for section, table in raw.items() if isinstance(table, dict)}

    for name, text in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section not in values or key not in values[section]:
            raise ConfigurationError(
                f"{name} does not match any setting: the known ones are listed in config.toml "
                "as [section] key, set as CALLCENTER_SECTION__KEY."
            )
        values[section][key] = _convert(name, text, values[section][key])

    return values


def _convert(name: str, text: str, default: Any) -> Any:
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ConfigurationError(f"{name}={text!r} is not a boolean: use true or false.")
        return text.lower() in ("true", "1")

    if isinstance(default, int | float):
        try:
            return type(default)(text)
        except ValueError:
            raise ConfigurationError(
                f"{name}={text!r} is not {'an integer' if isinstance(default, int) else 'a number'}: "
                "use digits only, such as 30."
            ) from None

    if isinstance(default, dict):
        # A table is written as a TOML inline table, such as { closed = 90 }.
        try:
            return tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            raise ConfigurationError(
                f"{name}={text!r} is not a TOML inline table: use {{ status = days, ... }}."
            ) from None

    return text


def _build(values: dict[str, dict[str, Any]], env: Mapping[str, str], path: Path) -> Settings:
    try:
        app = values["app"]
        instance = Path(app["instance_path"]).expanduser()
        if not instance.is_absolute():
            instance = Path.cwd() / instance

        settings = Settings(
            app=_app(app, instance),
            database=_database(values["database"], instance),
            redis=_redis(values["redis"], instance),
            twilio=_twilio(values["twilio"]),
            voice=_voice(values["voice"]),
            transcription=_transcription(values["transcription"], instance),
            sealing=_sealing(values["sealing"], instance),
            retention=_retention(values["retention"]),
            secrets=_secrets(env),
            source=path,
        )
    except KeyError as error:
        raise ConfigurationError(
            f"{path} lacks the setting {error.args[0]!r}: restore it from the repository's config.toml."
        ) from None

    return settings


def _under(instance: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else instance / path


def _positive(name: str, value: Any) -> Any:
    if not isinstance(value, int | float) or value <= 0:
        raise ConfigurationError(f"{name} = {value!r} must be a positive number.")
    return value


def _app(table: dict[str, Any], instance: Path) -> AppSettings:
    url = str(table["public_base_url"]).rstrip("/")
    if not re.match(r"^https?://[^/\s]+$", url):
        raise ConfigurationError(
            f"app.public_base_url = {url!r} must be an origin such as https://voice.example.jo "
            "(scheme and host, no path), exactly as Twilio requests it."
        )

    level = str(table["log_level"]).upper()
    if level not in LOG_LEVELS:
        raise ConfigurationError(
            f"app.log_level = {level!r} must be one of {', '.join(LOG_LEVELS)}."
        )

    return AppSettings(
        public_base_url=url,
        instance_path=instance,
        host=str(table["host"]),
        port=_port(table["port"]),
        log_level=level,
    )


def _port(value: Any) -> int:
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigurationError(f"app.port = {value!r} must be a TCP port from 1 to 65535.")
    return value


def _database(table: dict[str, Any], instance: Path) -> DatabaseSettings:
    url = str(table["url"]) or f"sqlite:///{instance / 'callcenter.db'}"
    if not url.startswith(("sqlite", "postgresql")):
        raise ConfigurationError(
            f"database.url = {url!r} is not supported: use a sqlite:/// or postgresql+psycopg:// URL."
        )
    return DatabaseSettings(url=url)


def _redis(table: dict[str, Any], instance: Path) -> RedisSettings:
    url = str(table["url"])
    _check_redis_access(url)
    socket_path = instance / "redis.sock"
    return RedisSettings(
        url=url or f"unix://{socket_path}",
        embedded=not url,
        socket_path=socket_path,
        reconcile_interval_seconds=int(
            _positive("redis.reconcile_interval_seconds", table["reconcile_interval_seconds"])
        ),
    )


def _check_redis_access(url: str) -> None:
    """Reject a TCP Redis on another host that takes connections without a password.

    Job ids are not secret, but whoever can write to the queues can make workers
    process any row. A Unix socket (the embedded Redis) is guarded by its file mode.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return

    if not parts.password and parts.hostname not in LOOPBACK_HOSTS:
        raise ConfigurationError(
            f"redis.url points at {parts.hostname} without a password: set "
            "CALLCENTER_REDIS__URL to redis://:PASSWORD@host:port/db (or rediss:// for TLS), "
            "or use the embedded Redis on a Unix socket by leaving redis.url empty."
        )


def _twilio(table: dict[str, Any]) -> TwilioSettings:
    sid = str(table["account_sid"])
    if sid and not ACCOUNT_SID_PATTERN.match(sid):
        raise ConfigurationError(
            f"twilio.account_sid = {sid!r} is invalid: it is AC followed by 32 lowercase hex digits."
        )

    api = str(table["api_base_url"]).rstrip("/")
    if not re.match(r"^https?://[^/\s]+$", api):
        raise ConfigurationError(
            f"twilio.api_base_url = {api!r} must be an origin such as https://api.twilio.com."
        )

    return TwilioSettings(
        account_sid=sid,
        api_base_url=api,
        request_timeout_seconds=float(
            _positive("twilio.request_timeout_seconds", table["request_timeout_seconds"])
        ),
        download_attempts=int(_positive("twilio.download_attempts", table["download_attempts"])),
        download_backoff_seconds=float(
            _positive("twilio.download_backoff_seconds", table["download_backoff_seconds"])
        ),
    )


def _voice(table: dict[str, Any]) -> VoiceSettings:
    max_seconds = int(_positive("voice.max_recording_seconds", table["max_recording_seconds"]))
    if max_seconds > 14400:
        raise ConfigurationError(
            f"voice.max_recording_seconds = {max_seconds} exceeds Twilio's limit of 14400 seconds."
        )

    return VoiceSettings(
        flow=str(table["flow"]),
        arabic_voice=str(table["arabic_voice"]),
        arabic_language=str(table["arabic_language"]),
        english_voice=str(table["english_voice"]),
        english_language=str(table["english_language"]),
        calendar=str(table["calendar"]),
        agent_queue=str(table["agent_queue"]),
        max_queue_wait_seconds=int(
            _positive("voice.max_queue_wait_seconds", table["max_queue_wait_seconds"])
        ),
        max_recording_seconds=max_seconds,
        min_recording_seconds=int(
            _positive("voice.min_recording_seconds", table["min_recording_seconds"])
        ),
        silence_timeout_seconds=int(
            _positive("voice.silence_timeout_seconds", table["silence_timeout_seconds"])
        ),
        gather_timeout_seconds=int(
            _positive("voice.gather_timeout_seconds", table["gather_timeout_seconds"])
        ),
    )


def _transcription(table: dict[str, Any], instance: Path) -> TranscriptionSettings:
    return TranscriptionSettings(
        model=str(table["model"]),
        models_dir=_under(instance, str(table["models_dir"])),
        max_audio_seconds=int(
            _positive("transcription.max_audio_seconds", table["max_audio_seconds"])
        ),
        job_timeout_seconds=int(
            _positive("transcription.job_timeout_seconds", table["job_timeout_seconds"])
        ),
    )


def _sealing(table: dict[str, Any], instance: Path) -> SealingSettings:
    algorithm = str(table["algorithm"])
    if algorithm not in ALGORITHMS:
        raise ConfigurationError(
            f"sealing.algorithm = {algorithm!r} is unknown: use one of {', '.join(ALGORITHMS)}."
        )
    return SealingSettings(
        algorithm=algorithm,
        keys_dir=_under(instance, str(table["keys_dir"])),
        blobs_dir=_under(instance, str(table["blobs_dir"])),
        rotation_batch_size=int(
            _positive("sealing.rotation_batch_size", table["rotation_batch_size"])
        ),
    )


RETENTION_KINDS = {
    "recording_days": ObjectKind.RECORDING.value,
    "transcript_days": ObjectKind.TRANSCRIPT.value,
    "identity_days": ObjectKind.IDENTITY.value,
    "note_days": ObjectKind.NOTE.value,
}


def _retention(table: dict[str, Any]) -> RetentionSettings:
    periods = {kind: _retention_periods(key, table[key]) for key, kind in RETENTION_KINDS.items()}
    return RetentionSettings(
        periods=periods,
        interval_seconds=int(_positive("retention.interval_seconds", table["interval_seconds"])),
    )


def _retention_periods(key: str, value: Any) -> dict[str, int]:
    """Check one kind's table of status → days."""
    if not isinstance(value, dict):
        raise ConfigurationError(
            f"retention.{key} = {value!r} must be a table such as {{ closed = 90 }}."
        )

    statuses = {status.value for status in CaseStatus}
    periods = {}
    for status, days in value.items():
        if status not in statuses:
            raise ConfigurationError(
                f"retention.{key} names unknown case status {status!r}: use one of "
                f"{', '.join(sorted(statuses))}."
            )
        if not isinstance(days, int) or isinstance(days, bool) or days < 0:
            raise ConfigurationError(
                f"retention.{key}.{status} = {days!r} must be a whole number of days, 0 or more."
            )
        periods[status] = days

    return periods


def _secrets(env: Mapping[str, str]) -> Secrets:
    audit_key = _hex_key(env, f"{ENV_PREFIX}AUDIT_KEY")
    caller_hash_key = _hex_key(env, f"{ENV_PREFIX}CALLER_HASH_KEY")
    if caller_hash_key is not None and caller_hash_key == audit_key:
        raise ConfigurationError(
            "CALLCENTER_CALLER_HASH_KEY equals CALLCENTER_AUDIT_KEY: generate a separate "
            "key for each, so that one leaked key does not expose the other's use."
        )

    passphrases = {}
    new_passphrases = {}
    for name, value in env.items():
        if not (name.startswith(ENV_PREFIX) and name.endswith("_PASSPHRASE") and value):
            continue
        if name.endswith("_NEW_PASSPHRASE"):
            role = name[len(ENV_PREFIX) : -len("_NEW_PASSPHRASE")].lower()
            new_passphrases[role] = value.encode("utf-8")
        else:
            role = name[len(ENV_PREFIX) : -len("_PASSPHRASE")].lower()
            passphrases[role] = value.encode("utf-8")

    return Secrets(
        twilio_auth_token=env.get(f"{ENV_PREFIX}TWILIO_AUTH_TOKEN") or None,
        audit_key=audit_key,
        passphrases=passphrases,
        caller_hash_key=caller_hash_key,
        new_passphrases=new_passphrases,
    )


def _hex_key(env: Mapping[str, str], name: str) -> bytes | None:
    """Parse a key given as hex digits in ``name``; None when the variable is unset."""
    text = env.get(name)
    if not text:
        return None

    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigurationError(
            f"{name} is not hex: export 64 hex digits (32 random bytes)."
        ) from None
    if len(key) < 32:
        raise ConfigurationError(f"{name} has {len(key)} bytes: use at least 32 (64 hex digits).")

    return key
