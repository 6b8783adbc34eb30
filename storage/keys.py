"""Key files of the sealing roles: public parts in clear, private parts under a passphrase.

A key directory contains, per role, ``<role>.public.json`` (mode 0644) and
``<role>.private.json`` (mode 0600). The two parts live in separate files so that a
deployment ships only ``*.public.json`` to the intake and recordings machines, which
seal but must never be able to unseal.

The private file contains the raw private parts (the 64-byte ML-KEM-768 seed and the
32-byte X25519 scalar) encrypted with AES-256-GCM. The AES key is derived from the
role's passphrase with Argon2id, or with scrypt where the OpenSSL build lacks Argon2id.
The salt and the KDF parameters are stored in the file, and every field other than the
ciphertext is bound into the AAD, so an edited header fails like a wrong passphrase.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from storage._files import write_atomic
from storage.errors import KeyExistsError, KeyNotFoundError, SealingError, WrongPassphraseError
from storage.sealing import (
    ALG_HYBRID,
    PrivateKey,
    PublicKey,
    check_role_name,
    generate_key_pair,
    private_key_from_raw,
    public_key_from_raw,
)

logger = logging.getLogger(__name__)

KDF_ARGON2ID = "argon2id"
KDF_SCRYPT = "scrypt"

# Argon2id with 64 MiB, 3 passes and 4 lanes is the second recommended setting of
# RFC 9106, above OWASP's minimum of 19 MiB and 2 passes. One derivation took 0.27 s
# on a 2-core x86-64 machine with cryptography 50. The scrypt fallback uses N=2**17
# and r=8 (128 MiB), OWASP's minimum for scrypt.
ARGON2ID_PARAMETERS = {"iterations": 3, "lanes": 4, "memory_cost": 65536}
SCRYPT_PARAMETERS = {"n": 2**17, "r": 8, "p": 1}

# Upper bounds on parameters read from a file, so that an edited file cannot make
# the process allocate or compute without limit.
_MAX_ARGON2ID = {"iterations": 64, "lanes": 64, "memory_cost": 4 * 1024 * 1024}
_MAX_SCRYPT = {"n": 2**22, "r": 32, "p": 16}

_PUBLIC_FORMAT = "callcenter-public-key"
_PRIVATE_FORMAT = "callcenter-private-key"
_FILE_VERSION = 1
_CIPHER = "AES-256-GCM"
_SALT_SIZE = 16
_NONCE_SIZE = 12
_DERIVED_KEY_SIZE = 32
_PUBLIC_MODE = 0o644
_PRIVATE_MODE = 0o600
_KEY_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class KeyInfo:
    """One key of a role as found in the key directory, current or retired."""

    role: str
    key_id: str
    algorithm: str
    current: bool
    has_private: bool
    # From the file's created_at field; files written before it existed give their mtime.
    created_at: datetime


class KeyStore:
    """Key files of the sealing roles in one directory."""

    def __init__(self, directory: Path, kdf: str | None = None) -> None:
        """Use ``directory`` for key files, and ``kdf`` for new private files.

        Without ``kdf``, new files use Argon2id where the OpenSSL build provides it and
        scrypt otherwise. Existing files are read with the KDF named inside them.
        """
        if kdf not in (None, KDF_ARGON2ID, KDF_SCRYPT):
            raise SealingError(f"Unknown KDF {kdf!r}; expected {KDF_ARGON2ID} or {KDF_SCRYPT}.")

        self.directory = Path(directory)
        self.kdf = kdf or _best_available_kdf()

    def init_role(
        self,
        role: str,
        passphrase: bytes,
        algorithm: str = ALG_HYBRID,
        *,
        replace: bool = False,
    ) -> PublicKey:
        """Generate a key pair for ``role`` and write its public and private files.

        Raises KeyExistsError when the role already has a key file, unless ``replace``
        is true. Replacing does not delete the old key: its files are renamed to
        ``<role>.<key id>.public.json`` and ``<role>.<key id>.private.json`` so that
        objects sealed to it stay readable by an operator.
        """
        check_role_name(role)
        if not passphrase:
            raise SealingError(f"The passphrase for role {role!r} is empty.")

        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._has_any_file(role):
            if not replace:
                raise KeyExistsError(role, self.directory)
            self._retire(role)

        public_key, private_key = generate_key_pair(role, algorithm)
        private_document = _encrypt_private_key(private_key, passphrase, self.kdf)

        # The private file goes first, because a role with a public key but no private
        # key would accept sealed objects that no one can ever open.
        try:
            self._write(self.private_path(role), private_document, _PRIVATE_MODE)
            self._write(self.public_path(role), _public_document(public_key), _PUBLIC_MODE)
        except FileExistsError as error:
            raise KeyExistsError(role, self.directory) from error

        logger.info("Created %s key %s for role %s", algorithm, public_key.key_id, role)
        return public_key

    def load_public(self, role: str) -> PublicKey:
        """Read a role's public key; raises KeyNotFoundError when its file is missing."""
        check_role_name(role)
        return self._load_public_file(self.public_path(role), role)

    def load_private(self, role: str, passphrase: bytes) -> PrivateKey:
        """Decrypt a role's private key with ``passphrase``.

        Raises KeyNotFoundError when the private file is missing, WrongPassphraseError
        when the passphrase does not open it, and SealingError when the file is invalid
        or belongs to another key than the role's public file.
        """
        check_role_name(role)
        private_key = self._load_private_file(self.private_path(role), role, passphrase)

        if self.public_path(role).exists():
            public_key = self.load_public(role)
            if public_key.key_id != private_key.key_id:
                raise SealingError(
                    f"The public and private key files of role {role!r} in {self.directory} "
                    f"belong to different keys ({public_key.key_id} and {private_key.key_id})."
                )

        return private_key

    def load_private_by_id(self, role: str, key_id: str, passphrase: bytes) -> PrivateKey:
        """Decrypt the private key ``key_id`` of ``role``, current or retired.

        Rotation needs the retired key to unwrap the data keys that it re-wraps. Raises
        KeyNotFoundError when neither the current file nor a retired file has that key.
        """
        check_role_name(role)
        _check_key_id(key_id)
        if self.current_key_id(role) == key_id:
            return self.load_private(role, passphrase)

        path = self._retired_path(role, key_id, "private")
        private_key = self._load_private_file(path, role, passphrase)
        if private_key.key_id != key_id:
            raise SealingError(f"Key file {path} is invalid: it contains key {private_key.key_id}.")

        return private_key

    def load_public_by_id(self, role: str, key_id: str) -> PublicKey:
        """Read the public key ``key_id`` of ``role``, current or retired."""
        check_role_name(role)
        _check_key_id(key_id)
        if self.current_key_id(role) == key_id:
            return self.load_public(role)

        path = self._retired_path(role, key_id, "public")
        public_key = self._load_public_file(path, role)
        if public_key.key_id != key_id:
            raise SealingError(f"Key file {path} is invalid: it contains key {public_key.key_id}.")

        return public_key

    def current_key_id(self, role: str) -> str | None:
        """Return the key id of the role's current public file, or None without one."""
        check_role_name(role)
        path = self.public_path(role)
        if not path.exists():
            return None

        return _text(self._read(path, role, "public"), "key_id", path)

    def retire(self, role: str) -> None:
        """Rename the role's current files to retired names, so nothing new is sealed to it.

        The files stay readable by :meth:`load_private_by_id`. Does nothing when the
        role has no current file.
        """
        check_role_name(role)
        self._retire(role)

    def list_keys(self) -> list[KeyInfo]:
        """Return every key in the directory, current and retired, sorted by role and age."""
        if not self.directory.is_dir():
            return []

        found: dict[tuple[str, str], KeyInfo] = {}
        for path in sorted(self.directory.glob("*.public.json")):
            info = self._key_info(path)
            if info is not None:
                found[(info.role, info.key_id)] = info

        return sorted(found.values(), key=lambda info: (info.role, info.created_at, info.key_id))

    def _key_info(self, path: Path) -> KeyInfo | None:
        parts = path.name.split(".")
        if len(parts) == 3:
            current = True
        elif len(parts) == 4 and _KEY_ID_PATTERN.fullmatch(parts[1]):
            current = False
        else:
            return None

        role = parts[0]
        document = self._read(path, role, "public")
        key_id = _text(document, "key_id", path)
        private_path = (
            self.private_path(role) if current else self._retired_path(role, key_id, "private")
        )
        return KeyInfo(
            role=role,
            key_id=key_id,
            algorithm=_text(document, "algorithm", path),
            current=current,
            has_private=private_path.is_file(),
            created_at=_created_at(document, path),
        )

    def _retired_path(self, role: str, key_id: str, part: str) -> Path:
        return self.directory / f"{role}.{key_id}.{part}.json"

    def _load_public_file(self, path: Path, role: str) -> PublicKey:
        document = self._read(path, role, "public")
        _check_header(document, path, _PUBLIC_FORMAT, role)

        raw = _decode_base64(document, "public_key", path)
        public_key = public_key_from_raw(role, _text(document, "algorithm", path), raw)
        if public_key.key_id != document["key_id"]:
            raise SealingError(f"Key file {path} is invalid: its key id does not match its key.")

        return public_key

    def _load_private_file(self, path: Path, role: str, passphrase: bytes) -> PrivateKey:
        document = self._read(path, role, "private")
        _check_header(document, path, _PRIVATE_FORMAT, role)

        raw = _decrypt_private_raw(document, passphrase, path, role)
        private_key = private_key_from_raw(role, _text(document, "algorithm", path), raw)
        if private_key.key_id != document["key_id"]:
            raise SealingError(f"Key file {path} is invalid: its key id does not match its key.")

        return private_key

    def has_private(self, role: str) -> bool:
        """Return whether the role's private key file is present (not whether it opens)."""
        check_role_name(role)
        return self.private_path(role).is_file()

    def roles(self) -> list[str]:
        """Return the sorted roles that have a current public or private key file."""
        if not self.directory.is_dir():
            return []

        found = set()
        for path in self.directory.glob("*.json"):
            parts = path.name.split(".")
            if len(parts) == 3 and parts[1] in ("public", "private"):
                found.add(parts[0])

        return sorted(found)

    def public_path(self, role: str) -> Path:
        """Return the path of the role's public key file, the one file to ship for sealing."""
        check_role_name(role)
        return self.directory / f"{role}.public.json"

    def private_path(self, role: str) -> Path:
        """Return the path of the role's private key file."""
        check_role_name(role)
        return self.directory / f"{role}.private.json"

    # Aliases for callers that still use the earlier private names.
    _public_path = public_path
    _private_path = private_path

    def _has_any_file(self, role: str) -> bool:
        return self.public_path(role).exists() or self.private_path(role).exists()

    def _retire(self, role: str) -> None:
        """Rename the role's current key files to names that carry their key id."""
        for path in (self.public_path(role), self.private_path(role)):
            if not path.exists():
                continue

            document = self._read(path, role, "current")
            key_id = _text(document, "key_id", path)
            retired = path.with_name(f"{role}.{key_id}.{path.name.split('.', 1)[1]}")
            path.rename(retired)
            logger.warning("Retired key %s of role %s to %s", key_id, role, retired.name)

    def _write(self, path: Path, document: dict[str, Any], mode: int) -> None:
        data = json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
        write_atomic(path, data, mode, overwrite=False)

    def _read(self, path: Path, role: str, part: str) -> dict[str, Any]:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as error:
            raise KeyNotFoundError(role, self.directory, part) from error

        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise SealingError(f"Key file {path} is not valid JSON: {error.msg}.") from error

        if not isinstance(document, dict):
            raise SealingError(f"Key file {path} is invalid: expected a JSON object.")

        return document


