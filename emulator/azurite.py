"""Azurite (the Azure Storage emulator) as a child process on free 127.0.0.1 ports; dev/test only.

`Azurite()` starts blob, queue and table services in memory, in their own process group, and returns once all
three accept TCP connections. `stop()` (also the context-manager exit, and an atexit safety net) terminates the
whole group: SIGTERM, then SIGKILL after a timeout.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from emulator.children import die_with_parent

ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = ROOT / "node_modules" / ".bin" / "azurite"

# The emulator's well-known development account (published in the Azurite documentation; not a secret).
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_BIND_FAILURE = "EADDRINUSE"


class AzuriteError(RuntimeError):
    """Azurite is not installed or did not start."""


def _free_ports(count: int) -> list[int]:
    """Ports the OS considers free right now (held open together so they are distinct)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Azurite:
    """A running in-memory Azurite. Construct to start; `stop()` or use as a context manager."""

    def __init__(self, startup_timeout: float = 15.0, stop_timeout: float = 5.0) -> None:
        if not AZURITE_BIN.exists():
            raise AzuriteError(f"Azurite is not installed ({AZURITE_BIN} is missing): run `make install`")
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self.blob_port = self.queue_port = self.table_port = 0
        atexit.register(self.stop)
        try:
            self._start_with_retry()
        except BaseException:
            self.stop()
            raise

    # -- lifecycle -------------------------------------------------------------------------------------------
    def _start_with_retry(self) -> None:
        for attempt in (1, 2):
            self.blob_port, self.queue_port, self.table_port = _free_ports(3)
            self._spawn()
            error = self._wait_ready()
            if error is None:
                return
            self.stop(unregister=False)
            if attempt == 1 and _BIND_FAILURE in error:
                continue  # another process took a port between our probe and Azurite's bind: pick new ones
            raise AzuriteError(f"Azurite did not start: {error}")

    def _spawn(self) -> None:
        self._stderr = tempfile.TemporaryFile(prefix="azurite-stderr-")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [
                str(AZURITE_BIN),
                *("--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry", "--silent"),
                *("--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1"),
                *("--blobPort", str(self.blob_port)),
                *("--queuePort", str(self.queue_port)),
                *("--tablePort", str(self.table_port)),
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            start_new_session=True,  # its own process group, so stop() also reaches node's children
            preexec_fn=die_with_parent,
        )

    def _wait_ready(self) -> str | None:
        """None once every port accepts connections, else a description of the failure."""
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout
        pending = {self.blob_port, self.queue_port, self.table_port}
        while pending:
            if self._proc.poll() is not None:
                return f"it exited with code {self._proc.returncode}: {self._stderr_tail()}"
            pending = {port for port in pending if not _accepts(port)}
            if not pending:
                break
            if time.monotonic() > deadline:
                return f"ports {sorted(pending)} not listening after {self._startup_timeout:g} s: {self._stderr_tail()}"
            time.sleep(0.05)  # polling a child process's sockets; not test synchronisation
        return None

    def _stderr_tail(self, limit: int = 2000) -> str:
        if self._stderr is None:
            return "(no stderr)"
        self._stderr.flush()
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return text[-limit:] if text else "(stderr empty)"

    def stop(self, unregister: bool = True) -> None:
        """Terminate Azurite's process group (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=self._stop_timeout)
            except ProcessLookupError:
                pass
        elif proc is not None:
            proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if unregister:
            atexit.unregister(self.stop)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- endpoints -------------------------------------------------------------------------------------------
    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.blob_port}/{ACCOUNT_NAME}"

    @property
    def queue_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.queue_port}/{ACCOUNT_NAME}"

    @property
    def table_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.table_port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};QueueEndpoint={self.queue_endpoint};"
            f"TableEndpoint={self.table_endpoint};"
        )

    def __enter__(self) -> Azurite:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Azurite({state}, blob={self.blob_port}, queue={self.queue_port}, table={self.table_port})"
