"""Reference numbers: length, check digit and randomness."""

from __future__ import annotations

from callcenter.references import is_valid_reference, luhn_check_digit, new_reference


def test_new_reference_is_valid() -> None:
    assert all(is_valid_reference(new_reference()) for _ in range(200))


def test_known_luhn_digit() -> None:
    # 7992739871 is the textbook Luhn example, with check digit 3.
    assert luhn_check_digit("7992739871") == "3"


def test_single_digit_error_caught() -> None:
    reference = new_reference()
    for position in range(len(reference)):
        for digit in "0123456789":
            if digit != reference[position]:
                typo = reference[:position] + digit + reference[position + 1 :]
                assert not is_valid_reference(typo)


def test_non_digits_rejected() -> None:
    assert not is_valid_reference("26123456７4")
    assert not is_valid_reference("261234567")


def test_references_are_not_sequential() -> None:
    references = {new_reference() for _ in range(50)}
    assert len(references) == 50
