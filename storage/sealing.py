"""Sealing of stored objects: AES-256-GCM chunks under a data key wrapped with HPKE.

Every object gets its own random 256-bit data key. The plaintext is cut into chunks,
and each chunk is encrypted with AES-256-GCM. The data key is then encrypted (wrapped)
with HPKE (RFC 9180) once for each recipient role's public key. Nothing here touches
the database or the file system.

Ciphertext layout, format version 1::

    header    magic b"CCSO" | format version (u8) | chunk size (u32, big-endian)
    chunk i   AES-256-GCM ciphertext of plaintext[i * chunk_size : (i + 1) * chunk_size]
              followed by its 16-byte tag; only the last chunk may be shorter

The AAD of every chunk binds the header, the context (format version, case id, object
id, kind), the chunk index and a final-chunk flag. So a blob moved to another case or
object, chunks reordered, a dropped final chunk, a cut or an appended chunk all fail
authentication. The HPKE ``info`` of each wrap binds the same context plus the
recipient's key id.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.errors import SealingError, TamperedError

ROLE_TRANSCRIPTION = "transcription"
ROLE_CASE_OFFICE = "case_office"
ROLE_IDENTITY_CUSTODIAN = "identity_custodian"
ALL_ROLES = (ROLE_TRANSCRIPTION, ROLE_CASE_OFFICE, ROLE_IDENTITY_CUSTODIAN)

# The post-quantum hybrid is the default because some complaints must stay secret for
# decades. X25519 alone is a fallback for peers that cannot use ML-KEM yet.
ALG_HYBRID = "HPKE-MLKEM768X25519-HKDFSHA256-AES256GCM"
ALG_X25519 = "HPKE-X25519-HKDFSHA256-AES256GCM"
ALGORITHMS = (ALG_HYBRID, ALG_X25519)

FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 65536
MAX_CHUNK_SIZE = 16 * 1024 * 1024
DATA_KEY_SIZE = 32
TAG_SIZE = 16

_MAGIC = b"CCSO"
_HEADER = struct.Struct(">4sBI")
_CONTEXT_LABEL = b"callcenter sealed object"
_KEY_ID_LENGTH = 32
_ROLE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")

# Key types that the HPKE suites accept. The public dataclasses type their key as
# object, so that callers do not depend on the library's key classes.
_HpkePublic = hpke.MLKEM768X25519PublicKey | x25519.X25519PublicKey
_HpkePrivate = hpke.MLKEM768X25519PrivateKey | x25519.X25519PrivateKey


_SUITES = {
    ALG_HYBRID: hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
    ALG_X25519: hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
}

# Sizes of the raw key encodings. An ML-KEM-768 public key is 1184 bytes, and its
# private key is stored as its 64-byte seed. X25519 keys are 32 bytes each.
_MLKEM_PUBLIC_SIZE = 1184
_MLKEM_SEED_SIZE = 64
_X25519_SIZE = 32
_PUBLIC_SIZES = {ALG_HYBRID: _MLKEM_PUBLIC_SIZE + _X25519_SIZE, ALG_X25519: _X25519_SIZE}
_PRIVATE_SIZES = {ALG_HYBRID: _MLKEM_SEED_SIZE + _X25519_SIZE, ALG_X25519: _X25519_SIZE}


@dataclass(frozen=True)
class SealContext:
    """Binding of a sealed object to its case, id and kind, the same to seal and to unseal."""

    case_id: int | None
    object_id: str
    kind: str

    def canonical_bytes(self) -> bytes:
        """Encode the context as length-prefixed fields after a label and the format version.

        Length prefixes keep the encoding unambiguous, so no two different contexts
        produce the same bytes. A missing case id is encoded apart from every number.
        """
        return b"".join(
            [
                _length_prefixed(_CONTEXT_LABEL),
                struct.pack(">H", FORMAT_VERSION),
                _length_prefixed(_encode_case_id(self.case_id)),
                _length_prefixed(self.object_id.encode()),
                _length_prefixed(str(self.kind).encode()),
            ]
        )


@dataclass(frozen=True)
class PublicKey:
    """A role's public key, with ``raw``, its encoding as stored in the key directory."""

    role: str
    key_id: str
    algorithm: str
    key: object = field(repr=False, compare=False)
    raw: bytes = field(repr=False)


