"""The local Azure never outlives what started it: a killed test run or demo leaves no Azurite or emulator."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys

STARTER = """
import json, sys
from emulator.sandbox import LocalAzure
azure = LocalAzure()
print(json.dumps([azure.emulator.proc.pid, azure.azurite._proc.pid]), flush=True)
sys.stdin.read()  # block until the test kills us
"""


def _exits_within(pid: int, seconds: float) -> bool:
    """Wait on a pidfd (readable when the process ends): no polling, no sleep."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], seconds)[0])
    finally:
        os.close(fd)


def test_children_die_when_their_starter_is_killed() -> None:
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert starter.stdout is not None
        pids = json.loads(starter.stdout.readline())
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        starter.send_signal(signal.SIGKILL)  # no finally, no atexit: only the kernel can clean up now
        starter.wait(timeout=10)
        assert all(_exits_within(pid, 15) for pid in pids)
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
