"""Jobs that crash their process, to show that a work-horse crash fails one job only."""

from __future__ import annotations

import ctypes
import os
import signal


def segfault() -> None:
    ctypes.string_at(0)


def abort() -> None:
    os.kill(os.getpid(), signal.SIGABRT)


def succeed() -> str:
    return "done"
