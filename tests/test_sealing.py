"""Sealing: round trips, and every kind of tampering failing authentication."""

from __future__ import annotations

import pytest

from storage.errors import SealingError, TamperedError
from storage.sealing import (
    ALG_HYBRID,
    ALG_X25519,
    TAG_SIZE,
    PrivateKey,
    PublicKey,
    SealContext,
    Sealed,
    decrypt_chunks,
    generate_key_pair,
    public_key_of,
    seal,
    unseal,
    unwrap_data_key,
)

CHUNK = 1024
HEADER_SIZE = 9
CONTEXT = SealContext(case_id=7, object_id="0123456789abcdef0123456789abcdef", kind="recording")

KeyPair = tuple[PublicKey, PrivateKey]


@pytest.fixture(scope="module")
def hybrid() -> KeyPair:
    return generate_key_pair("transcription")


@pytest.fixture(scope="module")
def other_hybrid() -> KeyPair:
    return generate_key_pair("transcription")


@pytest.fixture(scope="module")
def classic() -> KeyPair:
    return generate_key_pair("case_office", ALG_X25519)


def sample(size: int) -> bytes:
    return bytes(index % 251 for index in range(size))


def chunks_of(sealed: Sealed) -> list[bytes]:
    body = sealed.ciphertext[HEADER_SIZE:]
    stride = sealed.chunk_size + TAG_SIZE
    return [body[start : start + stride] for start in range(0, len(body), stride)]


def reassemble(sealed: Sealed, chunks: list[bytes]) -> bytes:
    return sealed.ciphertext[:HEADER_SIZE] + b"".join(chunks)


def open_with(keys: KeyPair, sealed: Sealed, ciphertext: bytes | None = None) -> bytes:
    data = sealed.ciphertext if ciphertext is None else ciphertext
    return unseal(data, CONTEXT, sealed.wraps[0], keys[1])


@pytest.mark.parametrize(
    "size",
    [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5, 4 * CHUNK],
    ids=["empty", "one-byte", "one-short", "one-exact", "two", "many", "exact-multiple"],
)
def test_round_trip(hybrid: KeyPair, size: int) -> None:
    plaintext = sample(size)
    sealed = seal(plaintext, CONTEXT, [hybrid[0]], chunk_size=CHUNK)

    assert open_with(hybrid, sealed) == plaintext


@pytest.mark.parametrize(
    ("size", "expected"),
    [(0, 1), (1, 1), (CHUNK, 1), (CHUNK + 1, 2), (4 * CHUNK, 4)],
)
def test_chunk_count(hybrid: KeyPair, size: int, expected: int) -> None:
    sealed = seal(sample(size), CONTEXT, [hybrid[0]], chunk_size=CHUNK)

    assert sealed.chunk_count == expected


def test_ciphertext_size(hybrid: KeyPair) -> None:
    sealed = seal(sample(3 * CHUNK + 5), CONTEXT, [hybrid[0]], chunk_size=CHUNK)

    assert len(sealed.ciphertext) == HEADER_SIZE + 3 * CHUNK + 5 + 4 * TAG_SIZE


def test_metadata_recorded(hybrid: KeyPair) -> None:
    sealed = seal(sample(10), CONTEXT, [hybrid[0]], chunk_size=CHUNK)

    assert (sealed.plaintext_size, sealed.chunk_size, sealed.format_version) == (10, CHUNK, 1)


def test_default_chunk_size_round_trip(hybrid: KeyPair) -> None:
    plaintext = sample(200_000)
    sealed = seal(plaintext, CONTEXT, [hybrid[0]])

    assert open_with(hybrid, sealed) == plaintext


def test_plaintext_absent_from_ciphertext(hybrid: KeyPair) -> None:
    marker = b"complaint about detention " * 20
    sealed = seal(marker, CONTEXT, [hybrid[0]])

    assert b"complaint" not in sealed.ciphertext