def _public_document(public_key: PublicKey) -> dict[str, Any]:
    return {
        "format": _PUBLIC_FORMAT,
        "version": _FILE_VERSION,
        "role": public_key.role,
        "key_id": public_key.key_id,
        "algorithm": public_key.algorithm,
        "created_at": _now_text(),
        "public_key": _encode_base64(public_key.raw),
    }


def _now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _created_at(document: dict[str, Any], path: Path) -> datetime:
    value = document.get("created_at")
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass

    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


def _check_key_id(key_id: str) -> None:
    # Key ids become part of file names, so only the generated form is accepted.
    if not _KEY_ID_PATTERN.fullmatch(key_id):
        raise SealingError(f"Invalid key id {key_id[:80]!r}: expected 32 lower-case hex digits.")


def _encrypt_private_key(private_key: PrivateKey, passphrase: bytes, kdf: str) -> dict[str, Any]:
    salt = secrets.token_bytes(_SALT_SIZE)
    parameters = ARGON2ID_PARAMETERS if kdf == KDF_ARGON2ID else SCRYPT_PARAMETERS
    nonce = secrets.token_bytes(_NONCE_SIZE)
    document: dict[str, Any] = {
        "format": _PRIVATE_FORMAT,
        "version": _FILE_VERSION,
        "role": private_key.role,
        "key_id": private_key.key_id,
        "algorithm": private_key.algorithm,
        "created_at": _now_text(),
        "kdf": {"name": kdf, "salt": _encode_base64(salt), **parameters},
        "cipher": _CIPHER,
        "nonce": _encode_base64(nonce),
    }

    wrapping_key = _derive_key(kdf, salt, parameters, passphrase)
    ciphertext = AESGCM(wrapping_key).encrypt(nonce, private_key.raw, _private_aad(document))
    document["ciphertext"] = _encode_base64(ciphertext)

    return document


