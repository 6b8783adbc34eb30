"""Exceptions of the storage package.

::

    StorageError
    ├── BlobNotFoundError          a blob key has no file in the blob store
    └── SealingError               a key or a sealed object cannot be used
        ├── KeyNotFoundError       a role's key file is missing
        ├── KeyExistsError         a role already has keys and replacing was not requested
        ├── WrongPassphraseError   a private key file does not open with the passphrase
        └── TamperedError          ciphertext, a wrap or their context fails authentication

Messages name roles, object ids, key ids and paths, and never contain key material,
passphrases, plaintext or phone numbers.
"""

from __future__ import annotations

from pathlib import Path


class StorageError(Exception):
    """Base class of every error raised by the storage package."""


class BlobNotFoundError(StorageError):
    """The blob store has no blob under the requested key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"Blob {key!r} not found in the blob store.")
        self.key = key


class SealingError(StorageError):
    """A sealed object or a key cannot be used as requested."""


class KeyNotFoundError(SealingError):
    """A role has no public or private key file in the key directory."""

    def __init__(self, role: str, directory: Path, part: str) -> None:
        super().__init__(
            f"No {part} key for role {role!r} in {directory}. "
            "Run `callcenter keys init` to create the role's keys, or copy its key "
            "files into that directory."
        )
        self.role = role
        self.directory = directory
        self.part = part


class KeyExistsError(SealingError):
    """A role already has key files, and the caller did not ask to replace them."""

    def __init__(self, role: str, directory: Path) -> None:
        super().__init__(
            f"Role {role!r} already has keys in {directory}. To keep them, run "
            "`callcenter keys init --if-missing`; to replace them, run "
            f"`callcenter keys rotate {role}`, which re-wraps every object to the new key."
        )
        self.role = role
        self.directory = directory


class WrongPassphraseError(SealingError):
    """A private key file does not decrypt with the passphrase that was given."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.env_variable = passphrase_env_variable(role)
        super().__init__(
            f"The passphrase does not open the private key of role {role!r}, or the key "
            f"file was modified. Check the environment variable {self.env_variable}."
        )


class TamperedError(SealingError):
    """Authentication failed: wrong key, wrong context, or altered ciphertext."""

    def __init__(self, object_id: str, reason: str | None = None) -> None:
        message = (
            f"Sealed object {object_id!r} failed authentication: the ciphertext or its "
            "context (case, object id, kind, recipient key) does not match."
        )
        if reason:
            message = f"{message} {reason}"
        super().__init__(message)
        self.object_id = object_id
        self.reason = reason


def passphrase_env_variable(role: str) -> str:
    """Return the name of the environment variable that contains a role's passphrase."""
    return f"CALLCENTER_{role.upper()}_PASSPHRASE"