def test_new_data_key_per_call(hybrid: KeyPair) -> None:
    first = seal(b"same", CONTEXT, [hybrid[0]])
    second = seal(b"same", CONTEXT, [hybrid[0]])

    assert first.ciphertext != second.ciphertext


def test_every_recipient_opens(hybrid: KeyPair, classic: KeyPair) -> None:
    sealed = seal(b"shared", CONTEXT, [hybrid[0], classic[0]])

    assert unseal(sealed.ciphertext, CONTEXT, sealed.wraps[1], classic[1]) == b"shared"


def test_wrap_records_recipient(hybrid: KeyPair) -> None:
    wrap = seal(b"x", CONTEXT, [hybrid[0]]).wraps[0]
    recorded = (wrap.role, wrap.key_id, wrap.algorithm)

    assert recorded == ("transcription", hybrid[0].key_id, ALG_HYBRID)


def test_x25519_fallback_round_trip(classic: KeyPair) -> None:
    plaintext = sample(3 * CHUNK)
    sealed = seal(plaintext, CONTEXT, [classic[0]], chunk_size=CHUNK)

    assert open_with(classic, sealed) == plaintext


def test_hybrid_wrap_size(hybrid: KeyPair) -> None:
    # ML-KEM-768 + X25519 encapsulation (1120) + data key (32) + AES-GCM tag (16).
    wrap = seal(b"x", CONTEXT, [hybrid[0]]).wraps[0]

    assert len(wrap.encapsulated) == 1168


def test_x25519_wrap_size(classic: KeyPair) -> None:
    wrap = seal(b"x", CONTEXT, [classic[0]]).wraps[0]

    assert len(wrap.encapsulated) == 80


def test_key_id_is_stable(hybrid: KeyPair) -> None:
    assert public_key_of(hybrid[1]).key_id == hybrid[0].key_id


def test_key_id_length(hybrid: KeyPair) -> None:
    assert len(hybrid[0].key_id) == 32


def test_private_repr_hides_key(hybrid: KeyPair) -> None:
    text = repr(hybrid[1])

    assert hybrid[1].raw.hex()[:16] not in text
    assert "raw" not in text


def test_no_recipient_rejected() -> None:
    with pytest.raises(SealingError, match="recipient"):
        seal(b"x", CONTEXT, [])


def test_duplicate_recipient_rejected(hybrid: KeyPair) -> None:
    with pytest.raises(SealingError, match="same key id"):
        seal(b"x", CONTEXT, [hybrid[0], hybrid[0]])


@pytest.mark.parametrize("chunk_size", [0, -1, 16 * 1024 * 1024 + 1])
def test_invalid_chunk_size_rejected(hybrid: KeyPair, chunk_size: int) -> None:
    with pytest.raises(SealingError, match="chunk size"):
        seal(b"x", CONTEXT, [hybrid[0]], chunk_size=chunk_size)


def test_unknown_algorithm_rejected() -> None:
    with pytest.raises(SealingError, match="algorithm"):
        generate_key_pair("transcription", "HPKE-RSA")


@pytest.mark.parametrize("role", ["", "Transcription", "../keys", "a b", "x" * 65])
def test_invalid_role_rejected(role: str) -> None:
    with pytest.raises(SealingError, match="role name"):
        generate_key_pair(role)


def test_context_case_none_differs_from_zero() -> None:
    with_none = SealContext(case_id=None, object_id="a", kind="recording")
    with_zero = SealContext(case_id=0, object_id="a", kind="recording")

    assert with_none.canonical_bytes() != with_zero.canonical_bytes()


def test_context_fields_not_ambiguous() -> None:
    first = SealContext(case_id=1, object_id="ab", kind="c")
    second = SealContext(case_id=1, object_id="a", kind="bc")

    assert first.canonical_bytes() != second.canonical_bytes()


# Negative tests: each must raise TamperedError, never return data.