@dataclass(frozen=True)
class PrivateKey:
    """A role's private key, unlocked in memory, whose repr shows no key material.

    ``raw`` contains the secret parts (the ML-KEM seed and the X25519 scalar) so that
    the key store can encrypt them. Keep this object out of logs, job arguments,
    sessions and caches.
    """

    role: str
    key_id: str
    algorithm: str
    key: object = field(repr=False, compare=False)
    raw: bytes = field(repr=False)


@dataclass(frozen=True)
class Wrap:
    """A data key encrypted with HPKE to one recipient key (encapsulated key + ciphertext)."""

    role: str
    key_id: str
    algorithm: str
    encapsulated: bytes = field(repr=False)


@dataclass(frozen=True)
class Sealed:
    """Result of :func:`seal`: the ciphertext for the blob store and one wrap per recipient."""

    ciphertext: bytes = field(repr=False)
    wraps: tuple[Wrap, ...]
    chunk_size: int
    chunk_count: int
    plaintext_size: int
    format_version: int


def check_role_name(role: str) -> None:
    """Raise SealingError unless ``role`` is a lower-case name usable in file names."""
    if not _ROLE_PATTERN.fullmatch(role):
        raise SealingError(
            f"Invalid role name {role!r}: use lower-case letters, digits and underscores, "
            "starting with a letter, at most 64 characters."
        )


def generate_key_pair(role: str, algorithm: str = ALG_HYBRID) -> tuple[PublicKey, PrivateKey]:
    """Generate a new key pair for ``role``.

    The key id is the first 32 hex digits of SHA-256 over the algorithm name and the
    serialized public key parts, so the same public key always has the same id.
    """
    check_role_name(role)
    _check_algorithm(algorithm)

    if algorithm == ALG_HYBRID:
        mlkem_key = mlkem.MLKEM768PrivateKey.generate()
        private_raw = mlkem_key.private_bytes_raw() + _x25519_private_raw()
    else:
        private_raw = _x25519_private_raw()

    private_key = private_key_from_raw(role, algorithm, private_raw)
    return public_key_of(private_key), private_key


def public_key_from_raw(role: str, algorithm: str, raw: bytes) -> PublicKey:
    """Build a public key from its raw encoding (ML-KEM-768 public key, then X25519)."""
    check_role_name(role)
    _check_algorithm(algorithm)
    _check_raw_size(raw, _PUBLIC_SIZES[algorithm], algorithm, "public")

    key: object
    if algorithm == ALG_HYBRID:
        mlkem_public = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM_PUBLIC_SIZE])
        x25519_public = x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM_PUBLIC_SIZE:])
        key = hpke.MLKEM768X25519PublicKey(mlkem_public, x25519_public)
    else:
        key = x25519.X25519PublicKey.from_public_bytes(raw)

    key_id = _key_id(algorithm, raw)
    return PublicKey(role=role, key_id=key_id, algorithm=algorithm, key=key, raw=raw)


def private_key_from_raw(role: str, algorithm: str, raw: bytes) -> PrivateKey:
    """Build a private key from its raw encoding (ML-KEM-768 seed, then X25519 scalar)."""
    check_role_name(role)
    _check_algorithm(algorithm)
    _check_raw_size(raw, _PRIVATE_SIZES[algorithm], algorithm, "private")

    key, public_raw = _load_private_parts(algorithm, raw)
    key_id = _key_id(algorithm, public_raw)
    return PrivateKey(role=role, key_id=key_id, algorithm=algorithm, key=key, raw=raw)


def public_key_of(private_key: PrivateKey) -> PublicKey:
    """Return the public key that belongs to ``private_key``."""
    _key, public_raw = _load_private_parts(private_key.algorithm, private_key.raw)
    return public_key_from_raw(private_key.role, private_key.algorithm, public_raw)


