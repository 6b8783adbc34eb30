"""Jobs that crash their process, to show that a work-horse crash fails one job only."""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal


def segfault() -> None:
    # pytest's faulthandler would print a stack into the test output; the crash is the point.
    faulthandler.disable()
    ctypes.string_at(0)


def abort() -> None:
    faulthandler.disable()
    os.kill(os.getpid(), signal.SIGABRT)


def succeed() -> str:
    return "done"