def _decrypt_private_raw(
    document: dict[str, Any], passphrase: bytes, path: Path, role: str
) -> bytes:
    if document.get("cipher") != _CIPHER:
        raise SealingError(f"Key file {path} is invalid: the cipher must be {_CIPHER}.")

    kdf, salt, parameters = _read_kdf(document, path)
    nonce = _decode_base64(document, "nonce", path)
    ciphertext = _decode_base64(document, "ciphertext", path)
    wrapping_key = _derive_key(kdf, salt, parameters, passphrase)

    header = {name: value for name, value in document.items() if name != "ciphertext"}
    try:
        return AESGCM(wrapping_key).decrypt(nonce, ciphertext, _private_aad(header))
    except (InvalidTag, ValueError) as error:
        raise WrongPassphraseError(role) from error


def _private_aad(header: dict[str, Any]) -> bytes:
    """Encode every field except the ciphertext canonically, for use as AAD."""
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _derive_key(kdf: str, salt: bytes, parameters: dict[str, int], passphrase: bytes) -> bytes:
    if kdf == KDF_ARGON2ID:
        argon2id = Argon2id(
            salt=salt,
            length=_DERIVED_KEY_SIZE,
            iterations=parameters["iterations"],
            lanes=parameters["lanes"],
            memory_cost=parameters["memory_cost"],
        )
        return argon2id.derive(passphrase)

    scrypt = Scrypt(
        salt=salt, length=_DERIVED_KEY_SIZE, n=parameters["n"], r=parameters["r"], p=parameters["p"]
    )
    return scrypt.derive(passphrase)