def test_wrong_private_key(hybrid: KeyPair, other_hybrid: KeyPair) -> None:
    sealed = seal(b"secret", CONTEXT, [hybrid[0]])

    with pytest.raises(TamperedError):
        open_with(other_hybrid, sealed)


def test_wrap_relabelled_to_other_key(hybrid: KeyPair, other_hybrid: KeyPair) -> None:
    sealed = seal(b"secret", CONTEXT, [hybrid[0]])
    wrap = sealed.wraps[0]
    relabelled = type(wrap)(wrap.role, other_hybrid[0].key_id, wrap.algorithm, wrap.encapsulated)

    with pytest.raises(TamperedError):
        unseal(sealed.ciphertext, CONTEXT, relabelled, other_hybrid[1])


def test_wrong_algorithm_key(hybrid: KeyPair, classic: KeyPair) -> None:
    sealed = seal(b"secret", CONTEXT, [hybrid[0]])

    with pytest.raises(TamperedError):
        open_with(classic, sealed)


@pytest.mark.parametrize(
    "context",
    [
        SealContext(case_id=8, object_id=CONTEXT.object_id, kind=CONTEXT.kind),
        SealContext(case_id=None, object_id=CONTEXT.object_id, kind=CONTEXT.kind),
        SealContext(case_id=7, object_id="f" * 32, kind=CONTEXT.kind),
        SealContext(case_id=7, object_id=CONTEXT.object_id, kind="transcript"),
    ],
    ids=["case-id", "case-id-none", "object-id", "kind"],
)
def test_wrong_context(hybrid: KeyPair, context: SealContext) -> None:
    sealed = seal(b"secret", CONTEXT, [hybrid[0]])

    with pytest.raises(TamperedError):
        unseal(sealed.ciphertext, context, sealed.wraps[0], hybrid[1])


def test_wrong_context_with_data_key(hybrid: KeyPair) -> None:
    # Even a holder of the data key cannot move chunks to another case.
    sealed = seal(sample(3 * CHUNK), CONTEXT, [hybrid[0]], chunk_size=CHUNK)
    data_key = unwrap_data_key(sealed.wraps[0], CONTEXT, hybrid[1])
    moved = SealContext(case_id=8, object_id=CONTEXT.object_id, kind=CONTEXT.kind)

    with pytest.raises(TamperedError):
        decrypt_chunks(sealed.ciphertext, moved, data_key)


def test_swapped_chunks(hybrid: KeyPair) -> None:
    sealed = seal(sample(3 * CHUNK + 5), CONTEXT, [hybrid[0]], chunk_size=CHUNK)
    chunks = chunks_of(sealed)
    chunks[0], chunks[1] = chunks[1], chunks[0]

    with pytest.raises(TamperedError):
        open_with(hybrid, sealed, reassemble(sealed, chunks))


def test_chunk_from_other_object(hybrid: KeyPair) -> None:
    first = seal(sample(2 * CHUNK), CONTEXT, [hybrid[0]], chunk_size=CHUNK)
    second = seal(sample(2 * CHUNK), CONTEXT, [hybrid[0]], chunk_size=CHUNK)
    mixed = [chunks_of(first)[0], chunks_of(second)[1]]

    with pytest.raises(TamperedError):
        open_with(hybrid, first, reassemble(first, mixed))


def test_dropped_final_chunk(hybrid: KeyPair) -> None:
    sealed = seal(sample(3 * CHUNK + 5), CONTEXT, [hybrid[0]], chunk_size=CHUNK)

    with pytest.raises(TamperedError):
        open_with(hybrid, sealed, reassemble(sealed, chunks_of(sealed)[:-1]))


def test_dropped_final_full_chunk(hybrid: KeyPair) -> None:
    # With an exact multiple, every chunk is full: only the final flag shows the cut.
    sealed = seal(sample(4 * CHUNK), CONTEXT, [hybrid[0]], chunk_size=CHUNK)

    with pytest.raises(TamperedError):
        open_with(hybrid, sealed, reassemble(sealed, chunks_of(sealed)[:-1]))


