"""Child services (Azurite, the emulator) must not outlive what started them."""

from __future__ import annotations

import ctypes
import signal
import sys


def die_with_parent() -> None:
    """`preexec_fn` for child services: Linux delivers SIGTERM to them if the process that started them dies
    (even by SIGKILL), so no Azurite or emulator outlives a killed test run or demo."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1
