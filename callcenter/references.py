"""Case reference numbers: ten digits, random, with a Luhn check digit.

Callers type references on a keypad, so they are digits only. The first two digits
are the year and the next seven are random, because a sequence would leak call volume
and invite enumeration. The last is a Luhn check digit, which catches every single
mistyped digit and most swapped neighbours before a lookup.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Case

REFERENCE_LENGTH = 10
RANDOM_DIGITS = 7


def luhn_check_digit(digits: str) -> str:
    """Return the Luhn digit that makes ``digits + check`` valid."""
    total = 0
    # Walking from the right, every second digit of the payload is doubled.
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def is_valid_reference(reference: str) -> bool:
    """Check the length, the characters and the check digit of a reference."""
    if len(reference) != REFERENCE_LENGTH or not reference.isascii() or not reference.isdigit():
        return False
    return luhn_check_digit(reference[:-1]) == reference[-1]


def new_reference(now: datetime | None = None) -> str:
    """Return a fresh reference; uniqueness is checked by ``allocate_reference``."""
    year = (now or datetime.now(UTC)).strftime("%y")
    body = year + "".join(secrets.choice("0123456789") for _ in range(RANDOM_DIGITS))
    return body + luhn_check_digit(body)


def allocate_reference(session: Session) -> str:
    """Return a reference that no case uses yet.

    With ten million numbers a year, a clash is rare; the unique constraint on
    ``cases.reference`` still guards against two requests racing for one number.
    """
    for _attempt in range(20):
        reference = new_reference()
        taken = session.scalar(select(Case.id).where(Case.reference == reference))
        if taken is None:
            return reference
    raise RuntimeError("could not find a free case reference in 20 attempts")