def seal(
    plaintext: bytes,
    context: SealContext,
    recipients: Sequence[PublicKey],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Sealed:
    """Encrypt ``plaintext`` under a new data key and wrap that key to every recipient.

    Raises SealingError when there is no recipient, two recipients share a key id, or
    the chunk size is out of range. Empty plaintext still produces one final chunk.
    """
    _check_recipients(recipients)
    _check_chunk_size(chunk_size)

    data_key = secrets.token_bytes(DATA_KEY_SIZE)
    header = _HEADER.pack(_MAGIC, FORMAT_VERSION, chunk_size)
    chunks = _encrypt_chunks(plaintext, data_key, context, header, chunk_size)

    wraps = tuple(wrap_data_key(data_key, context, recipient) for recipient in recipients)

    return Sealed(
        ciphertext=header + b"".join(chunks),
        wraps=wraps,
        chunk_size=chunk_size,
        chunk_count=len(chunks),
        plaintext_size=len(plaintext),
        format_version=FORMAT_VERSION,
    )


def unwrap_data_key(wrap: Wrap, context: SealContext, private_key: PrivateKey) -> bytes:
    """Decrypt the data key in ``wrap`` with the recipient's private key.

    Raises TamperedError when the wrap was made for another key, or when the wrap or
    its context fails authentication.
    """
    if wrap.key_id != private_key.key_id or wrap.algorithm != private_key.algorithm:
        raise TamperedError(
            context.object_id,
            f"The wrap was made for key {wrap.key_id} ({wrap.algorithm}) of role "
            f"{wrap.role!r}, not for key {private_key.key_id} of role {private_key.role!r}.",
        )

    suite = _SUITES[private_key.algorithm]
    info = _wrap_info(context, wrap.key_id)
    try:
        data_key = suite.decrypt(wrap.encapsulated, cast(_HpkePrivate, private_key.key), info)
    except (InvalidTag, ValueError) as error:
        raise TamperedError(context.object_id, "The key wrap failed to decrypt.") from error

    if len(data_key) != DATA_KEY_SIZE:
        raise TamperedError(context.object_id, "The unwrapped data key has the wrong size.")

    return data_key


def unseal(
    sealed_ciphertext: bytes, context: SealContext, wrap: Wrap, private_key: PrivateKey
) -> bytes:
    """Unwrap the data key and decrypt every chunk, checking order and completeness.

    Raises TamperedError on a wrong key, a wrong context, or swapped, reordered,
    truncated, extended or altered chunks.
    """
    data_key = unwrap_data_key(wrap, context, private_key)
    return decrypt_chunks(sealed_ciphertext, context, data_key)


def decrypt_chunks(sealed_ciphertext: bytes, context: SealContext, data_key: bytes) -> bytes:
    """Decrypt a sealed object's chunks with an already unwrapped data key."""
    header, chunks = _split_chunks(sealed_ciphertext, context.object_id)
    aead = AESGCM(data_key)
    aad_prefix = _chunk_aad_prefix(context, header)

    plaintext = []
    for index, chunk in enumerate(chunks):
        final = index == len(chunks) - 1
        aad = aad_prefix + _chunk_position(index, final)
        try:
            plaintext.append(aead.decrypt(_chunk_nonce(index), chunk, aad))
        except InvalidTag as error:
            raise TamperedError(
                context.object_id, f"Chunk {index} of {len(chunks)} does not authenticate."
            ) from error

    return b"".join(plaintext)


def _encrypt_chunks(
    plaintext: bytes, data_key: bytes, context: SealContext, header: bytes, chunk_size: int
) -> list[bytes]:
    aead = AESGCM(data_key)
    aad_prefix = _chunk_aad_prefix(context, header)
    view = memoryview(plaintext)
    count = max(1, math.ceil(len(plaintext) / chunk_size))

    chunks = []
    for index in range(count):
        piece = view[index * chunk_size : (index + 1) * chunk_size]
        aad = aad_prefix + _chunk_position(index, final=index == count - 1)
        chunks.append(aead.encrypt(_chunk_nonce(index), piece, aad))

    return chunks


def _split_chunks(ciphertext: bytes, object_id: str) -> tuple[bytes, list[memoryview]]:
    """Parse the header and cut the body into chunks, of which only the last may be shorter."""
    if len(ciphertext) < _HEADER.size:
        raise TamperedError(object_id, "The ciphertext is shorter than its header.")

    header = ciphertext[: _HEADER.size]
    magic, version, chunk_size = _HEADER.unpack(header)
    if magic != _MAGIC:
        raise TamperedError(object_id, "The ciphertext does not start with a sealed-object header.")
    if version != FORMAT_VERSION:
        raise TamperedError(
            object_id, f"Format version {version} is not supported (expected {FORMAT_VERSION})."
        )
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise TamperedError(object_id, f"The header's chunk size {chunk_size} is out of range.")

    body = memoryview(ciphertext)[_HEADER.size :]
    stride = chunk_size + TAG_SIZE
    count = math.ceil(len(body) / stride)
    if count == 0:
        raise TamperedError(object_id, "The ciphertext has no chunk.")

    last_size = len(body) - (count - 1) * stride
    if last_size < TAG_SIZE:
        raise TamperedError(object_id, "The last chunk is shorter than its tag.")

    chunks = [body[index * stride : (index + 1) * stride] for index in range(count)]
    return header, chunks


def _chunk_aad_prefix(context: SealContext, header: bytes) -> bytes:
    return _length_prefixed(b"chunk") + context.canonical_bytes() + _length_prefixed(header)


def _chunk_position(index: int, final: bool) -> bytes:
    return struct.pack(">QB", index, 1 if final else 0)


def _chunk_nonce(index: int) -> bytes:
    # A counter nonce is safe here because every data key is random and encrypts exactly
    # one object, so no (key, nonce) pair can repeat. A 64-bit counter covers any size.
    return struct.pack(">4xQ", index)


def wrap_data_key(data_key: bytes, context: SealContext, recipient: PublicKey) -> Wrap:
    """Encrypt an object's data key to one more recipient, as :func:`seal` does.

    Rotation and referral use it to add a recipient without touching the ciphertext.
    """
    _check_algorithm(recipient.algorithm)
    if len(data_key) != DATA_KEY_SIZE:
        raise SealingError(f"Invalid data key: {len(data_key)} bytes, expected {DATA_KEY_SIZE}.")

    suite = _SUITES[recipient.algorithm]
    info = _wrap_info(context, recipient.key_id)
    encapsulated = suite.encrypt(data_key, cast(_HpkePublic, recipient.key), info)

    return Wrap(
        role=recipient.role,
        key_id=recipient.key_id,
        algorithm=recipient.algorithm,
        encapsulated=encapsulated,
    )


def _wrap_info(context: SealContext, key_id: str) -> bytes:
    return _length_prefixed(b"wrap") + context.canonical_bytes() + _length_prefixed(key_id.encode())


def _check_recipients(recipients: Sequence[PublicKey]) -> None:
    if not recipients:
        raise SealingError("Cannot seal without a recipient: pass at least one public key.")

    key_ids = [recipient.key_id for recipient in recipients]
    if len(set(key_ids)) != len(key_ids):
        raise SealingError("Two recipients have the same key id. Pass each public key once.")

    for recipient in recipients:
        _check_algorithm(recipient.algorithm)


def _check_chunk_size(chunk_size: int) -> None:
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise SealingError(
            f"Invalid chunk size {chunk_size}: expected 1 to {MAX_CHUNK_SIZE} bytes."
        )


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in _SUITES:
        raise SealingError(
            f"Invalid sealing algorithm {algorithm!r}: expected one of {', '.join(ALGORITHMS)}."
        )


def _check_raw_size(raw: bytes, expected: int, algorithm: str, part: str) -> None:
    if len(raw) != expected:
        raise SealingError(
            f"Invalid {part} key encoding for {algorithm}: {len(raw)} bytes, expected {expected}."
        )


def _load_private_parts(algorithm: str, raw: bytes) -> tuple[_HpkePrivate, bytes]:
    """Return the HPKE private key built from ``raw`` and its public key's raw encoding."""
    if algorithm == ALG_HYBRID:
        mlkem_private = mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:_MLKEM_SEED_SIZE])
        x25519_private = x25519.X25519PrivateKey.from_private_bytes(raw[_MLKEM_SEED_SIZE:])
        public_raw = (
            mlkem_private.public_key().public_bytes_raw()
            + x25519_private.public_key().public_bytes_raw()
        )
        return hpke.MLKEM768X25519PrivateKey(mlkem_private, x25519_private), public_raw

    x25519_private = x25519.X25519PrivateKey.from_private_bytes(raw)
    return x25519_private, x25519_private.public_key().public_bytes_raw()


def _key_id(algorithm: str, public_raw: bytes) -> str:
    digest = hashlib.sha256(_length_prefixed(algorithm.encode()) + _length_prefixed(public_raw))
    return digest.hexdigest()[:_KEY_ID_LENGTH]


def _encode_case_id(case_id: int | None) -> bytes:
    if case_id is None:
        return b"\x00"

    return b"\x01" + struct.pack(">q", case_id)


def _length_prefixed(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _x25519_private_raw() -> bytes:
    return x25519.X25519PrivateKey.generate().private_bytes_raw()
