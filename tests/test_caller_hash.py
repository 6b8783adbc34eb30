"""Caller linking without numbers: a keyed hash, and why a plain or salted hash fails.

Jordanian mobile numbers are +962 7 followed by 8 digits, and only the operator
prefixes 77, 78 and 79 are in use: 3 * 10**7 numbers. The brute-force tests hash a
block of 10**6 of them, find a caller's number from its plain or salted hash, and
extrapolate the time for the whole range on the machine that runs the test. The same
search cannot match the keyed hash without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterator

import pytest

from callcenter.errors import ConfigurationError
from callcenter.identity import (
    WITHHELD_NUMBERS,
    IdentityError,
    InvalidNumberError,
    caller_hash,
    caller_hash_or_none,
    normalize_number,
)
from callcenter.settings import load_settings

KEY = bytes.fromhex("22" * 32)
CALLER = "+962795551234"
# Every Jordanian mobile number: three operator prefixes, seven digits each.
MOBILE_RANGE_SIZE = 3 * 10**7
# The block searched here: +962 795 followed by six digits, which contains CALLER.
BLOCK_PREFIX = "+962795"
BLOCK_DIGITS = 6
# HMAC is slower in Python, so the keyed searches use a tenth of the block.
KEYED_BLOCK_PREFIX = "+9627955"
KEYED_BLOCK_DIGITS = 5

Env = Callable[..., dict[str, str]]


def block_numbers(prefix: str = BLOCK_PREFIX, digits: int = BLOCK_DIGITS) -> Iterator[str]:
    for suffix in range(10**digits):
        yield f"{prefix}{suffix:0{digits}d}"


def search(
    target: str,
    hash_of: Callable[[str], str],
    prefix: str = BLOCK_PREFIX,
    digits: int = BLOCK_DIGITS,
) -> str | None:
    """Return the number in the block whose hash equals ``target``, as an attacker would."""
    for number in block_numbers(prefix, digits):
        if hash_of(number) == target:
            return number
    return None


def plain_hash(number: str) -> str:
    return hashlib.sha256(number.encode()).hexdigest()


@pytest.mark.parametrize(
    "written",
    [
        "+962795551234",
        "+962 79 555 1234",
        "00962795551234",
        "0795551234",
        "079-555-1234",
        "٠٧٩٥٥٥١٢٣٤",
    ],
)
def test_formats_hash_alike(written: str) -> None:
    assert caller_hash(written, KEY) == caller_hash(CALLER, KEY)


def test_hash_is_hmac_sha256() -> None:
    expected = hmac.new(KEY, CALLER.encode(), hashlib.sha256).hexdigest()

    assert caller_hash(CALLER, KEY) == expected


def test_hash_is_64_hex_digits() -> None:
    value = caller_hash(CALLER, KEY)

    assert len(value) == 64
    assert set(value) <= set("0123456789abcdef")


def test_other_number_hashes_differently() -> None:
    assert caller_hash("+962795551235", KEY) != caller_hash(CALLER, KEY)


def test_other_key_hashes_differently() -> None:
    assert caller_hash(CALLER, secrets.token_bytes(32)) != caller_hash(CALLER, KEY)


def test_hash_is_not_plain_hash() -> None:
    assert caller_hash(CALLER, KEY) != plain_hash(CALLER)


def test_normalized_to_e164() -> None:
    assert normalize_number("0795551234") == CALLER


@pytest.mark.parametrize(
    "written", ["795551234", "+0795551234", "+96279", "+9627955512341234", "call me"]
)
def test_invalid_number_rejected(written: str) -> None:
    with pytest.raises(InvalidNumberError):
        caller_hash(written, KEY)


@pytest.mark.parametrize("written", ["+962795551234x", "0795551234 ext"])
def test_error_never_quotes_number(written: str) -> None:
    with pytest.raises(InvalidNumberError) as raised:
        caller_hash(written, KEY)

    assert "795551234" not in str(raised.value)


@pytest.mark.parametrize("withheld", sorted(WITHHELD_NUMBERS))
def test_withheld_caller_id_not_hashed(withheld: str) -> None:
    with pytest.raises(InvalidNumberError, match="withheld"):
        caller_hash(withheld, KEY)


@pytest.mark.parametrize("written", [None, "", "+266696687", "anonymous"])
def test_missing_number_gives_none(written: str | None) -> None:
    assert caller_hash_or_none(written, KEY) is None


def test_short_key_rejected() -> None:
    with pytest.raises(IdentityError, match="at least 32"):
        caller_hash(CALLER, b"short")


def test_key_read_from_environment(make_env: Env) -> None:
    settings = load_settings(make_env(CALLCENTER_CALLER_HASH_KEY=KEY.hex()))

    assert settings.require_caller_hash_key() == KEY


def test_missing_key_named(make_env: Env) -> None:
    env = make_env()
    del env["CALLCENTER_CALLER_HASH_KEY"]
    settings = load_settings(env)

    with pytest.raises(ConfigurationError, match="CALLCENTER_CALLER_HASH_KEY is not set"):
        settings.require_caller_hash_key()


def test_short_key_setting_rejected(make_env: Env) -> None:
    with pytest.raises(ConfigurationError, match="CALLCENTER_CALLER_HASH_KEY has 2 bytes"):
        load_settings(make_env(CALLCENTER_CALLER_HASH_KEY="abcd"))


def test_non_hex_key_rejected(make_env: Env) -> None:
    with pytest.raises(ConfigurationError, match="CALLCENTER_CALLER_HASH_KEY is not hex"):
        load_settings(make_env(CALLCENTER_CALLER_HASH_KEY="z" * 64))


def test_key_must_differ_from_audit_key(make_env: Env) -> None:
    audit_key = make_env()["CALLCENTER_AUDIT_KEY"]

    with pytest.raises(ConfigurationError, match="equals CALLCENTER_AUDIT_KEY"):
        load_settings(make_env(CALLCENTER_CALLER_HASH_KEY=audit_key))


def test_key_hidden_in_repr(make_env: Env) -> None:
    settings = load_settings(make_env(CALLCENTER_CALLER_HASH_KEY=KEY.hex()))

    assert KEY.hex() not in repr(settings)


def test_key_not_accepted_from_file() -> None:
    from callcenter.settings import SECRET_NAMES

    assert any(name in "caller_hash_key" for name in SECRET_NAMES)


def test_plain_hash_brute_forced() -> None:
    stolen = plain_hash(CALLER)
    started = time.perf_counter()
    found = search(stolen, plain_hash)
    elapsed = time.perf_counter() - started

    full_range_seconds = elapsed * MOBILE_RANGE_SIZE / 10**BLOCK_DIGITS
    assert found == CALLER
    # One core of the test machine recovers any number within this estimate; the
    # bound is loose so that a slow machine still shows the attack is practical.
    assert full_range_seconds < 3600, f"estimated {full_range_seconds:.0f} s for every number"


def test_salted_hash_brute_forced() -> None:
    # A per-record salt is stored beside the hash, so the attacker has it too.
    salt = secrets.token_hex(16)
    stolen = hashlib.sha256(f"{salt}{CALLER}".encode()).hexdigest()

    found = search(stolen, lambda number: hashlib.sha256(f"{salt}{number}".encode()).hexdigest())

    assert found == CALLER


def test_keyed_hash_resists_same_search() -> None:
    stolen = caller_hash(CALLER, KEY)
    guessed_key = secrets.token_bytes(32)

    # Everything the database holds, without the key: plain, salted-looking and
    # keyed-with-a-guess searches all miss.
    assert search(stolen, plain_hash) is None
    assert (
        search(
            stolen,
            lambda number: caller_hash(number, guessed_key),
            KEYED_BLOCK_PREFIX,
            KEYED_BLOCK_DIGITS,
        )
        is None
    )


def test_keyed_hash_found_only_with_key() -> None:
    # The same search does find the number once the key is known, so the key (kept
    # outside the database) is the only thing that protects the numbers.
    stolen = caller_hash(CALLER, KEY)

    found = search(
        stolen, lambda number: caller_hash(number, KEY), KEYED_BLOCK_PREFIX, KEYED_BLOCK_DIGITS
    )

    assert found == CALLER
