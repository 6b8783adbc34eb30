"""The demo, as `make demo` runs it, in a fresh working folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.vosk]

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_demo_prints_transcribed_case(tmp_path: Path) -> None:
    shutil.copy(REPO_ROOT / "config.toml", tmp_path / "config.toml")
    env = {name: value for name, value in os.environ.items() if not name.startswith("CALLCENTER_")}

    completed = subprocess.run(
        [sys.executable, "-m", "callcenter", "demo", "--timeout", "240"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr[-2000:]
    case = json.loads(completed.stdout.strip().splitlines()[-1])
    assert case["status"] == "awaiting_review"
    assert len(case["reference"]) == 10
    assert case["reference"].isdigit()
    assert case["transcript"]
    assert case["complaint_type"] == "HR"
    assert case["category"] == "HR.ES"
    assert "Korean" in completed.stderr
    assert (tmp_path / "instance" / "demo-secrets.env").stat().st_mode & 0o077 == 0
