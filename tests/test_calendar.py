"""Working-hours calendar: weekly hours, Ramadan, holidays and file errors."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ivr_flows.calendar import load_calendar
from ivr_flows.errors import FlowError

AMMAN = ZoneInfo("Asia/Amman")


def at(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=AMMAN)


def test_open_on_sunday_morning() -> None:
    assert load_calendar("calendar.toml").is_open(at(2026, 12, 6, 10))


def test_closed_on_friday() -> None:
    assert not load_calendar("calendar.toml").is_open(at(2026, 12, 4, 10))


def test_closed_after_three() -> None:
    assert not load_calendar("calendar.toml").is_open(at(2026, 12, 6, 15))


def test_ramadan_hours_apply() -> None:
    calendar = load_calendar("calendar.toml")
    assert calendar.is_open(at(2026, 3, 1, 14, 15))
    assert not calendar.is_open(at(2026, 3, 1, 14, 45))
    assert not calendar.is_open(at(2026, 3, 1, 8, 30))


def test_holiday_closed() -> None:
    assert not load_calendar("calendar.toml").is_open(at(2026, 5, 25, 10))


def test_utc_converted_to_amman() -> None:
    # 06:30 UTC is 09:30 in Amman (UTC+3).
    moment = datetime(2026, 12, 6, 6, 30, tzinfo=ZoneInfo("UTC"))
    assert load_calendar("calendar.toml").is_open(moment)


def test_bad_hours_named(tmp_path: Path) -> None:
    source = (Path(__file__).resolve().parents[1] / "ivr_flows" / "calendar.toml").read_text(
        encoding="utf-8"
    )
    path = tmp_path / "calendar.toml"
    path.write_text(source.replace('monday = "08:00-15:00"', 'monday = "8-3"'), encoding="utf-8")
    with pytest.raises(FlowError) as caught:
        load_calendar(path)
    assert caught.value.field == "weekly.monday"


def test_closing_before_opening_rejected(tmp_path: Path) -> None:
    source = (Path(__file__).resolve().parents[1] / "ivr_flows" / "calendar.toml").read_text(
        encoding="utf-8"
    )
    path = tmp_path / "calendar.toml"
    path.write_text(
        source.replace('monday = "08:00-15:00"', 'monday = "15:00-08:00"'), encoding="utf-8"
    )
    with pytest.raises(FlowError, match="closes before it opens"):
        load_calendar(path)
