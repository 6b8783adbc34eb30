"""Working hours of the agents' line: weekly hours, Ramadan hours and public holidays."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ivr_flows.errors import FlowError

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Hours:
    opens: time
    closes: time

    def contain(self, moment: time) -> bool:
        return self.opens <= moment < self.closes


@dataclass(frozen=True)
class RamadanPeriod:
    start: date
    end: date
    hours: Hours | None


@dataclass(frozen=True)
class Calendar:
    timezone: ZoneInfo
    weekly: Mapping[str, Hours | None]
    ramadan: tuple[RamadanPeriod, ...]
    holidays: frozenset[date]
    description: Mapping[str, str]
    source: Path

    def hours_on(self, day: date) -> Hours | None:
        """Return the working hours of a local date, or None when the line is closed."""
        if day in self.holidays:
            return None
        weekly = self.weekly[WEEKDAYS[day.weekday()]]
        if weekly is None:
            return None
        for period in self.ramadan:
            if period.start <= day <= period.end:
                return period.hours
        return weekly

    def is_open(self, moment: datetime) -> bool:
        """Return True if agents answer at this moment (a timezone-aware datetime)."""
        local = moment.astimezone(self.timezone)
        hours = self.hours_on(local.date())
        return hours is not None and hours.contain(local.time())


def load_calendar(name: str | Path) -> Calendar:
    """Parse a calendar file; errors name the file and the field."""
    path = Path(name)
    if not path.is_file():
        path = PACKAGE_DIR / str(name)
    if not path.is_file():
        raise FlowError(
            name, None, None, "calendar file not found: give a path or a shipped file name"
        )

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise FlowError(path, None, None, f"not valid TOML: {error}") from error

    return Calendar(
        timezone=_timezone(path, raw.get("timezone")),
        weekly=_weekly(path, raw.get("weekly")),
        ramadan=tuple(
            _ramadan(path, index, item) for index, item in enumerate(raw.get("ramadan", []))
        ),
        holidays=frozenset(
            _date(path, f"holidays[{index}].date", item.get("date"))
            for index, item in enumerate(raw.get("holidays", []))
        ),
        description=_description(path, raw.get("description")),
        source=path,
    )


def _timezone(path: Path, value: Any) -> ZoneInfo:
    try:
        return ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise FlowError(
            path, None, "timezone", f"{value!r} is not a time zone name such as Asia/Amman"
        ) from None


def _weekly(path: Path, table: Any) -> dict[str, Hours | None]:
    if not isinstance(table, dict):
        raise FlowError(path, None, "weekly", "missing or not a table")
    return {day: _hours(path, f"weekly.{day}", table.get(day)) for day in WEEKDAYS}


def _ramadan(path: Path, index: int, item: Any) -> RamadanPeriod:
    field = f"ramadan[{index}]"
    if not isinstance(item, dict):
        raise FlowError(path, None, field, "not a table")
    period = RamadanPeriod(
        start=_date(path, f"{field}.start", item.get("start")),
        end=_date(path, f"{field}.end", item.get("end")),
        hours=_hours(path, f"{field}.hours", item.get("hours")),
    )
    if period.end < period.start:
        raise FlowError(path, None, field, "end is before start")
    return period


def _hours(path: Path, field: str, value: Any) -> Hours | None:
    if value is None:
        raise FlowError(path, None, field, 'missing: write "HH:MM-HH:MM", or "" for closed')
    if value == "":
        return None
    try:
        opens_text, closes_text = str(value).split("-")
        hours = Hours(
            time.fromisoformat(opens_text.strip()), time.fromisoformat(closes_text.strip())
        )
    except ValueError:
        raise FlowError(path, None, field, f'{value!r} is not "HH:MM-HH:MM"') from None
    if hours.closes <= hours.opens:
        raise FlowError(path, None, field, f"{value!r} closes before it opens")
    return hours


def _date(path: Path, field: str, value: Any) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise FlowError(path, None, field, f"{value!r} is not a date such as 2026-05-25") from None


def _description(path: Path, table: Any) -> dict[str, str]:
    if not isinstance(table, dict) or not all(
        isinstance(text, str) and text for text in table.values()
    ):
        raise FlowError(
            path,
            None,
            "description",
            "missing: the hours as callers hear them, one text per language",
        )
    return dict(table)