@pytest.mark.parametrize("cut", [1, TAG_SIZE, TAG_SIZE + 3])
def test_cut_bytes(hybrid: KeyPair, cut: int) -> None:
    sealed = seal(sample(3 * CHUNK + 5), CONTEXT, [hybrid[0]], chunk_size=CHUNK)

    with pytest.raises(TamperedError):
        open_with(hybrid, sealed, sealed.ciphertext[:-cut])


def test_cut_to_header(hybrid: KeyPair) -> None:
    sealed = seal(b"", CONTEXT, [hybrid[0]])

    with pytest.raises(TamperedError):
        open_with(hybrid, sealed, sealed.ciphertext[:HEADER_SIZE])


def test_cut_inside_header(hybrid: KeyPair) -> None:
    sealed = seal(b"x", CONTEXT, [hybrid[0]])

    with pytest.raises(TamperedError):
        open_with(hybrid, sealed, sealed.ciphertext[:4])


def test_extended_with_chunk(hybrid: KeyPair) -> None:
    sealed = seal(sample(2 * CHUNK), CONTEXT, [hybrid[0]], chunk_size=CHUNK)
    chunks = chunks_of(sealed)

    with pytest.raises(TamperedError):
        open_with(hybrid, sealed, reassemble(sealed, [*chunks, chunks[-1]]))


@pytest.mark.parametrize("extra", [b"\x00", b"\x00" * (TAG_SIZE + 1)])
def test_extended_with_bytes(hybrid: KeyPair, extra: bytes) -> None:
    sealed = seal(sample(2 * CHUNK), CONTEXT, [hybrid[0]], chunk_size=CHUNK)

    with pytest.raises(TamperedError):
        open_with(hybrid, sealed, sealed.ciphertext + extra)


@pytest.mark.parametrize(
    "position",
    [0, 4, 5, 8, HEADER_SIZE, HEADER_SIZE + CHUNK, HEADER_SIZE + CHUNK + TAG_SIZE + 7, -1],
    ids=["magic", "version", "chunk-size", "chunk-size-low", "first", "tag", "second", "last"],
)
def test_flipped_bit(hybrid: KeyPair, position: int) -> None:
    sealed = seal(sample(3 * CHUNK + 5), CONTEXT, [hybrid[0]], chunk_size=CHUNK)
    altered = bytearray(sealed.ciphertext)
    altered[position] ^= 0x01

    with pytest.raises(TamperedError):
        open_with(hybrid, sealed, bytes(altered))


@pytest.mark.parametrize("position", [0, 600, -17, -1])
def test_flipped_bit_in_wrap(hybrid: KeyPair, position: int) -> None:
    sealed = seal(b"secret", CONTEXT, [hybrid[0]])
    wrap = sealed.wraps[0]
    altered = bytearray(wrap.encapsulated)
    altered[position] ^= 0x01
    forged = type(wrap)(wrap.role, wrap.key_id, wrap.algorithm, bytes(altered))

    with pytest.raises(TamperedError):
        unseal(sealed.ciphertext, CONTEXT, forged, hybrid[1])


def test_truncated_wrap(classic: KeyPair) -> None:
    sealed = seal(b"secret", CONTEXT, [classic[0]])
    wrap = sealed.wraps[0]
    forged = type(wrap)(wrap.role, wrap.key_id, wrap.algorithm, wrap.encapsulated[:40])

    with pytest.raises(TamperedError):
        unseal(sealed.ciphertext, CONTEXT, forged, classic[1])


def test_tampered_message_names_object(hybrid: KeyPair, other_hybrid: KeyPair) -> None:
    sealed = seal(b"secret", CONTEXT, [hybrid[0]])

    with pytest.raises(TamperedError, match=CONTEXT.object_id):
        open_with(other_hybrid, sealed)