def _read_kdf(document: dict[str, Any], path: Path) -> tuple[str, bytes, dict[str, int]]:
    """Return the KDF name, salt and parameters of a private file, each checked."""
    kdf_document = document.get("kdf")
    if not isinstance(kdf_document, dict):
        raise SealingError(f"Key file {path} is invalid: the field 'kdf' is missing.")

    name = kdf_document.get("name")
    if name == KDF_ARGON2ID:
        maximums = _MAX_ARGON2ID
    elif name == KDF_SCRYPT:
        maximums = _MAX_SCRYPT
    else:
        raise SealingError(f"Key file {path} is invalid: unknown KDF {name!r}.")

    parameters = {}
    for parameter, maximum in maximums.items():
        value = kdf_document.get(parameter)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
            raise SealingError(
                f"Key file {path} is invalid: KDF parameter {parameter!r} must be an "
                f"integer from 1 to {maximum}."
            )
        parameters[parameter] = value

    return name, _decode_base64(kdf_document, "salt", path), parameters


def _check_header(document: dict[str, Any], path: Path, file_format: str, role: str) -> None:
    if document.get("format") != file_format or document.get("version") != _FILE_VERSION:
        raise SealingError(
            f"Key file {path} is invalid: expected format {file_format!r} version {_FILE_VERSION}."
        )
    if document.get("role") != role:
        raise SealingError(
            f"Key file {path} belongs to role {document.get('role')!r}, not to {role!r}."
        )
    _text(document, "key_id", path)


def _text(document: dict[str, Any], name: str, path: Path) -> str:
    value = document.get(name)
    if not isinstance(value, str):
        raise SealingError(f"Key file {path} is invalid: the field {name!r} is missing.")

    return value


def _encode_base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _decode_base64(document: dict[str, Any], name: str, path: Path) -> bytes:
    try:
        return base64.b64decode(_text(document, name, path), validate=True)
    except binascii.Error as error:
        raise SealingError(f"Key file {path} is invalid: {name!r} is not base64.") from error


def _best_available_kdf() -> str:
    """Return Argon2id when this OpenSSL build provides it, scrypt otherwise."""
    try:
        Argon2id(salt=b"\x00" * _SALT_SIZE, length=32, iterations=1, lanes=1, memory_cost=8)
    except UnsupportedAlgorithm:
        return KDF_SCRYPT

    return KDF_ARGON2ID
